"""Only transitions are notified: the pure rule of reconciler.events, as a table of pass sequences."""

from __future__ import annotations

import json

import pytest

from reconciler.events import (
    ACTIONS_LISTED,
    Applying,
    Notice,
    Observation,
    Outcome,
    PinSeen,
    initial_state,
    notice_of,
    state_json,
    transition,
)

A, B, C = "a" * 40, "b" * 40, "c" * 40
ACT = (("update_alias", "Alias/orders-handler/prod"),)


def ok(revision: str, previous: str | None, actions: tuple[tuple[str, str], ...] = ACT) -> Outcome:
    return Outcome(
        revision, "success" if actions else "noop", previous=previous, tag="applied/default/1", actions=actions
    )


def failed(revision: str, previous: str | None) -> Outcome:
    return Outcome(revision, "failed", previous=previous, message="update_alias: throttled")


def invalid(revision: str, previous: str | None) -> Outcome:
    return Outcome(revision, "invalid", previous=previous, message="1 spec error")


def run(observations: list[Observation], applied: str | None = None) -> list[Notice]:
    state, sent = initial_state(applied), []
    for seen in observations:
        state, notices = transition(state, seen)
        sent += notices
    return sent


def names(observations: list[Observation], applied: str | None = None) -> list[tuple[str, str | None]]:
    return [(n.event, n.revision) for n in run(observations, applied)]


CASES = [
    pytest.param([Applying(B), ok(B, A)], A, [("applying", B), ("applied", B)], id="new-commit-pending-then-applied"),
    pytest.param(
        [Applying(B), failed(B, A)] + [Applying(B), failed(B, A)] * 9,
        A,
        [("applying", B), ("failed", B)],
        id="failure-retried-ten-times-is-one-failed",
    ),
    pytest.param(
        [Applying(B), failed(B, A), Applying(B), failed(B, A), Applying(B), ok(B, A)],
        A,
        [("applying", B), ("failed", B), ("recovered", B)],
        id="first-success-after-failures-is-recovered",
    ),
    pytest.param(
        [Applying(B), failed(B, A), Applying(C), ok(C, A)],
        A,
        [("applying", B), ("failed", B), ("applying", C), ("recovered", C)],
        id="a-new-commit-that-fixes-it-is-recovered",
    ),
    pytest.param(
        [Applying(B), invalid(B, A)] + [Applying(B), invalid(B, A)] * 5,
        A,
        [("applying", B), ("invalid", B)],
        id="invalid-commit-once-however-often-reread",
    ),
    pytest.param(
        [Applying(B), invalid(B, A), Applying(C), invalid(C, A)],
        A,
        [("applying", B), ("invalid", B), ("applying", C), ("invalid", C)],
        id="each-invalid-commit-once",
    ),
    pytest.param(
        [Applying(B), invalid(B, A), Applying(C), ok(C, A)],
        A,
        [("applying", B), ("invalid", B), ("applying", C), ("recovered", C)],
        id="good-commit-after-invalid-is-recovered",
    ),
    pytest.param(
        [Applying(A), ok(A, A), Applying(A), ok(A, A), Applying(A), ok(A, A)],
        A,
        [("drift_corrected", A)],
        id="drift-corrected-once-per-episode",
    ),
    pytest.param(
        [ok(A, A), ok(A, A, actions=()), ok(A, A)],
        A,
        [("drift_corrected", A), ("drift_corrected", A)],
        id="an-in-sync-check-ends-the-drift-episode",
    ),
    pytest.param([ok(A, A, actions=()), ok(A, A, actions=())], A, [], id="in-sync-says-nothing"),
    pytest.param(
        [Applying(B), ok(B, A, actions=())], A, [("applying", B), ("applied", B)], id="commit-changing-nothing-applied"
    ),
    pytest.param(
        [Applying(A), failed(A, A), Applying(A), ok(A, A, actions=())],
        A,
        [("failed", A), ("recovered", A)],
        id="failed-drift-fix-then-in-sync-recovered",
    ),
    pytest.param([Applying(A), ok(A, None)], None, [("applying", A), ("applied", A)], id="first-ever-apply"),
    pytest.param(
        [Applying(B), Outcome(B, "progressing", previous=A), Outcome(B, "progressing", previous=A), ok(B, A)],
        A,
        [("applying", B), ("applied", B)],
        id="a-rollout-under-way-is-applied-when-it-ends",
    ),
    pytest.param(
        [PinSeen(None), PinSeen((A, "applied/default/1")), PinSeen((A, "applied/default/1")), PinSeen(None)],
        B,
        [("pinned", A), ("resumed", A)],
        id="pin-and-resume-once-each",
    ),
    pytest.param(
        [PinSeen((A, None)), PinSeen((A, None)), PinSeen(None)],
        B,
        [("resumed", A)],
        id="a-pin-already-there-at-start-is-no-news",
    ),
    pytest.param(
        [Applying(B), failed(B, A)] + [Outcome("", "failed", message="pinned commit gone")] * 3,
        A,
        [("applying", B), ("failed", B), ("failed", None)],
        id="failure-without-a-revision-once",
    ),
]


