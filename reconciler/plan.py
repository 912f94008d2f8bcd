"""The plan: ``DesiredState`` x ``LiveState`` -> ordered, frozen list of actions.

Pure (no I/O), one small function per kind.  Deployments are content
addressed: a stage whose definition hash already has a deployment is pointed
back at it, so a revert creates nothing new.  Managed resources missing from
the specs are orphans (deleted only with ``prune``); unmanaged ones are never
touched.  The engine applies ``Plan.actions`` in order; ``plan`` prints them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from reconciler.errors import PlanError, SpecIssue
from reconciler.model import (
    ACTION_ORDER,
    Action,
    AdoptAlias,
    AdoptApi,
    AdoptBasePathMapping,
    AdoptStage,
    Change,
    CreateAlias,
    CreateApi,
    CreateBasePathMapping,
    CreateDeployment,
    CreateStage,
    DeleteAlias,
    DeleteBasePathMapping,
    DeleteStage,
    LiveAlias,
    LiveApi,
    LiveBasePathMapping,
    LiveCanary,
    LiveStage,
    LiveState,
    PlanWarning,
    UpdateAlias,
    UpdateApi,
    UpdateBasePathMapping,
    UpdateStage,
    owner_of,
    percent_json,
    version_key,
)
from reconciler.openapi import STAGE_VARIABLE_REF, lambda_integrations, lambda_targets
from reconciler.settings import StageSettings, endpoint_change_problem
from reconciler.specs import (
    LATEST,
    Definition,
    DesiredAlias,
    DesiredApi,
    DesiredBasePathMapping,
    DesiredCanary,
    DesiredStage,
    DesiredState,
    Location,
)


def routing_json(routing: dict[str, float] | None) -> dict[str, float | int] | None:
    if routing is None:
        return None
    return {version: percent_json(p) for version, p in sorted(routing.items(), key=lambda kv: version_key(kv[0]))}


@dataclass(frozen=True)
class Plan:
    revision: str | None
    actions: tuple[Action, ...]
    orphans: tuple[str, ...] = ()
    warnings: tuple[PlanWarning, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.actions

    def as_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "in_sync": self.in_sync,
            "actions": [a.as_json() for a in self.actions],
            "orphans": list(self.orphans),
            "warnings": [w.as_json() for w in self.warnings],
        }


# ------------------------------------------------------------------ planning


@dataclass(frozen=True)
class _Planned:
    """What planning one resource gave, and from what: its spec and live objects (compared by identity) and
    whatever else of the live state it read (``context``, compared by value)."""

    spec: Any
    current: Any
    context: Any
    creates: tuple[Action, ...]
    updates: tuple[Action, ...]
    issues: tuple[SpecIssue, ...]


class PlanMemo:
    """What the last plan made of each stage, alias and mapping, kept by a long-lived engine between plans.

    Planning is pure and the objects it is given are immutable: a daemon's
    desired state and its backend's kept live state hand the same objects
    again for every resource a commit did not touch, so a resource whose spec
    object, live object and context are those planned last time gets the same
    actions and issues without being compared again (and a stage the same
    permission problems).  A plan with a memo equals one without
    (``tests/test_plan_memo.py``); an empty memo plans everything.
    """

    def __init__(self) -> None:
        self.kinds: dict[str, dict[Any, Any]] = {}
        self.orders: dict[str, tuple[set[Any], list[Any]]] = {}  # kind -> its keys, and them sorted
        self.instance: str | None = None  # the instance the last plan was for (ownership depends on it)
        self.reused = 0  # resources the last plan took from the memo


def _in_order(resources: Mapping[Any, Any], memo: PlanMemo | None, label: str) -> list[Any]:
    """``sorted(resources)``: the last plan's list when the keys are the same (comparing the key sets is a tenth
    of sorting 5,000 keys again)."""
    if memo is None:
        return sorted(resources)
    known = memo.orders.get(label)
    if known is not None and resources.keys() == known[0]:
        return known[1]
    order = sorted(resources)
    memo.orders[label] = (set(resources), order)
    return order


def make_plan(desired: DesiredState, live: LiveState, prune: bool = False, memo: PlanMemo | None = None) -> Plan:
    """Every action that makes ``live`` equal ``desired``, in the safe order."""
    issues: list[SpecIssue] = []
    actions: list[Action] = []
    if memo is not None:
        memo.reused = 0
        if memo.instance != live.instance:  # planned for another instance: ownership answers differ
            memo.kinds.clear()
            memo.instance = live.instance
    actions += plan_apis(desired, live, issues)
    actions += plan_deployments(desired, live, memo)
    actions += plan_stages(desired, live, issues, memo)
    actions += plan_aliases(desired, live, issues, memo)
    actions += plan_mappings(desired, live, issues, memo)
    orphans = find_orphans(desired, live)
    if prune:
        actions += orphans  # ordered by kind below: mappings first, then stages, then aliases
    if issues:
        raise PlanError(issues, desired.revision)
    rank = {name: i for i, name in enumerate(ACTION_ORDER)}
    ordered = sorted(actions, key=lambda a: rank[a.action])  # stable: each kind keeps its own order
    orphaned = () if prune else tuple(o.resource for o in orphans)
    pruned = {(o.function, o.alias) for o in orphans if prune and isinstance(o, DeleteAlias)}
    return Plan(desired.revision, tuple(ordered), orphaned, tuple(plan_permissions(desired, live, pruned, memo)))


def _unmanaged(issues: list[SpecIssue], location: Location, what: str) -> None:
    issues.append(
        SpecIssue(
            location.file,
            location.line_of("metadata.name"),
            "metadata.name",
            f"{what} already exists and is not managed by reconciler; to take it over set `adopt: true` under "
            "metadata (the plan then shows what changes), else rename it in the spec or delete it by hand",
        )
    )


def _foreign(issues: list[SpecIssue], location: Location, what: str, owner: str, instance: str) -> None:
    issues.append(
        SpecIssue(
            location.file,
            location.line_of("metadata.name"),
            "metadata.name",
            f"{what} is managed by reconciler instance {owner!r}, not by this instance {instance!r}; expected a "
            f"resource of this instance (never taken from another): rename it, or remove it from {owner!r}'s specs "
            "and prune it there first",
        )
    )


def take_over(
    current: LiveApi | LiveStage | LiveAlias | LiveBasePathMapping,
    adopt: bool,
    live: LiveState,
    location: Location,
    what: str,
    issues: list[SpecIssue],
) -> bool | None:
    """Whether an existing resource is adopted now (True), already this instance's (False), or off limits (None)."""
    owner = owner_of(current)
    if owner == live.instance:
        return False
    if owner is not None:
        _foreign(issues, location, what, owner, live.instance)
        return None
    if not adopt:
        _unmanaged(issues, location, what)
        return None
    return True


