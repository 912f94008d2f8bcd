"""The engine's side of rollouts: record <-> states, live splits, and the desired state a rollout shapes.

``shape`` runs ``rollout.decide`` for every Alias and Stage and returns the
desired state with each rollout's current share written in (an Alias routing
``{S: 100-w, T: w}``, a Stage canary on the new deployment), so that the one
planner (``plan.make_plan``) makes the actions.  ``analyses`` does the I/O of
the analyses that are due.  Called by the engine; the states live in the
instance record under ``rollouts`` as plain JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.analysis import run_analysis
from reconciler.model import LiveState
from reconciler.rollout import (
    ACTIVE,
    FAILED,
    HALTED,
    Analysis,
    Decision,
    Event,
    RolloutState,
    alias_override,
    alias_target,
    analysis_due,
    decide,
    stage_override,
    stage_split,
)
from reconciler.specs import LATEST, Definition, DesiredCanary, DesiredRollout, DesiredState

ROLLOUTS = "rollouts"  # instance record key: resource -> RolloutState JSON


def load_states(extra: dict[str, Any]) -> dict[str, RolloutState]:
    raw = extra.get(ROLLOUTS)
    if not isinstance(raw, dict):
        return {}
    return {k: RolloutState.from_json(v) for k, v in raw.items() if isinstance(v, dict)}


def save_states(extra: dict[str, Any], states: dict[str, RolloutState]) -> None:
    extra[ROLLOUTS] = {k: s.as_json() for k, s in sorted(states.items())}


def alias_resource(function: str, name: str) -> str:
    return f"Alias/{function}/{name}"


def stage_resource(api: str, name: str) -> str:
    return f"Stage/{api}/{name}"


def specs_by_resource(desired: DesiredState) -> dict[str, DesiredRollout | None]:
    found: dict[str, DesiredRollout | None] = {}
    for (function, name), alias in desired.aliases.items():
        found[alias_resource(function, name)] = alias.rollout
    for (api, name), stage in desired.stages.items():
        found[stage_resource(api, name)] = stage.rollout
    return found


def analyses(states: dict[str, RolloutState], desired: DesiredState, now: float, reader: object) -> dict[str, Analysis]:
    """Run the analyses that are due (alarm reads and HTTP checks: I/O)."""
    done: dict[str, Analysis] = {}
    if not states:
        return done  # an analysis belongs to a rollout under way
    for resource, spec in specs_by_resource(desired).items():
        state = states.get(resource)
        if state is not None and spec is not None and spec.analysis is not None and analysis_due(state, spec, now):
            done[resource] = run_analysis(spec.analysis, reader, state.started_at)
    return done


@dataclass
class Shaped:
    """The desired state with rollouts written in, and what the transitions decided."""

    desired: DesiredState
    states: dict[str, RolloutState] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    again: bool = False
    wake_at: float | None = None
    failed: list[RolloutState] = field(default_factory=list)  # failed/halted rollouts of the specs' own targets

    @property
    def pending(self) -> list[RolloutState]:
        return [s for s in self.states.values() if s.phase in ACTIVE]


def shape(
    states: dict[str, RolloutState],
    desired: DesiredState,
    live: LiveState,
    now: float,
    analyses: dict[str, Analysis] | None = None,
    pinned: bool = False,
) -> Shaped:
    """Every rollout one step further (pure); a pin ends the rollouts under way (pins win)."""
    analyses = analyses or {}
    out = Shaped(replace(desired, aliases=dict(desired.aliases), stages=dict(desired.stages)))
    if pinned:
        for resource, state in states.items():
            if state.active:
                ended = replace(state, phase=FAILED, message="ended: the instance is pinned by `reconciler rollback`")
                out.events.append(("rollout_failed", {"resource": resource, "message": ended.message}))
        return out  # the pinned revision applies as written; the next rollout starts from what it left live
    for key, alias in desired.aliases.items():
        resource = alias_resource(*key)
        if alias.rollout is None and resource not in states:
            continue  # no rollout asked for, none recorded: decide would leave it as written
        current = live.aliases.get(key)
        split = dict(current.routing) if current is not None and current.managed else None
        target = alias_target(alias)
        if target == LATEST or (split is not None and LATEST in split):
            target = None  # $LATEST never takes a weight (Lambda's rule): such a change applies at once
        d = decide(
            states.get(resource), resource, alias.rollout, target, split, now, desired.revision, analyses.get(resource)
        )
        if d.state is not None:
            if d.freeze and current is not None:
                out.desired.aliases[key] = replace(alias, routing=dict(current.routing))
            elif d.weight is not None:
                out.desired.aliases[key] = alias_override(alias, d.state, d.weight)
        _collect(out, resource, d, target, alias.rollout)
    for key, stage in desired.stages.items():
        resource = stage_resource(*key)
        if stage.rollout is None and resource not in states:
            continue  # as for aliases
        live_stage = live.stages.get(key)
        split = None
        if live_stage is not None and live_stage.managed:
            canary = live_stage.canary
            split = stage_split(
                live_stage.definition_sha256,
                canary.definition_sha256 if canary else None,
                canary.percent_traffic if canary else None,
            )
        target = stage.definition.sha256
        d = decide(
            states.get(resource), resource, stage.rollout, target, split, now, desired.revision, analyses.get(resource)
        )
        if d.state is not None:
            deployments = live.deployments.get(stage.api, {})
            for role, sha in (("stable", d.state.stable), ("target", d.state.target)):
                if sha in deployments:
                    d.state.labels[role] = deployments[sha].id
            if d.freeze and live_stage is not None and live_stage.definition_sha256 is not None:
                frozen_canary = None
                if live_stage.canary is not None and live_stage.canary.definition_sha256 is not None:
                    frozen_canary = DesiredCanary(
                        live_stage.canary.percent_traffic,
                        _definition(desired, live_stage.canary.definition_sha256),
                        dict(live_stage.canary.variables),
                    )
                out.desired.stages[key] = replace(
                    stage, definition=_definition(desired, live_stage.definition_sha256), canary=frozen_canary
                )
            elif d.weight is not None:
                out.desired.stages[key] = stage_override(stage, d.state, d.weight, _definition(desired, d.state.stable))
        _collect(out, resource, d, target, stage.rollout)
    return out


def _collect(out: Shaped, resource: str, d: Decision, target: str | None, spec: DesiredRollout | None) -> None:
    if d.state is None:
        return
    out.states[resource] = d.state
    out.events += d.events
    out.again = out.again or d.again
    if d.wake_at is not None:
        out.wake_at = d.wake_at if out.wake_at is None else min(out.wake_at, d.wake_at)
    own = spec is not None and d.state.target == target and d.state.fingerprint == spec.fingerprint
    if own and d.state.phase in (FAILED, HALTED):
        out.failed.append(d.state)


def _definition(desired: DesiredState, sha: str) -> Definition:
    """The definition with hash ``sha``: from the specs if they still have it, else a stand-in.

    The stand-in is enough for the plan: a deployment of ``sha`` exists already
    (the stable version is taken from live), so nothing is imported from it.
    """
    for api in desired.apis.values():
        if api.definition.sha256 == sha:
            return api.definition
    for stage in desired.stages.values():
        if stage.definition.sha256 == sha:
            return stage.definition
        if stage.canary is not None and stage.canary.definition.sha256 == sha:
            return stage.canary.definition
    return Definition(sha256=sha, body="", source=f"the deployment of definition {sha[:12]}")
