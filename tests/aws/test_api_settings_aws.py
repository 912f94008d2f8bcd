"""RestApi settings on the aws backend (DESIGN §10): moto for what it keeps, Stubber for what it ignores.

moto 5.2 keeps the endpoint type (CreateRestApi, and UpdateRestApi's replace on
``/endpointConfiguration/types/<old>``), the VPC endpoints and tags given to
CreateRestApi; it cannot tag an API later (its TagResource knows stages only),
ignores VPC endpoint patch operations, and never returns import warnings.  Those
go through botocore's ``Stubber`` with the exact requests AWS takes, and the
warnings through a real proxy that adds them to moto's PutRestApi answer.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler.backends.aws import AwsBackend
from reconciler.backends.aws_model import api_description
from reconciler.errors import BackendError
from reconciler.plan import UpdateApi
from reconciler.settings import ApiSettings
from tests.aws.conftest import Aws, AwsRepo
from tests.aws.proxy import Recorded, lossy_proxy
from tests.aws.test_requests_stubbed import (  # noqa: F401 - fixtures
    DESIRED,
    MAIN,
    MANAGED,
    ORDERS_API,
    OTHER,
    SHA2,
    Stubbed,
    backend,
    expect_read,
    stubs,
)

API_ARN = "arn:aws:apigateway:us-east-1::/restapis/a1"
VPCE_A = "vpce-0123456789abcdef0"
VPCE_B = "vpce-0fedcba9876543210"
VPCE_C = "vpce-00000000000000001"
POLICY = """\
x-amazon-apigateway-policy:
  Version: "2012-10-17"
  Statement:
    - {Effect: Allow, Principal: "*", Action: "execute-api:Invoke", Resource: "execute-api:/*"}
"""
WARNING = "Parse issue: attribute paths.'/orders'(get).responses.'200'.content is missing"


def _api_with(repo: AwsRepo, extra: str) -> None:
    specs = (repo.path / "deploy_specs/specs.yaml").read_text(encoding="utf-8")
    head, sep, rest = specs.partition("---")
    lines = [
        line for line in head.splitlines() if not line.startswith(("  endpointType", "  tags", "  vpcEnd", "  fail"))
    ]
    repo.write("deploy_specs/specs.yaml", "\n".join(lines) + "\n" + extra + sep + rest)


def test_endpoint_type_changes_in_place_on_moto(aws_repo: AwsRepo, aws: Aws) -> None:
    """REGIONAL -> EDGE: one update_api in the plan, UpdateRestApi in place (same id), then in sync."""
    assert aws_repo.aws("apply").code == 0
    before = aws.api()
    assert before["endpointConfiguration"]["types"] == ["REGIONAL"]
    _api_with(aws_repo, "  endpointType: EDGE\n")
    aws_repo.commit("edge")
    plan = aws_repo.aws_json("plan")
    assert [(a["action"], a["changes"]) for a in plan["actions"]] == [
        ("update_api", {"endpointType": ["REGIONAL", "EDGE"]})
    ]
    result = aws_repo.aws("apply")
    assert result.code == 0, result.stderr
    after = aws.api()
    assert after["id"] == before["id"] and after["endpointConfiguration"]["types"] == ["EDGE"]
    assert aws_repo.aws_json("status")["apis"]["orders"]["endpointType"] == "EDGE"
    assert aws_repo.aws_json("plan")["in_sync"] is True


def test_private_api_with_vpc_endpoints_and_tags_on_moto(aws_repo: AwsRepo, aws: Aws) -> None:
    """A new PRIVATE API gets its VPC endpoints and tags from CreateRestApi; status shows them without the mark."""
    for name in ("openapi.yaml", "openapi-v1.yaml"):
        text = (aws_repo.path / "deploy_specs" / name).read_text(encoding="utf-8")
        aws_repo.write(f"deploy_specs/{name}", text + POLICY)
    _api_with(
        aws_repo, f"  endpointType: PRIVATE\n  vpcEndpointIds: [{VPCE_B}, {VPCE_A}]\n  tags: {{team: payments}}\n"
    )
    aws_repo.commit("a private, tagged API")
    result = aws_repo.aws("apply")
    assert result.code == 0, result.stderr
    api = aws.api()
    assert api["endpointConfiguration"] == {"types": ["PRIVATE"], "vpcEndpointIds": [VPCE_A, VPCE_B]}
    assert api["tags"]["team"] == "payments" and api["tags"]["reconciler:instance"] == "default"
    status = aws_repo.aws_json("status")["apis"]["orders"]
    assert (status["endpointType"], status["tags"]) == ("PRIVATE", {"team": "payments"})
    assert aws_repo.aws_json("plan")["in_sync"] is True


def test_endpoint_vpc_endpoints_and_tags_are_exact_requests(backend: AwsBackend, stubs: Stubbed) -> None:  # noqa: F811
    """EDGE -> PRIVATE with a VPC endpoint and a tag: one UpdateRestApi, TagResource on the API's ARN."""
    stubs.apigateway.add_response(
        "update_rest_api",
        {"id": "a1", "name": "orders"},
        {
            "restApiId": "a1",
            "patchOperations": [
                {"op": "replace", "path": "/endpointConfiguration/types/EDGE", "value": "PRIVATE"},
                {"op": "add", "path": "/endpointConfiguration/vpcEndpointIds", "value": VPCE_A},
            ],
        },
    )
    stubs.apigateway.add_response("tag_resource", {}, {"resourceArn": API_ARN, "tags": {"team": "payments"}})
    backend.apply(
        UpdateApi(
            api="orders",
            description="Orders",
            definition=MAIN,
            settings=ApiSettings("PRIVATE", (VPCE_A,), {"team": "payments"}),
        )
    )


