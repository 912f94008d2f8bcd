"""RestApi settings (DESIGN §10): endpointType in place, vpcEndpointIds, tags; validated with file, line, field.

Driven through the real CLI on a real git repository and the local backend, which keeps API Gateway's rules
(private to edge refused, VPC endpoints on private APIs only, a private API deploys only with a resource policy).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import SpecRepo

POLICY = """\
x-amazon-apigateway-policy:
  Version: "2012-10-17"
  Statement:
    - {Effect: Allow, Principal: "*", Action: "execute-api:Invoke", Resource: "execute-api:/*"}
"""
VPCE_A = "vpce-0123456789abcdef0"
VPCE_B = "vpce-0fedcba9876543210"


def _api_with(repo: SpecRepo, extra: str) -> None:
    repo.write(
        "deploy_specs/orders.yaml",
        "apiVersion: reconciler/v1\nkind: RestApi\nmetadata:\n  name: orders\nspec:\n"
        "  description: Orders service\n  definition: openapi.yaml\n" + extra,
    )


def _with_policy(repo: SpecRepo) -> None:
    for name in ("openapi.yaml", "openapi-v1.yaml"):
        path = repo.path / "deploy_specs" / name
        repo.write(f"deploy_specs/{name}", path.read_text(encoding="utf-8") + POLICY)


def _update_api(plan: dict[str, Any]) -> dict[str, Any]:
    (action,) = [a for a in plan["actions"] if a["resource"] == "RestApi/orders"]
    assert action["action"] == "update_api"
    return dict(action["changes"])


def test_a_new_api_is_regional_and_an_unset_type_never_diffs(example_repo: SpecRepo) -> None:
    """No endpointType: created REGIONAL, shown in status under apis, and no later plan touches it."""
    plan = example_repo.cli_json("plan")
    (create,) = [a for a in plan["actions"] if a["action"] == "create_api"]
    assert create["changes"]["endpointType"] == [None, "REGIONAL"]
    assert example_repo.cli("apply").code == 0
    api = example_repo.cli_json("status")["apis"]["orders"]
    assert api["endpointType"] == "REGIONAL" and api["tags"] == {} and api["id"] in api["url"]
    assert example_repo.cli_json("plan")["in_sync"] is True


def test_endpoint_type_changes_in_place_and_is_shown_in_the_plan(example_repo: SpecRepo) -> None:
    """endpointType: EDGE on a REGIONAL API: one update_api naming the change; the API keeps its id."""
    assert example_repo.cli("apply").code == 0
    before = example_repo.cli_json("status")["apis"]["orders"]["id"]
    _api_with(example_repo, "  endpointType: EDGE\n")
    example_repo.commit("orders goes edge-optimized")
    assert _update_api(example_repo.cli_json("plan")) == {"endpointType": ["REGIONAL", "EDGE"]}
    text = example_repo.cli("plan").stdout
    assert "endpointType: REGIONAL → EDGE" in text
    assert example_repo.cli("apply").code == 0
    api = example_repo.cli_json("status")["apis"]["orders"]
    assert (api["id"], api["endpointType"]) == (before, "EDGE")
    assert example_repo.cli_json("plan")["in_sync"] is True
    _api_with(example_repo, "")
    example_repo.commit("no endpointType: the API keeps EDGE")
    assert example_repo.cli_json("plan")["in_sync"] is True


def test_private_api_with_vpc_endpoints_is_reconciled(example_repo: SpecRepo) -> None:
    """PRIVATE with two VPC endpoints, then one swapped: status and plan follow the spec, declaratively."""
    _with_policy(example_repo)
    _api_with(example_repo, f"  endpointType: PRIVATE\n  vpcEndpointIds: [{VPCE_B}, {VPCE_A}]\n")
    example_repo.commit("a private API")
    result = example_repo.cli("apply")
    assert result.code == 0, result.stderr
    assert example_repo.cli_json("status")["apis"]["orders"]["endpointType"] == "PRIVATE"
    other = "vpce-00000000000000001"
    _api_with(example_repo, f"  endpointType: PRIVATE\n  vpcEndpointIds: [{VPCE_A}, {other}]\n")
    example_repo.commit("one VPC endpoint swapped")
    assert _update_api(example_repo.cli_json("plan")) == {"vpcEndpointIds": [[VPCE_A, VPCE_B], [other, VPCE_A]]}
    assert example_repo.cli("apply").code == 0
    assert example_repo.cli_json("plan")["in_sync"] is True


def test_a_private_api_without_a_resource_policy_fails_to_deploy_as_on_aws(example_repo: SpecRepo) -> None:
    """API Gateway deploys a private API only with a resource policy: the local backend refuses the same."""
    _api_with(example_repo, "  endpointType: PRIVATE\n")
    example_repo.commit("private, no policy")
    result = example_repo.cli("apply")
    assert result.code == 1
    assert "Private REST API doesn't have a resource policy attached to it" in result.stderr


def test_private_to_edge_is_refused_at_plan_time(example_repo: SpecRepo) -> None:
    """API Gateway changes a private API to REGIONAL only: the plan says so with file, line and field."""
    _with_policy(example_repo)
    _api_with(example_repo, "  endpointType: PRIVATE\n")
    example_repo.commit("private")
    assert example_repo.cli("apply").code == 0
    _api_with(example_repo, "  endpointType: EDGE\n")
    example_repo.commit("private to edge")
    result = example_repo.cli("plan")
    assert result.code == 1
    assert "error: deploy_specs/orders.yaml:8: spec.endpointType: a PRIVATE API cannot become EDGE" in result.stderr


def test_api_tags_are_declarative(example_repo: SpecRepo) -> None:
    """Tags on create, a changed value, then none: each a planned change, status shows the API's own tags."""
    _api_with(example_repo, "  tags: {team: payments, tier: gold}\n")
    example_repo.commit("tagged")
    assert example_repo.cli("apply").code == 0
    assert example_repo.cli_json("status")["apis"]["orders"]["tags"] == {"team": "payments", "tier": "gold"}
    _api_with(example_repo, "  tags: {team: orders}\n")
    example_repo.commit("retagged")
    changes = _update_api(example_repo.cli_json("plan"))
    assert changes == {"tags": [{"team": "payments", "tier": "gold"}, {"team": "orders"}]}
    assert example_repo.cli("apply").code == 0
    _api_with(example_repo, "")
    example_repo.commit("untagged")
    assert _update_api(example_repo.cli_json("plan")) == {"tags": [{"team": "orders"}, {}]}
    assert example_repo.cli("apply").code == 0
    assert example_repo.cli_json("status")["apis"]["orders"]["tags"] == {}


