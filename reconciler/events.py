"""Notification events (DESIGN §12) and the pure rule that turns what passes saw into transitions; no I/O.

The daemon reports what each pass saw (``Applying``, ``Outcome``, ``PinSeen``)
to ``transition``, which returns the new ``NotifyState`` and the ``Notice``
objects to send: only changes, so a failure retried ten times is one
``failed`` and the first success after it one ``recovered``.  Events that are
transitions already (a rollout's steps, which the engine reports through
``Engine.on_event``) become a ``Notice`` with ``notice_of``.  Called by
``daemon.py``; ``notify.py`` renders and delivers the notices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

APPLIED, FAILED, INVALID, RECOVERED = "applied", "failed", "invalid", "recovered"
DRIFT_CORRECTED, PINNED, RESUMED = "drift_corrected", "pinned", "resumed"
ROLLOUT_STARTED, ROLLOUT_STEP = "rollout_started", "rollout_step"
ROLLOUT_SUCCEEDED, ROLLOUT_FAILED = "rollout_succeeded", "rollout_failed"
EVENTS = (
    APPLIED,
    FAILED,
    INVALID,
    RECOVERED,
    DRIFT_CORRECTED,
    PINNED,
    RESUMED,
    ROLLOUT_STARTED,
    ROLLOUT_STEP,
    ROLLOUT_SUCCEEDED,
    ROLLOUT_FAILED,
)
APPLYING = "applying"  # not an event of §12: it only makes the github sink post `pending`
PROGRESSING = "progressing"  # an Outcome of a pass that left a rollout under way
ACTIONS_LISTED = 100  # a notice lists at most this many actions (its message says how many in all)


@dataclass(frozen=True)
class Notice:
    """One thing to tell people: an event name of §12 (or ``applying``) and what it is about.

    ``actions`` are ``(action, resource)`` pairs; ``details`` are extra JSON
    fields (a rollout's resource, step and weight, for example).
    """

    event: str
    revision: str | None
    tag: str | None = None
    message: str = ""
    actions: tuple[tuple[str, str], ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


def notice_of(name: str, fields: Mapping[str, Any]) -> Notice:
    """A ``Notice`` of an event reported as a name and its fields (``Engine.on_event``: the rollout events).

    ``revision``, ``tag`` and ``message`` fill the notice's own fields; the
    rest (resource, step, weight, …) go into its details.
    """
    details = {k: v for k, v in fields.items() if k not in ("revision", "tag", "message", "event", "instance")}
    revision, tag = fields.get("revision"), fields.get("tag")
    message = _rollout_text(name, fields) if name.startswith("rollout_") else str(fields.get("message") or name)
    return Notice(
        name,
        str(revision) if revision else None,
        tag=str(tag) if tag else None,
        message=message,
        details=details,
    )


def _rollout_text(name: str, fields: Mapping[str, Any]) -> str:
    """One line for a rollout event: what, where it stands, and the rollout's own message if any."""
    resource = fields.get("resource") or "?"
    verb = {ROLLOUT_STARTED: "started", ROLLOUT_STEP: "step", ROLLOUT_SUCCEEDED: "succeeded"}.get(
        name, str(fields.get("phase") or "failed")
    )
    where = []
    if name == ROLLOUT_STARTED and fields.get("stable") is not None and fields.get("target") is not None:
        where.append(f"{str(fields['stable'])[:12]} -> {str(fields['target'])[:12]}")
    if name == ROLLOUT_STEP and fields.get("step") is not None and fields.get("steps") is not None:
        where.append(f"{fields['step']}/{fields['steps']}")
    if name != ROLLOUT_FAILED and fields.get("weight") is not None:
        where.append(f"{fields['weight']} % on the target")
    text = f"rollout of {resource} {verb}" + (f": {', '.join(where)}" if where else "")
    return text + (f" ({fields['message']})" if fields.get("message") else "")


# ----------------------------------------------------------------- what a pass saw


@dataclass(frozen=True)
class Applying:
    """A pass is about to apply ``revision`` (it may turn out to change nothing)."""

    revision: str


@dataclass(frozen=True)
class Outcome:
    """How a pass at ``revision`` ended: ``result`` is ``ReconcileResult.result``.

    ``previous`` is the applied revision before the pass: a pass that changes
    live state at the revision already applied is correcting drift.
    """

    revision: str
    result: str  # success | noop | failed | invalid | progressing
    previous: str | None = None
    tag: str | None = None
    actions: tuple[tuple[str, str], ...] = ()
    message: str = ""


@dataclass(frozen=True)
class PinSeen:
    """The instance record's pin as a pass read it: ``(revision, tag)``, or None when not pinned."""

    pin: tuple[str, str | None] | None


Observation = Applying | Outcome | PinSeen


@dataclass(frozen=True)
class NotifyState:
    """What has been said so far; ``transition`` compares each observation with it."""

    announced: str | None = None  # the revision whose `pending` (or result) was sent last
    failing: tuple[str, str] | None = None  # (revision, failed|invalid) said and not yet recovered from
    drifting: bool = False  # a drift_corrected was said; until a pass finds live state in sync
    pin: tuple[str, str | None] | None = None
    pin_known: bool = False  # False until the first PinSeen (which only seeds: it is no change)


def initial_state(applied_revision: str | None, saved: object = None) -> NotifyState:
    """The state of a daemon that starts: what an earlier run saved (``state_json``), if it reads back;
    else the applied revision's status is taken as already said and the record's pin as known."""
    if isinstance(saved, dict):
        try:
            failing, pin = saved.get("failing"), saved.get("pin")
            return NotifyState(
                announced=_text(saved.get("announced")),
                failing=(str(failing[0]), str(failing[1])) if failing else None,
                drifting=bool(saved.get("drifting")),
                pin=(str(pin[0]), _text(pin[1])) if pin else None,
                pin_known=bool(saved.get("pin_known")),
            )
        except (TypeError, IndexError, KeyError):
            pass  # a record of another shape: start afresh (at worst one notice is sent again)
    return NotifyState(announced=applied_revision)


def state_json(state: NotifyState) -> dict[str, Any]:
    """``state`` as JSON, for the instance record (so a restarted or failed-over daemon does not say it again)."""
    return {
        "announced": state.announced,
        "failing": list(state.failing) if state.failing else None,
        "drifting": state.drifting,
        "pin": list(state.pin) if state.pin else None,
        "pin_known": state.pin_known,
    }


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def transition(state: NotifyState, seen: Observation) -> tuple[NotifyState, list[Notice]]:
    """The new state and the notices to send for one observation (none when nothing changed)."""
    match seen:
        case Applying(revision):
            if revision == state.announced:
                return state, []
            return replace(state, announced=revision), [Notice(APPLYING, revision, message="applying")]
        case PinSeen(pin):
            if not state.pin_known:
                return replace(state, pin=pin, pin_known=True), []
            if pin == state.pin:
                return state, []
            new = replace(state, pin=pin)
            if pin is None:
                old = state.pin[0] if state.pin else None
                return new, [Notice(RESUMED, old, message="resumed: following the branch again")]
            revision, tag = pin
            return new, [Notice(PINNED, revision, tag=tag, message=f"pinned to {tag or revision[:12]}")]
        case Outcome():
            return _outcome(state, seen)
    raise AssertionError(f"unknown observation {seen!r}")  # pragma: no cover - the match is exhaustive


def _outcome(state: NotifyState, seen: Outcome) -> tuple[NotifyState, list[Notice]]:
    revision = seen.revision or None
    if seen.result == PROGRESSING:  # a rollout under way tells its own steps; applied comes when it succeeds
        return state, []
    if seen.result in (FAILED, INVALID):
        key = (seen.revision, seen.result)
        if state.failing == key:
            return state, []
        return replace(state, failing=key, announced=revision or state.announced), [
            Notice(seen.result, revision, message=seen.message, actions=seen.actions[:ACTIONS_LISTED])
        ]
    done = replace(state, announced=revision or state.announced, failing=None)
    drift = seen.revision == seen.previous
    if state.failing is not None:
        message = seen.message or f"recovered: {_applied_text(seen)}"
        return replace(done, drifting=False), [_notice(RECOVERED, seen, message)]
    if not drift:
        return replace(done, drifting=False), [_notice(APPLIED, seen, seen.message or _applied_text(seen))]
    if not seen.actions:  # in sync at the applied revision: a drift episode, if any, is over
        return replace(done, drifting=False), []
    if state.drifting:
        return done, []
    resources = sorted({resource for _, resource in seen.actions})
    message = seen.message or f"drift corrected: {', '.join(resources[:10])}" + (" …" if len(resources) > 10 else "")
    return replace(done, drifting=True), [_notice(DRIFT_CORRECTED, seen, message)]


def _notice(event: str, seen: Outcome, message: str) -> Notice:
    actions = seen.actions[:ACTIONS_LISTED]
    return Notice(event, seen.revision or None, tag=seen.tag, message=message, actions=actions)


def _applied_text(seen: Outcome) -> str:
    count = len(seen.actions)
    what = f"{count} action{'s' if count != 1 else ''}" if count else "no changes"
    return f"applied {seen.revision[:12]}" + (f" as {seen.tag}" if seen.tag else "") + f" ({what})"


def action_pairs(actions: Iterable[Any]) -> tuple[tuple[str, str], ...]:
    """``(action, resource)`` of plan actions (anything with those two attributes)."""
    return tuple((str(a.action), str(a.resource)) for a in actions)
