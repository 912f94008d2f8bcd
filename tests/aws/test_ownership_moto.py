"""Ownership per instance and adoption (DESIGN §10) on one moto account, through the real CLI.

Two instances (``default`` and ``team-b``) share the account: neither changes,
adopts or prunes what the other manages.  Resources made by hand (the
console, SAM, Terraform) are taken over only with ``metadata.adopt: true``.
"""

from __future__ import annotations

from pathlib import Path

from tests.aws.conftest import EXAMPLE, SPECS, Aws, AwsRepo


def _other_repo(tmp_path: Path, aws: Aws, specs: str) -> AwsRepo:
    repo = AwsRepo(tmp_path / "team-b")
    repo.url = aws.url
    repo.write("deploy_specs/specs.yaml", specs)
    repo.write("deploy_specs/openapi.yaml", (EXAMPLE / "openapi.yaml").read_text(encoding="utf-8"))
    repo.write("deploy_specs/openapi-v1.yaml", (EXAMPLE / "openapi-v1.yaml").read_text(encoding="utf-8"))
    repo.commit("team b's specs")
    return repo


def test_same_names_in_another_instance_are_refused_naming_the_owner(
    aws_repo: AwsRepo, aws: Aws, tmp_path: Path
) -> None:
    """Instance team-b planning the same API, stages and aliases exits 1 naming 'default'; nothing changes."""
    assert aws_repo.aws("apply").code == 0
    before = (aws.stages(), aws.alias("orders-handler", "prod")["Description"])
    other = _other_repo(tmp_path, aws, SPECS.replace("description: production", "description: team b"))
    for command in ("plan", "apply"):
        result = other.aws(command, "--instance", "team-b")
        assert result.code == 1, result.stdout
        assert "managed by reconciler instance 'default'" in result.stderr
    assert (aws.stages(), aws.alias("orders-handler", "prod")["Description"]) == before
    assert len(aws.apigateway.get_rest_apis()["items"]) == 1


def test_prune_deletes_only_this_instances_resources(aws_repo: AwsRepo, aws: Aws, tmp_path: Path) -> None:
    """team-b's --prune removes team-b's own orphan, never default's stages or aliases."""
    assert aws_repo.aws("apply").code == 0
    specs = SPECS.replace("name: orders}", "name: billing}").replace("api: orders", "api: billing")
    specs = specs.replace("name: dev}\nspec:\n  function", "name: b-dev}\nspec:\n  function")
    specs = specs.replace("name: prod}\nspec:\n  function", "name: b-prod}\nspec:\n  function")
    other = _other_repo(tmp_path, aws, specs)
    assert other.aws("apply", "--instance", "team-b").code == 0
    assert sorted(aws.stages("billing")) == ["dev", "prod", "v1"]
    documents = specs.split("---\n")
    kept = [d for d in documents if "name: v1}" not in d and "name: b-prod}" not in d]
    other.write("deploy_specs/specs.yaml", "---\n".join(kept))
    other.commit("team b drops its v1 stage and its b-prod alias")
    result = other.aws("apply", "--instance", "team-b", "--prune")
    assert result.code == 0, result.stderr
    aliases = {a["Name"] for a in aws.lambda_.list_aliases(FunctionName="orders-handler")["Aliases"]}
    assert aliases == {"dev", "prod", "b-dev"}  # team-b's b-prod is gone, default's dev and prod stay
    assert sorted(aws.stages("billing")) == ["dev", "prod"]
    assert sorted(aws.stages()) == ["dev", "prod", "v1"]
    assert aws_repo.aws_json("plan")["in_sync"] is True


def test_resources_marked_before_instances_had_names_are_defaults(aws_repo: AwsRepo, aws: Aws) -> None:
    """A stage tagged only reconciler:managed=true (an earlier version's mark) is default's, not team-b's."""
    assert aws_repo.aws("apply").code == 0
    api_id = aws.api()["id"]
    arn = f"arn:aws:apigateway:us-east-1::/restapis/{api_id}/stages/prod"
    aws.apigateway.untag_resource(resourceArn=arn, tagKeys=["reconciler:instance"])
    assert aws.stages()["prod"]["tags"] == {"reconciler:managed": "true"}
    assert aws_repo.aws_json("plan")["in_sync"] is True
    result = aws_repo.aws("plan", "--instance", "team-b")
    assert result.code == 1 and "instance 'default'" in result.stderr


