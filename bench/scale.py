"""Scale benchmark (not a test): N stages + N aliases through the real CLI on the local backend.

Generates a git repository with N stages (over N/50 APIs) and N aliases (over
N/10 functions), then measures, each as wall time of a real ``reconciler``
process (Python start-up included) with its peak RSS:

* the floor: one process that reads the same spec files from disk and parses
  them with PyYAML's libyaml loader, and nothing else;
* ``validate`` with a cold parse cache, and again warm;
* ``apply`` cold (everything created), a no-op ``plan``, and a one-alias-change
  ``apply`` (commit, then plan + apply + tag in one command).

Usage: python bench/scale.py [N ...]   (default: 500 5000)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.specgen import openapi_definition
from reconciler.backends.local import LocalCloud

STAGES_PER_API = 50
ALIASES_PER_FUNCTION = 10

FLOOR = """
import sys, time, pathlib, yaml
start = time.perf_counter()
docs = 0
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.yaml")):
    docs += sum(1 for _ in yaml.load_all(path.read_text("utf-8"), Loader=yaml.CSafeLoader))
print(docs, time.perf_counter() - start)
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def generate(repo: Path, n: int) -> None:
    specs = repo / "deploy_specs"
    specs.mkdir(parents=True)
    apis = max(1, n // STAGES_PER_API)
    for a in range(apis):
        api = f"api-{a:04d}"
        (specs / f"{api}-openapi.yaml").write_text(openapi_definition(api, api))
        docs = [
            f"apiVersion: reconciler/v1\nkind: RestApi\nmetadata: {{name: {api}}}\n"
            f"spec: {{description: API {a}, definition: {api}-openapi.yaml}}\n"
        ]
        for s in range(a * STAGES_PER_API, min(n, (a + 1) * STAGES_PER_API)):
            docs.append(
                f"apiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: stage-{s:05d}}}\n"
                f"spec:\n  api: {api}\n  description: stage {s}\n  variables: {{lambdaAlias: live, tier: t{s % 7}}}\n"
            )
        (specs / f"{api}.yaml").write_text("---\n".join(docs))
    functions = max(1, n // ALIASES_PER_FUNCTION)
    for f in range(functions):
        docs = []
        for i in range(f * ALIASES_PER_FUNCTION, min(n, (f + 1) * ALIASES_PER_FUNCTION)):
            docs.append(
                f"apiVersion: reconciler/v1\nkind: Alias\nmetadata: {{name: alias-{i:05d}}}\n"
                f'spec:\n  function: fn-{f:04d}\n  routing: {{"1": 90, "2": 10}}\n'
            )
        (specs / f"fn-{f:04d}.yaml").write_text("---\n".join(docs))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "add", "-A")
    git(repo, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "generated specs")


def measured(argv: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """Wall seconds, the child's own peak RSS in MB (via wait4), exit code, output."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, (out + err).decode()


def bench(n: int) -> dict[str, tuple[float, float]]:
    root = Path(tempfile.mkdtemp(prefix=f"reconciler-bench-{n}-"))
    repo = root / "repo"
    state = root / "state"
    results: dict[str, tuple[float, float]] = {}
    try:
        generate(repo, n)
        cloud = LocalCloud(state)
        for f in range(max(1, n // ALIASES_PER_FUNCTION)):
            cloud.publish_version(f"fn-{f:04d}")
            cloud.publish_version(f"fn-{f:04d}")
        cloud.close()
        cli = [sys.executable, "-m", "reconciler"]
        common = ["--repo", str(repo), "--state-dir", str(state)]

        wall, rss, _code, out = measured([sys.executable, "-c", FLOOR, str(repo / "deploy_specs")], repo)
        floor_inner = float(out.split()[1])
        results["floor: read + parse YAML (process)"] = (wall, rss)
        results["floor: read + parse YAML (in-process)"] = (floor_inner, rss)

        def step(name: str, *args: str, expect: tuple[int, ...] = (0,)) -> None:
            wall, rss, code, out = measured([*cli, *args, *common], repo)
            if code not in expect:
                raise SystemExit(f"{name} failed ({code}):\n{out[-2000:]}")
            results[name] = (wall, rss)

        step("validate (cold cache)", "validate")
        step("validate (warm cache)", "validate")
        step("apply (cold: create all)", "apply")
        step("plan (no-op)", "plan")
        target = repo / "deploy_specs" / "fn-0000.yaml"
        target.write_text(target.read_text().replace('{"1": 90, "2": 10}', '{"1": 80, "2": 20}', 1))
        git(repo, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "one alias")
        step("plan (one alias changed)", "plan", expect=(2,))
        step("apply (one alias changed)", "apply")
        step("plan (no-op after change)", "plan")
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [500, 5000]
    for n in sizes:
        results = bench(n)
        floor = results["floor: read + parse YAML (process)"][0]
        print(f"\nN = {n} ({n} stages + {n} aliases = {2 * n} resources)")
        print(f"{'step':<40} {'wall s':>8} {'x floor':>8} {'peak RSS MB':>12}")
        for name, (wall, rss) in results.items():
            print(f"{name:<40} {wall:>8.3f} {wall / floor:>8.2f} {rss:>12.1f}")


if __name__ == "__main__":
    main()
