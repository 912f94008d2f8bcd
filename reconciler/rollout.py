"""Rollouts (DESIGN §9): the pure state machine that moves a resource's traffic to its target in steps.

``decide`` is one transition: ``(state, spec, live split, clock, analysis,
command) -> Decision`` (the new state, the target's share of traffic to put
live now, events, when to wake next).  No I/O and no clock of its own: time
comes in as a number, so the whole machine is tested as a table.  The state
is a plain JSON-able dataclass that the engine keeps in the instance record;
the engine turns a decided share into the Alias routing or Stage canary that
the plan then applies (``alias_override``, ``stage_override``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from reconciler.model import percent_json
from reconciler.specs import Definition, DesiredAlias, DesiredCanary, DesiredRollout, DesiredStage

PROGRESSING, PAUSED, SUCCEEDED, FAILED, HALTED = "progressing", "paused", "succeeded", "failed", "halted"
PHASES = (PROGRESSING, PAUSED, SUCCEEDED, FAILED, HALTED)
ACTIVE = frozenset({PROGRESSING, PAUSED})
PROMOTE, PROMOTE_FULL, ABORT = "promote", "promote_full", "abort"
COMMANDS = (PROMOTE, PROMOTE_FULL, ABORT)
READ_RETRY = 5.0  # seconds before alarm reads or checks that could not be done are tried again (at most)

Split = dict[str, float]  # version (Alias) or definition sha256 (Stage) -> percent of traffic


@dataclass
class RolloutState:
    """One resource's rollout as the instance record keeps it (times are Unix seconds)."""

    id: str
    resource: str
    stable: str
    target: str
    fingerprint: str
    steps: int
    started_at: float
    revision: str | None = None
    phase: str = PROGRESSING
    step: int = 0  # index of the current step; == steps once every step is done
    step_started_at: float = 0.0
    weight: float = 0.0  # the target's share this rollout set last (or is setting now)
    previous_weight: float = 0.0  # the share before: live may still show it after a kill or failed apply
    failures: int = 0
    message: str | None = None
    analysis_at: float | None = None  # when the next analysis is due
    inconclusive: str | None = None  # why the last analysis could not be completed
    blocked_since: float | None = None  # since when the rollout cannot progress (progressDeadline)
    command: str | None = None  # promote | promote_full | abort, left by `reconciler rollout ...`
    retired: bool = False  # finished, and git has since moved on from its target: shown, never resumed
    labels: dict[str, str] = field(default_factory=dict)  # stable/target as shown (Stage: deployment ids)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    @property
    def shown_step(self) -> int:
        """1-based: the step under way, or the one a failure stopped at; all of them once succeeded."""
        return self.steps if self.phase == SUCCEEDED else min(self.step + 1, self.steps)

    def view(self) -> dict[str, Any]:
        """The ``status`` JSON of this rollout (DESIGN §9)."""
        return {
            "phase": self.phase,
            "step": self.shown_step,
            "steps": self.steps,
            "weight": percent_json(self.weight),
            "stable": self.labels.get("stable", self.stable),
            "target": self.labels.get("target", self.target),
            "failures": self.failures,
            "message": self.message,
            "id": self.id,
            "revision": self.revision,
            "inconclusive": self.inconclusive,
        }


@dataclass(frozen=True)
class Analysis:
    """One round of alarm reads and checks: failures counted, and what could not be read."""

    failures: int = 0
    details: tuple[str, ...] = ()  # what failed, for the message
    errors: tuple[str, ...] = ()  # reads that failed (neither pass nor failure)


Event = tuple[str, dict[str, Any]]


@dataclass
class Decision:
    """What one transition decided for one resource.

    ``weight`` is the target's share to put live (0: the stable version alone,
    100: the target alone); None means no rollout shapes this resource (the
    spec applies as written), unless ``freeze`` (halted: live stays as it is).
    """

    state: RolloutState | None
    weight: float | None = None
    freeze: bool = False
    events: list[Event] = field(default_factory=list)
    again: bool = False  # a weight changed: apply it, then decide again (no wait is needed)
    wake_at: float | None = None


