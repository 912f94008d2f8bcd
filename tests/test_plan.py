"""Unit tests of ``make_plan``: desired and live state built directly, actions asserted field by field."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.errors import PlanError
from reconciler.model import ACTION_ORDER, LiveState
from reconciler.plan import Plan, make_plan
from reconciler.specs import DesiredCanary, DesiredState
from tests.support import (
    SPEC_FILE,
    desired_alias,
    desired_api,
    desired_stage,
    desired_state,
    live_alias,
    live_api,
    live_canary,
    live_stage,
    live_state,
    make_definition,
)

V0 = make_definition("v0")
V1 = make_definition("v1")
V2 = make_definition("v2")
CANARY = make_definition("canary")
PROD_VARS = {"lambdaAlias": "prod"}


def summary(plan: Plan) -> list[tuple[str, str, dict[str, Any]]]:
    """Each action as (action, resource, {field: (old, new)})."""
    return [(a.action, a.resource, dict(a.changes)) for a in plan.actions]


def in_sync_live() -> LiveState:
    """Live state equal to ``in_sync_desired()``."""
    return live_state(
        live_api(V1),
        live_stage("prod", V1, variables=PROD_VARS),
        live_alias("prod", {"1": 100.0}),
        deployments={"orders": [V1]},
    )


def in_sync_desired() -> DesiredState:
    return desired_state(
        desired_api(V1), desired_stage("prod", V1, variables=PROD_VARS), desired_alias("prod", {"1": 100.0})
    )


CASES = [
    pytest.param(
        in_sync_desired(),
        in_sync_live(),
        [],
        id="in-sync-plans-nothing",
    ),
    pytest.param(
        in_sync_desired(),
        live_state(),
        [
            (
                "create_api",
                "RestApi/orders",
                {
                    "description": (None, None),
                    "definition_sha256": (None, V1.sha256),
                    "endpointType": (None, "REGIONAL"),
                },
            ),
            ("create_deployment", "RestApi/orders", {"deployment": (None, V1.sha256)}),
            (
                "create_stage",
                "Stage/orders/prod",
                {"definition_sha256": (None, V1.sha256), "variables": (None, PROD_VARS), "canary": (None, None)},
            ),
            ("create_alias", "Alias/orders-handler/prod", {"routing": (None, {"1": 100})}),
        ],
        id="empty-live-creates-everything-in-order",
    ),
    pytest.param(
        desired_state(desired_api(V2), desired_stage("prod", V2, variables=PROD_VARS)),
        live_state(live_api(V1), live_stage("prod", V1, variables=PROD_VARS), deployments={"orders": [V1]}),
        [
            ("update_api", "RestApi/orders", {"definition_sha256": (V1.sha256, V2.sha256)}),
            ("create_deployment", "RestApi/orders", {"deployment": (None, V2.sha256)}),
            ("update_stage", "Stage/orders/prod", {"definition_sha256": (V1.sha256, V2.sha256)}),
        ],
        id="new-definition-creates-one-deployment",
    ),
    pytest.param(
        desired_state(desired_api(V1), desired_stage("prod", V1, variables=PROD_VARS)),
        live_state(live_api(V2), live_stage("prod", V2, variables=PROD_VARS), deployments={"orders": [V1, V2]}),
        [
            ("update_api", "RestApi/orders", {"definition_sha256": (V2.sha256, V1.sha256)}),
            ("update_stage", "Stage/orders/prod", {"definition_sha256": (V2.sha256, V1.sha256)}),
        ],
        id="revert-reuses-the-old-deployment",
    ),
    pytest.param(
        desired_state(desired_api(V1), desired_stage("prod", V1), desired_stage("v0", V0)),
        live_state(live_api(V1), live_stage("prod", V1), deployments={"orders": [V1]}),
        [
            ("create_deployment", "RestApi/orders", {"deployment": (None, V0.sha256)}),
            (
                "create_stage",
                "Stage/orders/v0",
                {
                    "definition_sha256": (None, V0.sha256),
                    "variables": (None, {"lambdaAlias": "v0"}),
                    "canary": (None, None),
                },
            ),
        ],
        id="pinned-stage-gets-its-own-deployment",
    ),
    pytest.param(
        desired_state(desired_api(V2), desired_stage("prod", V1), desired_stage("v2", V2)),
        live_state(live_api(V2), live_stage("prod", V1), live_stage("v2", V2), deployments={"orders": [V1, V2]}),
        [],
        id="pinned-stage-in-sync-plans-nothing",
    ),
    pytest.param(
        desired_state(desired_api(V1), desired_stage("prod", V1, variables={"lambdaAlias": "blue"})),
        live_state(live_api(V1), live_stage("prod", V1, variables=PROD_VARS), deployments={"orders": [V1]}),
        [("update_stage", "Stage/orders/prod", {"variables": (PROD_VARS, {"lambdaAlias": "blue"})})],
        id="variable-change-updates-the-stage-only",
    ),
    pytest.param(
        desired_state(desired_api(V1), desired_stage("prod", V1, description="Production")),
        live_state(live_api(V1), live_stage("prod", V1), deployments={"orders": [V1]}),
        [("update_stage", "Stage/orders/prod", {"description": (None, "Production")})],
        id="stage-description-change",
    ),
    pytest.param(
        desired_state(desired_api(V1, description="Orders v2")),
        live_state(live_api(V1, description="Orders"), deployments={"orders": [V1]}),
        [("update_api", "RestApi/orders", {"description": ("Orders", "Orders v2")})],
        id="api-description-change-needs-no-deployment",
    ),
    pytest.param(
        desired_state(desired_api(V1), desired_alias("prod", {"1": 95.0, "2": 5.0})),
        live_state(live_api(V1), live_alias("prod", {"1": 100.0}), deployments={"orders": [V1]}),
        [("update_alias", "Alias/orders-handler/prod", {"routing": ({"1": 100}, {"1": 95, "2": 5})})],
        id="alias-weight-change-updates-the-alias-only",
    ),
    pytest.param(
        desired_state(desired_alias("prod", {"1": 95.0, "2": 5.0})),
        live_state(live_alias("prod", {"2": 5.000000, "1": 95.0})),
        [],
        id="alias-routing-order-and-float-form-do-not-matter",
    ),
    pytest.param(
        desired_state(desired_alias("dev", {"$LATEST": 100.0})),
        live_state(),
        [("create_alias", "Alias/orders-handler/dev", {"routing": (None, {"$LATEST": 100})})],
        id="alias-on-latest-needs-no-published-version",
    ),
    pytest.param(
        desired_state(desired_alias("prod", {"1": 100.0}, description="production")),
        live_state(live_alias("prod", {"1": 100.0}, description="old")),
        [("update_alias", "Alias/orders-handler/prod", {"description": ("old", "production")})],
        id="alias-description-change",
    ),
]


@pytest.mark.parametrize(("desired", "live", "expected"), CASES)
def test_plan_actions(desired: DesiredState, live: LiveState, expected: list[tuple[str, str, dict[str, Any]]]) -> None:
    """make_plan yields exactly the expected actions, with old and new per changed field."""
    assert summary(make_plan(desired, live)) == expected


def canary(percent: float, definition: Any = V1, variables: dict[str, str] | None = None) -> DesiredCanary:
    return DesiredCanary(percent, definition, variables or {"lambdaAlias": "canary"})


def canary_json(percent: float | int, definition: Any, variables: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "percentTraffic": percent,
        "definition_sha256": definition.sha256,
        "variables": variables or {"lambdaAlias": "canary"},
    }


CANARY_CASES = [
    pytest.param(
        canary(10.0),
        live_canary(10.0, V1, {"lambdaAlias": "canary"}),
        [],
        id="same-canary-plans-nothing",
    ),
    pytest.param(
        canary(25.0),
        live_canary(10.0, V1, {"lambdaAlias": "canary"}),
        [("update_stage", "Stage/orders/prod", {"canary": (canary_json(10, V1), canary_json(25, V1))})],
        id="canary-weight-change-needs-no-deployment",
    ),
    pytest.param(
        canary(10.0, variables={"lambdaAlias": "blue"}),
        live_canary(10.0, V1, {"lambdaAlias": "canary"}),
        [
            (
                "update_stage",
                "Stage/orders/prod",
                {"canary": (canary_json(10, V1), canary_json(10, V1, {"lambdaAlias": "blue"}))},
            )
        ],
        id="canary-override-change",
    ),
    pytest.param(
        canary(10.0, CANARY),
        None,
        [
            ("create_deployment", "RestApi/orders", {"deployment": (None, CANARY.sha256)}),
            ("update_stage", "Stage/orders/prod", {"canary": (None, canary_json(10, CANARY))}),
        ],
        id="canary-with-new-definition-creates-its-deployment",
    ),
    pytest.param(
        None,
        live_canary(10.0, V1, {"lambdaAlias": "canary"}),
        [("update_stage", "Stage/orders/prod", {"canary": (canary_json(10, V1), None)})],
        id="canary-removed",
    ),
    pytest.param(
        canary(12.5),
        live_canary(12.5, V1, {"lambdaAlias": "canary"}),
        [],
        id="fractional-canary-in-sync",
    ),
]


@pytest.mark.parametrize(("desired_canary", "live_canary_", "expected"), CANARY_CASES)
def test_canary_changes(
    desired_canary: DesiredCanary | None, live_canary_: Any, expected: list[tuple[str, str, dict[str, Any]]]
) -> None:
    """A canary change updates the stage in place; only an unknown canary definition adds a deployment."""
    desired = desired_state(desired_api(V1), desired_stage("prod", V1, variables=PROD_VARS, canary=desired_canary))
    live = live_state(
        live_api(V1), live_stage("prod", V1, variables=PROD_VARS, canary=live_canary_), deployments={"orders": [V1]}
    )
    assert summary(make_plan(desired, live)) == expected


def test_two_stages_on_one_new_definition_share_one_deployment() -> None:
    """Stages that move to the same new definition need one deployment, not one each."""
    desired = desired_state(desired_api(V2), desired_stage("dev", V2), desired_stage("prod", V2))
    live = live_state(live_api(V1), live_stage("dev", V1), live_stage("prod", V1), deployments={"orders": [V1]})
    actions = [a.action for a in make_plan(desired, live).actions]
    assert actions.count("create_deployment") == 1


def test_api_definition_deployment_comes_last() -> None:
    """Of several new deployments, the API's own definition is created last (so an importing backend ends on it)."""
    desired = desired_state(desired_api(V2), desired_stage("prod", V2), desired_stage("v0", V0))
    plan = make_plan(desired, live_state())
    deployments = [a for a in plan.actions if a.action == "create_deployment"]
    assert [d.changes["deployment"][1] for d in deployments][-1] == V2.sha256
    assert len(deployments) == 2


