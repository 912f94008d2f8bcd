"""The daemon as a user runs it: a real process on a real git repository, driven by git and HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.backends.local import LocalCloud
from tests.daemon.conftest import SECRET, Daemon, set_prod_routing, wait_for
from tests.support import SpecRepo

pytestmark = pytest.mark.daemon

PROD = "orders-handler/prod"
STAGES = 50  # many more than the one action in flight when SIGTERM arrives


def prod_routing(daemon: Daemon) -> dict[str, float]:
    routing: dict[str, float] = daemon.status()["aliases"][PROD]["routing"]
    return routing


def reconciled_revisions(daemon: Daemon) -> set[str]:
    return {e["revision"] for e in daemon.events("reconcile")}


@pytest.mark.parametrize("how", ["--no-ff", "--ff-only"], ids=["merge-commit", "fast-forward"])
def test_merge_to_the_branch_deploys(example_repo: SpecRepo, running: Daemon, how: str) -> None:
    """A pull request merged into main (merge commit or fast-forward) is applied without any command."""
    example_repo.git("checkout", "-q", "-b", "feature")
    set_prod_routing(example_repo, 'routing: {"1": 50, "2": 50}')
    example_repo.commit("prod: half on version 2")
    example_repo.git("checkout", "-q", "main")
    example_repo.git("merge", "-q", how, "-m", "Merge pull request #1", "feature")
    status = running.wait_applied(example_repo.head())
    assert status["aliases"][PROD]["routing"] == {"1": 50, "2": 50}


def test_commit_on_another_branch_is_ignored(example_repo: SpecRepo, running: Daemon) -> None:
    """A commit on an unmerged branch is never reconciled, even while it is checked out."""
    example_repo.git("checkout", "-q", "-b", "feature")
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    unmerged = example_repo.commit("prod: all on version 2")
    example_repo.git("checkout", "-q", "main")
    example_repo.write("README.md", "docs only\n")
    later = example_repo.commit("docs")  # a later event on main: once it is applied, the feature event was seen
    running.wait_applied(later)
    assert unmerged not in reconciled_revisions(running)
    assert prod_routing(running) == {"1": 95, "2": 5}


def test_reset_hard_applies_the_older_commit(example_repo: SpecRepo, running: Daemon) -> None:
    """Moving the branch back with ``git reset --hard`` puts live state back too."""
    first = example_repo.head()
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    running.wait_applied(example_repo.commit("prod: all on version 2"))
    example_repo.git("reset", "-q", "--hard", "HEAD~1")
    status = running.wait_applied(first)
    assert status["aliases"][PROD]["routing"] == {"1": 95, "2": 5}


def test_invalid_commit_keeps_last_state_and_next_good_commit_applies(example_repo: SpecRepo, running: Daemon) -> None:
    """An invalid commit is reported and skipped; the daemon lives on and applies the fix."""
    good = example_repo.head()
    set_prod_routing(example_repo, 'routing: {"1": 95, "2": 4}')
    bad = example_repo.commit("broken routing")
    status = wait_for(lambda: (s := running.status())["attempted_revision"] == bad and s, what="the bad commit")
    assert status["applied_revision"] == good and "sum" in status["last_error"]
    wait_for(lambda: running.metric("reconciler_reconciles_total", result="invalid") == 1, what="counted invalid")
    set_prod_routing(example_repo, 'routing: {"1": 90, "2": 10}')
    status = running.wait_applied(example_repo.commit("fixed routing"))
    assert running.proc.poll() is None
    assert status["last_error"] is None and status["aliases"][PROD]["routing"] == {"1": 90, "2": 10}


def test_drift_is_detected_counted_and_corrected(example_repo: SpecRepo, start_daemon: Callable[..., Daemon]) -> None:
    """A change made outside git (a console click) is put back at the next resync."""
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, "--resync-interval", "0.2")
    daemon.wait_applied(example_repo.head())
    cloud = LocalCloud(example_repo.state_dir)
    cloud.update_alias("orders-handler", "prod", "1", {}, "clicked in the console")
    cloud.close()
    wait_for(lambda: daemon.metric("reconciler_drift_total") >= 1, what="drift found (/status shows the last pass's)")
    wait_for(lambda: prod_routing(daemon) == {"1": 95, "2": 5}, what="drift corrected")
    assert daemon.status()["sync"] == "synced"
    assert [e["resources"] for e in daemon.events("drift")] == [["Alias/orders-handler/prod"]]


def test_drift_is_only_reported_without_self_heal(example_repo: SpecRepo, start_daemon: Callable[..., Daemon]) -> None:
    """With --no-self-heal drift is counted and shown in /status, and live state is left alone."""
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, "--resync-interval", "0.2", "--no-self-heal")
    daemon.wait_applied(example_repo.head())
    cloud = LocalCloud(example_repo.state_dir)
    cloud.update_alias("orders-handler", "prod", "1", {}, "clicked in the console")
    cloud.close()
    wait_for(lambda: daemon.metric("reconciler_drift_total") >= 2, what="drift seen twice")
    status = daemon.status()
    assert status["daemon"]["drift"] == ["Alias/orders-handler/prod"]
    assert status["aliases"][PROD]["routing"] == {"1": 100}


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def remote(example_repo: SpecRepo, start_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon following the example repository through a file:// URL, fetching only on webhooks."""
    daemon = start_daemon(example_repo.path.as_uri(), example_repo.state_dir, "--interval", "3600")
    daemon.wait_applied(example_repo.head())
    return daemon


