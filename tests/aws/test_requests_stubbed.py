"""Exact AWS request shapes where moto falls short, with botocore's ``Stubber``.

AWS behaviour these requests rely on, which moto 5.2 does not reproduce:
* canary settings: AWS keeps ``canarySettings`` on a stage and moves them with
  ``UpdateStage`` patch paths under ``/canarySettings``; moto ignores them
  (and treats ``/canarySettings/deploymentId`` as ``/deploymentId``);
* ``UpdateAlias`` ``RevisionId``: AWS answers 412 ``PreconditionFailedException``
  on a mismatch; moto ignores it;
* routing: AWS validates weights (0.0-1.0, one extra version); moto does not;
* throttling (429) and 5xx, which moto never returns.
Each test stubs the read the plan would have made, then checks one write.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.stub import Stubber

from reconciler.backends.aws import AwsBackend
from reconciler.backends.aws_calls import Rates
from reconciler.backends.aws_model import api_description, deployment_description
from reconciler.errors import BackendError, ConflictError
from reconciler.model import CreateDeployment, CreateStage, LiveCanary, LiveState, UpdateAlias, UpdateStage
from reconciler.specs import Definition, DesiredAlias, DesiredApi, DesiredCanary, DesiredState, Location

SHA1 = "1" * 64
SHA2 = "2" * 64
HERE = Location("deploy_specs/specs.yaml", 1)
URI = (
    "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/"
    "arn:aws:lambda:us-east-1:123456789012:function:orders-handler:${stageVariables.lambdaAlias}/invocations"
)


def _definition(sha: str, title: str) -> Definition:
    body = (
        '{"info":{"title":"' + title + '","version":"1"},"openapi":"3.0.1","paths":{"/orders":{"get":'
        '{"x-amazon-apigateway-integration":{"httpMethod":"POST","type":"aws_proxy","uri":"' + URI + '"}}}}}'
    )
    return Definition(sha, body, "openapi.yaml", frozenset({"lambdaAlias"}))


MAIN = _definition(SHA1, "orders")
OTHER = _definition(SHA2, "orders")
DESIRED = DesiredState(
    revision="r2",
    apis={"orders": DesiredApi("orders", "Orders", MAIN, HERE)},
    aliases={("orders-handler", "prod"): DesiredAlias("orders-handler", "prod", "production", {"1": 95, "2": 5}, HERE)},
)
MANAGED = {"reconciler:managed": "true"}


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsBackend]:
    """A backend whose clients never reach the network (every request is stubbed)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    made = AwsBackend(region="us-east-1", endpoint_url="http://127.0.0.1:9", rates=Rates().scaled(1000))
    yield made
    made.close()


@dataclass
class Stubbed:
    apigateway: Stubber
    lambda_: Stubber
    live: LiveState
    once: Stubber  # the apigateway client CreateDeployment goes through (no retries)


PROD_STAGE: dict[str, Any] = {
    "stageName": "prod",
    "deploymentId": "d1",
    "variables": {"lambdaAlias": "prod"},
    "tags": MANAGED,
    "canarySettings": {
        "percentTraffic": 10.0,
        "deploymentId": "d2",
        "stageVariableOverrides": {"lambdaAlias": "canary"},
    },
}


ORDERS_API: dict[str, Any] = {
    "id": "a1",
    "name": "orders",
    "description": api_description("Orders", SHA1),
    "tags": MANAGED,
}


def expect_read(
    apigateway: Stubber, lambda_: Stubber, prod: dict[str, Any] = PROD_STAGE, api: dict[str, Any] = ORDERS_API
) -> None:
    """The calls of one read of DESIRED: API a1 (deployments d1, d2), its stage ``prod``, the function's alias."""
    apigateway.add_response("get_rest_apis", {"items": [api]})
    apigateway.add_response(
        "get_deployments",
        {
            "items": [
                {"id": "d1", "description": deployment_description(SHA1, "r1")},
                {"id": "d2", "description": deployment_description(SHA2, "r1")},
                {"id": "x9", "description": "deployed by hand"},
            ]
        },
        {"restApiId": "a1", "limit": 500},
    )
    apigateway.add_response("get_stages", {"item": [prod]}, {"restApiId": "a1"})
    apigateway.add_response("get_domain_names", {"items": []}, {"limit": 500})  # no custom domain
    lambda_.add_response(
        "list_aliases",
        {
            "Aliases": [
                {
                    "Name": "prod",
                    "FunctionVersion": "1",
                    "Description": "[reconciler] production",
                    "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.05}},
                    "RevisionId": "rev-1",
                }
            ]
        },
        {"FunctionName": "orders-handler", "MaxItems": 50},
    )
    lambda_.add_response(
        "list_versions_by_function",
        {"Versions": [{"Version": "$LATEST"}, {"Version": "1"}, {"Version": "2"}]},
        {"FunctionName": "orders-handler", "MaxItems": 50},
    )


