"""Rollouts through the engine on real temporary git repositories and the real local backend.

The engine's clock is moved by the test (``Engine.clock``) instead of sleeping;
alarms are set in the local backend's simulated CloudWatch, checks hit a real
HTTP server on loopback.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler.backends.local import LocalCloud
from reconciler.engine import ActionDone, Config, Engine, ReconcileResult
from reconciler.errors import RolloutError, StateError
from reconciler.rollout import ABORT, PROMOTE, PROMOTE_FULL
from tests.support import SpecRepo
from tests.test_specs import BASE, OPENAPI

ALIAS = "Alias/orders-handler/prod"
STAGE = "Stage/orders/prod"
STEPS = "[{setWeight: 10}, {pause: {duration: 60}}, {setWeight: 50}, {pause: {}}]"


def alias_spec(routing: str, rollout: str = "") -> str:
    text = (
        "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: prod}\nspec:\n"
        f"  function: orders-handler\n  routing: {routing}\n"
    )
    return text + (f"  rollout:\n{rollout}" if rollout else "")


def stage_spec(rollout: str = "") -> str:
    text = "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: prod}\nspec:\n  api: orders\n"
    text += "  variables: {lambdaAlias: prod}\n"
    return text + (f"  rollout:\n{rollout}" if rollout else "")


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def world(repo: SpecRepo) -> Iterator[tuple[SpecRepo, Engine, Clock]]:
    """Versions 1 and 2 published, the base specs (alias prod at version 1) applied."""
    for path, text in BASE.items():
        repo.write(path, text)
    repo.commit("base")
    repo.publish("orders-handler", 2)
    engine = Engine(Config(repo=str(repo.path), state_dir=str(repo.state_dir)))
    clock = Clock()
    engine.clock = clock
    assert engine.reconcile().ok
    yield repo, engine, clock
    engine.close()


def routing(engine: Engine) -> dict[str, Any]:
    return dict(engine.status()["aliases"]["orders-handler/prod"]["routing"])


def pass_at(engine: Engine, clock: Clock, offset: float) -> ReconcileResult:
    clock.offset = offset
    return engine.reconcile()


def test_alias_rollout_steps_pauses_promote_and_tags_at_the_end(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """10 % at once, 50 % after the pause, 100 % on promote; the commit is tagged only then."""
    repo, engine, clock = world
    tags = len(engine.history())
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    target = repo.commit("version 2 with a rollout")
    result = pass_at(engine, clock, 0)
    assert result.ok and result.progressing and result.wake_at is not None
    assert routing(engine) == {"1": 90, "2": 10}
    assert engine.record().applied_revision != target and len(engine.history()) == tags
    view = engine.status()["rollouts"][ALIAS]
    assert view | {"message": None} == view | {
        "phase": "progressing",
        "step": 2,
        "steps": 4,
        "weight": 10,
        "stable": "1",
        "target": "2",
        "failures": 0,
    }
    assert pass_at(engine, clock, 30).progressing and routing(engine) == {"1": 90, "2": 10}
    assert pass_at(engine, clock, 61).progressing and routing(engine) == {"1": 50, "2": 50}
    assert engine.status()["rollouts"][ALIAS]["phase"] == "paused"
    assert pass_at(engine, clock, 5000).progressing, "a pause without duration waits for promote"
    engine.rollout_command(ALIAS, PROMOTE)
    result = pass_at(engine, clock, 5001)
    assert result.ok and not result.progressing and routing(engine) == {"2": 100}
    assert engine.record().applied_revision == target and result.tag is not None
    history = engine.history()
    assert len(history) == tags + 1 and history[0].message["action_count"] == 3
    assert engine.status()["rollouts"][ALIAS]["phase"] == "succeeded"


def test_apply_advances_as_far_as_no_wait_is_needed(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """Steps without pauses run in one pass, each weight read back before the next."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', "    steps: [{setWeight: 10}, {setWeight: 50}]\n"))
    repo.commit("no pauses")
    result = pass_at(engine, clock, 0)
    assert result.ok and not result.progressing and routing(engine) == {"2": 100}
    assert [a.changes["routing"][1] for a in result.applied] == [{"1": 90, "2": 10}, {"1": 50, "2": 50}, {"2": 100}]


