"""The aws backend's apply-time guards, with botocore's ``Stubber``: the world changed between plan and apply.

A stage or alias the plan meant to create may exist by then: made by hand
(never touched), or by this tool in an attempt whose answer was lost (taken
over and updated).  A resource gone since the read is a "re-plan", and a
delete of something already gone is done.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.backends.aws import AwsBackend
from reconciler.backends.aws_model import deployment_description
from reconciler.errors import BackendError, ConflictError
from reconciler.model import CreateAlias, CreateStage, DeleteAlias, DeleteStage, UpdateAlias, UpdateStage
from tests.aws.test_requests_stubbed import MAIN, MANAGED, OTHER, Stubbed, backend, expect_invoke_grant, stubs

__all__ = ["backend", "stubs"]  # the stubbed backend and its read, shared with test_requests_stubbed

ALIAS_ARN = "arn:aws:lambda:us-east-1:123456789012:function:orders-handler:beta"


def create_stage(stage: str = "beta", api: str = "orders") -> CreateStage:
    return CreateStage(
        api=api, stage=stage, description=None, definition=MAIN, variables={"lambdaAlias": "prod"}, canary=None
    )


def create_alias(alias: str = "beta") -> CreateAlias:
    return CreateAlias(function="orders-handler", alias=alias, description="beta", routing={"1": 100.0})


def stage_exists(stubs: Stubbed, tags: dict[str, str] | None) -> None:
    """CreateStage of beta answers 409; GetStage shows beta on deployment d2, with ``tags``."""
    stubs.apigateway.add_client_error(
        "create_stage",
        service_error_code="ConflictException",
        service_message="Stage already exists",
        http_status_code=409,
    )
    found: dict[str, object] = {"stageName": "beta", "deploymentId": "d2", "variables": {"lambdaAlias": "prod"}}
    if tags is not None:
        found["tags"] = tags
    stubs.apigateway.add_response("get_stage", found, {"restApiId": "a1", "stageName": "beta"})


def test_a_stage_made_by_hand_between_plan_and_apply_is_never_touched(backend: AwsBackend, stubs: Stubbed) -> None:
    """CreateStage finds the stage exists and is unmarked: the action fails naming it, and nothing is updated."""
    stage_exists(stubs, tags=None)
    with pytest.raises(BackendError) as caught:
        backend.apply(create_stage())
    assert "Stage/orders/beta" in str(caught.value) and "not managed by reconciler" in str(caught.value)


def test_a_stage_of_another_instance_between_plan_and_apply_is_never_touched(
    backend: AwsBackend, stubs: Stubbed
) -> None:
    """CreateStage finds the stage exists and is another instance's: refused, naming that instance."""
    stage_exists(stubs, tags={**MANAGED, "reconciler:instance": "blue"})
    with pytest.raises(BackendError) as caught:
        backend.apply(create_stage())
    assert "'blue'" in str(caught.value)


def test_a_stage_this_tool_created_in_a_lost_attempt_is_updated(backend: AwsBackend, stubs: Stubbed) -> None:
    """CreateStage finds its own stage (an earlier answer was lost): it moves it where the plan wanted it."""
    stage_exists(stubs, tags=MANAGED)
    stubs.apigateway.add_response(
        "update_stage",
        {"stageName": "beta", "deploymentId": "d1", "variables": {"lambdaAlias": "prod"}, "tags": MANAGED},
        {
            "restApiId": "a1",
            "stageName": "beta",
            "patchOperations": [{"op": "replace", "path": "/deploymentId", "value": "d1"}],
        },
    )
    expect_invoke_grant(stubs.lambda_)
    backend.apply(create_stage())


def alias_exists(stubs: Stubbed, description: str) -> None:
    stubs.lambda_.add_client_error(
        "create_alias",
        service_error_code="ResourceConflictException",
        service_message=f"Alias already exists: {ALIAS_ARN}",
        http_status_code=409,
    )
    stubs.lambda_.add_response(
        "get_alias",
        {"Name": "beta", "FunctionVersion": "2", "Description": description, "RevisionId": "rev-9"},
        {"FunctionName": "orders-handler", "Name": "beta"},
    )


def test_an_alias_made_by_hand_between_plan_and_apply_is_never_touched(backend: AwsBackend, stubs: Stubbed) -> None:
    """CreateAlias finds the alias exists without the marker: the action fails naming it; no UpdateAlias."""
    alias_exists(stubs, "made in the console")
    with pytest.raises(BackendError) as caught:
        backend.apply(create_alias())
    assert "Alias/orders-handler/beta" in str(caught.value) and "not managed by reconciler" in str(caught.value)


