"""The daemon notifies: its passes, through --notify sinks, to real local HTTP stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import parsed_run
from reconciler.daemon import Daemon
from reconciler.errors import UsageError
from reconciler.notify import NotifyConfig
from tests.httpsink import stand_in
from tests.support import SpecRepo

SECRET = "notify-secret-31aa"
TOKEN = "ghp_daemon-token-77c0"


def once(repo: SpecRepo, notify: NotifyConfig) -> Daemon:
    config, settings = parsed_run(["--once", "--repo", str(repo.path), "--state-dir", str(repo.state_dir)])
    return Daemon(config, settings, notify=notify)


def test_run_once_posts_pending_then_success_on_the_applied_commit(
    example_repo: SpecRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --once` with --notify github: pending, then success with the tag, on the commit, before it exits."""
    monkeypatch.setenv("RECONCILER_GITHUB_TOKEN", TOKEN)
    example_repo.git("remote", "add", "origin", "git@github.com:acme/orders.git")
    with stand_in() as api:
        daemon = once(example_repo, NotifyConfig(("github",), github_api_url=api.url))
        assert daemon.run() == 0
        statuses = api.delivered()
    head = example_repo.head()
    assert [(r.path, r.json["state"]) for r in statuses] == [
        (f"/repos/acme/orders/statuses/{head}", "pending"),
        (f"/repos/acme/orders/statuses/{head}", "success"),
    ]
    assert statuses[1].json["context"] == "reconciler/default"
    assert "applied/default/1" in statuses[1].json["description"]
    assert statuses[1].headers["authorization"] == f"Bearer {TOKEN}"


def test_github_without_a_github_remote_stops_the_start(
    example_repo: SpecRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--notify github on a checkout whose origin is not on GitHub is refused at start, naming --notify."""
    monkeypatch.setenv("RECONCILER_GITHUB_TOKEN", TOKEN)
    with pytest.raises(UsageError, match=r"^--notify github: the repository's remote"):
        once(example_repo, NotifyConfig(("github",)))


def test_the_daemon_counts_deliveries(example_repo: SpecRepo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """reconciler_notifications_total{sink, result} counts what was delivered."""
    monkeypatch.setenv("RECONCILER_NOTIFY_SECRET", SECRET)
    with stand_in() as server:
        daemon = once(example_repo, NotifyConfig((f"webhook:{server.url}/hook",)))
        assert daemon.run() == 0
        [got] = server.delivered()
    assert got.json["event"] == "applied" and got.json["revision"] == example_repo.head()
    text = daemon.metrics_text()[0].decode()
    assert 'reconciler_notifications_total{result="success",sink="webhook"} 1.0' in text
    assert 'reconciler_notifications_total{result="dropped",sink="webhook"} 0.0' in text
