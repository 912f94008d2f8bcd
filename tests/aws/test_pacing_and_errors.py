"""The aws backend paces itself under AWS's quotas and reports failures it cannot fix as data.

Pacing runs against the real moto_server with a fake clock, so the test
proves the limiter's waits without spending them.
"""

from __future__ import annotations

import socket
from itertools import pairwise
from pathlib import Path

import pytest

from reconciler.backends.aws import AwsBackend
from reconciler.backends.aws_calls import RATE_SCALE_ENV, Rates
from reconciler.engine import Config, Engine
from reconciler.errors import BackendError
from reconciler.specs import DesiredState
from tests.aws.conftest import Aws, AwsRepo


class FakeClock:
    """A monotonic clock that only moves when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_writes_are_paced_under_the_quotas(aws_repo: AwsRepo, aws: Aws, tmp_path: Path) -> None:
    """With AWS's real quotas, two CreateDeployments go out 5 s apart and PutRestApis 1 s apart."""
    clock = FakeClock()
    backend = AwsBackend(region="us-east-1", endpoint_url=aws.url, rates=Rates(), clock=clock.time, sleep=clock.sleep)
    sent: list[tuple[str, float]] = []
    for client in (backend.calls.apigateway, backend.calls.apigateway_once):
        client.meta.events.register("before-call", lambda model, **_: sent.append((model.name, clock.now)))
    engine = Engine(Config(repo=str(aws_repo.path), backend="aws", state_dir=str(tmp_path / "state")), backend=backend)
    try:
        result = engine.reconcile()
    finally:
        engine.close()
    assert result.ok, result.error
    deployments = [t for name, t in sent if name == "CreateDeployment"]
    puts = [t for name, t in sent if name == "PutRestApi"]
    assert len(deployments) == 2 and deployments[1] - deployments[0] >= 5.0
    assert len(puts) >= 2 and all(later - earlier >= 1.0 for earlier, later in pairwise(puts))
    assert backend.calls.limiter.waited == pytest.approx(sum(clock.sleeps))


def test_rate_scale_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECONCILER_AWS_RATE_SCALE multiplies every quota (for moto or LocalStack); junk is refused."""
    monkeypatch.setenv(RATE_SCALE_ENV, "100")
    assert Rates.from_env().create_deployment == pytest.approx(20.0)
    monkeypatch.setenv(RATE_SCALE_ENV, "fast")
    with pytest.raises(BackendError, match=RATE_SCALE_ENV):
        Rates.from_env()


def test_unreachable_endpoint_is_a_temporary_error(moto_url: str) -> None:
    """A connection refused becomes a temporary BackendError naming the call, for the daemon's backoff."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = AwsBackend(region="us-east-1", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    try:
        with pytest.raises(BackendError) as caught:
            backend.read(DesiredState())
    finally:
        backend.close()
    assert caught.value.temporary is True
    assert caught.value.code == "EndpointConnectionError"
    assert str(caught.value).startswith("RestApi/*: GetRestApis failed: EndpointConnectionError")


def test_missing_region_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without --region or AWS_DEFAULT_REGION the backend says which flag to pass."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(BackendError, match="--region"):
        AwsBackend()


def test_waits_are_reported_naming_the_quota(aws_repo: AwsRepo, aws: Aws, tmp_path: Path) -> None:
    """Each pacing wait is told to on_wait before it is slept, naming the quota (the CLI's live line)."""
    clock = FakeClock()
    waits: list[tuple[float, str]] = []
    backend = AwsBackend(
        region="us-east-1",
        endpoint_url=aws.url,
        rates=Rates(),
        clock=clock.time,
        sleep=clock.sleep,
        on_wait=lambda seconds, quota: waits.append((seconds, quota)),
    )
    engine = Engine(Config(repo=str(aws_repo.path), backend="aws", state_dir=str(tmp_path / "state")), backend=backend)
    try:
        assert engine.reconcile().ok
    finally:
        engine.close()
    assert [seconds for seconds, _ in waits] == clock.sleeps
    assert any(quota == "CreateDeployment quota" and seconds >= 3 for seconds, quota in waits), waits
    assert {quota for _, quota in waits} <= {"CreateDeployment quota", "PutRestApi quota", "API Gateway request rate"}