def test_an_alias_this_tool_created_in_a_lost_attempt_is_updated_with_its_revision(
    backend: AwsBackend, stubs: Stubbed
) -> None:
    """CreateAlias finds its own alias: UpdateAlias moves it, guarded by the RevisionId GetAlias returned."""
    alias_exists(stubs, "[reconciler] beta")
    stubs.lambda_.add_response(
        "update_alias",
        {"Name": "beta", "FunctionVersion": "1", "RevisionId": "rev-10"},
        {
            "FunctionName": "orders-handler",
            "Name": "beta",
            "FunctionVersion": "1",
            "Description": "[reconciler] beta",
            "RoutingConfig": {"AdditionalVersionWeights": {}},
            "RevisionId": "rev-9",
        },
    )
    backend.apply(create_alias())


def test_create_alias_failing_otherwise_is_not_taken_for_a_conflict(backend: AwsBackend, stubs: Stubbed) -> None:
    """Only a conflict leads to GetAlias: any other CreateAlias error is the action's error."""
    stubs.lambda_.add_client_error(
        "create_alias", service_error_code="ResourceNotFoundException", service_message="Function not found"
    )
    with pytest.raises(BackendError) as caught:
        backend.apply(create_alias())
    assert caught.value.code == "ResourceNotFoundException"


def test_an_alias_deleted_since_the_read_is_a_conflict_to_re_plan(backend: AwsBackend, stubs: Stubbed) -> None:
    """UpdateAlias answered "Alias not found" becomes a temporary ConflictError: the next pass re-plans."""
    stubs.lambda_.add_client_error(
        "update_alias",
        service_error_code="ResourceNotFoundException",
        service_message="Alias not found: arn:aws:lambda:us-east-1:123456789012:function:orders-handler:prod",
        http_status_code=404,
    )
    action = UpdateAlias(
        function="orders-handler", alias="prod", description="production", routing={"1": 100.0}, revision_id="rev-1"
    )
    with pytest.raises(ConflictError) as caught:
        backend.apply(action)
    assert caught.value.temporary is True and "re-plan" in str(caught.value)


def test_a_stage_of_an_api_that_is_gone_asks_to_re_plan(backend: AwsBackend, stubs: Stubbed) -> None:
    """A stage action naming an API the read did not find is a not-found error saying to re-plan; no request."""
    with pytest.raises(BackendError) as caught:
        backend.apply(create_stage(api="payments"))
    assert caught.value.code == "NotFoundException" and "re-plan" in str(caught.value)


def test_a_stage_on_a_definition_never_deployed_asks_to_re_plan(backend: AwsBackend, stubs: Stubbed) -> None:
    """A stage moved to a definition the API has no deployment of (even after reading the API again) is a
    not-found error saying to re-plan."""
    stubs.apigateway.add_response(
        "get_deployments",
        {"items": [{"id": "d1", "description": deployment_description(MAIN.sha256, "r1")}]},
        {"restApiId": "a1", "limit": 500},
    )
    stubs.apigateway.add_response("get_stages", {"item": []}, {"restApiId": "a1"})
    action = UpdateStage(
        api="orders",
        stage="prod",
        description=None,
        definition=replace(OTHER, sha256="9" * 64),
        variables={"lambdaAlias": "prod"},
        canary=None,
    )
    with pytest.raises(BackendError) as caught:
        backend.apply(action)
    assert caught.value.code == "NotFoundException" and "no deployment of definition 999999999999" in str(caught.value)


def test_deleting_a_stage_already_gone_is_done(backend: AwsBackend, stubs: Stubbed) -> None:
    """DeleteStage answered NotFoundException counts as deleted (someone was first); the action succeeds."""
    stubs.apigateway.add_client_error("delete_stage", service_error_code="NotFoundException", http_status_code=404)
    backend.apply(DeleteStage(api="orders", stage="prod"))


def test_deleting_an_alias_already_gone_is_done(backend: AwsBackend, stubs: Stubbed) -> None:
    """DeleteAlias answered ResourceNotFoundException counts as deleted; the action succeeds."""
    stubs.lambda_.add_client_error("delete_alias", service_error_code="ResourceNotFoundException", http_status_code=404)
    backend.apply(DeleteAlias(function="orders-handler", alias="prod"))


def test_a_delete_refused_for_another_reason_fails(backend: AwsBackend, stubs: Stubbed) -> None:
    """Only "already gone" is success: a delete refused otherwise is the action's error."""
    stubs.apigateway.add_client_error("delete_stage", service_error_code="BadRequestException", http_status_code=400)
    with pytest.raises(BackendError) as caught:
        backend.apply(DeleteStage(api="orders", stage="prod"))
    assert caught.value.code == "BadRequestException"