def _changed(changes: dict[str, Change], name: str, old: Any, new: Any) -> None:
    if old != new:
        changes[name] = (old, new)


def plan_apis(desired: DesiredState, live: LiveState, issues: list[SpecIssue]) -> list[Action]:
    actions: list[Action] = []
    for name in sorted(desired.apis):
        api: DesiredApi = desired.apis[name]
        current = live.apis.get(name)
        if current is None:
            created = {"description": api.description, "definition_sha256": api.definition.sha256}
            created.update(api.settings.created())
            actions.append(
                CreateApi(
                    api=name,
                    description=api.description,
                    definition=api.definition,
                    settings=api.settings,
                    changes={field: (None, value) for field, value in created.items()},
                )
            )
            continue
        adopting = take_over(current, api.adopt, live, api.location, f"RestApi {name!r}", issues)
        if adopting is None:
            continue
        if adopting:
            actions.append(AdoptApi(api=name, instance=live.instance, changes={"owner": (None, live.instance)}))
        changes: dict[str, Change] = {}
        _changed(changes, "description", current.description or None, api.description or None)
        _changed(changes, "definition_sha256", current.definition_sha256, api.definition.sha256)
        changes.update(api.settings.changes(current.endpoint_type, current.vpc_endpoint_ids, current.tags))
        if "endpointType" in changes:
            problem = endpoint_change_problem(current.endpoint_type, changes["endpointType"][1])
            if problem is not None:
                location = api.location
                issues.append(
                    SpecIssue(location.file, location.line_of("spec.endpointType"), "spec.endpointType", problem)
                )
                continue
        if changes:
            actions.append(
                UpdateApi(
                    api=name,
                    description=api.description,
                    definition=api.definition,
                    settings=api.settings,
                    changes=changes,
                )
            )
    return actions