@pytest.fixture
def stubs(backend: AwsBackend) -> Iterator[Stubbed]:
    """Stubbers for apigateway and lambda, after a stubbed read of one API and one function."""
    apigateway, lambda_ = Stubber(backend.calls.apigateway), Stubber(backend.calls.lambda_)
    expect_read(apigateway, lambda_)
    once = Stubber(backend.calls.apigateway_once)
    with apigateway, lambda_, once:
        yield Stubbed(apigateway, lambda_, backend.read(DESIRED), once)
        apigateway.assert_no_pending_responses()
        lambda_.assert_no_pending_responses()
        once.assert_no_pending_responses()


def _stage(cls: Any, canary: DesiredCanary | None, stage: str = "prod") -> Any:
    return cls(
        api="orders", stage=stage, description=None, definition=MAIN, variables={"lambdaAlias": "prod"}, canary=canary
    )


def test_read_parses_markers_canary_and_routing(backend: AwsBackend, stubs: Stubbed) -> None:
    """One read yields the API's hash, the stage's canary, and the alias's routing without the marker."""
    live = stubs.live
    assert live.apis["orders"].description == "Orders"
    assert live.apis["orders"].definition_sha256 == SHA1
    assert set(live.deployments["orders"]) == {SHA1, SHA2}
    assert live.stages[("orders", "prod")].canary == LiveCanary(10.0, SHA2, "d2", {"lambdaAlias": "canary"})
    alias = live.aliases[("orders-handler", "prod")]
    assert (alias.routing, alias.description, alias.managed, alias.revision_id) == (
        {"1": 95.0, "2": 5.0},
        "production",
        True,
        "rev-1",
    )


def test_canary_change_is_patched_under_canary_settings(backend: AwsBackend, stubs: Stubbed) -> None:
    """A new canary share, deployment and override go out as replace ops on /canarySettings/... paths."""
    apigateway = stubs.apigateway
    ops = [
        {"op": "replace", "path": "/canarySettings/percentTraffic", "value": "25"},
        {"op": "replace", "path": "/canarySettings/deploymentId", "value": "d1"},
        {"op": "replace", "path": "/canarySettings/stageVariableOverrides/lambdaAlias", "value": "beta"},
    ]
    apigateway.add_response(
        "update_stage",
        {"stageName": "prod", "deploymentId": "d1", "tags": MANAGED},
        {"restApiId": "a1", "stageName": "prod", "patchOperations": ops},
    )
    backend.apply(_stage(UpdateStage, DesiredCanary(25.0, MAIN, {"lambdaAlias": "beta"})))


def test_canary_removal_is_one_remove_op(backend: AwsBackend, stubs: Stubbed) -> None:
    """Dropping the canary from the spec sends exactly `remove /canarySettings`."""
    apigateway = stubs.apigateway
    apigateway.add_response(
        "update_stage",
        {"stageName": "prod", "deploymentId": "d1", "tags": MANAGED},
        {"restApiId": "a1", "stageName": "prod", "patchOperations": [{"op": "remove", "path": "/canarySettings"}]},
    )
    backend.apply(_stage(UpdateStage, None))


def expect_invoke_grant(lambda_: Stubber) -> None:
    """The prod alias's policy is read once (no statement for API a1 yet), then API a1 is allowed to invoke it."""
    lambda_.add_response(
        "get_policy",
        {"Policy": '{"Statement": []}'},
        {"FunctionName": "orders-handler", "Qualifier": "prod"},
    )
    lambda_.add_response(
        "add_permission",
        {"Statement": "{}"},
        {
            "FunctionName": "orders-handler",
            "Qualifier": "prod",
            "StatementId": "reconciler-a1",
            "Action": "lambda:InvokeFunction",
            "Principal": "apigateway.amazonaws.com",
            "SourceArn": "arn:aws:execute-api:us-east-1:123456789012:a1/*",
        },
    )


def test_new_stage_is_created_with_its_canary_and_grant(backend: AwsBackend, stubs: Stubbed) -> None:
    """CreateStage carries canarySettings and the managed tag; the existing alias it names is granted to the API."""
    apigateway, lambda_ = stubs.apigateway, stubs.lambda_
    canary = {"percentTraffic": 10.0, "deploymentId": "d2", "stageVariableOverrides": {"lambdaAlias": "canary"}}
    apigateway.add_response(
        "create_stage",
        {
            "stageName": "beta",
            "deploymentId": "d1",
            "tags": MANAGED,
            "variables": {"lambdaAlias": "prod"},
            "canarySettings": canary,
        },
        {
            "restApiId": "a1",
            "stageName": "beta",
            "deploymentId": "d1",
            "variables": {"lambdaAlias": "prod"},
            "tags": {**MANAGED, "reconciler:instance": "default"},
            "canarySettings": {
                "percentTraffic": 10.0,
                "deploymentId": "d2",
                "stageVariableOverrides": {"lambdaAlias": "canary"},
            },
        },
    )
    expect_invoke_grant(lambda_)
    backend.apply(_stage(CreateStage, DesiredCanary(10.0, OTHER, {"lambdaAlias": "canary"}), stage="beta"))