def orphaned() -> tuple[DesiredState, LiveState]:
    """Specs without the stage 'old' and alias 'old'; both live and managed."""
    desired = desired_state(desired_api(V1), desired_stage("prod", V1), desired_alias("prod", {"1": 100.0}))
    live = live_state(
        live_api(V1),
        live_stage("prod", V1),
        live_stage("old", V1),
        live_alias("prod", {"1": 100.0}),
        live_alias("old", {"2": 100.0}),
        deployments={"orders": [V1]},
    )
    return desired, live


def test_orphans_are_listed_without_prune() -> None:
    """Managed resources no spec names are reported as orphans and nothing is deleted."""
    plan = make_plan(*orphaned())
    assert plan.actions == ()
    assert plan.orphans == ("Stage/orders/old", "Alias/orders-handler/old")


def test_orphans_are_deleted_with_prune() -> None:
    """With prune the orphans become delete actions with their old values."""
    plan = make_plan(*orphaned(), prune=True)
    assert summary(plan) == [
        ("delete_stage", "Stage/orders/old", {"definition_sha256": (V1.sha256, None)}),
        ("delete_alias", "Alias/orders-handler/old", {"routing": ({"2": 100}, None)}),
    ]
    assert plan.orphans == ()


@pytest.mark.parametrize("prune", [pytest.param(False, id="plan"), pytest.param(True, id="prune")])
def test_unmanaged_resources_without_spec_are_never_touched(prune: bool) -> None:
    """Resources a human created (unmanaged) are neither orphans nor deleted."""
    desired = desired_state(desired_api(V1), desired_stage("prod", V1))
    live = live_state(
        live_api(V1),
        live_stage("prod", V1),
        live_stage("manual", V1, managed=False),
        live_alias("manual", {"1": 100.0}, managed=False),
        live_api(V2, name="legacy", managed=False),
        deployments={"orders": [V1]},
    )
    plan = make_plan(desired, live, prune=prune)
    assert plan.actions == () and plan.orphans == ()


