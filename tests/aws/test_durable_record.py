"""The instance record in the --lock table (DESIGN §13): a pin made from a laptop survives the leader's death."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.aws.conftest import REGION, Aws, AwsRepo
from tests.aws.test_lease_daemon import PROD_95_5, Start, commit_prod_routing, lock_table, replica, role
from tests.daemon.conftest import start_daemon, wait_for
from tests.support import RECONCILER

pytestmark = [pytest.mark.aws, pytest.mark.daemon]
__all__ = ["lock_table", "start_daemon"]

FAST_LEASE = ("--lease-duration", "3", "--lease-renew-interval", "1")


def laptop(repo: AwsRepo, table: str, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``reconciler <args>`` from a third process with the cluster's flags (its own state dir, its own clone)."""
    argv = [str(RECONCILER), *args, "--repo", repo.path.as_uri(), "--state-dir", str(state)]
    argv += ["--backend", "aws", "--endpoint-url", repo.url, "--region", REGION, "--lock", f"dynamodb://{table}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_AWS_RATE_SCALE"] = os.environ.get("RECONCILER_AWS_RATE_SCALE", "1000")
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def weights(aws: Aws) -> tuple[str, dict[str, float]]:
    alias = aws.alias("orders-handler", "prod")
    return alias["FunctionVersion"], alias.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})


def test_a_pin_made_from_a_third_process_survives_sigkill_of_the_leader(
    aws: Aws, aws_repo: AwsRepo, lock_table: str, start_daemon: Start, tmp_path: Path
) -> None:
    """Leader a applies 2 at 100 %; a laptop rolls back to 95/5 (pinned in DynamoDB); a is killed; standby b
    takes over and keeps the rolled-back weights instead of applying the branch head again."""
    assert PROD_95_5 in (aws_repo.path / "deploy_specs" / "specs.yaml").read_text()
    first = aws_repo.head()
    a = replica(start_daemon, aws_repo, lock_table, "a", *FAST_LEASE)
    a.wait_applied(first, timeout=30)
    head = commit_prod_routing(aws_repo, 'routing: {"2": 100}')
    a.wait_applied(head, timeout=30)
    b = replica(start_daemon, aws_repo, lock_table, "b", *FAST_LEASE)
    assert role(b) == "standby" and weights(aws) == ("2", {})

    rollback = laptop(aws_repo, lock_table, tmp_path / "laptop", "rollback", first)
    assert rollback.returncode == 0, rollback.stderr
    assert weights(aws) == ("1", {"2": 0.05})
    wait_for(lambda: (a.status()["pinned"] or {}).get("revision") == first, timeout=15, what="the leader to see it")

    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(5)
    wait_for(lambda: role(b) == "leader", timeout=20, what="the standby to lead")
    wait_for(lambda: b.events("in_sync") or b.events("reconcile"), timeout=20, what="the new leader's first pass")
    status = b.status()
    assert status["pinned"]["revision"] == first and status["applied_revision"] == first
    assert weights(aws) == ("1", {"2": 0.05})
    assert head not in [e["revision"] for e in b.events("reconcile")]

    resume = laptop(aws_repo, lock_table, tmp_path / "laptop", "resume")
    assert resume.returncode == 0, resume.stderr
    b.wait_applied(head, timeout=20)
    assert weights(aws) == ("2", {})
