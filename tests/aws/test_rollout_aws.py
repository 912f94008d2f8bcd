"""Rollouts on the aws backend: alias rollouts and CloudWatch alarms against a real moto_server, and the
stage canary request shapes with botocore's ``Stubber`` (moto ignores canary settings)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from reconciler.backends.aws import AwsBackend
from reconciler.backends.aws_calls import Rates
from reconciler.backends.aws_model import api_description, deployment_description
from reconciler.engine import Config, Engine
from reconciler.errors import RolloutError
from reconciler.plan import make_plan
from reconciler.rollout import RolloutState
from reconciler.rollouts import shape
from reconciler.specs import DesiredRollout, DesiredStage, DesiredState, RolloutStep
from tests.aws.conftest import REGION, Aws, AwsRepo
from tests.aws.test_requests_stubbed import HERE, MAIN, MANAGED, OTHER, SHA1, SHA2, DesiredApi
from tests.test_rollout_engine import Clock

PROD_ROLLOUT = """  routing: {"1": 95, "2": 5}"""
STEPS = """  routing: {"2": 100}
  rollout:
    steps: [{setWeight: 10}, {pause: {duration: 60}}, {setWeight: 50}, {pause: {}}]
    analysis: {interval: 10s, alarms: [orders-5xx]}
"""


@pytest.fixture
def cloudwatch(aws: Aws) -> Any:
    client = boto3.client("cloudwatch", endpoint_url=aws.url, region_name=REGION)
    client.put_metric_alarm(
        AlarmName="orders-5xx",
        MetricName="5XXError",
        Namespace="AWS/ApiGateway",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    return client


def _routing(aws: Aws) -> dict[str, float]:
    alias = aws.alias("orders-handler", "prod")
    weights = alias.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})
    routing = {k: round(v * 100, 6) for k, v in weights.items()}
    routing[alias["FunctionVersion"]] = round(100 - sum(routing.values()), 6)
    return routing


def test_alias_rollout_and_alarm_abort_on_moto(aws_repo: AwsRepo, aws: Aws, cloudwatch: Any) -> None:
    """10 % on AWS, then an alarm set to ALARM (DescribeAlarms) rolls it back to version 1 alone."""
    engine = Engine(
        Config(
            repo=str(aws_repo.path),
            backend="aws",
            region=REGION,
            endpoint_url=aws.url,
            state_dir=str(aws_repo.state_dir),
        )
    )
    clock = Clock()
    engine.clock = clock
    try:
        text = (aws_repo.path / "deploy_specs/specs.yaml").read_text()
        aws_repo.write("deploy_specs/specs.yaml", text.replace(PROD_ROLLOUT, '  routing: {"1": 100}'))
        aws_repo.commit("prod at version 1")
        assert engine.reconcile().ok
        aws_repo.write("deploy_specs/specs.yaml", text.replace(PROD_ROLLOUT, STEPS))
        aws_repo.commit("version 2, rolled out and watched")
        assert engine.reconcile().progressing
        assert _routing(aws) == {"1": 90, "2": 10}
        clock.offset = 11
        assert engine.reconcile().progressing, "an OK alarm counts nothing"
        cloudwatch.set_alarm_state(AlarmName="orders-5xx", StateValue="ALARM", StateReason="5xx")
        clock.offset = 22
        result = engine.reconcile()
        assert isinstance(result.error, RolloutError) and "orders-5xx" in str(result.error)
        assert _routing(aws) == {"1": 100}
    finally:
        engine.close()


def test_alarm_reads_are_batched_and_missing_alarms_are_absent(
    aws: Aws, cloudwatch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DescribeAlarms takes 100 names per request; an alarm that does not exist is not in the answer."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    backend = AwsBackend(region=REGION, endpoint_url=aws.url, rates=Rates().scaled(1000))
    try:
        calls: list[int] = []
        backend.calls.cloudwatch.meta.events.register(
            "provide-client-params.cloudwatch.DescribeAlarms",
            lambda params, **_: calls.append(len(params["AlarmNames"])),
        )
        names = ["orders-5xx", *(f"missing-{i}" for i in range(150))]
        found = backend.read_alarms(names)
        assert set(found) == {"orders-5xx"} and found["orders-5xx"].state in ("OK", "INSUFFICIENT_DATA")
        assert calls == [100, 51]
    finally:
        backend.close()


# ------------------------------------------------------------ stage canary shapes (Stubber)

ROLLOUT = DesiredRollout((RolloutStep(weight=10), RolloutStep(duration=60), RolloutStep(weight=50), RolloutStep()))
STAGE = DesiredStage("orders", "prod", None, OTHER, {"lambdaAlias": "prod"}, None, HERE, ROLLOUT)
DESIRED = DesiredState(
    revision="r2", apis={"orders": DesiredApi("orders", "Orders", MAIN, HERE)}, stages={("orders", "prod"): STAGE}
)


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsBackend]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    made = AwsBackend(region="us-east-1", endpoint_url="http://127.0.0.1:9", rates=Rates().scaled(1000))
    yield made
    made.close()


def _read(backend: AwsBackend, stubber: Stubber, canary: dict[str, Any] | None) -> Any:
    stubber.add_response(
        "get_rest_apis",
        {"items": [{"id": "a1", "name": "orders", "description": api_description("Orders", SHA1), "tags": MANAGED}]},
    )
    stubber.add_response(
        "get_deployments",
        {
            "items": [
                {"id": "d1", "description": deployment_description(SHA1, "r1")},
                {"id": "d2", "description": deployment_description(SHA2, "r2")},
            ]
        },
        {"restApiId": "a1", "limit": 500},
    )
    stage: dict[str, Any] = {
        "stageName": "prod",
        "deploymentId": "d1",
        "variables": {"lambdaAlias": "prod"},
        "tags": MANAGED,
    }
    if canary is not None:
        stage["canarySettings"] = canary
    stubber.add_response("get_stages", {"item": [stage]}, {"restApiId": "a1"})
    stubber.add_response("get_domain_names", {"items": []}, {"limit": 500})  # no custom domain
    return backend.read(DESIRED)


@pytest.mark.parametrize(
    ("canary", "state", "ops"),
    [
        pytest.param(
            None,
            None,
            [
                {"op": "replace", "path": "/canarySettings/percentTraffic", "value": "10"},
                {"op": "replace", "path": "/canarySettings/deploymentId", "value": "d2"},
            ],
            id="first-step-puts-the-new-deployment-in-as-canary",
        ),
        pytest.param(
            {"percentTraffic": 10.0, "deploymentId": "d2"},
            {"step": 2, "weight": 10.0, "previous_weight": 10.0, "step_started_at": -1000.0},
            [{"op": "replace", "path": "/canarySettings/percentTraffic", "value": "50"}],
            id="next-step-moves-only-the-percentage",
        ),
        pytest.param(
            {"percentTraffic": 50.0, "deploymentId": "d2"},
            {"step": 4, "weight": 50.0, "previous_weight": 50.0},
            [{"op": "replace", "path": "/deploymentId", "value": "d2"}, {"op": "remove", "path": "/canarySettings"}],
            id="promote-copies-the-canary-deployment-and-removes-the-canary",
        ),
        pytest.param(
            {"percentTraffic": 50.0, "deploymentId": "d2"},
            {"step": 3, "weight": 50.0, "previous_weight": 50.0, "command": "abort"},
            [{"op": "remove", "path": "/canarySettings"}],
            id="rollback-removes-the-canary",
        ),
    ],
)
def test_stage_rollout_request_shapes(
    backend: AwsBackend, canary: dict[str, Any] | None, state: dict[str, Any] | None, ops: list[dict[str, str]]
) -> None:
    """Each stage rollout step is one UpdateStage with DESIGN §6's patch operations."""
    stubber = Stubber(backend.calls.apigateway)
    with stubber:
        states: dict[str, RolloutState] = {}
        if state is not None:  # the rollout as an earlier pass recorded it, moved on to the step under test
            first = shape({}, DESIRED, _read(backend, stubber, None), 0.0).states
            states = {r: RolloutState.from_json({**s.as_json(), **state}) for r, s in first.items()}
        live = _read(backend, stubber, canary)
        shaped = shape(states, DESIRED, live, 1.0)
        plan = make_plan(shaped.desired, live)
        assert [a.action for a in plan.actions] == ["update_stage"]
        stubber.add_response(
            "update_stage",
            {"stageName": "prod", "deploymentId": "d1", "tags": MANAGED},
            {"restApiId": "a1", "stageName": "prod", "patchOperations": ops},
        )
        backend.apply(plan.actions[0])
        stubber.assert_no_pending_responses()
