"""Test support: a real temporary git repository of specs, driven through the real CLI."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.cli import main
from reconciler.model import LiveAlias, LiveApi, LiveCanary, LiveDeployment, LiveStage, LiveState
from reconciler.specs import (
    Definition,
    DesiredAlias,
    DesiredApi,
    DesiredCanary,
    DesiredStage,
    DesiredState,
    Location,
    canonical_json,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy_specs"
RECONCILER = Path(sys.executable).with_name("reconciler")  # the installed console script


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


class SpecRepo:
    """A git repository in a temp dir, with helpers to commit specs and run the CLI on it."""

    def __init__(self, path: Path, state_dir: Path | None = None) -> None:
        self.path = path
        self.state_dir = state_dir or path.parent / f"{path.name}-state"
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "dev@example.com")
        self.git("config", "user.name", "Dev")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def write(self, relpath: str, text: str) -> None:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def remove(self, relpath: str) -> None:
        (self.path / relpath).unlink()

    def copy_example(self) -> None:
        shutil.copytree(EXAMPLE, self.path / "deploy_specs", dirs_exist_ok=True)

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def cli(self, *args: str, output: str | None = None) -> Result:
        """Run ``reconciler <args> --repo <this> --state-dir <state>`` in-process."""
        argv = [*args, "--repo", str(self.path), "--state-dir", str(self.state_dir)]
        if output:
            argv += ["--output", output]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # a command that exits (none should: main returns the code)
                code = int(exc.code or 0)
        return Result(code, out.getvalue(), err.getvalue())

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, output="json")
        assert result.stdout, result.stderr
        return result.json

    def validate_error(self, field: str) -> dict[str, Any]:
        """``validate --output json`` of the head, which must fail with exactly one error on ``field``."""
        result = self.cli("validate", output="json")
        assert result.code == 1, result.stdout + result.stderr
        errors = [e for e in result.json["errors"] if e["field"] == field]
        assert len(errors) == 1, result.json["errors"]
        error: dict[str, Any] = errors[0]
        return error

    def write_many_stages(self, count: int, relpath: str = "deploy_specs/many.yaml") -> None:
        """``count`` more stages of the example's API (``s0``, ``s1``, …), one document each: a long apply."""
        stage = "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: s{}}}\n"
        stage += "spec: {{api: orders, variables: {{lambdaAlias: prod}}}}\n"
        self.write(relpath, "---\n".join(stage.format(i) for i in range(count)))

    def publish(self, function: str, times: int = 1) -> list[str]:
        return [self.cli("local", "publish-version", function).stdout.strip() for _ in range(times)]


def run_reconciler(cwd: Path, *args: str, module: bool = False) -> Result:
    """Run the installed ``reconciler`` (or ``python -m reconciler``) as a subprocess in ``cwd``, as a user would.

    No ``--repo`` or ``--state-dir`` is added: the command finds the repository
    from ``cwd``.  ``RECONCILER_*`` variables of the caller are not passed on.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    argv = [sys.executable, "-m", "reconciler"] if module else [str(RECONCILER)]
    done = subprocess.run([*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return Result(done.returncode, done.stdout, done.stderr)


# ------------------------------------------- plan inputs, built without git or a backend

SPEC_FILE = "deploy_specs/specs.yaml"


def make_definition(title: str, variables: frozenset[str] = frozenset({"lambdaAlias"})) -> Definition:
    """A small OpenAPI document in canonical form, hashed as the specs loader hashes it."""
    body = canonical_json({"openapi": "3.0.1", "info": {"title": title, "version": "1"}, "paths": {}})
    return Definition(hashlib.sha256(body.encode("utf-8")).hexdigest(), body, f"deploy_specs/{title}.yaml", variables)


def desired_api(definition: Definition, name: str = "orders", description: str | None = None) -> DesiredApi:
    return DesiredApi(name, description, definition, Location(SPEC_FILE, 1))


def desired_stage(
    name: str,
    definition: Definition,
    api: str = "orders",
    variables: dict[str, str] | None = None,
    canary: DesiredCanary | None = None,
    description: str | None = None,
    line: int = 10,
) -> DesiredStage:
    return DesiredStage(
        api, name, description, definition, variables or {"lambdaAlias": name}, canary, Location(SPEC_FILE, line)
    )


def desired_alias(
    name: str,
    routing: dict[str, float],
    function: str = "orders-handler",
    description: str | None = None,
    line: int = 20,
) -> DesiredAlias:
    return DesiredAlias(function, name, description, routing, Location(SPEC_FILE, line))


def desired_state(*items: DesiredApi | DesiredStage | DesiredAlias, revision: str = "c0ffee") -> DesiredState:
    state = DesiredState(revision=revision)
    for item in items:
        if isinstance(item, DesiredApi):
            state.apis[item.name] = item
        elif isinstance(item, DesiredStage):
            state.stages[(item.api, item.name)] = item
        else:
            state.aliases[(item.function, item.name)] = item
    return state


def deployment_id(definition: Definition) -> str:
    return f"dep-{definition.sha256[:6]}"


def live_api(
    definition: Definition, name: str = "orders", managed: bool = True, description: str | None = None
) -> LiveApi:
    return LiveApi(name, f"id-{name}", description, definition.sha256, managed)


def live_canary(percent: float, definition: Definition, variables: dict[str, str] | None = None) -> LiveCanary:
    return LiveCanary(percent, definition.sha256, deployment_id(definition), variables or {})


def live_stage(
    name: str,
    definition: Definition,
    api: str = "orders",
    variables: dict[str, str] | None = None,
    canary: LiveCanary | None = None,
    managed: bool = True,
    description: str | None = None,
) -> LiveStage:
    return LiveStage(
        api=api,
        name=name,
        deployment_id=deployment_id(definition),
        definition_sha256=definition.sha256,
        description=description,
        variables=variables or {"lambdaAlias": name},
        canary=canary,
        url=f"https://id-{api}.execute-api.local.localhost/{name}",
        managed=managed,
    )


def live_alias(
    name: str,
    routing: dict[str, float],
    function: str = "orders-handler",
    managed: bool = True,
    description: str | None = None,
) -> LiveAlias:
    return LiveAlias(function, name, description, routing, managed, revision_id=f"rev-{name}")


def live_state(
    *items: LiveApi | LiveStage | LiveAlias,
    deployments: dict[str, list[Definition]] | None = None,
    versions: dict[str, set[str]] | None = None,
) -> LiveState:
    """Live state; ``versions`` defaults to orders-handler with versions 1 and 2 published."""
    state = LiveState(versions={"orders-handler": {"$LATEST", "1", "2"}} if versions is None else versions)
    for item in items:
        if isinstance(item, LiveApi):
            state.apis[item.name] = item
        elif isinstance(item, LiveStage):
            state.stages[(item.api, item.name)] = item
        else:
            state.aliases[(item.function, item.name)] = item
    for api, definitions in (deployments or {}).items():
        state.deployments[api] = {d.sha256: LiveDeployment(deployment_id(d), d.sha256, "0ld") for d in definitions}
    return state


def with_state_dir(repo: SpecRepo, state_dir: Path) -> SpecRepo:
    """The same repository as seen by a reconciler with another state dir (its own backend and records)."""
    other = copy.copy(repo)
    other.state_dir = state_dir
    return other


def self_signed_tls(folder: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh one-day self-signed certificate for localhost and 127.0.0.1 (openssl)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