def _stage_definitions(stage: DesiredStage) -> list[Definition]:
    found = [stage.definition]
    if stage.canary is not None:
        found.append(stage.canary.definition)
    return found


def plan_deployments(desired: DesiredState, live: LiveState, memo: PlanMemo | None = None) -> list[Action]:
    """One deployment per (API, definition hash) that no deployment has yet."""
    needed: dict[str, dict[str, Definition]] = {}
    for key in _in_order(desired.stages, memo, "stages"):
        stage = desired.stages[key]
        if stage.api not in desired.apis:
            continue
        for definition in _stage_definitions(stage):
            needed.setdefault(stage.api, {})[definition.sha256] = definition
    actions: list[Action] = []
    for api in sorted(needed):
        existing = live.deployments.get(api, {})
        main = desired.apis[api].definition
        missing = [d for sha, d in needed[api].items() if sha not in existing]
        # the API's own definition last, so an importing backend ends on it
        missing.sort(key=lambda d: (d.sha256 == main.sha256, d.sha256))
        for definition in missing:
            actions.append(
                CreateDeployment(
                    api=api,
                    definition=definition,
                    api_definition=main,
                    revision=desired.revision,
                    fail_on_warnings=desired.apis[api].settings.failOnWarnings,
                    changes={"deployment": (None, definition.sha256)},
                )
            )
    return actions


def canary_json(canary: DesiredCanary | LiveCanary | None) -> dict[str, Any] | None:
    """The comparable/printable form of a canary."""
    if canary is None:
        return None
    if isinstance(canary, DesiredCanary):
        sha: str | None = canary.definition.sha256
    else:
        sha = canary.definition_sha256
    return {
        "percentTraffic": percent_json(canary.percent_traffic),
        "definition_sha256": sha,
        "variables": dict(sorted(canary.variables.items())),
        **({"useStageCache": True} if canary.use_stage_cache else {}),
    }


def _stage_action(cls: type[CreateStage | UpdateStage], stage: DesiredStage, changes: dict[str, Change]) -> Action:
    return cls(
        api=stage.api,
        stage=stage.name,
        description=stage.description,
        definition=stage.definition,
        variables=stage.variables,
        canary=stage.canary,
        settings=stage.settings,
        changes=changes,
    )


def settings_changes(current: StageSettings | None, desired: StageSettings) -> dict[str, Change]:
    """One change per stage setting that differs (``current`` None: a new stage, non-default settings only)."""
    if current == desired:  # the common case, without rendering either
        return {}
    new = desired.as_json()
    old = (current or StageSettings()).as_json()
    if current is None:
        default = StageSettings().as_json()
        return {name: (None, value) for name, value in new.items() if value != default[name]}
    return {name: (old[name], new[name]) for name in new if old[name] != new[name]}


class _Desired(Protocol):
    """What every desired resource kind has that planning it needs."""

    @property
    def adopt(self) -> bool: ...

    @property
    def location(self) -> Location: ...


_D = TypeVar("_D", bound=_Desired)
_L = TypeVar("_L", LiveStage, LiveAlias, LiveBasePathMapping)


@dataclass(frozen=True)
class _Kind(Generic[_D, _L]):
    """How one kind of resource is planned: its name in messages, and its create, adopt and update actions."""

    what: Callable[[_D], str]
    create: Callable[[_D], Action | None]  # None: it cannot be created (the issue is already said)
    adopt: Callable[[_D, _L], Action]
    update: Callable[[_D, _L, bool], Action | None]  # (spec, live, adopting now); None: nothing differs
    ready: Callable[[_D], bool] = lambda _: True  # checked before any action of the resource
    # what else of the live state planning a resource reads besides its live object (for ``PlanMemo``)
    context: Callable[[_D], Any] = lambda _: None