BAD_API_SETTINGS: list[Any] = [
    pytest.param("  endpointType: REGIONALL\n", "spec.endpointType", "expected EDGE, REGIONAL or PRIVATE", id="type"),
    pytest.param(
        f"  endpointType: REGIONAL\n  vpcEndpointIds: [{VPCE_A}]\n",
        "spec.vpcEndpointIds",
        "expected endpointType: PRIVATE with vpcEndpointIds",
        id="vpc-not-private",
    ),
    pytest.param(
        f"  vpcEndpointIds: [{VPCE_A}]\n", "spec.vpcEndpointIds", "got endpointType unset", id="vpc-type-unset"
    ),
    pytest.param(
        "  endpointType: PRIVATE\n  vpcEndpointIds: [vpc-123]\n",
        "spec.vpcEndpointIds.0",
        "expected a VPC endpoint id such as vpce-0123456789abcdef0",
        id="vpc-id",
    ),
    pytest.param(
        f"  endpointType: PRIVATE\n  vpcEndpointIds: [{VPCE_A}, {VPCE_A}]\n",
        "spec.vpcEndpointIds",
        "expected each VPC endpoint once",
        id="vpc-twice",
    ),
    pytest.param("  tags: {'aws:team': x}\n", "spec.tags", "aws: or reconciler:", id="aws-tag"),
    pytest.param("  failOnWarnings: no thanks\n", "spec.failOnWarnings", "expected true or false", id="fail"),
]


@pytest.mark.parametrize(("extra", "field", "fragment"), BAD_API_SETTINGS)
def test_bad_api_settings_are_reported_with_file_line_field_and_expected(
    example_repo: SpecRepo, extra: str, field: str, fragment: str
) -> None:
    """Each RestApi setting's AWS rule is checked at validate time, naming file, line, field and what was expected."""
    _api_with(example_repo, extra)
    example_repo.commit("a bad API setting")
    error = example_repo.validate_error(field)
    assert error["file"] == "deploy_specs/orders.yaml" and error["line"] is not None and error["line"] >= 8
    assert fragment in error["message"], error
