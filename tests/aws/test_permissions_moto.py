"""Invoke permissions for every Lambda URI form (DESIGN §10), on moto, through the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from reconciler.backends.aws import AwsBackend
from reconciler.engine import Config, Engine
from tests.aws.conftest import REGION, Aws, AwsRepo

PATH = "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/"
AWS_VARS = "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}"
DEFINITION = f"""\
openapi: 3.0.1
info: {{title: forms, version: "1"}}
paths:
  /account-variables:
    get:
      responses: {{"200": {{description: OK}}}}
      x-amazon-apigateway-integration:
        type: aws_proxy
        httpMethod: POST
        uri: {PATH}{AWS_VARS}:function:orders-handler:${{stageVariables.lambdaAlias}}/invocations
  /whole-function:
    get:
      responses: {{"200": {{description: OK}}}}
      x-amazon-apigateway-integration:
        type: aws_proxy
        httpMethod: POST
        uri: {PATH}arn:aws:lambda:us-east-1:123456789012:function:${{stageVariables.fn}}/invocations
  /unqualified:
    get:
      responses: {{"200": {{description: OK}}}}
      x-amazon-apigateway-integration:
        type: aws_proxy
        httpMethod: POST
        uri: {PATH}arn:aws:lambda:us-east-1:123456789012:function:orders-handler/invocations
"""
SPECS = """\
apiVersion: reconciler/v1
kind: RestApi
metadata: {name: orders}
spec: {definition: openapi.yaml}
---
apiVersion: reconciler/v1
kind: Stage
metadata: {name: prod}
spec:
  api: orders
  variables: {lambdaAlias: prod, fn: "orders-handler:blue"}
---
apiVersion: reconciler/v1
kind: Alias
metadata: {name: prod}
spec: {function: orders-handler, routing: {"1": 100}}
---
apiVersion: reconciler/v1
kind: Alias
metadata: {name: blue}
spec: {function: orders-handler, routing: {"2": 100}}
"""


def _grants(aws: Aws, alias: str) -> list[str]:
    try:
        policy = json.loads(aws.lambda_.get_policy(FunctionName="orders-handler", Qualifier=alias)["Policy"])
    except aws.lambda_.exceptions.ResourceNotFoundException:
        return []
    return [s["Sid"] for s in policy["Statement"] if s["Resource"].endswith(f":function:orders-handler:{alias}")]


def _reconcile(repo: AwsRepo, aws: Aws, state: Path) -> tuple[list[str], list[dict[str, Any]]]:
    backend = AwsBackend(region=REGION, endpoint_url=aws.url)
    sent: list[str] = []
    backend.calls.lambda_.meta.events.register("before-call", lambda model, **_: sent.append(model.name))
    engine = Engine(Config(repo=str(repo.path), backend="aws", state_dir=str(state)), backend=backend)
    try:
        with capture_logs() as logs:
            result = engine.reconcile()
    finally:
        engine.close()
    assert result.ok, result.error
    return sent, logs


def test_every_uri_form_gets_its_grant_and_an_unworkable_one_a_warning(
    aws_repo: AwsRepo, aws: Aws, tmp_path: Path
) -> None:
    """AWS:: variables and function:${stageVariables.fn} are granted; an unqualified function is warned about."""
    aws_repo.write("deploy_specs/openapi.yaml", DEFINITION)
    aws_repo.write("deploy_specs/specs.yaml", SPECS)
    aws_repo.remove("deploy_specs/openapi-v1.yaml")
    aws_repo.commit("every uri form")
    _, logs = _reconcile(aws_repo, aws, tmp_path / "s")
    api_id = aws.api()["id"]
    assert _grants(aws, "prod") == [f"reconciler-{api_id}"]
    assert _grants(aws, "blue") == [f"reconciler-{api_id}"]
    unqualified = "Lambda function orders-handler is invoked without an alias; grant its invoke permission yourself"
    warnings = [e for e in logs if e["event"] == "permission_not_granted"]
    assert [(w["stage"], w["integration"], w["reason"]) for w in warnings] == [
        ("Stage/orders/prod", "GET /unqualified", unqualified)
    ]
    plan = aws_repo.aws("plan", "--output", "json")  # in sync now, and still saying what is not granted
    assert plan.code == 0, plan.stderr
    assert [(w["resource"], w["integration"], w["message"]) for w in json.loads(plan.stdout)["warnings"]] == [
        ("Stage/orders/prod", "GET /unqualified", unqualified)
    ]
    assert f"warning: Stage/orders/prod: GET /unqualified: {unqualified}" in plan.stderr.splitlines()


def test_an_existing_permission_is_read_once_and_not_sent_again(aws_repo: AwsRepo, aws: Aws, tmp_path: Path) -> None:
    """After a stage change, the alias's policy is read (GetPolicy) and AddPermission is not re-sent."""
    assert aws_repo.aws("apply").code == 0
    definition = (aws_repo.path / "deploy_specs/openapi.yaml").read_text()
    aws_repo.write("deploy_specs/openapi.yaml", definition.replace('version: "2.0"', 'version: "2.1"'))
    aws_repo.commit("a new definition: the stages move to a new deployment")
    sent, _ = _reconcile(aws_repo, aws, tmp_path / "s")
    assert "GetPolicy" in sent and "AddPermission" not in sent
