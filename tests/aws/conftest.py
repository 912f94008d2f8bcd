"""Fixtures for the aws backend tests: a real ``moto_server`` on loopback, reset before each test.

The server is started once per session from the venv's ``moto_server`` on a
free port and stopped at the end; dummy credentials and a high pacing scale
(``RECONCILER_AWS_RATE_SCALE``) come from the environment, as they would for a
user pointing the tool at moto.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support import Result, SpecRepo

REGION = "us-east-1"
HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent.parent / "deploy_specs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def without_coverage() -> dict[str, str]:
    """The environment minus coverage's subprocess hook: moto is not our code, and measuring it slows it down."""
    return {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_CONFIG"}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto_server on 127.0.0.1 (free port), up for the whole session, with dummy credentials set."""
    server = Path(sys.executable).parent / "moto_server"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=without_coverage(),
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "RECONCILER_AWS_RATE_SCALE": "1000",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while not _answers(url):
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not answer within 30 s")
            try:  # poll: wait briefly for the process to exit, which it must not
                code = process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"moto_server exited with {code}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _zip(version: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", f"def handle(event, context):\n    return {{'version': {version}}}\n")
    return buffer.getvalue()


@dataclass
class Aws:
    """boto3 clients on the moto_server, for a test to set up and inspect what the tool did."""

    url: str
    apigateway: Any = field(init=False)
    lambda_: Any = field(init=False)
    iam: Any = field(init=False)

    def __post_init__(self) -> None:
        self.apigateway = boto3.client("apigateway", endpoint_url=self.url, region_name=REGION)
        self.lambda_ = boto3.client("lambda", endpoint_url=self.url, region_name=REGION)
        self.iam = boto3.client("iam", endpoint_url=self.url, region_name=REGION)

    def make_function(self, name: str, versions: int = 2) -> list[str]:
        """Create a function and publish ``versions`` versions of it (moto needs a zip and a real role)."""
        role = self.iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps({}))
        self.lambda_.create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=role["Role"]["Arn"],
            Handler="handler.handle",
            Code={"ZipFile": _zip(0)},
        )
        published = []
        for number in range(1, versions + 1):  # moto publishes a new version only for new code
            self.lambda_.update_function_code(FunctionName=name, ZipFile=_zip(number))
            published.append(str(self.lambda_.publish_version(FunctionName=name)["Version"]))
        return published

    def api(self, name: str = "orders") -> dict[str, Any]:
        found = [a for a in self.apigateway.get_rest_apis()["items"] if a["name"] == name]
        assert len(found) == 1, found
        return dict(found[0])

    def stages(self, api: str = "orders") -> dict[str, dict[str, Any]]:
        items = self.apigateway.get_stages(restApiId=self.api(api)["id"])["item"]
        return {s["stageName"]: s for s in items}

    def deployments(self, api: str = "orders") -> list[dict[str, Any]]:
        return list(self.apigateway.get_deployments(restApiId=self.api(api)["id"])["items"])

    def alias(self, function: str, name: str) -> dict[str, Any]:
        return dict(self.lambda_.get_alias(FunctionName=function, Name=name))


@pytest.fixture
def aws(moto_url: str) -> Aws:
    """Clients on a freshly reset moto_server."""
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    return Aws(moto_url)


class AwsRepo(SpecRepo):
    """A spec repository whose CLI runs use the aws backend on the moto_server."""

    url: str

    def aws(self, command: str, *args: str, output: str | None = None) -> Result:
        return self.cli(
            command, "--backend", "aws", "--endpoint-url", self.url, "--region", REGION, *args, output=output
        )

    def aws_json(self, command: str, *args: str) -> Any:
        result = self.aws(command, *args, output="json")
        assert result.stdout, result.stderr
        return result.json


SPECS = """\
apiVersion: reconciler/v1
kind: RestApi
metadata: {name: orders}
spec:
  description: Orders service
  definition: openapi.yaml
---
apiVersion: reconciler/v1
kind: Stage
metadata: {name: dev}
spec:
  api: orders
  description: Development
  variables: {lambdaAlias: dev}
---
apiVersion: reconciler/v1
kind: Stage
metadata: {name: prod}
spec:
  api: orders
  description: Production
  variables: {lambdaAlias: prod}
---
apiVersion: reconciler/v1
kind: Stage
metadata: {name: v1}
spec:
  api: orders
  definition: openapi-v1.yaml
  variables: {lambdaAlias: prod}
---
apiVersion: reconciler/v1
kind: Alias
metadata: {name: dev}
spec:
  function: orders-handler
  description: development
  routing: {"$LATEST": 100}
---
apiVersion: reconciler/v1
kind: Alias
metadata: {name: prod}
spec:
  function: orders-handler
  description: production
  routing: {"1": 95, "2": 5}
"""


@pytest.fixture
def aws_repo(tmp_path: Path, aws: Aws) -> AwsRepo:
    """Specs for one API (dev, prod, and v1 pinned to an older definition) and two aliases, committed;
    ``orders-handler`` exists with versions 1 and 2.  No canary: moto ignores canary settings."""
    repo = AwsRepo(tmp_path / "repo")
    repo.url = aws.url
    repo.write("deploy_specs/specs.yaml", SPECS)
    repo.write("deploy_specs/openapi.yaml", (EXAMPLE / "openapi.yaml").read_text(encoding="utf-8"))
    repo.write("deploy_specs/openapi-v1.yaml", (EXAMPLE / "openapi-v1.yaml").read_text(encoding="utf-8"))
    repo.commit("specs")
    aws.make_function("orders-handler", versions=2)
    return repo