def test_stage_rollout_goes_out_through_the_canary_and_is_promoted(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """The new definition's deployment is the stage canary at each weight, then the stage's deployment."""
    repo, engine, clock = world
    before = engine.status()["stages"]["orders/prod"]
    repo.write("deploy_specs/stages.yaml", stage_spec(f"    steps: {STEPS}\n"))
    repo.write("deploy_specs/openapi.yaml", OPENAPI.replace('version: "1"', 'version: "2"'))
    target = repo.commit("a new definition, rolled out")
    assert pass_at(engine, clock, 0).progressing
    stage = engine.status()["stages"]["orders/prod"]
    assert stage["deployment_id"] == before["deployment_id"] and stage["variables"] == {"lambdaAlias": "prod"}
    assert stage["canary"]["percentTraffic"] == 10.0 and stage["canary"]["deployment_id"] != before["deployment_id"]
    view = engine.status()["rollouts"][STAGE]
    assert view["stable"] == before["deployment_id"] and view["target"] == stage["canary"]["deployment_id"]
    pass_at(engine, clock, 61)
    assert engine.status()["stages"]["orders/prod"]["canary"]["percentTraffic"] == 50.0
    engine.rollout_command(STAGE, PROMOTE_FULL)
    assert pass_at(engine, clock, 62).ok
    promoted = engine.status()["stages"]["orders/prod"]
    assert promoted["deployment_id"] == view["target"] and promoted["canary"] is None
    assert engine.record().applied_revision == target


def test_alarm_after_the_start_rolls_back_and_the_commit_stays_failed(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """An alarm entering ALARM during the rollout aborts it: stable at 100 %, last_error, no tag, no retry."""
    repo, engine, clock = world
    tags = len(engine.history())
    analysis = "    analysis: {interval: 10s, alarms: [orders-5xx]}\n"
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n{analysis}"))
    repo.commit("version 2, watched")
    assert pass_at(engine, clock, 0).progressing
    LocalCloud(repo.state_dir).set_alarm("orders-5xx", "ALARM")
    result = pass_at(engine, clock, 11)
    assert isinstance(result.error, RolloutError) and "orders-5xx" in str(result.error)
    assert routing(engine) == {"1": 100}
    status = engine.status()
    assert status["rollouts"][ALIAS]["phase"] == "failed" and status["rollouts"][ALIAS]["failures"] == 1
    assert "orders-5xx" in (status["last_error"] or "") and len(engine.history()) == tags
    LocalCloud(repo.state_dir).set_alarm("orders-5xx", "OK")
    again = pass_at(engine, clock, 500)
    assert isinstance(again.error, RolloutError) and not again.applied and routing(engine) == {"1": 100}
    plan, _, _ = engine.make_plan(engine.head())
    assert plan.in_sync, "self-heal never re-applies the target of a failed rollout"


def test_a_failed_rollout_and_its_error_are_written_together(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """While the rollback's weight goes live, a reader (another process's engine) already sees the failed phase
    and the error with it: never ``failed`` with no ``last_error`` (a /status poll saw that window)."""
    repo, engine, clock = world
    analysis = "    analysis: {interval: 10s, alarms: [orders-5xx]}\n"
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n{analysis}"))
    repo.commit("version 2, watched")
    assert pass_at(engine, clock, 0).progressing
    LocalCloud(repo.state_dir).set_alarm("orders-5xx", "ALARM")
    reader = Engine(Config(repo=str(repo.path), state_dir=str(repo.state_dir)))
    seen: list[tuple[str, str | None]] = []

    def look(done: ActionDone) -> None:
        status = reader.status()
        seen.append((status["rollouts"][ALIAS]["phase"], status["last_error"]))

    clock.offset = 11
    result = engine.reconcile(on_action=look)
    reader.close()
    assert isinstance(result.error, RolloutError)
    assert len(seen) == 1 and seen[0][0] == "failed" and "orders-5xx" in (seen[0][1] or ""), seen


def test_alarm_with_halt_freezes_the_weights(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """onFailure: halt leaves the weights where they were."""
    repo, engine, clock = world
    extra = "    analysis: {interval: 10s, alarms: [orders-5xx]}\n    onFailure: halt\n"
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n{extra}"))
    repo.commit("version 2, halting")
    pass_at(engine, clock, 0)
    LocalCloud(repo.state_dir).set_alarm("orders-5xx", "ALARM")
    assert isinstance(pass_at(engine, clock, 11).error, RolloutError)
    assert routing(engine) == {"1": 90, "2": 10} and engine.rollouts()[ALIAS].phase == "halted"


def test_an_alarm_firing_before_the_rollout_does_not_block_it(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """The new version may be the fix: an alarm already in ALARM at the start counts nothing."""
    repo, engine, clock = world
    LocalCloud(repo.state_dir).set_alarm("orders-5xx", "ALARM")
    time.sleep(0.01)
    extra = "    analysis: {interval: 10s, alarms: [orders-5xx]}\n"
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n{extra}"))
    repo.commit("the fix")
    pass_at(engine, clock, 0)
    assert pass_at(engine, clock, 11).progressing and pass_at(engine, clock, 61).progressing
    assert routing(engine) == {"1": 50, "2": 50} and engine.rollouts()[ALIAS].failures == 0


def test_an_alarm_that_does_not_exist_holds_the_rollout(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """An unreadable alarm is neither pass nor failure: shown, and the pause does not end; the deadline halts."""
    repo, engine, clock = world
    extra = "    analysis: {interval: 10s, alarms: [nobody-made-me]}\n    progressDeadline: 5m\n"
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n{extra}"))
    repo.commit("watching a missing alarm")
    pass_at(engine, clock, 0)
    with capture_logs() as logs:
        pass_at(engine, clock, 11)
    (logged,) = [e for e in logs if e["event"] == "rollout_analysis_inconclusive"]
    assert logged["resource"] == ALIAS and "nobody-made-me" in logged["errors"][0]
    assert pass_at(engine, clock, 100).progressing and routing(engine) == {"1": 90, "2": 10}
    assert "nobody-made-me" in (engine.status()["rollouts"][ALIAS]["inconclusive"] or "")
    result = pass_at(engine, clock, 400)
    assert isinstance(result.error, RolloutError) and "progressDeadline" in str(result.error)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/health", handler
    server.shutdown()
    server.server_close()


def test_failed_http_checks_count_up_to_the_limit(
    world: tuple[SpecRepo, Engine, Clock], health: tuple[str, type[_Health]]
) -> None:
    """A 2xx check passes; non-2xx answers count, and failureLimit of them abort."""
    repo, engine, clock = world
    url, handler = health
    extra = (
        f"    analysis:\n      interval: 10s\n      checks: [{{url: '{url}', timeout: 2s}}]\n      failureLimit: 2\n"
    )
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n{extra}"))
    repo.commit("checked")
    pass_at(engine, clock, 0)
    assert pass_at(engine, clock, 11).progressing and engine.rollouts()[ALIAS].failures == 0
    handler.status = 503
    assert pass_at(engine, clock, 22).progressing and engine.rollouts()[ALIAS].failures == 1
    result = pass_at(engine, clock, 33)
    assert isinstance(result.error, RolloutError) and "HTTP 503" in str(result.error)
    assert routing(engine) == {"1": 100}


def test_abort_rolls_back(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """rollout abort is a failure with rollback."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    repo.commit("version 2")
    pass_at(engine, clock, 0)
    engine.rollout_command(ALIAS, ABORT)
    result = pass_at(engine, clock, 1)
    assert isinstance(result.error, RolloutError) and "abort" in str(result.error)
    assert routing(engine) == {"1": 100}
    with pytest.raises(StateError, match="failed; expected a rollout under way"):
        engine.rollout_command(ALIAS, PROMOTE)
    with pytest.raises(StateError, match="no rollout of Alias/orders-handler/dev"):
        engine.rollout_command("Alias/orders-handler/dev", PROMOTE)


def test_revert_under_way_rolls_back_and_is_applied(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """git revert during the rollout: the stable version at once, and the revert commit is applied."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    repo.commit("version 2")
    pass_at(engine, clock, 0)
    repo.git("revert", "--no-edit", "HEAD")
    result = pass_at(engine, clock, 5)
    assert result.ok and not result.progressing and routing(engine) == {"1": 100}
    assert engine.record().applied_revision == repo.head()
    assert engine.rollouts()[ALIAS].phase == "failed"


def test_a_pin_wins_over_a_rollout(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """rollback pins the instance: the rollout ends, the pinned revision applies as written."""
    repo, engine, clock = world
    base = repo.head()
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    repo.commit("version 2")
    pass_at(engine, clock, 0)
    result = engine.rollback(base)
    assert result.ok and routing(engine) == {"1": 100} and not engine.rollouts()


def test_a_routing_split_without_rollout_applies_at_once(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """A resource without rollout, or a split written by hand, changes in one step as before."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"1": 95, "2": 5}', f"    steps: {STEPS}\n"))
    repo.commit("a hand-written split")
    assert pass_at(engine, clock, 0).ok and routing(engine) == {"1": 95, "2": 5} and not engine.rollouts()


def test_status_lists_rollouts_in_the_instance_record(world: tuple[SpecRepo, Engine, Clock], tmp_path: Path) -> None:
    """The rollout state is plain JSON in the instance record."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    repo.commit("version 2")
    pass_at(engine, clock, 0)
    raw = engine.record().as_json()["extra"]["rollouts"][ALIAS]
    assert raw["phase"] == "progressing" and raw["step"] == 1 and raw["weight"] == 10


def test_weights_changed_by_hand_halt_the_rollout_and_stay(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """Someone moves the alias in the console mid-rollout: the rollout halts, says so, and leaves it."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    repo.commit("version 2")
    pass_at(engine, clock, 0)
    cloud = LocalCloud(repo.state_dir)
    with cloud.transaction():
        cloud.update_alias("orders-handler", "prod", "1", {"2": 0.3}, None)
    cloud.close()
    result = pass_at(engine, clock, 5)
    assert isinstance(result.error, RolloutError) and "out of band" in str(result.error)
    assert routing(engine) == {"1": 70, "2": 30} and engine.rollouts()[ALIAS].phase == "halted"
    assert not pass_at(engine, clock, 500).applied, "halted: the weights stay frozen"


def test_latest_never_takes_a_weight_so_moving_from_it_applies_at_once(world: tuple[SpecRepo, Engine, Clock]) -> None:
    """From $LATEST to a version (Lambda cannot weight $LATEST): no rollout, the change applies at once."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"$LATEST": 100}'))
    repo.commit("prod follows $LATEST")
    assert pass_at(engine, clock, 0).ok
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    repo.commit("version 2")
    result = pass_at(engine, clock, 1)
    assert result.ok and not result.progressing and routing(engine) == {"2": 100}
