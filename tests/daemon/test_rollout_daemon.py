"""Rollouts driven in time by the real daemon (``python -m reconciler run``) on real temporary git repositories.

Durations are a second or two; promote and abort go through the instance
record from this process (as ``reconciler rollout`` does beside a daemon);
alarms are set in the local backend's simulated CloudWatch.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.backends.local import LocalCloud
from reconciler.engine import Config, Engine
from reconciler.rollout import ABORT, PROMOTE, PROMOTE_FULL
from tests.daemon.conftest import Daemon, wait_for
from tests.support import SpecRepo
from tests.test_rollout_engine import ALIAS, STAGE, alias_spec, stage_spec
from tests.test_specs import BASE, OPENAPI

StartDaemon = Callable[..., Daemon]


@pytest.fixture
def base(repo: SpecRepo) -> SpecRepo:
    """Versions 1 and 2 of orders-handler published; alias prod at version 1, stage prod."""
    for path, text in BASE.items():
        repo.write(path, text)
    repo.commit("base")
    repo.publish("orders-handler", 2)
    return repo


def started(base: SpecRepo, start_daemon: StartDaemon) -> Daemon:
    daemon = start_daemon(str(base.path), base.state_dir, "--resync-interval", "3600")
    daemon.wait_applied(base.head())
    return daemon


def routing(daemon: Daemon) -> dict[str, Any]:
    return dict(daemon.status()["aliases"]["orders-handler/prod"]["routing"])


def rollout(daemon: Daemon, resource: str = ALIAS) -> dict[str, Any]:
    found: dict[str, Any] = daemon.status()["rollouts"].get(resource, {})
    return found


def command(repo: SpecRepo, resource: str, what: str) -> None:
    """What ``reconciler rollout promote|abort`` does: leave the command in the instance record."""
    engine = Engine(Config(repo=str(repo.path), state_dir=str(repo.state_dir)))
    try:
        with engine.state.writer_lock("test rollout command", wait=10):
            engine.rollout_command(resource, what)
    finally:
        engine.close()


def wait_phase(daemon: Daemon, phase: str, resource: str = ALIAS, timeout: float = 15.0) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: (r := rollout(daemon, resource)).get("phase") == phase and r, timeout, f"rollout {phase}"
    )
    return result


def test_alias_rollout_runs_to_the_end_in_time(base: SpecRepo, start_daemon: StartDaemon) -> None:
    """10 %, a one-second pause, 50 %, another pause, then 100 % and the tag; events and metrics show it."""
    daemon = started(base, start_daemon)
    steps = "[{setWeight: 10}, {pause: {duration: 1s}}, {setWeight: 50}, {pause: {duration: 1s}}]"
    base.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {steps}\n"))
    target = base.commit("version 2, rolled out")
    wait_for(lambda: routing(daemon) == {"1": 90, "2": 10}, 10, "10 %")
    status = daemon.wait_applied(target, timeout=20)
    assert status["aliases"]["orders-handler/prod"]["routing"] == {"2": 100}
    assert status["rollouts"][ALIAS]["phase"] == "succeeded"
    names = [e["event"] for e in daemon.events() if e["event"].startswith("rollout_")]
    assert names[0] == "rollout_started" and names[-1] == "rollout_succeeded" and "rollout_step" in names
    weights = [e["weight"] for e in daemon.events("rollout_step")]
    assert weights == [10, 10, 50, 50]
    assert daemon.metric("reconciler_rollout_weight", resource=ALIAS) == 100
    assert daemon.metric("reconciler_rollout_phase", resource=ALIAS, phase="succeeded") == 1
    assert daemon.stop() == 0


def test_stage_rollout_through_the_canary(base: SpecRepo, start_daemon: StartDaemon) -> None:
    """A stage's new definition goes out as its canary, then is promoted."""
    daemon = started(base, start_daemon)
    before = daemon.status()["stages"]["orders/prod"]["deployment_id"]
    base.write("deploy_specs/stages.yaml", stage_spec("    steps: [{setWeight: 20}, {pause: {duration: 1s}}]\n"))
    base.write("deploy_specs/openapi.yaml", OPENAPI.replace('version: "1"', 'version: "2"'))
    target = base.commit("definition 2, through the canary")
    canary = wait_for(lambda: daemon.status()["stages"]["orders/prod"]["canary"], 10, "the canary")
    assert canary["percentTraffic"] == 20.0 and canary["deployment_id"] != before
    stage = daemon.wait_applied(target, timeout=20)["stages"]["orders/prod"]
    assert stage["deployment_id"] == canary["deployment_id"] and stage["canary"] is None


@pytest.mark.parametrize(
    ("on_failure", "phase", "after"), [("rollback", "failed", {"1": 100}), ("halt", "halted", {"1": 90, "2": 10})]
)
def test_alarm_aborts_the_rollout(
    base: SpecRepo, start_daemon: StartDaemon, on_failure: str, phase: str, after: dict[str, int]
) -> None:
    """An alarm entering ALARM mid-rollout: rollback (stable alone) or halt (frozen); the commit stays failed."""
    daemon = started(base, start_daemon)
    extra = f"    analysis: {{interval: 1s, alarms: [orders-5xx]}}\n    onFailure: {on_failure}\n"
    base.write(
        "deploy_specs/aliases.yaml",
        alias_spec('{"2": 100}', f"    steps: [{{setWeight: 10}}, {{pause: {{}}}}]\n{extra}"),
    )
    target = base.commit("version 2, watched")
    wait_for(lambda: routing(daemon) == {"1": 90, "2": 10}, 10, "10 %")
    LocalCloud(base.state_dir).set_alarm("orders-5xx", "ALARM")
    view = wait_phase(daemon, phase)  # recorded before the weights it implies go live
    assert view["failures"] == 1 and "orders-5xx" in view["message"]
    wait_for(lambda: routing(daemon) == after, 10, f"the weights after the {phase} rollout")
    status = daemon.status()
    assert status["applied_revision"] != target and "orders-5xx" in status["last_error"]
    assert daemon.events("rollout_failed")


