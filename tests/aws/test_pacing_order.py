"""Pacing at AWS's real quotas (fake clock, real moto_server): the deployment chain is the only wait.

Actions run API by API (import, deployment, that API's stages), so the stage
updates fill the 5 s gaps between ``CreateDeployment`` calls instead of queueing
after them; ``CreateRestApi`` has its own bucket (1 per 3 s); and botocore's
own retries take a token per resend, so a throttled call is never resent
faster than the quota.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from reconciler.backends.aws import AwsBackend
from reconciler.backends.aws_calls import Rates
from reconciler.engine import Config, Engine
from reconciler.errors import BackendError
from tests.aws.conftest import EXAMPLE, Aws
from tests.aws.test_pacing_and_errors import FakeClock
from tests.support import SpecRepo

APIS, STAGES = 3, 6
ULP = 1e-9  # the fake clock sums float sleeps: 3.0000000000000004 then 6.0 is a 3 s gap, not a faster one


def specs(version: str) -> dict[str, str]:
    files = {}
    docs = []
    definition = (EXAMPLE / "openapi.yaml").read_text(encoding="utf-8")
    for a in range(APIS):
        files[f"deploy_specs/api{a}.openapi.yaml"] = definition.replace('version: "2.0"', f'version: "2.{version}"')
        docs.append(
            f"apiVersion: reconciler/v1\nkind: RestApi\nmetadata: {{name: api{a}}}\n"
            f"spec: {{definition: api{a}.openapi.yaml}}\n"
        )
        for s in range(STAGES):
            docs.append(
                f"apiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: s{s}}}\n"
                f"spec: {{api: api{a}, variables: {{lambdaAlias: prod}}}}\n"
            )
    docs.append(
        "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: prod}\n"
        'spec: {function: orders-handler, routing: {"1": 100}}\n'
    )
    files["deploy_specs/specs.yaml"] = "---\n".join(docs)
    return files


def reconcile(repo: SpecRepo, aws: Aws, rates: Rates, clock: FakeClock) -> tuple[Any, list[tuple[str, float]], float]:
    backend = AwsBackend(region="us-east-1", endpoint_url=aws.url, rates=rates, clock=clock.time, sleep=clock.sleep)
    sent: list[tuple[str, float]] = []
    for client in (backend.calls.apigateway, backend.calls.apigateway_once):  # CreateDeployment: the second
        client.meta.events.register("before-call", lambda model, **_: sent.append((model.name, clock.now)))
    engine = Engine(Config(repo=str(repo.path), backend="aws", state_dir=str(repo.state_dir)), backend=backend)
    try:
        result = engine.reconcile()
    finally:
        engine.close()
    assert result.ok, result.error
    return result, sent, backend.calls.limiter.waited


def test_each_apis_stages_run_in_the_gaps_of_the_deployment_quota(tmp_path: Path, aws: Aws) -> None:
    aws.make_function("orders-handler", versions=1)
    repo = SpecRepo(tmp_path / "repo")
    for path, text in specs("1").items():
        repo.write(path, text)
    repo.commit("three APIs")
    _, first, _ = reconcile(repo, aws, Rates(), FakeClock())
    created = [t for name, t in first if name == "CreateRestApi"]
    assert len(created) == APIS and all(b - a >= 3.0 - ULP for a, b in pairwise(created))  # CreateRestApi: 1 per 3 s

    for path, text in specs("2").items():
        repo.write(path, text)
    repo.commit("every definition changed")
    result, sent, waited = reconcile(repo, aws, Rates(), FakeClock())
    deployments = [t for name, t in sent if name == "CreateDeployment"]
    assert len(deployments) == APIS and all(b - a >= 5.0 - ULP for a, b in pairwise(deployments))  # never faster
    # the deployment chain is the wait: (APIS - 1) x 5 s; by kind it was that plus the imports and the stages after it
    assert waited <= (APIS - 1) * 5.0 + 0.5, waited
    apis = [a.resource.split("/")[1] for a in result.applied if a.resource.startswith(("RestApi/", "Stage/"))]
    assert apis == sorted(apis)  # API by API: import, deployment, then that API's stages
    kinds = [a.action for a in result.applied if a.resource.split("/")[1] == "api1"]
    assert kinds == ["update_api", "create_deployment"] + ["update_stage"] * STAGES
    assert [a.action for a in result.plan.actions][:APIS] == ["update_api"] * APIS  # the plan still lists by kind


class Throttling(BaseHTTPRequestHandler):
    """API Gateway answering every request 429 TooManyRequestsException."""

    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"message": "Too Many Requests"}'
        self.send_response(429)
        self.send_header("x-amzn-ErrorType", "TooManyRequestsException")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def throttling() -> Iterator[str]:
    Throttling.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_botocore_retries_are_paced_too(throttling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three attempts at one CreateDeployment take three tokens of its bucket: 5 s apart, not botocore's backoff."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    clock = FakeClock()
    backend = AwsBackend(
        region="us-east-1", endpoint_url=throttling, rates=Rates(), max_attempts=3, clock=clock.time, sleep=clock.sleep
    )
    try:
        with pytest.raises(BackendError) as caught:
            backend.calls.call(
                "RestApi/x", "CreateDeployment", lambda: backend.calls.apigateway.create_deployment(restApiId="x")
            )
    finally:
        backend.close()
    assert caught.value.temporary and Throttling.requests == 3
    assert clock.sleeps == [pytest.approx(5.0), pytest.approx(5.0)]  # the two resends waited for the quota