def _plan_kind(
    kind: _Kind[_D, _L],
    desired: Mapping[Any, _D],
    current_of: Mapping[Any, _L],
    live: LiveState,
    issues: list[SpecIssue],
    memo: PlanMemo | None = None,
    label: str = "",
) -> list[Action]:
    """Creates (in key order), then adoptions and updates: the shape every kind of a stage's side shares."""
    creates: list[Action] = []
    updates: list[Action] = []
    last: dict[Any, _Planned] = memo.kinds.get(label, {}) if memo is not None else {}
    kept: dict[Any, _Planned] = {}
    for key in _in_order(desired, memo, label):
        spec = desired[key]
        current = current_of.get(key)
        if memo is None:
            _plan_one(kind, spec, current, live, issues, creates, updates)
            continue
        context = kind.context(spec)
        planned = last.get(key)
        if planned is not None and planned.spec is spec and planned.current is current and planned.context == context:
            memo.reused += 1
        else:
            marks = (len(creates), len(updates), len(issues))
            _plan_one(kind, spec, current, live, issues, creates, updates)
            made = (tuple(creates[marks[0] :]), tuple(updates[marks[1] :]), tuple(issues[marks[2] :]))
            planned = _Planned(spec, current, context, *made)
            del creates[marks[0] :], updates[marks[1] :], issues[marks[2] :]
        creates += planned.creates
        updates += planned.updates
        issues += planned.issues
        kept[key] = planned
    if memo is not None:
        memo.kinds[label] = kept  # this plan's resources only: a removed one is forgotten
    return creates + updates


def _plan_one(
    kind: _Kind[_D, _L],
    spec: _D,
    current: _L | None,
    live: LiveState,
    issues: list[SpecIssue],
    creates: list[Action],
    updates: list[Action],
) -> None:
    adopting = False
    if current is not None:
        taken = take_over(current, spec.adopt, live, spec.location, kind.what(spec), issues)
        if taken is None:
            return
        adopting = taken
    if not kind.ready(spec):
        return
    if current is None:
        created = kind.create(spec)
        if created is not None:
            creates.append(created)
        return
    if adopting:
        updates.append(kind.adopt(spec, current))
    updated = kind.update(spec, current, adopting)
    if updated is not None:
        updates.append(updated)


def plan_stages(
    desired: DesiredState, live: LiveState, issues: list[SpecIssue], memo: PlanMemo | None = None
) -> list[Action]:
    def create(stage: DesiredStage) -> Action:
        created: dict[str, Change] = {
            "definition_sha256": (None, stage.definition.sha256),
            "variables": (None, dict(sorted(stage.variables.items()))),
            "canary": (None, canary_json(stage.canary)),
            **({"description": (None, stage.description)} if stage.description else {}),
            **settings_changes(None, stage.settings),
        }
        return _stage_action(CreateStage, stage, created)

    def adopt(stage: DesiredStage, current: LiveStage) -> Action:
        return AdoptStage(
            api=stage.api, stage=stage.name, instance=live.instance, changes={"owner": (None, live.instance)}
        )

    def update(stage: DesiredStage, current: LiveStage, adopting: bool) -> Action | None:
        changes: dict[str, Change] = {}
        _changed(changes, "description", current.description or None, stage.description or None)
        _changed(changes, "definition_sha256", current.definition_sha256, stage.definition.sha256)
        if current.variables != stage.variables:  # compared as data; sorted for people only when it changed
            changes["variables"] = (dict(sorted(current.variables.items())), dict(sorted(stage.variables.items())))
        _changed(changes, "canary", canary_json(current.canary), canary_json(stage.canary))
        if current.settings is not None:  # a backend that reports settings: they are reconciled too
            changes.update(settings_changes(current.settings, stage.settings))
        return _stage_action(UpdateStage, stage, changes) if changes else None

    kind = _Kind[DesiredStage, LiveStage](lambda s: f"stage {s.name!r} of API {s.api!r}", create, adopt, update)
    return _plan_kind(kind, desired.stages, live.stages, live, issues, memo, "stages")


