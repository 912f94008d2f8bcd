"""Audit findings on the aws side: the daemon's DynamoDB lease and the aws backend on moto_server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from reconciler.backends.aws import AwsBackend
from reconciler.backends.aws_calls import to_backend_error
from reconciler.engine import Config, Engine
from tests.aws.conftest import REGION, Aws, AwsRepo, _answers, _free_port, without_coverage
from tests.aws.test_lease_daemon import lock_table
from tests.aws.test_lease_dynamodb import create_lock_table
from tests.daemon.conftest import Daemon, set_prod_routing, start_daemon, wait_for
from tests.support import SpecRepo

pytestmark = [pytest.mark.aws, pytest.mark.daemon]
__all__ = ["lock_table", "start_daemon"]


@pytest.fixture
def own_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A moto_server of this test's own (it may be frozen with SIGSTOP), with dummy credentials set."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=without_coverage(),
    )
    try:
        wait_for(lambda: _answers(url), 30, "moto_server")
        yield url, process
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(10)


def request_in_flight(port: int) -> bool:
    """Whether a connection to ``port`` on loopback has bytes the (frozen) server has not read."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                rx_queue = int(fields[4].split(":")[1], 16)
                if local_port == port and rx_queue > 0:
                    return True
    return False


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")
def test_sigterm_exits_within_10_s_while_the_lease_store_hangs(
    own_moto: tuple[str, subprocess.Popen[bytes]], repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """A leader whose DynamoDB stops answering mid-renewal still exits 0 within 10 s of SIGTERM."""
    url, moto = own_moto
    create_lock_table(url, "lock")
    repo.copy_example()
    repo.commit("example specs")
    repo.publish("orders-handler", times=2)
    lock = ("--lock", "dynamodb://lock", "--endpoint-url", url, "--region", REGION)
    daemon = start_daemon(str(repo.path), repo.state_dir, *lock)
    daemon.wait_applied(repo.head())
    moto.send_signal(signal.SIGSTOP)
    wait_for(lambda: request_in_flight(int(url.rsplit(":", 1)[1])), 10, "a lease renewal to hang")
    started = time.monotonic()
    assert daemon.stop(timeout=20) == 0
    assert time.monotonic() - started < 10


def test_catch_up_pass_of_a_lock_leader_is_not_counted_as_commit_to_applied(
    aws: Aws, example_repo: SpecRepo, lock_table: str, start_daemon: Callable[..., Daemon]
) -> None:
    """With --lock, the start-up catch-up pass is left out of reconciler_commit_to_applied_seconds, as without."""
    lock = ("--lock", f"dynamodb://{lock_table}", "--endpoint-url", aws.url, "--region", REGION)
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, *lock)
    daemon.wait_applied(example_repo.head())
    assert daemon.metric("reconciler_commit_to_applied_seconds_count") == 0
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    daemon.wait_applied(example_repo.commit("prod: all on version 2"))
    wait_for(lambda: daemon.metric("reconciler_commit_to_applied_seconds_count") == 1, what="the commit counted")
    assert daemon.metric("reconciler_reconciles_total", result="success") == 2  # the catch-up pass, and the commit


def client_error(code: str, status: int, message: str) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "UpdateStage")


@pytest.mark.parametrize(
    ("error", "temporary"),
    [
        pytest.param(
            client_error("ConflictException", 409, "Unable to complete operation due to concurrent modification."),
            True,
            id="apigateway-concurrent-modification",
        ),
        pytest.param(
            client_error("ResourceConflictException", 409, "An update is in progress for resource: arn:aws:lambda:x"),
            True,
            id="lambda-update-in-progress",
        ),
        pytest.param(client_error("ConflictException", 409, "Stage already exists"), False, id="stage-exists"),
        pytest.param(
            client_error("ResourceConflictException", 409, "The statement id (x) provided already exists."),
            False,
            id="statement-exists",
        ),
    ],
)
def test_aws_conflicts_that_say_try_again_are_temporary(error: ClientError, temporary: bool) -> None:
    """A 409 that only says another change is in flight is retried with backoff; a real conflict is not."""
    assert to_backend_error(error, "Stage/orders/prod", "UpdateStage").temporary is temporary


def test_a_no_op_pass_reads_one_listing_per_api_and_per_function(aws_repo: AwsRepo, tmp_path: Path) -> None:
    """After a first apply, a pass that changes nothing lists the APIs and the custom domains once, then per API
    and function only (no domain is mapped: no GetBasePathMappings)."""
    backend = AwsBackend(region=REGION, endpoint_url=aws_repo.url)
    sent: list[str] = []
    for client in (backend.calls.apigateway, backend.calls.lambda_):
        client.meta.events.register("before-call", lambda model, **_: sent.append(model.name))
    engine = Engine(Config(repo=str(aws_repo.path), backend="aws", state_dir=str(tmp_path / "state")), backend=backend)
    try:
        assert engine.reconcile().ok
        sent.clear()
        result = engine.reconcile()
    finally:
        engine.close()
    assert result.ok and result.result == "noop", result.error
    assert sorted(sent) == sorted(
        ["GetRestApis", "GetDeployments", "GetStages", "GetDomainNames", "ListAliases", "ListVersionsByFunction"]
    )