def test_webhook_with_valid_signature_fetches_and_applies(example_repo: SpecRepo, remote: Daemon) -> None:
    """A signed GitHub push webhook makes the daemon fetch the remote at once and apply the new head."""
    set_prod_routing(example_repo, 'routing: {"1": 80, "2": 20}')
    head = example_repo.commit("prod: 20 % on version 2")
    body = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()  # payload content is never trusted
    code, _ = remote.request(
        "/hooks/git", body, {"X-Hub-Signature-256": sign(body), "X-GitHub-Event": "push", "Content-Type": "x"}
    )
    assert code == 202
    status = remote.wait_applied(head)
    assert status["aliases"][PROD]["routing"] == {"1": 80, "2": 20}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Hub-Signature-256": "sha256=" + "0" * 64}, id="forged-signature"),
        pytest.param({}, id="missing-signature"),
        pytest.param({"X-Reconciler-Token": "guess"}, id="wrong-token"),
    ],
)
def test_webhook_without_valid_signature_gets_401_and_triggers_nothing(remote: Daemon, headers: dict[str, str]) -> None:
    """A forged, missing or wrong webhook credential is refused and does not trigger a fetch."""
    fetches = remote.metric("reconciler_fetches_total", result="success")
    code, _ = remote.request("/hooks/git", b'{"ref": "refs/heads/main"}', headers)
    assert code == 401
    assert remote.metric("reconciler_triggers_total", source="webhook") == 0
    assert remote.metric("reconciler_webhooks_total", result="rejected") == 1
    assert remote.metric("reconciler_fetches_total", result="success") == fetches


