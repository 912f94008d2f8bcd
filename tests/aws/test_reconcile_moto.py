"""The aws backend through the real CLI and engine, on a real git repo, against a real moto_server.

What moto does here is what AWS does for these calls (REST APIs, PutRestApi,
deployments, stages with tags, stage variables, aliases with routing weights,
permissions).  moto ignores canary settings, routing validation and
RevisionId; those request shapes are covered in ``test_requests_stubbed.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.backends.aws import AwsBackend
from reconciler.engine import Config, Engine
from tests.aws.conftest import Aws, AwsRepo


def _stage_deployments(aws: Aws) -> dict[str, str]:
    return {name: stage["deploymentId"] for name, stage in aws.stages().items()}


def _sha_of(aws: Aws, deployment_id: str) -> str:
    found = [d for d in aws.deployments() if d["id"] == deployment_id]
    return str(json.loads(found[0]["description"])["sha256"])


def test_first_apply_creates_everything_and_then_plans_nothing(aws_repo: AwsRepo, aws: Aws) -> None:
    """A first apply creates the API, two deployments, three stages and two aliases; the next plan is empty."""
    result = aws_repo.aws("apply")
    assert result.code == 0, result.stderr
    api = aws.api()
    assert api["tags"] == {"reconciler:managed": "true", "reconciler:instance": "default"}
    assert api["description"].startswith("Orders service [reconciler:definition-sha256=")
    assert len(aws.deployments()) == 2
    stages = aws.stages()
    assert sorted(stages) == ["dev", "prod", "v1"]
    assert stages["prod"]["variables"] == {"lambdaAlias": "prod"}
    assert all(s["tags"] == {"reconciler:managed": "true", "reconciler:instance": "default"} for s in stages.values())
    prod = aws.alias("orders-handler", "prod")
    assert (prod["FunctionVersion"], prod["RoutingConfig"]["AdditionalVersionWeights"]) == ("1", {"2": 0.05})
    assert prod["Description"] == "[reconciler] production"
    plan = aws_repo.aws_json("plan")
    assert plan["in_sync"] is True, plan["actions"]


def test_a_new_api_is_regional_and_status_lists_apis(aws_repo: AwsRepo, aws: Aws) -> None:
    """CreateRestApi asks for a REGIONAL endpoint; status gains apis with id, endpointType, tags and url."""
    assert aws_repo.aws("apply").code == 0
    api = aws.api()
    assert api["endpointConfiguration"]["types"] == ["REGIONAL"]
    status = aws_repo.aws_json("status")
    assert status["apis"]["orders"] == {
        "id": api["id"],
        "endpointType": "REGIONAL",
        "tags": {},
        "url": f"https://{api['id']}.execute-api.us-east-1.amazonaws.com",
    }


def test_pinned_stage_serves_its_own_definition(aws_repo: AwsRepo, aws: Aws) -> None:
    """v1 points at a deployment of openapi-v1.yaml; dev and prod share the current definition's deployment."""
    assert aws_repo.aws("apply").code == 0
    deployments = _stage_deployments(aws)
    assert deployments["dev"] == deployments["prod"] != deployments["v1"]
    status = aws_repo.aws_json("status")
    assert status["stages"]["orders/v1"]["definition_sha256"] == _sha_of(aws, deployments["v1"])
    assert status["stages"]["orders/v1"]["url"].startswith(f"https://{aws.api()['id']}.execute-api.us-east-1.")


