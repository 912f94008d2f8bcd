"""The daemon notifies: its passes, through --notify sinks, to real local HTTP stand-ins."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.backends.local import LocalCloud
from reconciler.cli import parsed_run
from reconciler.daemon import Daemon
from reconciler.errors import UsageError
from reconciler.sinks import split_values
from tests.daemon.conftest import Daemon as DaemonProcess
from tests.daemon.conftest import set_prod_routing, wait_for
from tests.httpsink import Answer, StandIn, stand_in
from tests.support import SpecRepo
from tests.test_notify import readme_verify
from tests.test_rollout_engine import ALIAS, alias_spec
from tests.test_specs import BASE

SECRET = "notify-secret-31aa"
TOKEN = "ghp_daemon-token-77c0"


def once(repo: SpecRepo, *flags: str) -> Daemon:
    config, settings = parsed_run(["--once", "--repo", str(repo.path), "--state-dir", str(repo.state_dir), *flags])
    return Daemon(config, settings)


def test_run_once_posts_pending_then_success_on_the_applied_commit(
    example_repo: SpecRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --once` with --notify github: pending, then success with the tag, on the commit, before it exits."""
    monkeypatch.setenv("RECONCILER_GITHUB_TOKEN", TOKEN)
    example_repo.git("remote", "add", "origin", "git@github.com:acme/orders.git")
    with stand_in() as api:
        daemon = once(example_repo, "--notify", "github", "--github-api-url", api.url)
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
        once(example_repo, "--notify", "github")