def rollout_id(resource: str, stable: str, target: str, fingerprint: str) -> str:
    """Stable for one (resource, stable, target, rollout block); anything else is another rollout."""
    text = json.dumps([resource, stable, target, fingerprint])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def split_for(stable: str, target: str, weight: float) -> Split:
    """The live split a rollout at ``weight`` means."""
    if weight <= 0:
        return {stable: 100.0}
    if weight >= 100:
        return {target: 100.0}
    return {stable: round(100.0 - weight, 6), target: round(float(weight), 6)}


def _same(a: Split, b: Split) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)


def _single(split: Split | None) -> str | None:
    if split is not None and len(split) == 1:
        ((key, percent),) = split.items()
        if abs(percent - 100) < 1e-6:
            return key
    return None


def analysis_due(state: RolloutState | None, spec: DesiredRollout | None, now: float) -> bool:
    """Whether alarms and checks are to be read before ``decide`` (the caller does the I/O)."""
    if state is None or spec is None or spec.analysis is None or not state.active:
        return False
    if state.fingerprint != spec.fingerprint:
        return False
    return state.analysis_at is not None and now >= state.analysis_at


def decide(
    prior: RolloutState | None,
    resource: str,
    spec: DesiredRollout | None,
    target: str | None,
    live: Split | None,
    now: float,
    revision: str | None = None,
    analysis: Analysis | None = None,
) -> Decision:
    """One transition of ``resource``'s rollout.

    ``target`` is what the spec wants alone at 100 % (None: a spec no rollout
    can drive, e.g. two versions written by hand); ``live`` is the split live
    serves now (None: the resource does not exist yet).
    """
    if prior is not None and (prior.active or prior.phase == HALTED) and target == prior.stable and live is not None:
        ended = replace(
            prior,
            phase=FAILED,
            previous_weight=prior.weight,
            weight=0.0,
            command=None,
            message=f"the commit {short(revision)} makes the stable version the target again (a revert): "
            "rolled back at once",
        )
        return Decision(ended, weight=0.0, events=[_event("rollout_failed", ended)], again=True)
    if spec is None or target is None or live is None:
        if prior is not None and prior.active:  # the rollout block is gone: the spec applies as written
            ended = replace(prior, phase=FAILED, command=None, message="ended: the spec no longer asks for a rollout")
            return Decision(ended, events=[_event("rollout_failed", ended)])
        return Decision(_history(prior))
    if prior is not None and prior.target == target and prior.fingerprint == spec.fingerprint and not prior.retired:
        if not prior.active:
            return _settled(prior)
        return _advance(replace(prior, labels=dict(prior.labels)), spec, live, now, analysis)
    if prior is not None and (prior.active or prior.phase == HALTED) and set(live) <= {prior.stable, prior.target}:
        # git changed while the rollout was under way (or halted there)
        why = "new target" if prior.target != target else "rollout block changed"
        return _start(resource, prior.stable, target, spec, now, revision, f"restarted from the stable version: {why}")
    stable = _single(live)
    if stable is not None and stable != target:
        return _start(resource, stable, target, spec, now, revision, None)
    return Decision(_history(prior))


def short(revision: str | None) -> str:
    return (revision or "?")[:12]


def _history(prior: RolloutState | None) -> RolloutState | None:
    """A finished rollout stays in the record to be shown, retired: when git names its target again
    (a revert of the revert), that is a new attempt, not the old failure."""
    return replace(prior, retired=True) if prior is not None and not prior.active else None


def _settled(state: RolloutState) -> Decision:
    """A finished rollout of the target the spec still names: succeeded, or failed until git changes."""
    if state.phase == FAILED:
        return Decision(state, weight=0.0)  # self-heal never re-applies the target of a failed rollout
    if state.phase == HALTED:
        return Decision(state, freeze=True)
    return Decision(state)  # succeeded: the spec applies as written (the target alone)


