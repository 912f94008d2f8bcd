"""Economy benchmark (not a test): how many AWS calls the aws backend makes, per operation.

Starts its own ``moto_server`` on a free loopback port, generates a git
repository with N stages (10 per API, so N/10 APIs) whose definition names a
Lambda alias through the stage variable ``lambdaAlias``, and two aliases on
one function, then reconciles it in-process through the real engine and
counts every AWS request (pages of a listing included) with botocore's
``before-call`` event, split into reads (Get*/List*) and writes:

* first apply (everything created);
* no-op reconcile (nothing changed);
* one-field change: one alias's routing; then one stage variable.

Targets: a one-field change makes exactly one write; a no-op reconcile makes no
writes and at most 2 + (APIs x 2) + (functions x 2) reads (one GetRestApis, one
GetDomainNames; no custom domain is mapped, so no GetBasePathMappings).  It also reports
how long the client-side limiter would make each step wait at AWS's real
quotas (a fake clock: the waits are computed, not spent).

Usage: python bench/aws_calls.py [N ...] [--record]   (default N: 10 100;
--record writes the "## aws_calls" section of bench/README.md)
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from bench.specgen import openapi_definition  # noqa: E402
from reconciler.backends.aws import AwsBackend  # noqa: E402
from reconciler.backends.aws_calls import Rates  # noqa: E402
from reconciler.engine import Config, Engine  # noqa: E402

REGION = "us-east-1"
STAGES_PER_API = 10
FUNCTION = "bench-handler"


# ------------------------------------------------------------------- moto


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
                return process, url
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not answer within 30 s") from None
            try:
                code = process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"moto_server exited with {code}") from None


def reset_moto(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10):
        pass


def make_function(url: str, name: str, versions: int) -> None:
    iam = boto3.client("iam", endpoint_url=url, region_name=REGION)
    lam = boto3.client("lambda", endpoint_url=url, region_name=REGION)
    role = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]

    def code(n: int) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("handler.py", f"def handle(e, c):\n    return {n}\n")
        return buffer.getvalue()

    lam.create_function(
        FunctionName=name, Runtime="python3.12", Role=role, Handler="handler.handle", Code={"ZipFile": code(0)}
    )
    for n in range(1, versions + 1):
        lam.update_function_code(FunctionName=name, ZipFile=code(n))
        lam.publish_version(FunctionName=name)


# -------------------------------------------------------------------- specs


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def write_specs(repo: Path, stages: int, prod_routing: str, tier: str) -> None:
    specs = repo / "deploy_specs"
    specs.mkdir(parents=True, exist_ok=True)
    docs: list[str] = []
    for a in range((stages + STAGES_PER_API - 1) // STAGES_PER_API):
        api = f"api{a:03d}"
        (specs / f"{api}.openapi.yaml").write_text(openapi_definition(api, FUNCTION))
        docs.append(
            f"apiVersion: reconciler/v1\nkind: RestApi\nmetadata: {{name: {api}}}\n"
            f"spec: {{definition: {api}.openapi.yaml}}\n"
        )
        for s in range(min(STAGES_PER_API, stages - a * STAGES_PER_API)):
            alias = "prod" if s % 2 else "dev"
            value = tier if (a, s) == (0, 0) else "standard"
            docs.append(
                f"apiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: s{s:02d}}}\n"
                f"spec: {{api: {api}, variables: {{lambdaAlias: {alias}, tier: {value}}}}}\n"
            )
    docs.append(
        "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: dev}\n"
        f'spec: {{function: {FUNCTION}, routing: {{"$LATEST": 100}}}}\n'
    )
    docs.append(
        "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: prod}\n"
        f"spec: {{function: {FUNCTION}, routing: {prod_routing}}}\n"
    )
    (specs / "specs.yaml").write_text("---\n".join(docs))


# ---------------------------------------------------------------- counting


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Step:
    name: str
    calls: Counter[str] = field(default_factory=Counter)
    actions: int = 0
    paced_s: float = 0.0

    @property
    def reads(self) -> int:
        return sum(n for op, n in self.calls.items() if op.startswith(("Get", "List")))

    @property
    def writes(self) -> int:
        return sum(self.calls.values()) - self.reads


def run_step(name: str, repo: Path, state: Path, url: str) -> Step:
    """One reconcile in-process with a fresh backend (as one CLI run or one daemon pass would have)."""
    step = Step(name)
    clock = FakeClock()
    backend = AwsBackend(region=REGION, endpoint_url=url, rates=Rates(), clock=clock.time, sleep=clock.sleep)

    def count(model: Any, **_: Any) -> None:
        step.calls[model.name] += 1

    for client in (backend.calls.apigateway, backend.calls.apigateway_once, backend.calls.lambda_):
        client.meta.events.register("before-call", count)
    engine = Engine(Config(repo=str(repo), backend="aws", state_dir=str(state)), backend=backend)
    try:
        result = engine.reconcile()
    finally:
        engine.close()
    if not result.ok:
        raise SystemExit(f"{name}: {result.error}")
    step.actions = len(result.applied)
    step.paced_s = backend.calls.limiter.waited
    return step


def bench(stages: int, url: str) -> tuple[int, list[Step]]:
    reset_moto(url)
    make_function(url, FUNCTION, versions=2)
    with tempfile.TemporaryDirectory(prefix="aws-calls-") as tmp:
        repo, state = Path(tmp) / "repo", Path(tmp) / "state"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.email", "bench@example.com")
        git(repo, "config", "user.name", "bench")
        git(repo, "config", "commit.gpgsign", "false")
        write_specs(repo, stages, '{"1": 95, "2": 5}', "standard")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "specs")
        steps = [run_step("first apply", repo, state, url), run_step("no-op reconcile", repo, state, url)]
        write_specs(repo, stages, '{"1": 90, "2": 10}', "standard")
        git(repo, "commit", "-q", "-am", "prod alias: 10 % to version 2")
        steps.append(run_step("one alias routing change", repo, state, url))
        write_specs(repo, stages, '{"1": 90, "2": 10}', "gold")
        git(repo, "commit", "-q", "-am", "one stage variable")
        steps.append(run_step("one stage variable change", repo, state, url))
        steps.append(run_step("no-op reconcile", repo, state, url))
    return (stages + STAGES_PER_API - 1) // STAGES_PER_API, steps


def report(stages: int, apis: int, steps: list[Step]) -> str:
    functions = 1
    budget = 2 + apis * 2 + functions * 2  # GetRestApis and GetDomainNames, then per API and function
    lines = [
        f"N = {stages} stages over {apis} API(s), {functions} function with 2 aliases; "
        f"no-op read budget 2 + {apis}x2 + {functions}x2 = {budget}",
        f"{'step':28} {'actions':>7} {'reads':>5} {'writes':>6} {'paced s':>8}  calls per operation",
    ]
    for step in steps:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(step.calls.items()))
        lines.append(f"{step.name:28} {step.actions:>7} {step.reads:>5} {step.writes:>6} {step.paced_s:>8.1f}  {ops}")
    problems = []
    for step in steps:
        if step.name.startswith("no-op") and (step.writes or step.reads > budget):
            problems.append(f"{step.name}: {step.writes} writes, {step.reads} reads (budget {budget})")
        if step.name.startswith("one ") and step.writes != 1:
            problems.append(f"{step.name}: {step.writes} writes, expected exactly 1")
    lines.append("targets: " + ("met" if not problems else "MISSED: " + "; ".join(problems)))
    return "\n".join(lines)


NOTES = """\
Reads never grow with the number of stages or aliases, only with APIs and
functions (one `GetDeployments` + one `GetStages` per API, one `ListAliases` +
one `ListVersionsByFunction` per function; pages of 500 deployments or 50
aliases/versions).  A first apply writes, per API, `CreateRestApi` +
`PutRestApi` and one `CreateDeployment` per distinct definition; per stage one
`CreateStage`; per alias one `CreateAlias`, plus one `AddPermission` per API
whose stages name it.  At AWS's real quotas the limiter spends most of a large
first apply waiting for `CreateDeployment` (1 per 5 s per account): 10 APIs
take about a minute; after that, changes cost one write and no wait.
"""


def record(text: str) -> None:
    """Write the "## aws_calls" section of bench/README.md, leaving every other section as it is."""
    readme = ROOT / "bench" / "README.md"
    current = readme.read_text(encoding="utf-8") if readme.exists() else "# Benchmarks\n"
    section = (
        "## aws_calls\n\n"
        + (__doc__ or "").split("\n\n", 1)[1].split("Usage:")[0].strip()
        + "\n\nRun: `python bench/aws_calls.py [N ...] [--record]` (default 10 100), "
        + f"recorded {time.strftime('%Y-%m-%d')}.\n\n```\n"
        + text
        + "\n```\n\n"
        + NOTES
    )
    start = current.find("\n## aws_calls\n")
    if start < 0:
        updated = current.rstrip("\n") + "\n\n" + section
    else:
        end = current.find("\n## ", start + 1)
        updated = current[: start + 1] + section + (current[end:] if end >= 0 else "")
    readme.write_text(updated, encoding="utf-8")


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv if a.isdigit()] or [10, 100]
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION})
    process, url = start_moto()
    try:
        outputs = []
        for stages in sizes:
            apis, steps = bench(stages, url)
            outputs.append(report(stages, apis, steps))
            print(outputs[-1], "\n", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=10)
    if "--record" in argv:
        record("\n\n".join(outputs))
    ok = all("targets: met" in o for o in outputs)
    print(json.dumps({"targets_met": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