@pytest.mark.parametrize(("observations", "applied", "expected"), CASES)
def test_transitions(observations: list[Observation], applied: str | None, expected: list[tuple[str, str]]) -> None:
    """Each sequence of passes sends exactly the listed notices, in order."""
    assert names(observations, applied) == expected


def test_notices_carry_tag_actions_and_a_message() -> None:
    """An applied notice names its tag and actions, and says what happened in a line."""
    [notice] = run([ok(B, A)], A)
    assert notice.tag == "applied/default/1" and notice.actions == ACT
    assert notice.message == f"applied {B[:12]} as applied/default/1 (1 action)"


def test_failed_notice_carries_the_error() -> None:
    """A failed notice's message is the error of the pass."""
    [notice] = run([failed(B, A)], A)
    assert notice.message == "update_alias: throttled"


def test_a_huge_apply_lists_a_bounded_number_of_actions() -> None:
    """Ten thousand actions: the notice lists ACTIONS_LISTED of them and its message counts them all."""
    actions = tuple(("create_stage", f"Stage/orders/s{i}") for i in range(10_000))
    [notice] = run([ok(B, A, actions=actions)], A)
    assert len(notice.actions) == ACTIONS_LISTED and "(10000 actions)" in notice.message


def test_an_engine_event_becomes_a_notice_with_its_fields_as_details() -> None:
    """A rollout event (name and fields, from Engine.on_event) keeps revision and message; the rest is detail."""
    fields = {
        "resource": "Alias/orders-handler/prod",
        "step": 1,
        "steps": 4,
        "weight": 10,
        "message": None,
        "revision": B,
    }
    notice = notice_of("rollout_step", fields)
    assert (notice.event, notice.revision) == ("rollout_step", B)
    assert notice.message == "rollout of Alias/orders-handler/prod step: 1/4, 10 % on the target"
    assert notice.details == {"resource": "Alias/orders-handler/prod", "step": 1, "steps": 4, "weight": 10}


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        pytest.param(
            "rollout_started",
            {"resource": "Alias/f/prod", "stable": "1", "target": "2", "weight": 0},
            "rollout of Alias/f/prod started: 1 -> 2, 0 % on the target",
            id="started",
        ),
        pytest.param(
            "rollout_succeeded",
            {"resource": "Stage/orders/prod", "weight": 100, "message": None},
            "rollout of Stage/orders/prod succeeded: 100 % on the target",
            id="succeeded",
        ),
        pytest.param(
            "rollout_failed",
            {"resource": "Alias/f/prod", "phase": "halted", "weight": 10, "message": "orders-5xx in ALARM"},
            "rollout of Alias/f/prod halted (orders-5xx in ALARM)",
            id="halted",
        ),
        pytest.param(
            "rollout_failed",
            {"resource": "Alias/f/prod", "message": "ended: the spec no longer asks for a rollout"},
            "rollout of Alias/f/prod failed (ended: the spec no longer asks for a rollout)",
            id="failed-without-phase",
        ),
    ],
)
def test_rollout_events_say_what_happened_in_a_line(name: str, fields: dict[str, object], message: str) -> None:
    """A rollout event's message names the resource, what happened and where it stands."""
    assert notice_of(name, fields).message == message


@pytest.mark.parametrize(
    "observations",
    [
        pytest.param([Applying(B), failed(B, A)], id="failing"),
        pytest.param([Applying(B), invalid(B, A)], id="invalid"),
        pytest.param([ok(A, A)], id="drifting"),
        pytest.param([PinSeen(None), PinSeen((A, "applied/default/1"))], id="pinned"),
        pytest.param([], id="fresh"),
    ],
)
def test_a_saved_state_reads_back_the_same(observations: list[Observation]) -> None:
    """state_json -> initial_state gives the state back, so a restarted daemon says nothing twice."""
    state = initial_state(A)
    for seen in observations:
        state, _ = transition(state, seen)
    assert initial_state(None, json.loads(json.dumps(state_json(state)))) == state


def test_a_restarted_daemon_does_not_repeat_a_failure() -> None:
    """A failure said before a restart is not said again when the same revision fails after it."""
    state, _ = transition(initial_state(A), failed(B, A))
    restored = initial_state(A, state_json(state))
    assert transition(restored, Applying(B))[1] == [] and transition(restored, failed(B, A))[1] == []


@pytest.mark.parametrize("saved", [None, "x", {"failing": 3}, {"pin": [None]}, {"failing": []}], ids=repr)
def test_a_saved_state_of_another_shape_starts_afresh(saved: object) -> None:
    """Whatever is in the record, the daemon starts (at worst saying one thing again)."""
    assert initial_state(A, saved).announced in (A, None)