def _start(
    resource: str,
    stable: str,
    target: str,
    spec: DesiredRollout,
    now: float,
    revision: str | None,
    message: str | None,
) -> Decision:
    state = RolloutState(
        id=rollout_id(resource, stable, target, spec.fingerprint),
        resource=resource,
        stable=stable,
        target=target,
        fingerprint=spec.fingerprint,
        steps=len(spec.steps),
        started_at=now,
        revision=revision,
        step_started_at=now,
        message=message,
        analysis_at=None if spec.analysis is None else now + spec.analysis.interval,
    )
    # a restart goes back to the first step from whatever live serves now (the old share is replaced)
    decision = _advance(state, spec, split_for(stable, target, 0.0), now, None)
    decision.events.insert(0, _event("rollout_started", state))
    return decision


def _advance(s: RolloutState, spec: DesiredRollout, live: Split, now: float, analysis: Analysis | None) -> Decision:
    decision = Decision(s)
    now_split, before = split_for(s.stable, s.target, s.weight), split_for(s.stable, s.target, s.previous_weight)
    if not _same(live, now_split):
        if not _same(live, before):
            wanted = _split_text(now_split)
            return _fail(
                s, decision, f"weights changed out of band: live {_split_text(live)}, expected {wanted}", HALTED
            )
        # the last share was decided but is not live yet (a kill or a failed apply): put it live first
        s.blocked_since = s.blocked_since if s.blocked_since is not None else now
        if now - s.blocked_since > spec.progress_deadline:
            return _fail(s, decision, _deadline_message(spec, "the weight could not be set"), HALTED)
        decision.weight, decision.again = s.weight, True
        return decision
    s.previous_weight = s.weight
    command, s.command = s.command, None
    if command == ABORT:
        return _fail(s, decision, "aborted by `reconciler rollout abort`", FAILED)
    if analysis is not None and spec.analysis is not None:
        _count(s, spec, analysis, now)
        if s.failures >= spec.analysis.failure_limit:
            details = "; ".join(analysis.details)
            message = f"{s.failures} failed check(s), failureLimit {spec.analysis.failure_limit}: {details}"
            return _fail(s, decision, message, HALTED if spec.on_failure == "halt" else FAILED)
    if s.inconclusive is None:
        s.blocked_since = None
    elif now - (s.blocked_since or now) > spec.progress_deadline:
        return _fail(s, decision, _deadline_message(spec, s.inconclusive), HALTED)
    if command == PROMOTE_FULL:
        s.step = s.steps
        s.message = "promoted to 100 % by `reconciler rollout promote --full`"
    elif command == PROMOTE and s.step < s.steps and spec.steps[s.step].is_pause:
        s.step += 1
        s.step_started_at = now
        s.message = "pause ended by `reconciler rollout promote`"
        decision.events.append(_event("rollout_step", s))
    return _steps(s, spec, now, decision)


def _count(s: RolloutState, spec: DesiredRollout, analysis: Analysis, now: float) -> None:
    assert spec.analysis is not None
    s.failures += analysis.failures
    if analysis.errors:
        s.inconclusive = "; ".join(analysis.errors)
        s.blocked_since = s.blocked_since if s.blocked_since is not None else now
        s.analysis_at = now + min(spec.analysis.interval, READ_RETRY)
    else:
        s.inconclusive = None
        s.analysis_at = now + spec.analysis.interval