CONFLICTS = [
    pytest.param(
        desired_state(desired_api(V2)),
        live_state(live_api(V1, managed=False)),
        "RestApi 'orders'",
        id="unmanaged-api",
    ),
    pytest.param(
        desired_state(desired_api(V1), desired_stage("prod", V1, line=12)),
        live_state(live_api(V1), live_stage("prod", V1, managed=False), deployments={"orders": [V1]}),
        "stage 'prod' of API 'orders'",
        id="unmanaged-stage",
    ),
    pytest.param(
        desired_state(desired_alias("prod", {"1": 100.0}, line=21)),
        live_state(live_alias("prod", {"2": 100.0}, managed=False)),
        "alias 'prod' of function 'orders-handler'",
        id="unmanaged-alias",
    ),
]


@pytest.mark.parametrize(("desired", "live", "what"), CONFLICTS)
def test_unmanaged_resource_named_by_a_spec_is_a_conflict(desired: DesiredState, live: LiveState, what: str) -> None:
    """A spec naming an unmanaged resource is refused with a PlanError at the spec's file and name."""
    with pytest.raises(PlanError) as caught:
        make_plan(desired, live)
    (issue,) = caught.value.issues
    assert issue.file == SPEC_FILE and issue.field == "metadata.name"
    assert what in issue.message and "not managed" in issue.message