def test_promote_ends_an_indefinite_pause(base: SpecRepo, start_daemon: StartDaemon) -> None:
    """A pause without duration waits for `rollout promote`, which the daemon picks up from the record."""
    daemon = started(base, start_daemon)
    base.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', "    steps: [{setWeight: 30}, {pause: {}}]\n"))
    target = base.commit("version 2, waits for a person")
    assert wait_phase(daemon, "paused")["weight"] == 30
    command(base, ALIAS, PROMOTE)
    daemon.wait_applied(target, timeout=10)
    assert routing(daemon) == {"2": 100}


def test_abort_rolls_back(base: SpecRepo, start_daemon: StartDaemon) -> None:
    """`rollout abort` beside the daemon: stable version alone, rollout failed."""
    daemon = started(base, start_daemon)
    base.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', "    steps: [{setWeight: 30}, {pause: {}}]\n"))
    base.commit("version 2")
    wait_phase(daemon, "paused")
    command(base, ALIAS, ABORT)
    assert "abort" in wait_phase(daemon, "failed")["message"]
    assert routing(daemon) == {"1": 100}


def test_revert_under_way_rolls_back_at_once(base: SpecRepo, start_daemon: StartDaemon) -> None:
    """git revert while paused: version 1 alone, and the revert is the applied revision."""
    daemon = started(base, start_daemon)
    base.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', "    steps: [{setWeight: 30}, {pause: {}}]\n"))
    base.commit("version 2")
    wait_phase(daemon, "paused")
    base.git("revert", "--no-edit", "HEAD")
    daemon.wait_applied(base.head(), timeout=10)
    assert routing(daemon) == {"1": 100} and rollout(daemon)["phase"] == "failed"


def test_sigkill_mid_pause_resumes_from_the_recorded_step(base: SpecRepo, start_daemon: StartDaemon) -> None:
    """Killed during a pause: the restarted daemon is still in that pause (not at stable, not past it)."""
    daemon = started(base, start_daemon)
    steps = "[{setWeight: 10}, {pause: {duration: 1h}}, {setWeight: 50}, {pause: {}}]"
    base.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {steps}\n"))
    target = base.commit("version 2, long pause")
    wait_for(lambda: rollout(daemon).get("step") == 2, 10, "the pause")
    daemon.stop(signal.SIGKILL)
    again = start_daemon(str(base.path), base.state_dir, "--resync-interval", "3600")
    wait_for(lambda: again.events("rollouts_under_way"), 10, "the first pass after the restart")
    assert routing(again) == {"1": 90, "2": 10}
    assert rollout(again)["step"] == 2 and rollout(again)["phase"] == "progressing"
    command(base, ALIAS, PROMOTE)
    assert wait_phase(again, "paused")["weight"] == 50
    command(base, ALIAS, PROMOTE_FULL)
    again.wait_applied(target, timeout=10)


def test_an_alarm_already_firing_does_not_block(base: SpecRepo, start_daemon: StartDaemon) -> None:
    """An alarm in ALARM before the rollout began counts nothing: the rollout succeeds."""
    daemon = started(base, start_daemon)
    LocalCloud(base.state_dir).set_alarm("orders-5xx", "ALARM")
    extra = "    analysis: {interval: 1s, alarms: [orders-5xx]}\n"
    steps = "[{setWeight: 10}, {pause: {duration: 2s}}]"
    base.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {steps}\n{extra}"))
    target = base.commit("the fix")
    daemon.wait_applied(target, timeout=20)
    assert routing(daemon) == {"2": 100} and rollout(daemon)["failures"] == 0


def test_stage_rollout_and_other_stage_moves_at_once(base: SpecRepo, start_daemon: StartDaemon) -> None:
    """Only the stage with rollout goes through the canary; a stage without it moves at once."""
    daemon = started(base, start_daemon)
    other = stage_spec().replace("{name: prod}", "{name: dev}").replace("lambdaAlias: prod", "lambdaAlias: dev")
    base.write("deploy_specs/dev.yaml", other)
    base.commit("a dev stage")
    daemon.wait_applied(base.head())
    base.write("deploy_specs/stages.yaml", stage_spec("    steps: [{setWeight: 20}, {pause: {}}]\n"))
    base.write("deploy_specs/openapi.yaml", OPENAPI.replace('version: "1"', 'version: "2"'))
    base.commit("definition 2")
    wait_phase(daemon, "paused", STAGE)
    stages = daemon.status()["stages"]
    assert stages["orders/dev"]["deployment_id"] == stages["orders/prod"]["canary"]["deployment_id"]
    assert stages["orders/dev"]["canary"] is None