def test_remote_repository_is_fetched_every_interval(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """Commits pushed to a remote repository are applied at the next interval fetches, no webhook needed."""
    daemon = start_daemon(example_repo.path.as_uri(), example_repo.state_dir, "--interval", "0.2")
    daemon.wait_applied(example_repo.head())
    heads = []
    for routing in ('routing: {"2": 100}', 'routing: {"1": 50, "2": 50}'):
        set_prod_routing(example_repo, routing)
        heads.append(example_repo.commit(f"prod: {routing}"))
        daemon.wait_applied(heads[-1])
    # the record says "applied" before the tag is made and the pass logged: wait for the log line too
    passes = wait_for(
        lambda: (
            (p := {e["revision"]: e.get("trigger", "") for e in daemon.events("reconcile")}).keys() >= set(heads) and p
        ),
        what="both passes logged",
    )
    assert all("fetch" in passes[head] for head in heads), passes
    assert daemon.metric("reconciler_triggers_total", source="fetch") >= 2
    assert daemon.metric("reconciler_fetches_total", result="success") >= 3  # the clone, then each interval
    assert daemon.metric("reconciler_triggers_total", source="webhook") == 0


def test_unreachable_remote_is_retried_until_it_answers(tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    """A remote that fails to clone keeps the daemon alive but not ready; backoff retries until it works."""
    path = tmp_path / "later"  # nothing to clone yet
    daemon = start_daemon(path.as_uri(), tmp_path / "state", ready=False)
    wait_for(lambda: len(daemon.events("retry_scheduled")) >= 2, what="a clone failed twice")
    assert daemon.request("/healthz")[0] == 200 and daemon.request("/readyz")[0] == 503
    origin = SpecRepo(path, state_dir=tmp_path / "state")
    origin.copy_example()
    origin.commit("example specs")
    origin.publish("orders-handler", times=2)
    wait_for(lambda: daemon.request("/readyz")[0] == 200, timeout=15, what="ready after a retry")
    assert daemon.status()["applied_revision"] == origin.head()
    delays = [e["retry_in_s"] for e in daemon.events("retry_scheduled")]
    assert len(delays) >= 2
    assert all(full / 2 <= delay <= full for delay, full in zip(delays, [1.0, 2.0, 4.0, 8.0], strict=False))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_daemon_with_exit_0(running: Daemon, sig: signal.Signals) -> None:
    """SIGTERM or SIGINT stops the daemon cleanly, with exit status 0, well within 10 s."""
    assert running.stop(sig, timeout=10) == 0
    assert running.events("stopped")[-1]["clean"] is True


def test_second_daemon_on_the_same_state_is_refused(
    example_repo: SpecRepo, running: Daemon, start_daemon: Callable[..., Daemon]
) -> None:
    """A second daemon on a state directory in use exits at once, saying who holds it."""
    second = start_daemon(str(example_repo.path), example_repo.state_dir, ready=False)
    assert second.proc.wait(10) == 1
    assert "another daemon already runs on the state directory" in second.log_text()
    assert running.request("/healthz")[0] == 200


def test_once_reconciles_and_exits(example_repo: SpecRepo) -> None:
    """``run --once`` applies the branch head and exits 0, for cron-style use."""
    argv = [sys.executable, "-m", "reconciler", "run", "--once", "--repo", str(example_repo.path)]
    done = subprocess.run([*argv, "--state-dir", str(example_repo.state_dir)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert example_repo.cli_json("status")["applied_revision"] == example_repo.head()


def test_metrics_describe_the_deploy(example_repo: SpecRepo, running: Daemon) -> None:
    """After a deploy /metrics has the reconcile, its actions, commit-to-applied time and the revision."""
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    head = example_repo.commit("prod: all on version 2")
    running.wait_applied(head)
    wait_for(lambda: running.metric("reconciler_commit_to_applied_seconds_count") == 1, what="the latency observed")
    assert running.metric("reconciler_reconciles_total", result="success") == 2
    assert running.metric("reconciler_actions_total", kind="update_alias", result="success") == 1
    assert running.metric("reconciler_applied_revision_info", revision=head) == 1
    assert running.metric("reconciler_last_success_timestamp_seconds") > 0


def test_status_endpoint_is_the_status_command_plus_role(example_repo: SpecRepo, running: Daemon) -> None:
    """/status carries the same document as ``reconciler status --output json`` and "role": "leader"."""
    over_http = running.status()
    assert over_http.pop("role") == "leader"
    over_http.pop("daemon")
    assert over_http == example_repo.cli_json("status")


def test_logs_are_json_lines_that_name_each_reconcile_and_hide_secrets(example_repo: SpecRepo, remote: Daemon) -> None:
    """Every log line is JSON; a reconcile names revision, plan size, duration, result; no secret appears."""
    body = b"{}"
    remote.request("/hooks/git", body, {"X-Hub-Signature-256": sign(body)})
    remote.request("/hooks/git", body, {"X-Reconciler-Token": SECRET[:-1] + "x"})
    wait_for(lambda: remote.events("webhook_rejected"), what="the rejected webhook logged")
    reconcile = remote.events("reconcile")[0]
    assert {"revision", "actions", "duration_ms", "result"} <= set(reconcile)
    assert SECRET not in remote.log_text()


def test_push_tags_pushes_each_applied_tag_to_the_remote(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """With --push-tags the applied tag of a remote repository's commit appears on the remote."""
    daemon = start_daemon(example_repo.path.as_uri(), example_repo.state_dir, "--push-tags")
    daemon.wait_applied(example_repo.head())
    tags = wait_for(lambda: example_repo.git("tag", "--list", "applied/*"), what="the tag on the remote")
    assert tags == "applied/default/1"
    assert example_repo.git("rev-parse", "applied/default/1^{commit}") == example_repo.head()


def cli_beside_daemon(repo: SpecRepo, *args: str) -> None:
    """Run a writing CLI command; if it met the daemon mid-pass (the state is locked), run it again."""
    wait_for(lambda: repo.cli(*args).code == 0, what=f"reconciler {' '.join(args)}")


def test_rollback_and_resume_work_beside_the_running_daemon(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """``rollback`` pins the running daemon to the older commit; ``resume`` makes it follow the branch again."""
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, "-v")
    first = example_repo.head()
    daemon.wait_applied(first)
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    daemon.wait_applied(example_repo.commit("prod: all on version 2"))
    cli_beside_daemon(example_repo, "rollback")
    assert daemon.wait_applied(first)["pinned"]["revision"] == first
    wait_for(lambda: any(e["revision"] == first for e in daemon.events("in_sync")), what="the daemon to take the pin")
    set_prod_routing(example_repo, 'routing: {"1": 10, "2": 90}')
    newer = example_repo.commit("prod: 90 % on version 2")
    wait_for(
        lambda: any("git" in e["trigger"] for e in daemon.events("no_new_revision") if e["revision"] == first),
        what="the pinned daemon to see the commit and stay",
    )
    assert prod_routing(daemon) == {"1": 95, "2": 5}
    cli_beside_daemon(example_repo, "resume")
    assert daemon.wait_applied(newer)["aliases"][PROD]["routing"] == {"1": 10, "2": 90}


def test_restart_applies_nothing_and_reports_the_applied_revision(
    example_repo: SpecRepo, running: Daemon, start_daemon: Callable[..., Daemon]
) -> None:
    """A restarted daemon finds live state in sync: no action, no new tag, and /metrics names the revision."""
    assert running.stop() == 0
    again = start_daemon(str(example_repo.path), example_repo.state_dir)
    assert again.metric("reconciler_reconciles_total", result="noop") == 1
    assert again.metric("reconciler_reconciles_total", result="success") == 0
    assert again.metric("reconciler_applied_revision_info", revision=example_repo.head()) == 1
    assert example_repo.git("tag", "--list", "applied/*").split() == ["applied/default/1"]


def test_sigterm_mid_plan_finishes_the_action_in_flight_and_the_next_start_converges(
    example_repo: SpecRepo, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    """SIGTERM during an apply lets the action in flight finish, stops before the next, exits 0; a restart applies
    the rest."""
    first = example_repo.head()
    example_repo.cli_json("apply")  # applied before the daemon starts: its only failpoint stop is the test's pass
    env = {**os.environ, "RECONCILER_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    env["RECONCILER_FAILPOINTS"] = "before_action=stop"  # SIGSTOPs itself past the stop check, before apply
    daemon = Daemon(str(example_repo.path), example_repo.state_dir, tmp_path / "stopped.log", env=env)
    try:
        daemon.wait_ready()
        daemon.wait_applied(first)
        example_repo.write_many_stages(STAGES)
        # By construction, not timing: the daemon stops itself at its first action (waitpid, no polling), gets
        # SIGTERM while stopped, and that action then waits on the backend's write lock, held here until the
        # daemon has taken the signal: exactly one action is in flight when it does.
        cloud = LocalCloud(example_repo.state_dir)
        with cloud.transaction():
            head = example_repo.commit("many stages")
            _, status = os.waitpid(daemon.proc.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status), status
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.send_signal(signal.SIGCONT)
            wait_for(lambda: daemon.events("stopping"), what="the daemon to stop taking triggers")
        cloud.close()
        assert daemon.proc.wait(10) == 0
        assert daemon.events("stopped")[-1]["clean"] is True
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(5)
    status = example_repo.cli_json("status")
    assert status["applied_revision"] == first and "stopped before all actions" in status["last_error"]
    assert len(status["stages"]) == 5 + 1  # the action in flight, and not one more
    again = start_daemon(str(example_repo.path), example_repo.state_dir)
    assert len(again.wait_applied(head, timeout=30)["stages"]) == 5 + STAGES


def test_run_outside_a_git_repository_exits_1_saying_why(tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    """Started on a folder that is no git repository, the daemon exits 1 with one log line naming the problem."""
    (tmp_path / "plain").mkdir()
    daemon = start_daemon(str(tmp_path / "plain"), tmp_path / "state", ready=False)
    assert daemon.proc.wait(10) == 1
    [event] = daemon.events()
    assert event["event"] == "cannot_start" and "is not inside a git repository" in event["error"]