def test_vpc_endpoints_and_tags_removed_are_exact_requests(backend: AwsBackend, stubs: Stubbed) -> None:  # noqa: F811
    """A swapped VPC endpoint is an add and a remove; a tag gone is UntagResource; the mark and aws: tags stay."""
    private = {
        **ORDERS_API,
        "endpointConfiguration": {"types": ["PRIVATE"], "vpcEndpointIds": [VPCE_A, VPCE_B]},
        "tags": {**MANAGED, "old": "1", "aws:cloudformation:stack-name": "s"},
    }
    expect_read(stubs.apigateway, stubs.lambda_, api=private)
    live = backend.read(DESIRED).apis["orders"]
    assert (live.vpc_endpoint_ids, live.tags) == ((VPCE_A, VPCE_B), {"old": "1"})
    stubs.apigateway.add_response(
        "update_rest_api",
        {"id": "a1", "name": "orders"},
        {
            "restApiId": "a1",
            "patchOperations": [
                {"op": "add", "path": "/endpointConfiguration/vpcEndpointIds", "value": VPCE_C},
                {"op": "remove", "path": "/endpointConfiguration/vpcEndpointIds", "value": VPCE_A},
            ],
        },
    )
    stubs.apigateway.add_response("untag_resource", {}, {"resourceArn": API_ARN, "tagKeys": ["old"]})
    backend.apply(
        UpdateApi(
            api="orders", description="Orders", definition=MAIN, settings=ApiSettings("PRIVATE", (VPCE_B, VPCE_C))
        )
    )


def _put(fail_on_warnings: bool) -> dict[str, Any]:
    return {"restApiId": "a1", "mode": "overwrite", "failOnWarnings": fail_on_warnings, "body": OTHER.body.encode()}


def test_import_warnings_fail_the_action_by_default(backend: AwsBackend, stubs: Stubbed) -> None:  # noqa: F811
    """failOnWarnings defaults to true: PutRestApi asks AWS to roll back on a warning, and the error shows it."""
    stubs.apigateway.add_client_error(
        "put_rest_api",
        service_error_code="BadRequestException",
        service_message=f"Warnings found during import: {WARNING}",
        http_status_code=400,
        expected_params=_put(True),
    )
    with pytest.raises(BackendError) as raised:
        backend.apply(UpdateApi(api="orders", description="Orders", definition=OTHER))
    assert WARNING in str(raised.value) and "failOnWarnings: false" in str(raised.value)


def test_import_warnings_are_kept_and_logged_when_allowed(backend: AwsBackend, stubs: Stubbed) -> None:  # noqa: F811
    """failOnWarnings: false imports with the warnings AWS returns; they are logged and handed to the output."""
    imported = {"id": "a1", "name": "orders", "description": api_description("Orders", SHA2), "warnings": [WARNING]}
    stubs.apigateway.add_response("put_rest_api", imported, _put(False))
    with capture_logs() as logs:
        backend.apply(
            UpdateApi(
                api="orders",
                description="Orders",
                definition=OTHER,
                settings=replace(ApiSettings(), failOnWarnings=False),
            )
        )
    assert [e["warnings"] for e in logs if e["event"] == "import_warnings"] == [[WARNING]]
    (warning,) = backend.take_warnings()
    assert (warning.code, warning.resource) == ("import_warnings", "RestApi/orders") and WARNING in warning.message
    assert backend.take_warnings() == []


def test_apply_shows_import_warnings_aws_returns(aws_repo: AwsRepo, aws: Aws) -> None:
    """Through the CLI: with failOnWarnings: false the import goes on, and apply prints AWS's warnings."""
    _api_with(aws_repo, "  failOnWarnings: false\n")
    aws_repo.commit("warnings allowed")

    def add_warnings(request: Recorded, data: bytes) -> bytes:
        if request.method != "PUT" or "/restapis/" not in request.path:
            return data
        return json.dumps({**json.loads(data), "warnings": [WARNING]}).encode()

    with lossy_proxy(aws.url) as proxy:
        proxy.rewrite = add_warnings
        result = aws_repo.cli(
            "apply", "--backend", "aws", "--endpoint-url", proxy.url, "--region", "us-east-1", output="json"
        )
    assert result.code == 0, result.stderr
    puts = proxy.matching("PUT", r"/restapis/[^/]+")
    assert puts and all("failonwarnings=false" in r.path.lower() for r in puts)
    warnings = [w for w in result.json["warnings"] if w["code"] == "import_warnings"]
    assert warnings and all(w["resource"] == "RestApi/orders" and WARNING in w["message"] for w in warnings)
    assert f"warning: RestApi/orders: import warnings: {WARNING}" in result.stderr.splitlines()