def _steps(s: RolloutState, spec: DesiredRollout, now: float, decision: Decision) -> Decision:
    """Run steps until one needs a wait or a weight has to go live."""
    while s.step < s.steps:
        step = spec.steps[s.step]
        if step.weight is not None:
            if abs(s.weight - step.weight) > 1e-6:
                s.previous_weight, s.weight = s.weight, step.weight
                s.step += 1
                s.step_started_at = now
                s.phase = PROGRESSING
                decision.events.append(_event("rollout_step", s))
                decision.weight, decision.again = s.weight, True
                return decision
            s.step += 1
            s.step_started_at = now
            continue
        if step.duration is None:
            s.phase = PAUSED
            decision.wake_at = _analysis_wake(s, spec, None)
            decision.weight = s.weight
            return decision
        s.phase = PROGRESSING
        ends = s.step_started_at + step.duration
        if now < ends or s.inconclusive is not None:  # an unread alarm never lets a pause end
            decision.wake_at = _analysis_wake(s, spec, ends if now < ends else None)
            decision.weight = s.weight
            return decision
        s.step += 1
        s.step_started_at = now
        decision.events.append(_event("rollout_step", s))
    if abs(s.weight - 100) > 1e-6:
        s.previous_weight, s.weight = s.weight, 100.0
        s.phase = PROGRESSING
        decision.weight, decision.again = 100.0, True
        return decision
    s.phase = SUCCEEDED
    s.analysis_at = None
    s.message = s.message if s.message and "promote" in s.message else None
    decision.weight = 100.0
    decision.events.append(_event("rollout_succeeded", s))
    return decision


def _analysis_wake(s: RolloutState, spec: DesiredRollout, other: float | None) -> float | None:
    times = [t for t in (other, s.analysis_at if spec.analysis is not None else None) if t is not None]
    if s.blocked_since is not None:
        times.append(s.blocked_since + spec.progress_deadline + 0.001)
    return min(times) if times else None


def _fail(s: RolloutState, decision: Decision, message: str, phase: str) -> Decision:
    s.phase = phase
    s.message = message
    s.analysis_at = None
    decision.events.append(_event("rollout_failed", s))
    decision.wake_at = None
    decision.again = False
    if phase == FAILED:  # rollback: the stable version alone
        s.previous_weight, s.weight = s.weight, 0.0
        decision.weight, decision.freeze, decision.again = 0.0, False, True
    else:
        decision.weight, decision.freeze = None, True
    return decision


def _deadline_message(spec: DesiredRollout, why: str) -> str:
    return f"no progress for {spec.progress_deadline:g} s (progressDeadline): {why}; halted"


def _split_text(split: Split) -> str:
    return "{" + ", ".join(f"{k[:12]}: {percent_json(v)}" for k, v in sorted(split.items())) + "}"


def _event(name: str, s: RolloutState) -> Event:
    return (
        name,
        {
            "resource": s.resource,
            "rollout_id": s.id,
            "phase": s.phase,
            "step": s.shown_step,
            "steps": s.steps,
            "weight": percent_json(s.weight),
            "stable": s.labels.get("stable", s.stable),
            "target": s.labels.get("target", s.target),
            "failures": s.failures,
            "message": s.message,
            "revision": s.revision,
        },
    )


# --------------------------------------------- what a share means for each kind


def alias_target(alias: DesiredAlias) -> str | None:
    """The one version an alias spec wants at 100 %, if that is what it wants."""
    return _single(alias.routing)


def alias_override(alias: DesiredAlias, state: RolloutState, weight: float) -> DesiredAlias:
    return replace(alias, routing=split_for(state.stable, state.target, weight))


def stage_split(deployment_sha: str | None, canary_sha: str | None, canary_percent: float | None) -> Split | None:
    """A live stage as a split of definition hashes (None: a deployment whose definition is unknown)."""
    if deployment_sha is None:
        return None
    if canary_sha is None or canary_percent is None or canary_percent <= 0:
        return {deployment_sha: 100.0} if canary_sha is None else None
    if canary_sha == deployment_sha:
        return {deployment_sha: 100.0}
    return {deployment_sha: round(100.0 - canary_percent, 6), canary_sha: round(canary_percent, 6)}


def stage_override(stage: DesiredStage, state: RolloutState, weight: float, stable: Definition) -> DesiredStage:
    """The stage at ``weight``: the stable deployment, the target as its canary, or (100) the target promoted."""
    if weight >= 100:
        return replace(stage, canary=None)
    if weight <= 0:
        return replace(stage, definition=stable, canary=None)
    canary = DesiredCanary(percent_traffic=round(float(weight), 6), definition=stage.definition, variables={})
    return replace(stage, definition=stable, canary=canary)