def _check_versions(alias: DesiredAlias, live: LiveState, issues: list[SpecIssue]) -> bool:
    versions = live.versions.get(alias.function)
    if versions is None:
        issues.append(
            SpecIssue(
                alias.location.file,
                alias.location.line_of("spec.function"),
                "spec.function",
                f"Alias {alias.name!r}: function {alias.function!r} does not exist in the backend; "
                "expected an existing Lambda function",
            )
        )
        return False
    missing = sorted((v for v in alias.routing if v not in versions), key=version_key)
    if missing:
        published = ", ".join(sorted((v for v in versions if v != LATEST), key=version_key)) or "none"
        issues.append(
            SpecIssue(
                alias.location.file,
                alias.location.line_of("spec.routing"),
                "spec.routing",
                f"Alias {alias.name!r}: version {', '.join(missing)} of {alias.function!r} is not published; "
                f"expected one of the published versions ({published}) or $LATEST",
            )
        )
        return False
    return True


def plan_aliases(
    desired: DesiredState, live: LiveState, issues: list[SpecIssue], memo: PlanMemo | None = None
) -> list[Action]:
    def create(alias: DesiredAlias) -> Action:
        return CreateAlias(
            function=alias.function,
            alias=alias.name,
            description=alias.description,
            routing=alias.routing,
            changes={
                "routing": (None, routing_json(alias.routing)),
                **({"description": (None, alias.description)} if alias.description else {}),
            },
        )

    def adopt(alias: DesiredAlias, current: LiveAlias) -> Action:
        return AdoptAlias(
            function=alias.function,
            alias=alias.name,
            instance=live.instance,
            revision_id=current.revision_id,
            changes={"owner": (None, live.instance)},
        )

    def update(alias: DesiredAlias, current: LiveAlias, adopting: bool) -> Action | None:
        changes: dict[str, Change] = {}
        _changed(changes, "description", current.description or None, alias.description or None)
        if current.routing != alias.routing:  # compared as data; formatted only when it changed
            changes["routing"] = (routing_json(current.routing), routing_json(alias.routing))
        if not changes:
            return None
        return UpdateAlias(
            function=alias.function,
            alias=alias.name,
            description=alias.description,
            routing=alias.routing,
            revision_id=None if adopting else current.revision_id,  # adopting writes the alias first
            changes=changes,
        )

    kind = _Kind[DesiredAlias, LiveAlias](
        lambda a: f"alias {a.name!r} of function {a.function!r}",
        create,
        adopt,
        update,
        ready=lambda alias: _check_versions(alias, live, issues),
        context=_versions_of(live, memo),
    )
    return _plan_kind(kind, desired.aliases, live.aliases, live, issues, memo, "aliases")


def _versions_of(live: LiveState, memo: PlanMemo | None) -> Callable[[DesiredAlias], frozenset[str] | None]:
    """An alias's context: its function's published versions, one frozenset per function and plan (the last
    plan's when equal, so that comparing contexts is mostly an identity check)."""
    last: dict[str, frozenset[str]] = memo.kinds.get("versions", {}) if memo is not None else {}
    now: dict[str, frozenset[str]] = {}
    if memo is not None:
        memo.kinds["versions"] = now

    def versions(alias: DesiredAlias) -> frozenset[str] | None:
        found = now.get(alias.function)
        if found is None:
            published = live.versions.get(alias.function)
            if published is None:
                return None
            found = last.get(alias.function)
            if found is None or found != published:
                found = frozenset(published)
            now[alias.function] = found
        return found

    return versions


def _mapping_target(mapping: LiveBasePathMapping) -> tuple[str, str | None]:
    """(API, stage) a live mapping points at, the API by name when the read knows it, else by id."""
    return mapping.api or mapping.rest_api_id, mapping.stage


