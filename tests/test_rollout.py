"""The rollout state machine (``reconciler.rollout.decide``) as a table: time is a value, no sleeps, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from reconciler.rollout import (
    ABORT,
    FAILED,
    HALTED,
    PAUSED,
    PROGRESSING,
    PROMOTE,
    PROMOTE_FULL,
    SUCCEEDED,
    Analysis,
    RolloutState,
    Split,
    analysis_due,
    decide,
    split_for,
    stage_split,
)
from reconciler.specs import DesiredAnalysis, DesiredRollout, RolloutStep

R = "Alias/orders-handler/prod"
CANARY = DesiredRollout((RolloutStep(weight=10), RolloutStep(duration=300), RolloutStep(weight=50), RolloutStep()))
WATCHED = DesiredRollout(
    (RolloutStep(weight=10), RolloutStep(duration=300), RolloutStep(weight=50), RolloutStep(duration=300)),
    DesiredAnalysis(interval=60, alarms=("orders-5xx",), checks=(), failure_limit=2),
)
HALTING = DesiredRollout(WATCHED.steps, WATCHED.analysis, on_failure="halt", progress_deadline=600)


@dataclass
class World:
    """Live traffic and the rollout state, moved only by decisions (what the engine does with real I/O)."""

    spec: DesiredRollout | None
    target: str | None = "2"
    live: Split | None = field(default_factory=lambda: {"1": 100.0})
    state: RolloutState | None = None
    events: list[str] = field(default_factory=list)
    wake_at: float | None = None

    def tick(self, now: float, analysis: Analysis | None = None, command: str | None = None) -> World:
        """One reconcile pass: decide, apply, and decide again while no wait is needed."""
        if command is not None:
            assert self.state is not None
            self.state.command = command
        for _ in range(20):
            d = decide(self.state, R, self.spec, self.target, self.live, now, "c0ffee", analysis)
            analysis = None
            self.state, self.wake_at = d.state, d.wake_at
            self.events += [name for name, _ in d.events]
            if d.weight is not None and self.state is not None:
                self.live = split_for(self.state.stable, self.state.target, d.weight)
            elif d.weight is None and not d.freeze and self.target is not None:
                self.live = {self.target: 100.0}  # no rollout: the spec applies as written
            if not d.again:
                return self
        raise AssertionError("decide never settled")

    @property
    def phase(self) -> str | None:
        return None if self.state is None else self.state.phase


def test_alias_rollout_moves_in_steps_and_waits_for_promote() -> None:
    """10 % at once, 5 minutes later 50 %, then a pause until promoted, then 100 %."""
    w = World(CANARY).tick(0)
    assert w.live == {"1": 90, "2": 10} and w.phase == PROGRESSING and w.wake_at == 300
    assert w.events == ["rollout_started", "rollout_step"]
    assert w.state is not None and w.state.view()["step"] == 2 and w.state.view()["steps"] == 4
    w.tick(299)
    assert w.live == {"1": 90, "2": 10}, "a pause never ends early"
    w.tick(300)
    assert w.live == {"1": 50, "2": 50} and w.phase == PAUSED and w.wake_at is None
    w.tick(10_000)
    assert w.phase == PAUSED, "a pause without duration waits for promote"
    w.tick(10_001, command=PROMOTE)
    assert w.live == {"2": 100} and w.phase == SUCCEEDED and w.events[-1] == "rollout_succeeded"
    w.tick(20_000)
    assert w.live == {"2": 100} and w.phase == SUCCEEDED and w.events.count("rollout_succeeded") == 1


def test_promote_full_goes_to_100_at_once() -> None:
    """promote --full leaves every remaining step."""
    w = World(CANARY).tick(0).tick(5, command=PROMOTE_FULL)
    assert w.live == {"2": 100} and w.phase == SUCCEEDED


def test_promote_outside_a_pause_changes_nothing() -> None:
    """promote only ends a pause; in the middle of a setWeight nothing skips."""
    spec = DesiredRollout((RolloutStep(weight=10), RolloutStep(duration=60)))
    w = World(spec).tick(0).tick(60)
    assert w.phase == SUCCEEDED


def test_abort_rolls_back_and_stays_failed_for_that_target() -> None:
    """abort: the stable version alone, and self-heal never re-applies the failed target."""
    w = World(CANARY).tick(0).tick(5, command=ABORT)
    assert w.live == {"1": 100} and w.phase == FAILED and "abort" in (w.state.message or "")  # type: ignore[union-attr]
    w.tick(5000)
    assert w.live == {"1": 100} and w.phase == FAILED and w.events.count("rollout_failed") == 1


@pytest.mark.parametrize(
    ("spec", "phase", "live"),
    [
        pytest.param(WATCHED, FAILED, {"1": 100}, id="rollback"),
        pytest.param(HALTING, HALTED, {"1": 90, "2": 10}, id="halt"),
    ],
)
def test_failures_at_the_limit_abort(spec: DesiredRollout, phase: str, live: Split) -> None:
    """Failures add up across rounds; at failureLimit the rollout rolls back or halts."""
    w = World(spec).tick(0)
    assert not analysis_due(w.state, spec, 59) and analysis_due(w.state, spec, 60)
    w.tick(60, Analysis(failures=1, details=("alarm orders-5xx in ALARM",)))
    assert w.phase == PROGRESSING and w.state is not None and w.state.failures == 1
    w.tick(120, Analysis(failures=1, details=("alarm orders-5xx in ALARM",)))
    assert w.phase == phase and w.live == live and "orders-5xx" in (w.state.message or "")
    w.tick(999)
    assert w.phase == phase and w.live == live, "a failed rollout is not retried"


def test_halted_rollout_freezes_whatever_live_is() -> None:
    """Halted: the weights stay frozen, no decision moves them."""
    w = World(HALTING).tick(0).tick(60, Analysis(failures=2, details=("x",)))
    w.live = {"1": 90, "2": 10}
    d = decide(w.state, R, HALTING, "2", w.live, 9999)
    assert d.freeze and d.weight is None and not d.events


def test_unreadable_alarms_hold_the_pause_then_halt_after_the_deadline() -> None:
    """A failed read is neither pass nor failure: the pause does not end on it; progressDeadline halts."""
    w = World(HALTING).tick(0)
    w.tick(60, Analysis(errors=("orders-5xx: AccessDenied",)))
    assert w.state is not None and w.state.failures == 0 and w.state.inconclusive
    w.tick(300)
    assert w.live == {"1": 90, "2": 10}, "no step past an unread alarm"
    w.tick(301, Analysis())
    assert w.state.inconclusive is None and w.live == {"1": 50, "2": 50}
    w.tick(400, Analysis(errors=("throttled",)))
    w.tick(1000, Analysis(errors=("throttled",)))
    assert w.phase == PROGRESSING
    w.tick(1001, Analysis(errors=("throttled",)))
    assert w.phase == HALTED and "progressDeadline" in (w.state.message or "")


def test_weights_changed_out_of_band_halt_with_a_message() -> None:
    """Someone else moved the weights: halt and say what was found."""
    w = World(CANARY).tick(0)
    w.live = {"1": 70, "2": 30}
    w.tick(10)
    assert w.phase == HALTED and "out of band" in (w.state.message or "")  # type: ignore[union-attr]
    assert w.live == {"1": 70, "2": 30}


def test_a_weight_decided_but_not_live_yet_is_applied_again() -> None:
    """Killed between recording a step and applying it: the step is applied, not treated as out of band."""
    first = decide(None, R, CANARY, "2", {"1": 100.0}, 0)  # recorded, then killed before the apply
    assert first.weight == 10
    d = decide(first.state, R, CANARY, "2", {"1": 100.0}, 1)
    assert d.weight == 10 and d.again and d.state is not None and d.state.phase == PROGRESSING


def test_restart_mid_pause_resumes_without_skipping_the_pause() -> None:
    """The state as persisted (JSON) resumes mid-pause and waits for the rest of it."""
    w = World(CANARY).tick(0)
    assert w.state is not None
    w.state = RolloutState.from_json(w.state.as_json())
    w.tick(200)
    assert w.live == {"1": 90, "2": 10} and w.wake_at == 300


def test_revert_under_way_rolls_back_at_once() -> None:
    """A commit making the stable version the target ends the rollout: stable alone, at once."""
    w = World(CANARY).tick(0)
    w.target = "1"
    w.tick(5)
    assert w.live == {"1": 100} and w.phase == FAILED and "revert" in (w.state.message or "")  # type: ignore[union-attr]
    w.tick(50)
    assert w.phase == FAILED and w.events.count("rollout_failed") == 1


def test_new_target_under_way_restarts_from_the_stable_version() -> None:
    """Version 3 while 2 is at 10 %: the rollout restarts from 1 toward 3."""
    w = World(CANARY).tick(0)
    w.target = "3"
    w.tick(5)
    assert w.live == {"1": 90, "3": 10} and w.state is not None and w.state.stable == "1"
    assert w.events.count("rollout_started") == 2


def test_changed_rollout_block_restarts() -> None:
    """A changed rollout block with the same target starts over at its first step."""
    w = World(CANARY).tick(0).tick(300)
    assert w.live == {"1": 50, "2": 50}
    w.spec = DesiredRollout((RolloutStep(weight=20), RolloutStep()))
    w.tick(301)
    assert w.live == {"1": 80, "2": 20} and w.phase == PAUSED


@pytest.mark.parametrize(
    ("live", "target"),
    [
        pytest.param(None, "2", id="alias-created"),
        pytest.param({"1": 95.0, "2": 5.0}, "2", id="live-split-by-hand"),
        pytest.param({"1": 100.0}, None, id="spec-split-by-hand"),
        pytest.param({"2": 100.0}, "2", id="already-there"),
    ],
)
def test_changes_that_are_no_rollout_apply_at_once(live: Split | None, target: str | None) -> None:
    """Creation, hand-written splits and in-sync resources involve no rollout."""
    d = decide(None, R, CANARY, target, live, 0)
    assert d.state is None and d.weight is None and not d.freeze and not d.events


def test_new_rollout_after_a_failed_one_starts_from_live() -> None:
    """A new commit after a failure (the stable version is live) starts a new rollout."""
    w = World(CANARY).tick(0).tick(5, command=ABORT)
    w.target = "3"
    w.tick(10)
    assert w.live == {"1": 90, "3": 10} and w.phase == PROGRESSING


def test_stage_split_reads_a_canary_as_a_share() -> None:
    """A live stage is a split of definition hashes."""
    assert stage_split("a", None, None) == {"a": 100}
    assert stage_split("a", "b", 10) == {"a": 90, "b": 10}
    assert stage_split(None, None, None) is None


def test_revert_of_a_halted_rollout_rolls_back() -> None:
    """Halted at 10 %, then reverted in git: the stable version alone."""
    w = World(HALTING).tick(0).tick(60, Analysis(failures=2, details=("x",)))
    assert w.phase == HALTED
    w.target = "1"
    w.tick(70)
    assert w.live == {"1": 100} and w.phase == FAILED


def test_rollout_block_removed_under_way_ends_it() -> None:
    """The spec no longer asks for a rollout: it ends (shown), and the spec applies as written."""
    w = World(CANARY).tick(0)
    w.spec = None
    w.tick(5)
    assert w.phase == FAILED and w.live == {"2": 100} and "no longer" in (w.state.message or "")  # type: ignore[union-attr]


def test_the_same_target_after_git_moved_away_is_a_new_attempt() -> None:
    """Failed, reverted, then re-applied (a revert of the revert): the rollout runs again."""
    w = World(CANARY).tick(0).tick(5, command=ABORT)
    w.target = "1"
    w.tick(10)
    assert w.phase == FAILED and w.live == {"1": 100}
    w.target = "2"
    w.tick(20)
    assert w.phase == PROGRESSING and w.live == {"1": 90, "2": 10}