def test_one_alias_change_is_one_update(aws_repo: AwsRepo, aws: Aws) -> None:
    """Changing one alias's routing plans and applies exactly one update_alias, and nothing else moves."""
    assert aws_repo.aws("apply").code == 0
    before = _stage_deployments(aws)
    specs = (aws_repo.path / "deploy_specs/specs.yaml").read_text()
    aws_repo.write("deploy_specs/specs.yaml", specs.replace('{"1": 95, "2": 5}', '{"1": 50, "2": 50}'))
    aws_repo.commit("prod: half to version 2")
    plan = aws_repo.aws_json("plan")
    assert [(a["action"], a["resource"]) for a in plan["actions"]] == [("update_alias", "Alias/orders-handler/prod")]
    assert aws_repo.aws("apply").code == 0
    assert aws.alias("orders-handler", "prod")["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.5}
    assert _stage_deployments(aws) == before


def _commit_definition_2_1(aws_repo: AwsRepo) -> None:
    """Commit a change to the API's own definition (its info.version 2.0 -> 2.1)."""
    path = aws_repo.path / "deploy_specs/openapi.yaml"
    aws_repo.write("deploy_specs/openapi.yaml", path.read_text().replace("2.0", "2.1"))
    aws_repo.commit("definition 2.1")


def test_definition_change_creates_one_deployment_and_moves_stages(aws_repo: AwsRepo, aws: Aws) -> None:
    """A new definition makes one new deployment; the stages following it move to it, v1 stays."""
    assert aws_repo.aws("apply").code == 0
    before = _stage_deployments(aws)
    _commit_definition_2_1(aws_repo)
    assert aws_repo.aws("apply").code == 0
    after = _stage_deployments(aws)
    assert len(aws.deployments()) == 3
    assert after["dev"] == after["prod"] not in before.values()
    assert after["v1"] == before["v1"]
    assert aws_repo.aws_json("plan")["in_sync"] is True


def test_revert_points_stages_back_at_the_old_deployment(aws_repo: AwsRepo, aws: Aws) -> None:
    """Reverting a definition change creates no deployment: the stages return to the old one."""
    assert aws_repo.aws("apply").code == 0
    before = _stage_deployments(aws)
    _commit_definition_2_1(aws_repo)
    assert aws_repo.aws("apply").code == 0
    aws_repo.git("revert", "--no-edit", "HEAD")
    plan = aws_repo.aws_json("plan")
    assert "create_deployment" not in [a["action"] for a in plan["actions"]]
    assert aws_repo.aws("apply").code == 0
    assert _stage_deployments(aws) == before
    assert len(aws.deployments()) == 3
    assert aws_repo.aws_json("plan")["in_sync"] is True


def test_drift_is_seen_and_healed(aws_repo: AwsRepo, aws: Aws) -> None:
    """A stage variable and an alias changed by hand show up in the plan, and apply puts them back."""
    assert aws_repo.aws("apply").code == 0
    api_id = aws.api()["id"]
    aws.apigateway.update_stage(
        restApiId=api_id,
        stageName="prod",
        patchOperations=[{"op": "replace", "path": "/variables/lambdaAlias", "value": "dev"}],
    )
    aws.lambda_.update_alias(FunctionName="orders-handler", Name="prod", FunctionVersion="2")
    plan = aws_repo.aws_json("plan")
    assert sorted(a["resource"] for a in plan["actions"]) == ["Alias/orders-handler/prod", "Stage/orders/prod"]
    assert aws_repo.aws("apply").code == 0
    assert aws.stages()["prod"]["variables"] == {"lambdaAlias": "prod"}
    prod = aws.alias("orders-handler", "prod")
    assert (prod["FunctionVersion"], prod["RoutingConfig"]["AdditionalVersionWeights"]) == ("1", {"2": 0.05})
    assert aws_repo.aws_json("plan")["in_sync"] is True


def test_unmanaged_resources_are_left_alone_even_with_prune(aws_repo: AwsRepo, aws: Aws) -> None:
    """A stage and an alias made by hand are neither planned, changed nor pruned."""
    assert aws_repo.aws("apply").code == 0
    api_id = aws.api()["id"]
    deployment = aws.stages()["dev"]["deploymentId"]
    aws.apigateway.create_stage(restApiId=api_id, stageName="manual", deploymentId=deployment, variables={"x": "1"})
    aws.lambda_.create_alias(FunctionName="orders-handler", Name="manual", FunctionVersion="1", Description="mine")
    plan = aws_repo.aws_json("plan", "--prune")
    assert plan["in_sync"] is True, plan["actions"]
    assert aws_repo.aws("apply", "--prune").code == 0
    assert aws.stages()["manual"]["variables"] == {"x": "1"}
    assert aws.alias("orders-handler", "manual")["Description"] == "mine"


def test_unmanaged_stage_named_in_the_specs_is_refused(aws_repo: AwsRepo, aws: Aws) -> None:
    """A spec naming a stage someone else made fails the plan instead of taking the stage over."""
    assert aws_repo.aws("apply").code == 0
    api_id = aws.api()["id"]
    aws.apigateway.create_stage(restApiId=api_id, stageName="qa", deploymentId=aws.stages()["dev"]["deploymentId"])
    specs = (aws_repo.path / "deploy_specs/specs.yaml").read_text()
    stage = (
        "---\napiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: qa}\n"
        "spec: {api: orders, variables: {lambdaAlias: dev}}\n"
    )
    aws_repo.write("deploy_specs/specs.yaml", specs + stage)
    aws_repo.commit("qa stage")
    result = aws_repo.aws("apply")
    assert result.code == 1
    assert "not managed by reconciler" in result.stderr
    assert "tags" not in aws.stages()["qa"]


def test_orphans_are_listed_and_pruned_only_with_prune(aws_repo: AwsRepo, aws: Aws) -> None:
    """A managed stage and alias removed from the specs are orphans: kept by apply, deleted by apply --prune."""
    assert aws_repo.aws("apply").code == 0
    specs = (aws_repo.path / "deploy_specs/specs.yaml").read_text()
    documents = specs.split("---\n")
    kept = [d for d in documents if "name: dev}" not in d]
    aws_repo.write("deploy_specs/specs.yaml", "---\n".join(kept))
    aws_repo.commit("drop dev")
    plan = aws_repo.aws_json("plan")
    assert sorted(plan["orphans"]) == ["Alias/orders-handler/dev", "Stage/orders/dev"]
    assert aws_repo.aws("apply").code == 0
    assert "dev" in aws.stages()
    assert aws_repo.aws("apply", "--prune").code == 0
    assert "dev" not in aws.stages()
    assert [a["Name"] for a in aws.lambda_.list_aliases(FunctionName="orders-handler")["Aliases"]] == ["prod"]


def test_missing_version_is_refused_before_anything_is_applied(aws_repo: AwsRepo, aws: Aws) -> None:
    """An alias routed to an unpublished version fails the plan, and no API is created."""
    specs = (aws_repo.path / "deploy_specs/specs.yaml").read_text()
    aws_repo.write("deploy_specs/specs.yaml", specs.replace('{"1": 95, "2": 5}', '{"1": 95, "3": 5}'))
    aws_repo.commit("route to version 3")
    result = aws_repo.aws("apply")
    assert result.code == 1
    assert "version 3 of 'orders-handler' is not published" in result.stderr
    assert aws.apigateway.get_rest_apis()["items"] == []


def _grants(aws: Aws, alias: str) -> list[dict[str, Any]]:
    """The statements granting an alias (moto keeps one policy per function, AWS one per qualifier)."""
    try:
        policy = json.loads(aws.lambda_.get_policy(FunctionName="orders-handler", Qualifier=alias)["Policy"])
    except aws.lambda_.exceptions.ResourceNotFoundException:
        return []
    return [s for s in policy["Statement"] if s["Resource"].endswith(f":function:orders-handler:{alias}")]


def test_api_gateway_may_invoke_every_alias_a_stage_names(aws_repo: AwsRepo, aws: Aws) -> None:
    """Each alias named through lambdaAlias gets one lambda:InvokeFunction grant for the API, per qualifier."""
    assert aws_repo.aws("apply").code == 0
    api_id = aws.api()["id"]
    for alias in ("dev", "prod"):
        statements = _grants(aws, alias)
        assert [s["Sid"] for s in statements] == [f"reconciler-{api_id}"]
        assert statements[0]["Principal"] == {"Service": "apigateway.amazonaws.com"}
        assert (
            statements[0]["Condition"]["ArnLike"]["AWS:SourceArn"]
            == f"arn:aws:execute-api:us-east-1:123456789012:{api_id}/*"
        )


def test_stage_moved_to_an_existing_alias_gets_its_grant(aws_repo: AwsRepo, aws: Aws) -> None:
    """Pointing a stage's variable at another existing alias grants API Gateway that alias too."""
    specs = (aws_repo.path / "deploy_specs/specs.yaml").read_text()
    extra = (
        "---\napiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: beta}\n"
        'spec: {function: orders-handler, routing: {"2": 100}}\n'
    )
    aws_repo.write("deploy_specs/specs.yaml", specs + extra)
    aws_repo.commit("beta alias, no stage uses it")
    assert aws_repo.aws("apply").code == 0
    assert _grants(aws, "beta") == []
    aws_repo.write(
        "deploy_specs/specs.yaml",
        (specs + extra).replace("variables: {lambdaAlias: dev}", "variables: {lambdaAlias: beta}"),
    )
    aws_repo.commit("dev stage uses beta")
    assert aws_repo.aws("apply").code == 0
    assert [s["Sid"] for s in _grants(aws, "beta")] == [f"reconciler-{aws.api()['id']}"]


def test_every_action_can_be_applied_twice(aws_repo: AwsRepo, aws: Aws, tmp_path: Path) -> None:
    """Applying each action of a first apply twice changes nothing more: no duplicate API, deployment or error."""
    backend = AwsBackend(region="us-east-1", endpoint_url=aws.url)
    engine = Engine(Config(repo=str(aws_repo.path), backend="aws", state_dir=str(tmp_path / "state")), backend=backend)
    try:
        plan, _, _ = engine.make_plan(engine.head())
        for action in plan.actions:
            backend.apply(action)
            backend.apply(action)
        again, _, _ = engine.make_plan(engine.head())
    finally:
        engine.close()
    assert again.in_sync, again.actions
    assert len(aws.apigateway.get_rest_apis()["items"]) == 1
    assert len(aws.deployments()) == 2


def test_stage_variables_are_added_and_removed_in_place(aws_repo: AwsRepo, aws: Aws) -> None:
    """A new variable is set with `replace` (moto rejects `add`; AWS accepts both) and a dropped one removed."""
    assert aws_repo.aws("apply").code == 0
    specs = (aws_repo.path / "deploy_specs/specs.yaml").read_text()
    aws_repo.write(
        "deploy_specs/specs.yaml", specs.replace("{lambdaAlias: prod}", "{lambdaAlias: prod, tier: gold}", 1)
    )
    aws_repo.commit("prod: tier gold")
    assert aws_repo.aws("apply").code == 0
    deployment = aws.stages()["prod"]["deploymentId"]
    assert aws.stages()["prod"]["variables"] == {"lambdaAlias": "prod", "tier": "gold"}
    aws_repo.write("deploy_specs/specs.yaml", specs)
    aws_repo.commit("prod: no tier")
    plan = aws_repo.aws_json("plan")
    assert [a["action"] for a in plan["actions"]] == ["update_stage"]
    assert aws_repo.aws("apply").code == 0
    assert aws.stages()["prod"]["variables"] == {"lambdaAlias": "prod"}
    assert aws.stages()["prod"]["deploymentId"] == deployment


def test_unmanaged_alias_named_by_a_stage_gets_no_grant(aws_repo: AwsRepo, aws: Aws) -> None:
    """A stage pointed at an alias made by hand applies, but that alias's policy is left alone (with a warning)."""
    assert aws_repo.aws("apply").code == 0
    aws.lambda_.create_alias(FunctionName="orders-handler", Name="manual", FunctionVersion="1")
    specs = (aws_repo.path / "deploy_specs/specs.yaml").read_text()
    aws_repo.write("deploy_specs/specs.yaml", specs.replace("{lambdaAlias: dev}", "{lambdaAlias: manual}"))
    aws_repo.commit("dev stage uses a hand-made alias")
    result = aws_repo.aws("apply")
    assert result.code == 0, result.stderr
    assert aws.stages()["dev"]["variables"] == {"lambdaAlias": "manual"}
    assert _grants(aws, "manual") == []
    assert "permission_not_granted" in result.stderr and "alias=orders-handler:manual" in result.stderr
    assert (
        "warning: Stage/orders/dev: GET /orders: alias orders-handler:manual is not managed by reconciler (no Alias "
        "spec of this instance); grant API Gateway lambda:InvokeFunction on it yourself"
    ) in result.stderr.splitlines()
