"""The local backend: AWS's rules and error codes, immutable deployments, atomic and idempotent actions."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.backends.local import LocalBackend, LocalCloud
from reconciler.errors import BackendError, ConflictError
from reconciler.model import DeleteAlias, DeleteStage, LiveState, routing_from_lambda, routing_to_lambda
from reconciler.plan import Plan, make_plan
from reconciler.specs import DesiredState
from tests.support import desired_alias, desired_api, desired_stage, desired_state, make_definition

V1 = make_definition("v1")
V2 = make_definition("v2")
FUNCTION = "orders-handler"


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A local backend on a fresh state dir, with orders-handler versions 1 and 2 published."""
    local = LocalBackend(tmp_path / "state")
    local.cloud.publish_version(FUNCTION)
    local.cloud.publish_version(FUNCTION)
    yield local
    local.close()


@pytest.fixture
def cloud(backend: LocalBackend) -> LocalCloud:
    return backend.cloud


def apply_plan(backend: LocalBackend, desired: DesiredState, prune: bool = False) -> Plan:
    """Plan against the backend's live state and apply every action."""
    plan = make_plan(desired, backend.read(desired), prune=prune)
    for action in plan.actions:
        backend.apply(action)
    return plan


def count(cloud: LocalCloud, table: str) -> int:
    return int(cloud.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def backend_error(call: object, *args: object) -> BackendError:
    with pytest.raises(BackendError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# ------------------------------------------------------------------ Lambda rules


def test_publish_version_numbers_from_one(tmp_path: Path) -> None:
    """Publishing creates the function and numbers its versions 1, 2, 3."""
    cloud = LocalCloud(tmp_path)
    assert [cloud.publish_version("fn") for _ in range(3)] == [1, 2, 3]
    cloud.close()


def test_alias_to_unpublished_version_is_not_found(cloud: LocalCloud) -> None:
    """An alias to a version that was never published fails with ResourceNotFoundException."""
    error = backend_error(cloud.create_alias, FUNCTION, "prod", "7", {}, None, False)
    assert error.code == "ResourceNotFoundException"


def test_alias_weighting_an_unpublished_version_is_not_found(cloud: LocalCloud) -> None:
    """An additional version that was never published fails with ResourceNotFoundException."""
    error = backend_error(cloud.create_alias, FUNCTION, "prod", "1", {"9": 0.1}, None, False)
    assert error.code == "ResourceNotFoundException"


def test_alias_of_missing_function_is_not_found(cloud: LocalCloud) -> None:
    """An alias of a function that does not exist fails with ResourceNotFoundException."""
    error = backend_error(cloud.create_alias, "ghost", "prod", "1", {}, None, False)
    assert error.code == "ResourceNotFoundException"


def test_two_additional_versions_are_refused(cloud: LocalCloud) -> None:
    """Lambda allows at most one additional weighted version."""
    cloud.publish_version(FUNCTION)
    error = backend_error(cloud.create_alias, FUNCTION, "prod", "1", {"2": 0.1, "3": 0.1}, None, False)
    assert error.code == "InvalidParameterValueException"


@pytest.mark.parametrize(
    ("version", "weights"),
    [
        pytest.param("$LATEST", {"1": 0.1}, id="latest-as-primary"),
        pytest.param("1", {"$LATEST": 0.1}, id="latest-as-additional"),
    ],
)
def test_latest_is_never_weighted(cloud: LocalCloud, version: str, weights: dict[str, float]) -> None:
    """$LATEST cannot take part in weighted routing, neither as primary nor as additional version."""
    error = backend_error(cloud.create_alias, FUNCTION, "prod", version, weights, None, False)
    assert error.code == "InvalidParameterValueException"


def test_latest_alone_is_allowed(cloud: LocalCloud, backend: LocalBackend) -> None:
    """An alias may point at $LATEST without weights."""
    cloud.create_alias(FUNCTION, "dev", "$LATEST", {}, None, False)
    assert backend.read(DesiredState()).aliases[(FUNCTION, "dev")].routing == {"$LATEST": 100.0}


def test_weight_outside_zero_to_one_is_refused(cloud: LocalCloud) -> None:
    """AdditionalVersionWeights are fractions in 0.0-1.0."""
    error = backend_error(cloud.create_alias, FUNCTION, "prod", "1", {"2": 5.0}, None, False)
    assert error.code == "ValidationException"


def test_all_digit_alias_name_is_refused(cloud: LocalCloud) -> None:
    """An alias name of digits only would be mistaken for a version."""
    error = backend_error(cloud.create_alias, FUNCTION, "123", "1", {}, None, False)
    assert error.code == "ValidationException"


def test_duplicate_alias_is_a_conflict(cloud: LocalCloud) -> None:
    """Creating an alias twice through the cloud API fails with ResourceConflictException."""
    cloud.create_alias(FUNCTION, "prod", "1", {}, None, False)
    error = backend_error(cloud.create_alias, FUNCTION, "prod", "1", {}, None, False)
    assert error.code == "ResourceConflictException"


def test_stale_revision_id_is_a_retryable_conflict(cloud: LocalCloud) -> None:
    """UpdateAlias with an outdated RevisionId fails with a temporary ConflictError (HTTP 412)."""
    cloud.create_alias(FUNCTION, "prod", "1", {}, None, False)
    with pytest.raises(ConflictError) as caught:
        cloud.update_alias(FUNCTION, "prod", "2", {}, None, revision_id="stale")
    assert caught.value.code == "PreconditionFailedException" and caught.value.temporary


@pytest.mark.parametrize(
    ("routing", "lambda_form"),
    [
        pytest.param({"1": 100.0}, ("1", {}), id="one-version"),
        pytest.param({"1": 95.0, "2": 5.0}, ("1", {"2": 0.05}), id="weighted"),
        pytest.param({"1": 12.5, "2": 87.5}, ("2", {"1": 0.125}), id="primary-is-the-heavier"),
        pytest.param({"$LATEST": 100.0}, ("$LATEST", {}), id="latest"),
    ],
)
def test_routing_round_trips_through_lambda_form(
    routing: dict[str, float], lambda_form: tuple[str, dict[str, float]]
) -> None:
    """version -> percent maps to (FunctionVersion, AdditionalVersionWeights) and back unchanged."""
    assert routing_to_lambda(routing) == lambda_form
    assert routing_from_lambda(*lambda_form) == routing


# ------------------------------------------------------------- API Gateway rules


def test_deployments_are_immutable_snapshots(cloud: LocalCloud) -> None:
    """Importing a new definition never changes an existing deployment."""
    api_id = cloud.create_rest_api("orders", None, managed=False)
    cloud.put_rest_api(api_id, V1.body, V1.sha256, None)
    first = cloud.create_deployment(api_id, "v1", None)
    cloud.put_rest_api(api_id, V2.body, V2.sha256, None)
    cloud.create_deployment(api_id, "v2", None)
    row = cloud.db.execute("SELECT definition, definition_sha256 FROM deployments WHERE id = ?", (first,)).fetchone()
    assert (row["definition"], row["definition_sha256"]) == (V1.body, V1.sha256)


def test_deployment_of_an_empty_api_is_refused(cloud: LocalCloud) -> None:
    """An API without a definition cannot be deployed (BadRequestException)."""
    api_id = cloud.create_rest_api("orders", None, managed=False)
    assert backend_error(cloud.create_deployment, api_id, "x", None).code == "BadRequestException"


def test_stage_on_unknown_deployment_is_not_found(cloud: LocalCloud) -> None:
    """A stage must point at a deployment of its own API."""
    api_id = cloud.create_rest_api("orders", None, managed=False)
    error = backend_error(cloud.create_stage, api_id, "prod", "nope", None, {}, None, False)
    assert error.code == "NotFoundException"


def test_duplicate_api_name_is_a_conflict(cloud: LocalCloud) -> None:
    """Two REST APIs cannot share a name in the simulation (names identify APIs)."""
    cloud.create_rest_api("orders", None, managed=False)
    assert backend_error(cloud.create_rest_api, "orders", None, False).code == "ConflictException"


# ----------------------------------------------------- actions: idempotent, atomic


def full_desired() -> DesiredState:
    return desired_state(
        desired_api(V1),
        desired_stage("prod", V1, variables={"lambdaAlias": "prod"}),
        desired_alias("prod", {"1": 95.0, "2": 5.0}),
    )


def test_applying_a_plan_converges(backend: LocalBackend) -> None:
    """After applying a plan, planning again yields nothing."""
    apply_plan(backend, full_desired())
    assert make_plan(full_desired(), backend.read(full_desired())).actions == ()


def test_applying_the_same_plan_twice_is_harmless(backend: LocalBackend, cloud: LocalCloud) -> None:
    """Every action of a first apply can be applied again: no error and no duplicates."""
    plan = apply_plan(backend, full_desired())
    assert [a.action for a in plan.actions] == ["create_api", "create_deployment", "create_stage", "create_alias"]
    for action in plan.actions:
        backend.apply(action)
    counts = [count(cloud, t) for t in ("rest_apis", "deployments", "stages", "aliases")]
    assert counts == [1, 1, 1, 1]


def test_update_alias_applied_twice_is_harmless(backend: LocalBackend) -> None:
    """A repeated alias update (e.g. after a crash before it was recorded) finds its work done."""
    apply_plan(backend, full_desired())
    moved = desired_state(desired_alias("prod", {"2": 100.0}))
    (update,) = make_plan(moved, backend.read(moved)).actions
    backend.apply(update)
    backend.apply(update)
    assert backend.read(moved).aliases[(FUNCTION, "prod")].routing == {"2": 100.0}


def test_delete_actions_applied_twice_are_harmless(backend: LocalBackend, cloud: LocalCloud) -> None:
    """Pruning a stage and an alias twice deletes them once and then does nothing."""
    apply_plan(backend, full_desired())
    empty = desired_state(desired_api(V1))
    plan = make_plan(empty, backend.read(empty), prune=True)
    assert [a.action for a in plan.actions] == ["delete_stage", "delete_alias"]
    for action in plan.actions + plan.actions:
        backend.apply(action)
    assert count(cloud, "stages") == count(cloud, "aliases") == 0


def test_revert_points_the_stage_at_the_first_deployment(backend: LocalBackend, cloud: LocalCloud) -> None:
    """Going back to an old definition reuses its deployment id and creates none."""
    apply_plan(backend, full_desired())
    first = backend.read(full_desired()).stages[("orders", "prod")].deployment_id
    v2 = desired_state(desired_api(V2), desired_stage("prod", V2, variables={"lambdaAlias": "prod"}))
    apply_plan(backend, v2)
    assert backend.read(v2).stages[("orders", "prod")].deployment_id != first
    plan = apply_plan(backend, full_desired())
    assert "create_deployment" not in [a.action for a in plan.actions]
    assert backend.read(full_desired()).stages[("orders", "prod")].deployment_id == first
    assert count(cloud, "deployments") == 2


def test_a_failing_action_leaves_no_partial_write(backend: LocalBackend, cloud: LocalCloud) -> None:
    """An action interrupted half way (here: by SQLite, after its first write) is rolled back whole."""
    apply_plan(backend, full_desired())
    v2 = desired_state(desired_api(V2), desired_stage("prod", V2, variables={"lambdaAlias": "prod"}))
    deployment = next(a for a in make_plan(v2, backend.read(v2)).actions if a.action == "create_deployment")
    interrupt = {"armed": False}

    def on_statement(sql: str) -> None:
        interrupt["armed"] = interrupt["armed"] or sql.startswith("INSERT INTO deployments")

    def on_progress() -> int:
        if interrupt["armed"]:
            interrupt["armed"] = False
            return 1  # abort the statement in flight, as a crash would
        return 0

    cloud.db.set_trace_callback(on_statement)
    cloud.db.set_progress_handler(on_progress, 1)
    try:
        with pytest.raises(BackendError):
            backend.apply(deployment)
    finally:
        cloud.db.set_progress_handler(None, 1)
        cloud.db.set_trace_callback(None)
    live = backend.read(v2)
    assert live.apis["orders"].definition_sha256 == V1.sha256  # the import before the insert was undone
    assert count(cloud, "deployments") == 1


def test_sqlite_errors_surface_as_temporary_backend_errors(backend: LocalBackend, tmp_path: Path) -> None:
    """A locked database is a temporary BackendError, not a raw sqlite3 exception."""
    apply_plan(backend, full_desired())
    other = sqlite3.connect(backend.cloud.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    backend.cloud.db.execute("PRAGMA busy_timeout = 0")
    moved = desired_state(desired_alias("prod", {"2": 100.0}))
    (update,) = make_plan(moved, backend.read(moved)).actions
    try:
        with pytest.raises(BackendError) as caught:
            backend.apply(update)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert caught.value.temporary


# --------------------------------------------------------- unmanaged resources


def test_create_stage_never_takes_over_an_unmanaged_stage(backend: LocalBackend, cloud: LocalCloud) -> None:
    """A stage someone created by hand is refused (ConflictException), not overwritten."""
    apply_plan(backend, desired_state(desired_api(V1), desired_stage("prod", V1)))
    api_id = cloud.api_id("orders")
    deployment = backend.read(DesiredState()).deployments["orders"][V1.sha256].id
    cloud.create_stage(api_id, "manual", deployment, "by hand", {"x": "1"}, None, managed=False)
    stage = desired_stage("manual", V1)
    create = make_plan(desired_state(desired_api(V1), stage), LiveState())
    action = next(a for a in create.actions if a.action == "create_stage")
    assert backend_error(backend.apply, action).code == "ConflictException"
    assert backend.read(DesiredState()).stages[("orders", "manual")].variables == {"x": "1"}


def test_create_api_never_takes_over_an_unmanaged_api(backend: LocalBackend, cloud: LocalCloud) -> None:
    """An API someone created by hand is refused (ConflictException), its definition untouched."""
    api_id = cloud.create_rest_api("orders", "by hand", managed=False)
    cloud.put_rest_api(api_id, V2.body, V2.sha256, "by hand")
    create = make_plan(desired_state(desired_api(V1)), LiveState())
    (action,) = create.actions
    assert backend_error(backend.apply, action).code == "ConflictException"
    assert backend.read(DesiredState()).apis["orders"].definition_sha256 == V2.sha256


def test_create_alias_never_takes_over_an_unmanaged_alias(backend: LocalBackend, cloud: LocalCloud) -> None:
    """An alias someone created by hand is refused (ResourceConflictException), its routing untouched."""
    cloud.create_alias(FUNCTION, "prod", "2", {}, None, managed=False)
    desired = desired_state(desired_alias("prod", {"1": 100.0}))
    create = make_plan(desired, LiveState(versions={FUNCTION: {"1", "2"}}))
    (action,) = create.actions
    assert backend_error(backend.apply, action).code == "ResourceConflictException"
    assert backend.read(desired).aliases[(FUNCTION, "prod")].routing == {"2": 100.0}


def test_deletes_never_remove_unmanaged_resources(backend: LocalBackend, cloud: LocalCloud) -> None:
    """Delete actions naming hand-made resources leave them in place."""
    apply_plan(backend, full_desired())
    deployment = backend.read(DesiredState()).deployments["orders"][V1.sha256].id
    cloud.create_stage(cloud.api_id("orders"), "manual", deployment, None, {}, None, managed=False)
    cloud.create_alias(FUNCTION, "manual", "1", {}, None, managed=False)
    for action in (DeleteStage(api="orders", stage="manual"), DeleteAlias(function=FUNCTION, alias="manual")):
        with contextlib.suppress(BackendError):  # refusing loudly is as good as skipping quietly
            backend.apply(action)
    live = backend.read(DesiredState())
    assert ("orders", "manual") in live.stages and (FUNCTION, "manual") in live.aliases
    assert not live.stages[("orders", "manual")].managed
