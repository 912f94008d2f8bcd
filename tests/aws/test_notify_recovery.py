"""A backend failing for a while, then coming back: one `failed`, then one `recovered`, from the daemon process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.aws.conftest import REGION, AwsRepo
from tests.daemon.conftest import Daemon, wait_for
from tests.httpsink import Switch, stand_in

pytestmark = [pytest.mark.aws, pytest.mark.daemon]

SECRET = "notify-secret-aws-4e02"


def test_a_failure_retried_several_times_is_one_failed_then_one_recovered(aws_repo: AwsRepo, tmp_path: Path) -> None:
    """The AWS endpoint answers 503 for several retries, then works: the webhook hears failed once, recovered once."""
    switch = Switch(aws_repo.url)
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "1", "RECONCILER_NOTIFY_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    with stand_in() as hook:
        flags = ("--backend", "aws", "--endpoint-url", switch.url, "--region", REGION)
        daemon = Daemon(
            str(aws_repo.path),
            aws_repo.state_dir,
            tmp_path / "d.log",
            *flags,
            "--notify",
            f"webhook:{hook.url}",
            env=env,
        )
        try:
            first = aws_repo.head()
            daemon.wait_applied(first, timeout=30)
            switch.up = False
            set_prod_routing_in(aws_repo, 'routing: {"1": 50, "2": 50}')
            second = aws_repo.commit("prod: half on version 2")
            wait_for(lambda: len(daemon.events("retry_scheduled")) >= 3, timeout=30, what="three failed passes")
            switch.up = True
            daemon.wait_applied(second, timeout=30)
            wait_for(lambda: len(hook.delivered()) >= 3, what="three notifications")
            events = [(r.json["event"], r.json["revision"]) for r in hook.delivered()]
        finally:
            daemon.stop()
            switch.stop()
    assert events == [("applied", first), ("failed", second), ("recovered", second)]
    assert switch.refused >= 3


def set_prod_routing_in(repo: AwsRepo, routing: str) -> None:
    """The aws specs keep prod's routing on one line of specs.yaml."""
    path = repo.path / "deploy_specs" / "specs.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace('routing: {"1": 95, "2": 5}', routing), encoding="utf-8")