def test_the_daemon_counts_deliveries(example_repo: SpecRepo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """reconciler_notifications_total{sink, result} counts what was delivered."""
    monkeypatch.setenv("RECONCILER_NOTIFY_SECRET", SECRET)
    with stand_in() as server:
        daemon = once(example_repo, "--notify", f"webhook:{server.url}/hook")
        assert daemon.run() == 0
        [got] = server.delivered()
    assert got.json["event"] == "applied" and got.json["revision"] == example_repo.head()
    text = daemon.http.metrics_text()[0].decode()
    assert 'reconciler_notifications_total{result="success",sink="webhook"} 1.0' in text
    assert 'reconciler_notifications_total{result="dropped",sink="webhook"} 0.0' in text


# ------------------------------------------------------ the daemon as a process


@pytest.fixture
def notify_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secret and token for the daemon processes (start_daemon copies the environment when it starts one)."""
    monkeypatch.setenv("RECONCILER_NOTIFY_SECRET", SECRET)
    monkeypatch.setenv("RECONCILER_GITHUB_TOKEN", TOKEN)


def events_of(server: StandIn) -> list[tuple[str, str | None]]:
    return [(r.json["event"], r.json["revision"]) for r in server.delivered()]


def test_an_invalid_commit_is_one_invalid_however_often_resyncs_reread_it(
    example_repo: SpecRepo, notify_env: None, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """Resyncs re-read an invalid commit many times; the webhook hears `invalid` once, GitHub gets one `error`."""
    example_repo.git("remote", "add", "origin", "https://github.com/acme/orders.git")
    with stand_in() as hook, stand_in() as api:
        daemon = start_daemon(
            str(example_repo.path),
            example_repo.state_dir,
            *("--resync-interval", "0.2", "--notify", f"webhook:{hook.url}", "--notify", "github"),
            *("--github-api-url", api.url),
        )
        good = example_repo.head()
        daemon.wait_applied(good)
        set_prod_routing(example_repo, 'routing: {"1": 95, "2": 4}')
        bad = example_repo.commit("broken routing")
        wait_for(lambda: sum(e["revision"] == bad for e in daemon.events("reconcile")) >= 5, what="five re-reads")
        wait_for(lambda: ("invalid", bad) in events_of(hook), what="the invalid event")
        wait_for(lambda: len(api.delivered()) >= 4, what="the statuses")
        time.sleep(0.5)  # more resyncs: a second notification, if any, would come now
        assert events_of(hook) == [("applied", good), ("invalid", bad)]
        statuses = [(r.path.rsplit("/", 1)[1], r.json["state"]) for r in api.delivered()]
    assert statuses == [(good, "pending"), (good, "success"), (bad, "pending"), (bad, "error")]
    assert verify_all(hook)


def test_github_status_success_on_the_applied_commit(
    example_repo: SpecRepo, notify_env: None, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """A merged commit gets `success` as reconciler/<instance>, with the token, the tag and --status-url."""
    example_repo.git("remote", "add", "origin", "git@github.com:acme/orders.git")
    with stand_in() as api:
        daemon = start_daemon(
            str(example_repo.path),
            example_repo.state_dir,
            *("--instance", "prod-eu", "--notify", "github", "--github-api-url", api.url),
            *("--status-url", "https://grafana.example.com/d/reconciler"),
        )
        daemon.wait_applied(example_repo.head())
        set_prod_routing(example_repo, 'routing: {"1": 50, "2": 50}')
        second = example_repo.commit("prod: half on version 2")
        daemon.wait_applied(second)
        wait_for(lambda: len(api.delivered()) >= 4, what="four statuses")
        last = api.delivered()[-1]
    assert last.path == f"/repos/acme/orders/statuses/{second}"
    assert last.json == {
        "state": "success",
        "context": "reconciler/prod-eu",
        "description": f"applied {second[:12]} as applied/prod-eu/2 (1 action)",
        "target_url": "https://grafana.example.com/d/reconciler",
    }
    assert last.headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in daemon.log_text()


def test_a_dead_sink_never_delays_applying(
    example_repo: SpecRepo, notify_env: None, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """With a webhook and a Slack URL that never answer, commits are applied while their requests still hang."""
    with stand_in(default=Answer(hang=True)) as dead:
        daemon = start_daemon(
            str(example_repo.path),
            example_repo.state_dir,
            *("--notify", f"webhook:{dead.url}/hook", "--notify", f"slack:{dead.url}/services/T/B/X"),
        )
        daemon.wait_applied(example_repo.head())
        for routing in (
            '{"1": 50, "2": 50}',
            '{"2": 100}',
            '{"1": 10, "2": 90}',
        ):  # no rollout: not one version to another
            set_prod_routing(example_repo, f"routing: {routing}")
            daemon.wait_applied(example_repo.commit(f"prod: {routing}"))
        assert dead.arrived >= 2 and not dead.answered()  # both sinks' first requests are still hanging
        assert daemon.stop() == 0  # and SIGTERM still ends it (within stop()'s 10 s)
    lags = [e["commit_to_applied_s"] for e in daemon.events("applied")][-3:]  # the three commits, after start-up
    assert len(lags) == 3 and max(lags) < 10  # generous: git times have 1 s resolution


def test_pin_and_resume_by_the_cli_are_told_once_by_the_daemon(
    example_repo: SpecRepo, notify_env: None, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """`reconciler rollback` and `resume` beside the daemon: the webhook hears pinned, then resumed, once each."""
    with stand_in() as hook:
        daemon = start_daemon(str(example_repo.path), example_repo.state_dir, "--notify", f"webhook:{hook.url}")
        first = example_repo.head()
        daemon.wait_applied(first)
        set_prod_routing(example_repo, 'routing: {"2": 100}')
        second = example_repo.commit("prod: all on version 2")
        daemon.wait_applied(second)
        assert example_repo.cli("rollback").code == 0
        wait_for(lambda: ("pinned", first) in events_of(hook), what="pinned")
        assert example_repo.cli("resume").code == 0
        daemon.wait_applied(second)
        wait_for(lambda: ("resumed", first) in events_of(hook), what="resumed")
        time.sleep(0.3)
        told = events_of(hook)
    assert told == [("applied", first), ("applied", second), ("pinned", first), ("resumed", first), ("applied", second)]
    pinned = next(r.json for r in hook.delivered() if r.json["event"] == "pinned")
    assert pinned["tag"] == "applied/default/1"


def test_drift_corrected_is_told_once_per_episode(
    example_repo: SpecRepo, notify_env: None, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """A console change put back by self-heal is one drift_corrected; later in-sync resyncs add nothing."""
    with stand_in() as hook:
        daemon = start_daemon(
            str(example_repo.path),
            example_repo.state_dir,
            "--resync-interval",
            "0.2",
            "--notify",
            f"webhook:{hook.url}",
        )
        daemon.wait_applied(example_repo.head())
        wait_for(lambda: events_of(hook), what="the applied event")
        cloud = LocalCloud(example_repo.state_dir)
        cloud.update_alias("orders-handler", "prod", "1", {}, "clicked in the console")
        cloud.close()
        wait_for(lambda: daemon.events("drift"), what="the drift")
        checks = len(daemon.events("in_sync"))
        wait_for(lambda: len(daemon.events("in_sync")) >= checks + 3, what="three in-sync resyncs after it")
        applied, event = [r.json for r in hook.delivered()]
    assert applied["event"] == "applied"
    assert event["event"] == "drift_corrected" and event["actions"] == [
        {"action": "update_alias", "resource": "Alias/orders-handler/prod"}
    ]


def test_an_unknown_sink_stops_the_start_with_one_line(example_repo: SpecRepo, tmp_path: Path) -> None:
    """`run --notify teams:…` exits 1 at once with one line naming --notify."""
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "--repo", str(example_repo.path), "--notify", "teams:https://x"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")},
    )
    assert done.returncode == 1
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "--notify teams: unknown sink" in lines[0]


def verify_all(server: StandIn) -> bool:
    verify = readme_verify()
    return all(verify(SECRET.encode(), r.headers["x-reconciler-signature"], r.body) for r in server.delivered())


def test_notify_from_the_environment_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECONCILER_NOTIFY lists several sinks, comma-separated, as repeated --notify flags do."""
    monkeypatch.setenv(
        "RECONCILER_NOTIFY", "slack:https://hooks.slack.com/services/T/B/X,webhook:https://ops.example.com/h"
    )
    _, settings = parsed_run(["--repo", "."])
    assert split_values(settings.notify) == [
        "slack:https://hooks.slack.com/services/T/B/X",
        "webhook:https://ops.example.com/h",
    ]
    _, flags = parsed_run(["--repo", ".", "--notify", "github", "--notify", "webhook:https://ops.example.com/h"])
    assert flags.notify == ("github", "webhook:https://ops.example.com/h")


def test_run_help_does_not_show_a_slack_url_from_the_environment() -> None:
    """`run --help` names RECONCILER_NOTIFY and says it is set, without printing the URL (its path is the secret)."""
    env = {**os.environ, "RECONCILER_NOTIFY": "slack:https://hooks.slack.com/services/T/B/HELPSECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "--help"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and "--notify" in done.stdout and "RECONCILER_NOTIFY" in done.stdout
    assert "HELPSECRET" not in done.stdout + done.stderr


def test_a_restarted_daemon_does_not_repeat_what_it_said(
    example_repo: SpecRepo, notify_env: None, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """`invalid` said, the daemon restarted, the commit re-read: nothing again; the fix is then `recovered`."""
    with stand_in() as hook:
        flags = ("--resync-interval", "0.2", "--notify", f"webhook:{hook.url}")
        daemon = start_daemon(str(example_repo.path), example_repo.state_dir, *flags)
        daemon.wait_applied(example_repo.head())
        set_prod_routing(example_repo, 'routing: {"1": 95, "2": 4}')
        bad = example_repo.commit("broken routing")
        wait_for(lambda: ("invalid", bad) in events_of(hook), what="the invalid event")
        assert daemon.stop() == 0
        again = start_daemon(str(example_repo.path), example_repo.state_dir, *flags)
        wait_for(lambda: sum(e["revision"] == bad for e in again.events("reconcile")) >= 3, what="three re-reads")
        set_prod_routing(example_repo, 'routing: {"1": 90, "2": 10}')
        fixed = example_repo.commit("fixed routing")
        again.wait_applied(fixed)
        wait_for(lambda: ("recovered", fixed) in events_of(hook), what="recovered")
        told = events_of(hook)
    assert told == [("applied", told[0][1]), ("invalid", bad), ("recovered", fixed)]


def test_a_rollout_is_told_step_by_step_and_the_commit_is_applied_at_its_end(
    repo: SpecRepo, notify_env: None, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """Webhook: rollout_started, its steps, rollout_succeeded, then applied with the tag; GitHub: pending until then."""
    for path, text in BASE.items():
        repo.write(path, text)
    repo.git("remote", "add", "origin", "https://github.com/acme/orders")
    base = repo.commit("base")
    repo.publish("orders-handler", 2)
    with stand_in() as hook, stand_in() as api:
        flags = ("--notify", f"webhook:{hook.url}", "--notify", "github", "--github-api-url", api.url)
        daemon = start_daemon(str(repo.path), repo.state_dir, *flags)
        daemon.wait_applied(base)
        steps = "[{setWeight: 10}, {pause: {duration: 1s}}, {setWeight: 50}]"
        repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {steps}\n"))
        target = repo.commit("version 2, rolled out")
        daemon.wait_applied(target, timeout=20)
        wait_for(lambda: events_of(hook)[-1:] == [("applied", target)], what="applied at the end")
        told = [r.json for r in hook.delivered()]
        statuses = [r.json for r in api.delivered() if r.path.endswith(target)]
    names = [e["event"] for e in told]
    assert names[0] == "applied" and names[1] == "rollout_started" and names[-2:] == ["rollout_succeeded", "applied"]
    assert set(names[2:-2]) == {"rollout_step"}
    assert all(e["resource"] == ALIAS for e in told[1:-1])
    assert told[-1]["tag"] == "applied/default/2"
    assert [s["state"] for s in statuses] == ["pending"] * (len(statuses) - 1) + ["success"]
    assert any("rollout of Alias/orders-handler/prod" in s["description"] for s in statuses)


def test_a_failed_rollout_is_told_once_with_the_commit_failed_once(
    repo: SpecRepo, notify_env: None, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """An alarm aborts the rollout: rollout_failed and failed, once each, however often resyncs look again."""
    for path, text in BASE.items():
        repo.write(path, text)
    base = repo.commit("base")
    repo.publish("orders-handler", 2)
    with stand_in() as hook:
        flags = ("--resync-interval", "0.3", "--notify", f"webhook:{hook.url}")
        daemon = start_daemon(str(repo.path), repo.state_dir, *flags)
        daemon.wait_applied(base)
        rollout = "    steps: [{setWeight: 10}, {pause: {}}]\n    analysis: {interval: 1s, alarms: [orders-5xx]}\n"
        repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', rollout))
        target = repo.commit("version 2, watched")
        wait_for(lambda: ("rollout_started", target) in events_of(hook), what="the rollout to start")
        cloud = LocalCloud(repo.state_dir)
        cloud.set_alarm("orders-5xx", "ALARM")
        cloud.close()
        wait_for(lambda: ("failed", target) in events_of(hook), timeout=20, what="the failure")
        passes = len(daemon.events("reconcile"))
        wait_for(lambda: len(daemon.events("reconcile")) >= passes + 3, what="three more passes")
        names = [name for name, _ in events_of(hook)]
    assert names.count("rollout_failed") == 1 and names.count("failed") == 1
    assert names.index("rollout_failed") < names.index("failed")
