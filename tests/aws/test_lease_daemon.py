"""Two real daemon processes with ``--lock dynamodb://TABLE`` on a moto_server: one leads, one stands by."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from reconciler.backends.local import LocalCloud
from tests.aws.conftest import REGION, SPECS, Aws, AwsRepo
from tests.aws.test_lease_dynamodb import create_lock_table
from tests.daemon.conftest import Daemon, start_daemon, wait_for
from tests.support import SpecRepo

pytestmark = [pytest.mark.aws, pytest.mark.daemon]
__all__ = ["start_daemon"]  # the daemon fixture, shared with tests/daemon

PROD_95_5 = 'routing: {"1": 95, "2": 5}'
STAGES = 50  # more than the one action in flight when the lease is lost
Start = Callable[..., Daemon]


@pytest.fixture
def lock_table(aws: Aws) -> str:
    """A lease table made after the moto reset that ``aws`` does."""
    name = f"reconciler-lock-{uuid.uuid4().hex[:6]}"
    create_lock_table(aws.url, name)
    return name


def replica(start: Start, repo: AwsRepo, table: str, name: str, *extra: str, ready: bool = True) -> Daemon:
    """One replica following the repository as a file:// remote, with its own state dir, on the shared lease."""
    return start(
        repo.path.as_uri(),
        repo.path.parent / f"state-{name}",
        *("--backend", "aws", "--endpoint-url", repo.url, "--region", REGION),
        *("--lock", f"dynamodb://{table}", "--interval", "0.2"),
        *extra,
        ready=ready,
    )


def role(daemon: Daemon) -> str:
    value: str = daemon.status()["role"]
    return value


def reconciled(daemon: Daemon) -> list[str]:
    return [e["revision"] for e in daemon.events("reconcile")]


def take_lease(aws: Aws, table: str) -> Any:
    """Overwrite the lease item as another holder would (for ten minutes); returns the DynamoDB client."""
    client = boto3.client("dynamodb", endpoint_url=aws.url, region_name=REGION)
    item = {"id": {"S": "reconciler/default"}, "holder": {"S": "intruder"}, "expires": {"N": str(time.time() + 600)}}
    client.put_item(TableName=table, Item=item)
    return client


def commit_prod_routing(repo: AwsRepo, routing: str) -> str:
    repo.write("deploy_specs/specs.yaml", SPECS.replace(PROD_95_5, routing))
    return repo.commit(f"prod: {routing}")


@pytest.fixture
def leader_and_standby(aws_repo: AwsRepo, lock_table: str, start_daemon: Start) -> tuple[Daemon, Daemon]:
    """Replica a leads (its first reconcile applied), then replica b starts and is ready as a standby."""
    a = replica(start_daemon, aws_repo, lock_table, "a")
    a.wait_applied(aws_repo.head(), timeout=20)
    b = replica(start_daemon, aws_repo, lock_table, "b")
    return a, b


def test_only_the_leader_reconciles_and_both_report_their_role(leader_and_standby: tuple[Daemon, Daemon]) -> None:
    """/status says "leader" and "standby"; the standby is ready (/readyz 200) and has reconciled nothing."""
    a, b = leader_and_standby
    assert role(a) == "leader" and role(b) == "standby"
    assert b.request("/readyz")[0] == 200
    assert b.status()["lease"]["leader"] == a.status()["lease"]["id"]
    assert b.metric("reconciler_leader") == 0 and a.metric("reconciler_leader") == 1
    assert reconciled(b) == [] and len(reconciled(a)) == 1


def test_standby_takes_over_within_20_s_of_the_leader_being_killed(
    aws: Aws, aws_repo: AwsRepo, leader_and_standby: tuple[Daemon, Daemon]
) -> None:
    """With the default 15 s lease, SIGKILL of the leader hands over in <= 20 s; the new leader applies a new commit."""
    a, b = leader_and_standby
    a.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    a.proc.wait(5)
    head = commit_prod_routing(aws_repo, 'routing: {"2": 100}')
    wait_for(lambda: role(b) == "leader", timeout=25, what="the standby to lead")
    assert time.monotonic() - killed <= 20
    b.wait_applied(head, timeout=10)
    assert aws.alias("orders-handler", "prod")["FunctionVersion"] == "2"