def test_missing_alias_version_is_refused_naming_file_and_field() -> None:
    """An alias routing to an unpublished version is a PlanError at spec.routing, naming the version."""
    desired = desired_state(desired_alias("prod", {"1": 90.0, "7": 10.0}, line=33))
    with pytest.raises(PlanError) as caught:
        make_plan(desired, live_state())
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.field) == (SPEC_FILE, 33, "spec.routing")
    assert "version 7" in issue.message and "not published" in issue.message
    assert "published versions (1, 2)" in issue.message  # what there is to choose from, $LATEST aside


def test_missing_alias_version_lists_published_versions_in_numeric_order() -> None:
    """The error lists the versions that do exist numerically (2 before 10), or "none"."""
    desired = desired_state(desired_alias("prod", {"7": 100.0}))
    with pytest.raises(PlanError) as caught:
        make_plan(desired, live_state(versions={"orders-handler": {"$LATEST", "10", "2"}}))
    assert "published versions (2, 10)" in caught.value.issues[0].message
    with pytest.raises(PlanError) as caught:
        make_plan(desired, live_state(versions={"orders-handler": {"$LATEST"}}))
    assert "published versions (none)" in caught.value.issues[0].message


def test_alias_of_missing_function_is_refused_at_spec_function() -> None:
    """An alias of a function the backend does not have is a PlanError at spec.function."""
    desired = desired_state(desired_alias("prod", {"1": 100.0}, function="ghost", line=5))
    with pytest.raises(PlanError) as caught:
        make_plan(desired, live_state())
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.field) == (SPEC_FILE, 5, "spec.function")
    assert "'ghost'" in issue.message


def test_plan_errors_are_all_collected() -> None:
    """Every plan-time problem is reported, not only the first."""
    desired = desired_state(desired_alias("a", {"8": 100.0}), desired_alias("b", {"9": 100.0}))
    with pytest.raises(PlanError) as caught:
        make_plan(desired, live_state())
    assert len(caught.value.issues) == 2


def test_actions_follow_the_documented_order() -> None:
    """A plan with every kind of action lists them as DESIGN §3 orders them."""
    desired = desired_state(
        desired_api(V2),
        desired_stage("prod", V2),
        desired_stage("new", V2),
        desired_alias("prod", {"1": 50.0, "2": 50.0}),
        desired_alias("new", {"2": 100.0}),
    )
    live = live_state(
        live_api(V1),
        live_stage("prod", V1),
        live_stage("old", V1),
        live_alias("prod", {"1": 100.0}),
        live_alias("old", {"1": 100.0}),
        deployments={"orders": [V1]},
    )
    plan = make_plan(desired, live, prune=True)
    assert [a.action for a in plan.actions] == [
        "update_api",
        "create_deployment",
        "create_stage",
        "update_stage",
        "create_alias",
        "update_alias",
        "delete_stage",
        "delete_alias",
    ]
    assert ACTION_ORDER == [
        "create_api",
        "adopt_api",
        "update_api",
        "create_deployment",
        "create_stage",
        "adopt_stage",
        "update_stage",
        "create_alias",
        "adopt_alias",
        "update_alias",
        "create_base_path_mapping",
        "adopt_base_path_mapping",
        "update_base_path_mapping",
        "delete_base_path_mapping",
        "delete_stage",
        "delete_alias",
    ]


def test_plan_json_has_the_documented_shape() -> None:
    """Plan.as_json carries revision, in_sync and actions with [old, new] per field."""
    desired = desired_state(desired_alias("prod", {"1": 95.0, "2": 5.0}), revision="abc123")
    live = live_state(live_alias("prod", {"1": 100.0}))
    assert make_plan(desired, live).as_json() == {
        "revision": "abc123",
        "in_sync": False,
        "actions": [
            {
                "action": "update_alias",
                "resource": "Alias/orders-handler/prod",
                "changes": {"routing": [{"1": 100}, {"1": 95, "2": 5}]},
            }
        ],
        "orphans": [],
        "warnings": [],
    }


def test_update_alias_carries_the_live_revision_id() -> None:
    """An alias update names the RevisionId it was planned against (optimistic concurrency)."""
    plan = make_plan(desired_state(desired_alias("prod", {"2": 100.0})), live_state(live_alias("prod", {"1": 100.0})))
    (action,) = plan.actions
    assert getattr(action, "revision_id", None) == "rev-prod"


def test_every_new_api_is_created_not_only_the_first() -> None:
    """Two APIs the backend lacks each get a create_api, in name order."""
    desired = desired_state(desired_api(V1, name="alpha"), desired_api(V2, name="beta"))
    plan = make_plan(desired, live_state())
    assert [(a.action, a.resource) for a in plan.actions] == [
        ("create_api", "RestApi/alpha"),
        ("create_api", "RestApi/beta"),
    ]