def test_deployment_is_created_without_stage_name(backend: AwsBackend, stubs: Stubbed) -> None:
    """A deployment of another definition: import it, CreateDeployment with no stageName, import the API's own back."""
    apigateway = stubs.apigateway
    third = _definition("3" * 64, "orders")
    kept = {"id": "a1", "name": "orders", "description": api_description("Orders", SHA1)}
    put = {"restApiId": "a1", "mode": "overwrite", "failOnWarnings": True}  # the default: roll back on warnings
    apigateway.add_response("put_rest_api", kept, {**put, "body": third.body.encode()})
    stubs.once.add_response(
        "create_deployment",
        {"id": "d3"},
        {"restApiId": "a1", "description": deployment_description(third.sha256, "r2")},
    )
    apigateway.add_response("put_rest_api", kept, {**put, "body": MAIN.body.encode()})
    backend.apply(
        CreateDeployment(api="orders", definition=third, api_definition=MAIN, revision="r2"),
    )


def test_alias_update_sends_weights_and_revision_id(backend: AwsBackend, stubs: Stubbed) -> None:
    """Percentages become a primary version plus a 0.0-1.0 weight, guarded by the RevisionId the read saw."""
    lambda_ = stubs.lambda_
    lambda_.add_response(
        "update_alias",
        {"Name": "prod", "FunctionVersion": "1", "RevisionId": "rev-2"},
        {
            "FunctionName": "orders-handler",
            "Name": "prod",
            "FunctionVersion": "1",
            "Description": "[reconciler] production",
            "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.25}},
            "RevisionId": "rev-1",
        },
    )
    backend.apply(
        UpdateAlias(
            function="orders-handler",
            alias="prod",
            description="production",
            routing={"1": 75.0, "2": 25.0},
            revision_id="rev-1",
        )
    )


def test_alias_on_one_version_clears_the_weights(backend: AwsBackend, stubs: Stubbed) -> None:
    """Moving all traffic to one version sends an empty AdditionalVersionWeights, so the old weight goes away."""
    lambda_ = stubs.lambda_
    lambda_.add_response(
        "update_alias",
        {"Name": "prod", "FunctionVersion": "2", "RevisionId": "rev-2"},
        {
            "FunctionName": "orders-handler",
            "Name": "prod",
            "FunctionVersion": "2",
            "Description": "[reconciler] production",
            "RoutingConfig": {"AdditionalVersionWeights": {}},
            "RevisionId": "rev-1",
        },
    )
    backend.apply(
        UpdateAlias(
            function="orders-handler", alias="prod", description="production", routing={"2": 100.0}, revision_id="rev-1"
        )
    )


def test_revision_mismatch_is_a_conflict_not_an_overwrite(backend: AwsBackend, stubs: Stubbed) -> None:
    """A 412 from UpdateAlias raises ConflictError (re-plan), temporary, naming the alias and the code."""
    lambda_ = stubs.lambda_
    lambda_.add_client_error(
        "update_alias", service_error_code="PreconditionFailedException", service_message="stale", http_status_code=412
    )
    action = UpdateAlias(
        function="orders-handler", alias="prod", description="production", routing={"1": 100.0}, revision_id="rev-1"
    )
    with pytest.raises(ConflictError) as caught:
        backend.apply(action)
    assert caught.value.temporary is True
    assert "Alias/orders-handler/prod" in str(caught.value)
    assert "PreconditionFailedException" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "status", "temporary"),
    [
        pytest.param("TooManyRequestsException", 429, True, id="throttled"),
        pytest.param("ServiceUnavailableException", 503, True, id="unavailable-5xx"),
        pytest.param("BadRequestException", 400, False, id="bad-request"),
        pytest.param("AccessDeniedException", 403, True, id="access-denied-retried"),
        pytest.param("UnrecognizedClientException", 403, True, id="bad-credentials-retried"),
    ],
)
def test_aws_errors_become_one_line_backend_errors(
    backend: AwsBackend, code: str, status: int, temporary: bool
) -> None:
    """Every AWS error is one line naming the resource and the code; throttling, 5xx and access are temporary."""
    apigateway = Stubber(backend.calls.apigateway)
    apigateway.add_client_error(
        "get_rest_apis", service_error_code=code, service_message="no\nway", http_status_code=status
    )
    with apigateway, pytest.raises(BackendError) as caught:
        backend.read(DesiredState())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("RestApi/*: GetRestApis failed: " + code)
    assert (caught.value.code, caught.value.temporary) == (code, temporary)