def plan_mappings(
    desired: DesiredState, live: LiveState, issues: list[SpecIssue], memo: PlanMemo | None = None
) -> list[Action]:
    """Base path mappings: created, adopted or moved to the stage their spec names (its domain must exist)."""

    def create(mapping: DesiredBasePathMapping) -> Action | None:
        if mapping.domain not in live.domains:
            issues.append(
                SpecIssue(
                    mapping.location.file,
                    mapping.location.line_of("spec.domain"),
                    "spec.domain",
                    f"custom domain name {mapping.domain!r} does not exist in the backend; expected an existing "
                    "domain (create it with its certificate first: in API Gateway, or for the local backend "
                    f"`reconciler local create-domain {mapping.domain}`)",
                )
            )
            return None
        return CreateBasePathMapping(
            domain=mapping.domain,
            base_path=mapping.base_path,
            api=mapping.api,
            stage=mapping.stage,
            changes={"api": (None, mapping.api), "stage": (None, mapping.stage)},
        )

    def adopt(mapping: DesiredBasePathMapping, current: LiveBasePathMapping) -> Action:
        return AdoptBasePathMapping(
            domain=mapping.domain,
            base_path=mapping.base_path,
            instance=live.instance,
            changes={"owner": (None, live.instance)},
        )

    def update(mapping: DesiredBasePathMapping, current: LiveBasePathMapping, adopting: bool) -> Action | None:
        api = live.apis.get(mapping.api)
        old_api, old_stage = _mapping_target(current)
        changes: dict[str, Change] = {}
        if api is None or api.id != current.rest_api_id:  # an API not made yet is another API
            changes["api"] = (old_api, mapping.api)
        _changed(changes, "stage", old_stage, mapping.stage)
        if not changes:
            return None
        return UpdateBasePathMapping(
            domain=mapping.domain,
            base_path=mapping.base_path,
            api=mapping.api,
            stage=mapping.stage,
            changes=changes,
        )

    def context(mapping: DesiredBasePathMapping) -> tuple[bool, str | None]:
        api = live.apis.get(mapping.api)
        return mapping.domain in live.domains, None if api is None else api.id

    kind = _Kind[DesiredBasePathMapping, LiveBasePathMapping](
        lambda m: f"base path mapping {m.domain}/{m.base_path}", create, adopt, update, context=context
    )
    return _plan_kind(kind, desired.mappings, live.mappings, live, issues, memo, "mappings")


Orphan = DeleteBasePathMapping | DeleteStage | DeleteAlias


def find_orphans(desired: DesiredState, live: LiveState) -> list[Orphan]:
    """Resources this instance manages that no spec names any more (never another instance's)."""
    orphans: list[Orphan] = []
    # the keys no spec names, found by set difference (in C) and only they sorted and looked at
    for domain, base_path in sorted(live.mappings.keys() - desired.mappings.keys()):
        mapping = live.mappings[(domain, base_path)]
        if owner_of(mapping) == live.instance:
            api, stage = _mapping_target(mapping)
            orphans.append(
                DeleteBasePathMapping(
                    domain=domain, base_path=base_path, changes={"api": (api, None), "stage": (stage, None)}
                )
            )
    for api, stage in sorted(live.stages.keys() - desired.stages.keys()):
        current = live.stages[(api, stage)]
        if owner_of(current) == live.instance:
            orphans.append(
                DeleteStage(api=api, stage=stage, changes={"definition_sha256": (current.definition_sha256, None)})
            )
    for function, alias in sorted(live.aliases.keys() - desired.aliases.keys()):
        current_alias = live.aliases[(function, alias)]
        if owner_of(current_alias) == live.instance:
            orphans.append(
                DeleteAlias(
                    function=function, alias=alias, changes={"routing": (routing_json(current_alias.routing), None)}
                )
            )
    return orphans


Problems = tuple[tuple[str, str, str | None], ...]  # (integration, problem or "", alias named or None)


