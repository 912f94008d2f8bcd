"""The daemon's ``/status`` on the aws backend (moto) answers from the worker's kept state: the same document
as ``reconciler status --output json``, which reads AWS afresh, after applies that change stage settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.aws.conftest import REGION, AwsRepo
from tests.aws.test_stage_settings_moto import SETTINGS, _settings
from tests.daemon.conftest import Daemon, start_daemon, wait_for
from tests.daemon.test_status_snapshot import _without_daemon_keys

pytestmark = [pytest.mark.aws, pytest.mark.daemon]
__all__ = ["start_daemon"]  # the daemon fixture, shared with tests/daemon


def same_as_cli(daemon: Daemon, repo: AwsRepo, what: str) -> None:
    last: list[object] = []

    def same() -> bool:
        over_http, cli = _without_daemon_keys(daemon.status()), repo.aws_json("status")
        last[:] = [over_http, cli]
        return over_http == cli

    try:
        wait_for(same, 30, what)
    except AssertionError:
        over_http, cli = last
        assert isinstance(over_http, dict) and isinstance(cli, dict)
        keys = over_http.keys() | cli.keys()
        diff = {k: (over_http.get(k), cli.get(k)) for k in keys if over_http.get(k) != cli.get(k)}
        raise AssertionError(f"{what}: /status and `status --output json` differ: {diff}") from None


def test_status_on_aws_equals_the_status_command_after_settings_change(
    aws_repo: AwsRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """Settings (tags, tracing, method settings) applied by the daemon show in /status as a fresh read shows
    them, though /status made no AWS call: the backend's own writes keep its state."""
    flags = ("--backend", "aws", "--endpoint-url", aws_repo.url, "--region", REGION, "--resync-interval", "3600")
    daemon = start_daemon(str(aws_repo.path), aws_repo.state_dir, *flags)
    daemon.wait_applied(aws_repo.head(), timeout=30)
    same_as_cli(daemon, aws_repo, "first apply")
    _settings(aws_repo, SETTINGS)
    daemon.wait_applied(aws_repo.commit("prod settings"), timeout=30)
    same_as_cli(daemon, aws_repo, "settings applied")
    changed = SETTINGS.replace("tracingEnabled: true", "tracingEnabled: false").replace("payments", "billing")
    _settings(aws_repo, changed)
    daemon.wait_applied(aws_repo.commit("prod: tracing off, another team"), timeout=30)
    same_as_cli(daemon, aws_repo, "settings changed")
    assert daemon.status()["stages"]["orders/prod"]["tags"] == {"team": "billing"}