def test_leader_that_loses_the_lease_stops_applying_until_it_holds_it_again(
    aws: Aws, aws_repo: AwsRepo, lock_table: str, start_daemon: Start
) -> None:
    """When another holder overwrites the lease item the leader turns standby and applies nothing, until it is free."""
    daemon = replica(start_daemon, aws_repo, lock_table, "a", "--lease-duration", "3", "--lease-renew-interval", "1")
    first = aws_repo.head()
    daemon.wait_applied(first, timeout=20)
    table = take_lease(aws, lock_table)
    wait_for(lambda: role(daemon) == "standby", timeout=5, what="the leader to notice")
    head = commit_prod_routing(aws_repo, 'routing: {"2": 100}')
    wait_for(lambda: daemon.status()["desired_revision"] == head, what="the standby to fetch the commit")
    assert daemon.status()["applied_revision"] == first and head not in reconciled(daemon)
    assert aws.alias("orders-handler", "prod")["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.05}
    table.delete_item(TableName=lock_table, Key={"id": {"S": "reconciler/default"}})
    daemon.wait_applied(head, timeout=10)
    assert role(daemon) == "leader"


def test_sigterm_releases_the_lease_so_the_standby_takes_over_at_once(
    aws_repo: AwsRepo, lock_table: str, start_daemon: Start
) -> None:
    """A leader stopped with SIGTERM gives the lease up: the standby leads at its next attempt, not after the 15 s
    lease."""
    a = replica(start_daemon, aws_repo, lock_table, "a")
    a.wait_applied(aws_repo.head(), timeout=20)
    b = replica(start_daemon, aws_repo, lock_table, "b", "--lease-renew-interval", "1")  # tries every second
    assert role(b) == "standby"
    assert a.stop() == 0
    stopped = time.monotonic()
    assert a.events("lease_released")
    wait_for(lambda: role(b) == "leader", timeout=10, what="the standby to lead")
    # a released lease is taken at b's next attempt (about 1 s); an unreleased one only after 15 s
    assert time.monotonic() - stopped < 6


def test_missing_lock_table_stops_the_start_with_one_line(aws_repo: AwsRepo, aws: Aws, start_daemon: Start) -> None:
    """--lock naming a table that does not exist exits 1 with a cannot_start line that says how to create it."""
    daemon = replica(start_daemon, aws_repo, "no-such-table", "a", ready=False)
    assert daemon.proc.wait(20) == 1
    [event] = daemon.events("cannot_start")
    assert "no-such-table" in event["error"] and "does not exist" in event["error"]


def test_leader_losing_the_lease_mid_apply_stops_before_the_next_action(
    example_repo: SpecRepo, aws: Aws, lock_table: str, start_daemon: Start
) -> None:
    """A leader whose lease is taken during a long apply stops at the next action; the rest waits for the lease."""
    flags = ("--endpoint-url", aws.url, "--region", REGION, "--lock", f"dynamodb://{lock_table}")
    lease = ("--lease-duration", "1", "--lease-renew-interval", "0.25")
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, *flags, *lease, ready=False)
    daemon.wait_applied(example_repo.head(), timeout=20)
    example_repo.write_many_stages(STAGES)
    # Hold the local backend's write lock before the commit lands, so the daemon's first action of it
    # waits while the lease is taken: "lease lost" comes before "apply done" by construction, not by timing.
    cloud = LocalCloud(example_repo.state_dir)
    with cloud.transaction():
        head = example_repo.commit("many stages")
        wait_for(lambda: daemon.status()["attempted_revision"] == head, what="the apply to start")
        take_lease(aws, lock_table)
        wait_for(lambda: daemon.events("lease_lost"), what="the leader to notice")
    cloud.close()
    result = wait_for(
        lambda: next((e for e in daemon.events("reconcile") if e["revision"] == head), None), what="the pass to end"
    )
    assert result["result"] == "failed" and "stopped before all actions" in result["error"]
    assert role(daemon) == "standby"
    assert daemon.metric("reconciler_actions_total", kind="create_stage", result="success") < STAGES


def test_once_applies_only_with_the_lease(aws: Aws, aws_repo: AwsRepo, lock_table: str) -> None:
    """``run --once --lock`` applies nothing while another replica holds the lease, and applies once it is free."""
    argv = [sys.executable, "-m", "reconciler", "run", "--once", "--repo", aws_repo.path.as_uri()]
    argv += ["--state-dir", str(aws_repo.state_dir), "--backend", "aws", "--endpoint-url", aws.url]
    argv += ["--region", REGION, "--lock", f"dynamodb://{lock_table}", "--log-format", "json"]
    table = take_lease(aws, lock_table)
    held = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert held.returncode == 0 and '"event": "standby"' in held.stderr
    assert "orders" not in [api["name"] for api in aws.apigateway.get_rest_apis()["items"]]
    table.delete_item(TableName=lock_table, Key={"id": {"S": "reconciler/default"}})
    free = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert free.returncode == 0, free.stderr
    assert aws.alias("orders-handler", "prod")["FunctionVersion"] == "1"
