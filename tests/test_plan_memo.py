"""A plan with a ``PlanMemo`` equals a plan without one, over random sequences of desired and live states.

A daemon's pass after a commit keeps the last plan per resource and reuses it
for every resource whose spec object, live object and context (the instance,
its function's published versions, a mapping's domain and API id) are the
ones planned last time.  Each step below replaces some objects (desired and
live, as a commit and an apply do), changes versions, domains, API ids,
ownership and the instance, or rebuilds everything as new equal objects (a
whole read); the memo's plan must equal a fresh one: actions, orphans,
warnings, or the same errors.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from reconciler.engine import Config, Engine
from reconciler.errors import PlanError
from reconciler.model import (
    LiveAlias,
    LiveApi,
    LiveBasePathMapping,
    LiveCanary,
    LiveDeployment,
    LiveStage,
    LiveState,
)
from reconciler.plan import PlanMemo, make_plan
from reconciler.specs import (
    Definition,
    DesiredAlias,
    DesiredApi,
    DesiredBasePathMapping,
    DesiredCanary,
    DesiredStage,
    DesiredState,
    Location,
    canonical_json,
)
from tests.support import SpecRepo

APIS = ("orders", "billing")
FUNCTIONS = ("fn", "other")
DOMAINS = ("a.example.com", "b.example.com")


def definition(title: str) -> Definition:
    """A definition whose one integration invokes ``fn:${stageVariables.lambdaAlias}`` (permission warnings)."""
    uri = (
        "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/"
        "arn:aws:lambda:us-east-1:123456789012:function:fn:${stageVariables.lambdaAlias}/invocations"
    )
    integration = {"type": "aws_proxy", "httpMethod": "POST", "uri": uri}
    data = {
        "openapi": "3.0.1",
        "info": {"title": title, "version": "1"},
        "paths": {"/items": {"get": {"x-amazon-apigateway-integration": integration}}},
    }
    body = canonical_json(data)
    sha = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return Definition(sha, body, f"specs/{title}.yaml", frozenset({"lambdaAlias"}))


DEFINITIONS = [definition(f"d{i}") for i in range(3)]


def at(line: int) -> Location:
    return Location("specs/all.yaml", line, {"metadata.name": line + 1, "spec.routing": line + 3})


def desired_stage(rng: random.Random, api: str, name: str) -> DesiredStage:
    canary = None
    if rng.random() < 0.2:
        canary = DesiredCanary(float(rng.choice([0, 10])), rng.choice(DEFINITIONS), {"lambdaAlias": "a1"})
    variables = {"lambdaAlias": rng.choice(["a0", "a1", "a2", "gone"])}
    return DesiredStage(
        api, name, rng.choice([None, "stage"]), rng.choice(DEFINITIONS), variables, canary, at(rng.randrange(99)),
        adopt=rng.random() < 0.3,
    )  # fmt: skip


def desired_alias(rng: random.Random, function: str, name: str) -> DesiredAlias:
    routing = rng.choice([{"1": 100.0}, {"2": 100.0}, {"1": 90.0, "2": 10.0}] * 5 + [{"3": 100.0}])
    return DesiredAlias(function, name, rng.choice([None, "alias"]), routing, at(rng.randrange(99)),
                        adopt=rng.random() < 0.3)  # fmt: skip


def desired_mapping(rng: random.Random, domain: str, base: str) -> DesiredBasePathMapping:
    api = rng.choice(APIS)
    return DesiredBasePathMapping(domain, base, api, f"s{rng.randrange(3)}", at(rng.randrange(99)), rng.random() < 0.3)


def owner(rng: random.Random) -> dict[str, Any]:
    return rng.choice([{"managed": True, "owner": None}] * 25 + [{"managed": False}, {"managed": True, "owner": "x"}])


def live_stage(rng: random.Random, api: str, name: str, desired: DesiredStage | None) -> LiveStage:
    sha = rng.choice(DEFINITIONS).sha256 if desired is None or rng.random() < 0.3 else desired.definition.sha256
    variables = dict(desired.variables) if desired is not None and rng.random() < 0.7 else {"lambdaAlias": "a0"}
    canary = LiveCanary(10.0, sha, "dep", {"lambdaAlias": "a1"}) if rng.random() < 0.1 else None
    return LiveStage(api, name, "dep", sha, None, variables, canary, "https://x", **owner(rng))


def live_alias(rng: random.Random, function: str, name: str, desired: DesiredAlias | None) -> LiveAlias:
    routing = dict(desired.routing) if desired is not None and rng.random() < 0.7 else {"1": 100.0}
    return LiveAlias(function, name, None, routing, revision_id=f"r{rng.randrange(9)}", **owner(rng))


def live_mapping(rng: random.Random, domain: str, base: str) -> LiveBasePathMapping:
    api = rng.choice(APIS)
    return LiveBasePathMapping(domain, base, f"id-{api}", api, f"s{rng.randrange(3)}", **owner(rng))


def fresh(state: Any) -> Any:
    """The same state as new, equal objects (what a whole read of the backend, or a cold load, gives)."""
    copy = replace(state)
    for name in ("apis", "stages", "aliases", "mappings"):
        setattr(copy, name, {key: replace(value) for key, value in getattr(state, name).items()})
    return copy


def step(rng: random.Random, desired: DesiredState, live: LiveState) -> tuple[DesiredState, LiveState]:
    """A few random changes; containers copied (as each pass gets them), untouched objects kept."""
    desired = replace(desired, apis=dict(desired.apis), stages=dict(desired.stages), aliases=dict(desired.aliases),
                      mappings=dict(desired.mappings))  # fmt: skip
    live = replace(live, apis=dict(live.apis), stages=dict(live.stages), aliases=dict(live.aliases),
                   mappings=dict(live.mappings), versions={f: set(v) for f, v in live.versions.items()},
                   domains=set(live.domains))  # fmt: skip
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(15)
        stage_key = (rng.choice(APIS), f"s{rng.randrange(4)}")
        alias_key = (rng.choice(FUNCTIONS), f"a{rng.randrange(4)}")
        mapping_key = (rng.choice(DOMAINS), rng.choice(["(none)", "v1", "v2"]))
        if op == 0:
            desired.stages[stage_key] = desired_stage(rng, *stage_key)
        elif op == 1:
            desired.stages.pop(stage_key, None)
        elif op == 2:
            desired.aliases[alias_key] = desired_alias(rng, *alias_key)
        elif op == 3:
            desired.aliases.pop(alias_key, None)
        elif op == 4:
            put_or_drop(rng, desired.mappings, mapping_key, partial(desired_mapping, rng, *mapping_key), 0.7)
        elif op == 5:
            put_or_drop(
                rng, live.stages, stage_key, partial(live_stage, rng, *stage_key, desired.stages.get(stage_key))
            )
        elif op == 6:
            made = partial(live_alias, rng, *alias_key, desired.aliases.get(alias_key))
            put_or_drop(rng, live.aliases, alias_key, made)
        elif op == 7:
            put_or_drop(rng, live.mappings, mapping_key, partial(live_mapping, rng, *mapping_key))
        elif op == 8:  # a version published, or a function gone
            function = rng.choice(FUNCTIONS)
            if rng.random() < 0.85:
                live.versions[function] = {"$LATEST", "1", "2"} | ({"3"} if rng.random() < 0.5 else set())
            else:
                live.versions.pop(function, None)
        elif op == 9:
            live.domains = set(DOMAINS) if rng.random() < 0.85 else {DOMAINS[0]}
        elif op == 10:  # an API made again (another id), or gone
            api = rng.choice(APIS)
            if rng.random() < 0.8:
                live.apis[api] = LiveApi(api, f"id-{api}-{rng.randrange(3)}", None, DEFINITIONS[0].sha256, True)
            else:
                live.apis.pop(api, None)
        elif op == 11:
            api = rng.choice(APIS)
            desired.apis[api] = DesiredApi(api, None, rng.choice(DEFINITIONS), at(1))
        elif op == 12:  # a whole read, a cold load
            live, desired = fresh(live), fresh(desired)
        elif op == 13:  # everything live this instance's (adopted or fixed by hand)
            for name in ("stages", "aliases", "mappings"):
                found = getattr(live, name)
                for key, value in found.items():
                    if not value.managed or value.owner is not None:
                        found[key] = replace(value, managed=True, owner=None)
        else:  # mostly back to the instance that owns what is live
            live.instance = "other" if rng.random() < 0.1 else "default"
    return desired, live


def put_or_drop(
    rng: random.Random, resources: dict[Any, Any], key: Any, make: Callable[[], Any], chance: float = 0.8
) -> None:
    """``resources[key] = make()`` with probability ``chance``, else the key removed."""
    if rng.random() < chance:
        resources[key] = make()
    else:
        resources.pop(key, None)


def plan_or_issues(desired: DesiredState, live: LiveState, prune: bool, memo: PlanMemo | None = None) -> Any:
    try:
        return make_plan(desired, live, prune=prune, memo=memo)
    except PlanError as exc:
        return ("error", exc.issues)


@pytest.mark.parametrize("seed", range(8))
def test_a_plan_with_a_memo_equals_a_plan_without(seed: int) -> None:
    rng = random.Random(seed)
    desired = DesiredState(revision="r", apis={api: DesiredApi(api, None, DEFINITIONS[0], at(1)) for api in APIS})
    live = LiveState(apis={api: LiveApi(api, f"id-{api}", None, DEFINITIONS[0].sha256, True) for api in APIS},
                     versions={"fn": {"$LATEST", "1", "2"}, "other": {"$LATEST", "1", "2"}},
                     domains=set(DOMAINS))  # fmt: skip
    memo = PlanMemo()
    reused = planned = errors = 0
    for number in range(150):
        desired, live = step(rng, desired, live)
        prune = rng.random() < 0.5
        expected = plan_or_issues(desired, live, prune)
        assert plan_or_issues(desired, live, prune, memo) == expected, number
        reused += memo.reused
        planned += len(desired.stages) + len(desired.aliases) + len(desired.mappings)
        errors += isinstance(expected, tuple)
    # the memo was used for most resources, and both plans and errors were compared
    assert reused > planned // 2, (reused, planned)
    assert 10 < errors < 140, errors


def test_a_resource_whose_objects_did_not_change_is_not_planned_again() -> None:
    rng = random.Random(7)
    desired = DesiredState(revision="r", apis={"orders": DesiredApi("orders", None, DEFINITIONS[0], at(1))})
    for i in range(200):
        desired.aliases[("fn", f"a{i}")] = desired_alias(rng, "fn", f"a{i}")
    live = LiveState(apis={"orders": LiveApi("orders", "id-orders", None, DEFINITIONS[0].sha256, True)},
                     versions={"fn": {"$LATEST", "1", "2", "3"}})  # fmt: skip
    memo = PlanMemo()
    first = make_plan(desired, live, memo=memo)
    assert memo.reused == 0 and len(first.actions) == 200
    changed = replace(desired, aliases=dict(desired.aliases))
    changed.aliases[("fn", "a7")] = replace(desired.aliases[("fn", "a7")], description="new")
    second = make_plan(changed, live, memo=memo)
    assert memo.reused == 199
    assert second == make_plan(changed, live)
    live.versions["fn"] = {"$LATEST", "1"}  # versions gone: every alias's check runs again
    third = plan_or_issues(changed, live, False, memo)
    assert memo.reused == 0
    assert third == plan_or_issues(changed, live, False)
    assert third[0] == "error"


def test_a_mapping_is_planned_again_when_its_api_is_made_again() -> None:
    """Nothing of the mapping's own objects changed, but its API has another id: the mapping moves."""
    desired = DesiredState(revision="r", apis={"orders": DesiredApi("orders", None, DEFINITIONS[0], at(1))})
    desired.stages[("orders", "s0")] = DesiredStage("orders", "s0", None, DEFINITIONS[0], {"lambdaAlias": "a"},
                                                    None, at(5))  # fmt: skip
    desired.mappings[(DOMAINS[0], "v1")] = DesiredBasePathMapping(DOMAINS[0], "v1", "orders", "s0", at(9))
    stage = LiveStage("orders", "s0", "dep", DEFINITIONS[0].sha256, None, {"lambdaAlias": "a"}, None, "u", True)
    mapping = LiveBasePathMapping(DOMAINS[0], "v1", "id-1", "orders", "s0", True)
    live = LiveState(apis={"orders": LiveApi("orders", "id-1", None, DEFINITIONS[0].sha256, True)},
                     stages={("orders", "s0"): stage}, mappings={(DOMAINS[0], "v1"): mapping},
                     deployments={"orders": {DEFINITIONS[0].sha256: LiveDeployment("dep", DEFINITIONS[0].sha256, "r")}},
                     domains={DOMAINS[0]})  # fmt: skip
    memo = PlanMemo()
    assert make_plan(desired, live, memo=memo).actions == ()
    live = replace(live, apis={"orders": LiveApi("orders", "id-2", None, DEFINITIONS[0].sha256, True)})
    moved = make_plan(desired, live, memo=memo)
    assert moved == make_plan(desired, live)
    assert [a.action for a in moved.actions] == ["update_base_path_mapping"]


def test_only_a_pass_after_a_commit_reuses_the_last_plan(example_repo: SpecRepo) -> None:
    """The daemon's pass after a commit (``touched_only``) plans with the engine's memo; any other pass (resync,
    start-up, the CLI) plans every resource afresh, so drift anywhere is still found."""
    engine = Engine(Config(repo=str(example_repo.path), state_dir=str(example_repo.state_dir)))
    try:
        assert engine.reconcile().error is None  # creates everything: planned against nothing live
        assert engine.reconcile().error is None  # in sync: the memo now holds every resource's live object
        text = (example_repo.path / "deploy_specs/aliases.yaml").read_text()
        example_repo.write("deploy_specs/aliases.yaml", text.replace("description: test", "description: tested"))
        example_repo.commit("one alias")
        assert engine.reconcile(touched_only=True).error is None
        reused = engine._plan_memo.reused
        assert reused >= 3, reused  # the stages and the two other aliases: the same objects as last time
        assert engine.reconcile().error is None  # a resync
        assert engine._plan_memo.reused == 0
    finally:
        engine.close()