def plan_permissions(
    desired: DesiredState,
    live: LiveState,
    pruned: Collection[tuple[str, str]] = (),
    memo: PlanMemo | None = None,
) -> list[PlanWarning]:
    """A warning per stage Lambda integration whose invoke permission the backend cannot grant (DESIGN §10).

    The backend grants API Gateway ``lambda:InvokeFunction`` on an alias this instance manages (a spec here,
    or one it owns) for every stage naming it; an unqualified function, an unset variable or another alias
    gets no grant, and on AWS such a stage answers 500: said here, at plan time, never left silent.
    """
    seen: dict[tuple[str, tuple[tuple[str, str | None], ...]], Problems] = {}
    warnings: list[PlanWarning] = []
    last: dict[Any, tuple[DesiredStage, Problems]] = memo.kinds.get("permissions", {}) if memo is not None else {}
    kept: dict[Any, tuple[DesiredStage, Problems]] = {}
    granted: dict[str, bool] = {}  # per alias named, for this plan (thousands of stages name the same few)
    for key in _in_order(desired.stages, memo, "stages"):
        stage = desired.stages[key]
        known = last.get(key)
        problems = known[1] if known is not None and known[0] is stage else _stage_problems(stage, seen)
        if memo is not None:
            kept[key] = (stage, problems)
        found: dict[tuple[str, str | None], str] = {}
        for integration, message, alias in problems:  # whether a grant is made depends on the others: asked anew
            if alias is not None:
                if alias not in granted:
                    granted[alias] = _granted(alias, desired, live, pruned)
                if granted[alias]:
                    continue
            text = message or (
                f"alias {alias} is not managed by reconciler (no Alias spec of this instance); grant API "
                "Gateway lambda:InvokeFunction on it yourself"
            )
            found.setdefault((integration, alias), text)
        warnings += [
            PlanWarning(f"Stage/{stage.api}/{stage.name}", text, integration=integration, alias=alias)
            for (integration, alias), text in found.items()
        ]
    if memo is not None:
        memo.kinds["permissions"] = kept
    return warnings


def _stage_problems(
    stage: DesiredStage, seen: dict[tuple[str, tuple[tuple[str, str | None], ...]], Problems]
) -> Problems:
    """The permission problems and aliases of a stage's definition and its canary's, in that order."""
    out: list[tuple[str, str, str | None]] = []
    sides = [(stage.definition, stage.variables)]
    if stage.canary is not None:
        sides.append((stage.canary.definition, {**stage.variables, **stage.canary.variables}))
    for definition, variables in sides:
        if not definition.body:  # known only by its hash (a rollout's stable deployment): checked when it went out
            continue
        named = _variables_named(definition.sha256, definition.body)  # only these can change the answer
        key = (definition.sha256, tuple((name, variables.get(name)) for name in named))
        if key not in seen:
            seen[key] = _problems_of(definition.sha256, definition.body, key[1])
        out += seen[key]
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _lambda_integrations(sha256: str, body: str) -> tuple[tuple[str, str], ...]:
    """A definition's Lambda integrations, parsed once per definition (a daemon plans the same ones every pass).

    A rollout's stand-in for a definition the specs no longer hold has no body: nothing to say about it.
    """
    return tuple(lambda_integrations(json.loads(body))) if body else ()


@functools.lru_cache(maxsize=256)
def _variables_named(sha256: str, body: str) -> tuple[str, ...]:
    """The stage variables a definition's Lambda integration URIs name (the only ones its answer depends on)."""
    return tuple(sorted({n for _, uri in _lambda_integrations(sha256, body) for n in STAGE_VARIABLE_REF.findall(uri)}))


@functools.lru_cache(maxsize=4096)
def _problems_of(
    sha256: str, body: str, values: tuple[tuple[str, str | None], ...]
) -> tuple[tuple[str, str, str | None], ...]:
    """``_integration_problems`` of a definition under the values of the variables it names, kept across plans
    (a daemon plans the same few combinations over thousands of stages every pass)."""
    variables = {name: value for name, value in values if value is not None}
    return tuple(_integration_problems(_lambda_integrations(sha256, body), variables))


def _integration_problems(
    integrations: tuple[tuple[str, str], ...], variables: dict[str, str]
) -> list[tuple[str, str, str | None]]:
    """(integration, problem, None) for a target that cannot be told; (integration, "", alias) per alias named."""
    out: list[tuple[str, str, str | None]] = []
    for integration, uri in integrations:
        targets, problems = lambda_targets(uri, variables)
        out += [(integration, problem, None) for problem in problems]
        out += [(integration, "", f"{function}:{alias}") for function, alias, _, _ in sorted(targets)]
    return out


def _granted(alias: str, desired: DesiredState, live: LiveState, pruned: Collection[tuple[str, str]]) -> bool:
    """Whether the backend grants invoke permissions on ``function:alias``: a spec of it here, or this instance's
    (and not pruned by this plan)."""
    function, _, name = alias.partition(":")
    if (function, name) in desired.aliases:
        return True
    current = live.aliases.get((function, name))
    return current is not None and owner_of(current) == live.instance and (function, name) not in pruned