def _made_by_hand(aws: Aws) -> tuple[str, str]:
    """An API with a deployment, a stage and an alias made without the tool (as the console would)."""
    created = aws.apigateway.create_rest_api(name="orders", description="made in the console")
    api_id = created["id"]
    body = (EXAMPLE / "openapi-v1.yaml").read_bytes()
    aws.apigateway.put_rest_api(restApiId=api_id, mode="overwrite", body=body)
    deployment = aws.apigateway.create_deployment(restApiId=api_id, description="console deploy")
    aws.apigateway.create_stage(
        restApiId=api_id, stageName="prod", deploymentId=deployment["id"], variables={"lambdaAlias": "prod"}
    )
    aws.lambda_.create_alias(FunctionName="orders-handler", Name="prod", FunctionVersion="1", Description="by hand")
    return api_id, str(deployment["id"])


ADOPT_SPECS = """\
apiVersion: reconciler/v1
kind: RestApi
metadata: {name: orders, adopt: true}
spec:
  description: Orders service
  definition: openapi.yaml
---
apiVersion: reconciler/v1
kind: Stage
metadata: {name: prod, adopt: true}
spec:
  api: orders
  variables: {lambdaAlias: prod}
---
apiVersion: reconciler/v1
kind: Alias
metadata: {name: prod, adopt: true}
spec:
  function: orders-handler
  description: production
  routing: {"1": 95, "2": 5}
"""


def test_without_adopt_an_existing_api_is_an_error_that_says_how_to_adopt(aws_repo: AwsRepo, aws: Aws) -> None:
    """An API made by hand is refused (exit 1) with the way to take it over, and left as it was."""
    _made_by_hand(aws)
    result = aws_repo.aws("plan")
    assert result.code == 1
    assert "not managed by reconciler" in result.stderr and "adopt: true" in result.stderr
    assert aws.api()["description"] == "made in the console"


def test_adopt_takes_over_api_stage_and_alias_keeping_the_api_id(aws_repo: AwsRepo, aws: Aws) -> None:
    """adopt_api/adopt_stage/adopt_alias come first, then the usual updates; the API keeps its id and URL."""
    api_id, hand_deployment = _made_by_hand(aws)
    aws_repo.write("deploy_specs/specs.yaml", ADOPT_SPECS)
    aws_repo.commit("adopt the console's API")
    plan = aws_repo.aws_json("plan")
    actions = [(a["action"], a["resource"]) for a in plan["actions"]]
    assert actions[0] == ("adopt_api", "RestApi/orders")
    assert actions.index(("adopt_stage", "Stage/orders/prod")) < actions.index(("update_stage", "Stage/orders/prod"))
    assert actions.index(("adopt_alias", "Alias/orders-handler/prod")) < actions.index(
        ("update_alias", "Alias/orders-handler/prod")
    )
    assert aws.stages()["prod"]["deploymentId"] == hand_deployment  # planning changed nothing
    result = aws_repo.aws("apply", output="json")
    assert result.code == 0, result.stderr
    assert aws.api()["id"] == api_id
    assert aws.api()["description"].startswith("Orders service [reconciler:")
    prod = aws.stages()["prod"]
    assert prod["tags"] == {"reconciler:managed": "true", "reconciler:instance": "default"}
    assert prod["deploymentId"] != hand_deployment
    alias = aws.alias("orders-handler", "prod")
    assert alias["Description"] == "[reconciler] production"
    assert alias["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.05}
    assert aws_repo.aws_json("plan")["in_sync"] is True
    status = aws_repo.aws_json("status")
    assert status["stages"]["orders/prod"]["url"].startswith(f"https://{api_id}.execute-api.")


def test_adopting_another_instances_resource_is_an_error(aws_repo: AwsRepo, aws: Aws, tmp_path: Path) -> None:
    """adopt: true never takes a resource from another instance: exit 1 naming the owner."""
    assert aws_repo.aws("apply").code == 0
    other = _other_repo(tmp_path, aws, ADOPT_SPECS)
    result = other.aws("plan", "--instance", "team-b")
    assert result.code == 1 and "managed by reconciler instance 'default'" in result.stderr
    assert aws.alias("orders-handler", "prod")["Description"] == "[reconciler] production"
