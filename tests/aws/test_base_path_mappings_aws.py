"""BasePathMapping on the aws backend: moto through the real CLI where moto can, ``Stubber`` where it cannot.

What moto 5.2 lacks, so those requests are checked with botocore's ``Stubber``
against AWS's shapes: tags on a custom domain name after its creation
(``TagResource``/``UntagResource`` of ``arn:aws:apigateway:REGION::/domainnames/NAME``
answer "Invalid Rest API Id"), and ``GetBasePathMappings`` of a domain that never
had a mapping (an internal error instead of an empty list).  moto does keep a
domain's tags given at ``CreateDomainName``, lists mappings, and applies
``UpdateBasePathMapping``'s ``replace /stage`` and ``/restapiId``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

from reconciler.backends.aws import AwsBackend
from reconciler.backends.aws_model import api_description, mapping_tag
from reconciler.errors import BackendError, ConflictError
from reconciler.model import (
    AdoptBasePathMapping,
    CreateBasePathMapping,
    DeleteBasePathMapping,
    LiveBasePathMapping,
    LiveState,
    UpdateBasePathMapping,
)
from reconciler.specs import DesiredApi, DesiredBasePathMapping, DesiredState
from tests.aws.conftest import Aws, AwsRepo
from tests.aws.test_requests_stubbed import HERE, MAIN, MANAGED, SHA1, backend

__all__ = ["backend"]  # the stubbed backend, shared with test_requests_stubbed

DOMAIN = "api.example.com"
DOMAIN_ARN = f"arn:aws:apigateway:us-east-1::/domainnames/{DOMAIN}"
CERTIFICATE = "arn:aws:acm:us-east-1:123456789012:certificate/11111111-2222-3333-4444-555555555555"
MAPPING_SPEC = """\
---
apiVersion: reconciler/v1
kind: BasePathMapping
metadata: {{name: orders-v1}}
spec:
  domain: {domain}
  basePath: v1
  api: orders
  stage: {stage}
"""
# API Gateway's tag keys: 1-128 characters of letters, digits, spaces and _.:/=+-@
TAG_KEY = re.compile(r"[\w\s.:/=+\-@]{1,128}")


def _with_mapping(repo: AwsRepo, stage: str, domain: str = DOMAIN) -> None:
    specs = (
        (repo.path / "deploy_specs/specs.yaml")
        .read_text(encoding="utf-8")
        .split("---\napiVersion: reconciler/v1\nkind: BasePathMapping")[0]
    )
    repo.write("deploy_specs/specs.yaml", specs + MAPPING_SPEC.format(domain=domain, stage=stage))
    repo.commit(f"{domain}/v1 -> {stage}")


def _hand_made(aws: Aws, tags: dict[str, str], stage: str = "dev") -> None:
    """The domain (made with its certificate and ``tags``) and its v1 mapping to ``stage``, made outside the tool."""
    aws.apigateway.create_domain_name(domainName=DOMAIN, certificateArn=CERTIFICATE, tags=tags)
    aws.apigateway.create_base_path_mapping(domainName=DOMAIN, basePath="v1", restApiId=aws.api()["id"], stage=stage)


# ------------------------------------------------------------------ moto, through the CLI


def test_an_owned_mapping_is_moved_to_the_stage_the_spec_names(aws_repo: AwsRepo, aws: Aws) -> None:
    """The domain's tag names default as v1's owner: the plan moves v1 from dev to prod, status shows it."""
    assert aws_repo.aws("apply").code == 0
    _hand_made(aws, {mapping_tag("v1"): "default"})
    _with_mapping(aws_repo, "prod")
    plan = aws_repo.aws_json("plan")
    assert plan["actions"] == [
        {
            "action": "update_base_path_mapping",
            "resource": "BasePathMapping/api.example.com/v1",
            "changes": {"stage": ["dev", "prod"]},
        }
    ]
    assert aws_repo.aws("apply").code == 0
    found = aws.apigateway.get_base_path_mapping(domainName=DOMAIN, basePath="v1")
    assert (found["restApiId"], found["stage"]) == (aws.api()["id"], "prod")
    assert aws_repo.aws_json("plan")["in_sync"] is True
    shown = aws_repo.aws_json("status")["basePathMappings"]["api.example.com/v1"]
    assert (shown["api"], shown["stage"], shown["managed"]) == ("orders", "prod", True)


def test_a_mapping_without_a_mark_is_refused_and_left_alone(aws_repo: AwsRepo, aws: Aws) -> None:
    """A mapping made in the console: plan and apply exit 1 saying how to adopt it; it still points at dev."""
    assert aws_repo.aws("apply").code == 0
    _hand_made(aws, {"team": "platform"})
    _with_mapping(aws_repo, "prod")
    for command in ("plan", "apply"):
        result = aws_repo.aws(command)
        assert result.code == 1
        assert "base path mapping api.example.com/v1 already exists and is not managed" in result.stderr
        assert "set `adopt: true`" in result.stderr
    assert aws.apigateway.get_base_path_mapping(domainName=DOMAIN, basePath="v1")["stage"] == "dev"


def test_a_mapping_of_another_instance_is_refused_naming_it(aws_repo: AwsRepo, aws: Aws) -> None:
    """The domain's tag names team-b as v1's owner: default's plan exits 1 naming team-b; prune leaves it."""
    assert aws_repo.aws("apply").code == 0
    _hand_made(aws, {mapping_tag("v1"): "team-b"})
    _with_mapping(aws_repo, "prod")
    result = aws_repo.aws("plan")
    assert result.code == 1
    assert "base path mapping api.example.com/v1 is managed by reconciler instance 'team-b'" in result.stderr
    aws_repo.git("reset", "-q", "--hard", "HEAD~1")
    assert aws_repo.aws("apply", "--prune").code == 0
    assert aws.apigateway.get_base_path_mapping(domainName=DOMAIN, basePath="v1")["stage"] == "dev"


def test_a_mapping_to_a_domain_that_does_not_exist_is_a_plan_error(aws_repo: AwsRepo, aws: Aws) -> None:
    """No such custom domain in the account: plan exits 1 at the spec's domain line."""
    _with_mapping(aws_repo, "prod", domain="missing.example.com")
    result = aws_repo.aws("plan")
    assert result.code == 1
    assert "spec.domain: custom domain name 'missing.example.com' does not exist in the backend" in result.stderr
    assert aws.apigateway.get_rest_apis()["items"] == []


# ------------------------------------------------------------------ Stubber: AWS's request shapes

DESIRED = DesiredState(
    revision="r2",
    apis={"orders": DesiredApi("orders", "Orders", MAIN, HERE)},
    mappings={(DOMAIN, "v1"): DesiredBasePathMapping(DOMAIN, "v1", "orders", "prod", HERE)},
)


def expect_api_read(apigateway: Stubber) -> None:
    """The first calls of a read of DESIRED: API a1, with no deployment or stage."""
    apigateway.add_response(
        "get_rest_apis",
        {"items": [{"id": "a1", "name": "orders", "description": api_description("Orders", SHA1), "tags": MANAGED}]},
    )
    apigateway.add_response("get_deployments", {"items": []}, {"restApiId": "a1", "limit": 500})
    apigateway.add_response("get_stages", {"item": []}, {"restApiId": "a1"})


def expect_mapping_read(apigateway: Stubber, domains: list[dict[str, Any]], mapped: dict[str, list[Any]]) -> None:
    """One read of DESIRED: API a1, then the domains and the mappings of the domains in ``mapped``."""
    expect_api_read(apigateway)
    apigateway.add_response("get_domain_names", {"items": domains}, {"limit": 500})
    for domain, items in mapped.items():
        apigateway.add_response("get_base_path_mappings", {"items": items}, {"domainName": domain, "limit": 500})


@pytest.fixture
def stubbed(backend: AwsBackend) -> Iterator[tuple[Stubber, LiveState]]:
    """A read that sees api.example.com (v1 -> prod, default's; v2 unmanaged; root team-b's) and
    other.example.com (not named, not ours: its mappings are never listed)."""
    apigateway = Stubber(backend.calls.apigateway)
    tags = {mapping_tag("v1"): "default", mapping_tag("(none)"): "team-b", "cost-center": "42"}
    expect_mapping_read(
        apigateway,
        [{"domainName": DOMAIN, "tags": tags}, {"domainName": "other.example.com", "tags": {"a": "b"}}],
        {
            DOMAIN: [
                {"basePath": "v1", "restApiId": "a1", "stage": "prod"},
                {"basePath": "v2", "restApiId": "a1", "stage": "dev"},
                {"basePath": "(none)", "restApiId": "zz9", "stage": "live"},
            ]
        },
    )
    with apigateway:
        yield apigateway, backend.read(DESIRED)
        apigateway.assert_no_pending_responses()


def test_the_read_takes_each_mappings_owner_from_its_domain_tag(stubbed: tuple[Stubber, LiveState]) -> None:
    """Owners come from the domain's per-path tags; an API the read did not see is known by its id only."""
    _, live = stubbed
    assert live.domains == {DOMAIN, "other.example.com"}
    assert live.mappings == {
        (DOMAIN, "v1"): LiveBasePathMapping(DOMAIN, "v1", "a1", "orders", "prod", True, "default"),
        (DOMAIN, "v2"): LiveBasePathMapping(DOMAIN, "v2", "a1", "orders", "dev", False, None),
        (DOMAIN, "(none)"): LiveBasePathMapping(DOMAIN, "(none)", "zz9", None, "live", True, "team-b"),
    }


def test_a_new_mapping_is_claimed_on_the_domain_then_created(
    backend: AwsBackend, stubbed: tuple[Stubber, LiveState]
) -> None:
    """TagResource of the domain first (a crash then leaves a claim, never an unowned mapping), then the mapping."""
    apigateway, _ = stubbed
    apigateway.add_response(
        "tag_resource", {}, {"resourceArn": DOMAIN_ARN, "tags": {"reconciler:mapping:v3": "default"}}
    )
    apigateway.add_response(
        "create_base_path_mapping",
        {"basePath": "v3", "restApiId": "a1", "stage": "prod"},
        {"domainName": DOMAIN, "basePath": "v3", "restApiId": "a1", "stage": "prod"},
    )
    backend.apply(CreateBasePathMapping(domain=DOMAIN, base_path="v3", api="orders", stage="prod"))


@pytest.mark.parametrize(
    ("found", "error"),
    [
        pytest.param({"restApiId": "a1", "stage": "prod"}, None, id="our-create-whose-answer-was-lost"),
        pytest.param({"restApiId": "zz9", "stage": "live"}, "re-plan", id="someone-elses"),
    ],
)
def test_a_create_finding_the_path_taken_looks_at_what_holds_it(
    backend: AwsBackend, stubbed: tuple[Stubber, LiveState], found: dict[str, str], error: str | None
) -> None:
    """409 on create: a mapping already pointing where the action does is done (a retry after a lost answer);
    anyone else's is a conflict to re-plan, and this instance's claim on the domain is taken back."""
    apigateway, _ = stubbed
    claim = {"reconciler:mapping:v3": "default"}
    apigateway.add_response("tag_resource", {}, {"resourceArn": DOMAIN_ARN, "tags": claim})
    apigateway.add_client_error(
        "create_base_path_mapping",
        service_error_code="ConflictException",
        service_message="Base path already exists for this domain name",
        http_status_code=409,
    )
    apigateway.add_response(
        "get_base_path_mapping", {"basePath": "v3", **found}, {"domainName": DOMAIN, "basePath": "v3"}
    )
    action = CreateBasePathMapping(domain=DOMAIN, base_path="v3", api="orders", stage="prod")
    if error is None:
        backend.apply(action)
        return
    apigateway.add_response("untag_resource", {}, {"resourceArn": DOMAIN_ARN, "tagKeys": list(claim)})
    with pytest.raises(ConflictError, match=error):
        backend.apply(action)


def test_moving_a_mapping_is_one_patch_of_its_stage(backend: AwsBackend, stubbed: tuple[Stubber, LiveState]) -> None:
    """UpdateBasePathMapping with replace /stage only: the API did not change."""
    apigateway, _ = stubbed
    apigateway.add_response(
        "update_base_path_mapping",
        {"basePath": "v1", "restApiId": "a1", "stage": "dev"},
        {
            "domainName": DOMAIN,
            "basePath": "v1",
            "patchOperations": [{"op": "replace", "path": "/stage", "value": "dev"}],
        },
    )
    backend.apply(UpdateBasePathMapping(domain=DOMAIN, base_path="v1", api="orders", stage="dev"))
    backend.apply(UpdateBasePathMapping(domain=DOMAIN, base_path="v1", api="orders", stage="dev"))  # done: no call


def test_another_instances_or_an_unmanaged_mapping_is_never_written(
    backend: AwsBackend, stubbed: tuple[Stubber, LiveState]
) -> None:
    """Updates of team-b's root and of the unmanaged v2 fail before any request; deleting them does nothing."""
    with pytest.raises(BackendError, match="managed by reconciler instance 'team-b'"):
        backend.apply(UpdateBasePathMapping(domain=DOMAIN, base_path="(none)", api="orders", stage="prod"))
    with pytest.raises(BackendError, match="not managed by reconciler"):
        backend.apply(UpdateBasePathMapping(domain=DOMAIN, base_path="v2", api="orders", stage="prod"))
    backend.apply(DeleteBasePathMapping(domain=DOMAIN, base_path="(none)"))
    backend.apply(DeleteBasePathMapping(domain=DOMAIN, base_path="v2"))


def test_a_pruned_mapping_is_deleted_then_its_claim_removed(
    backend: AwsBackend, stubbed: tuple[Stubber, LiveState]
) -> None:
    apigateway, _ = stubbed
    apigateway.add_response("delete_base_path_mapping", {}, {"domainName": DOMAIN, "basePath": "v1"})
    apigateway.add_response("untag_resource", {}, {"resourceArn": DOMAIN_ARN, "tagKeys": ["reconciler:mapping:v1"]})
    backend.apply(DeleteBasePathMapping(domain=DOMAIN, base_path="v1"))


def test_adopting_a_mapping_claims_it_on_the_domain(backend: AwsBackend, stubbed: tuple[Stubber, LiveState]) -> None:
    """adopt_base_path_mapping is one TagResource; the mapping keeps pointing where it did."""
    apigateway, _ = stubbed
    apigateway.add_response(
        "tag_resource", {}, {"resourceArn": DOMAIN_ARN, "tags": {"reconciler:mapping:v2": "default"}}
    )
    backend.apply(AdoptBasePathMapping(domain=DOMAIN, base_path="v2", instance="default"))
    backend.apply(AdoptBasePathMapping(domain=DOMAIN, base_path="v2", instance="default"))  # done: no call


def test_an_account_that_may_not_list_domains_has_none_of_ours_unless_specs_map_one(backend: AwsBackend) -> None:
    """AccessDenied on GetDomainNames: a read for specs without mappings goes on; one with mappings fails."""
    apigateway = Stubber(backend.calls.apigateway)
    for _ in range(2):  # one read without mappings, one with
        expect_api_read(apigateway)
        apigateway.add_client_error(
            "get_domain_names", service_error_code="AccessDeniedException", http_status_code=403
        )
    with apigateway:
        assert backend.read(DesiredState(apis=DESIRED.apis)).mappings == {}
        with pytest.raises(BackendError, match="GetDomainNames failed: AccessDeniedException"):
            backend.read(DESIRED)


@pytest.mark.parametrize(
    ("base_path", "key"),
    [
        pytest.param("v1", "reconciler:mapping:v1", id="plain"),
        pytest.param("(none)", "reconciler:mapping:/", id="root"),
        pytest.param("orders.v2-beta_1", "reconciler:mapping:orders.v2-beta_1", id="punctuation"),
        pytest.param("it's(v1)!", "reconciler:mapping:sha256:", id="not-a-tag-character"),
    ],
)
def test_each_base_path_has_its_own_valid_tag_key(base_path: str, key: str) -> None:
    """One domain tag key per base path, always a key API Gateway accepts (hashed when the path cannot be one)."""
    found = mapping_tag(base_path)
    assert found.startswith(key) and TAG_KEY.fullmatch(found)
    assert len({mapping_tag(p) for p in ("v1", "(none)", "it's(v1)!", "it's(v2)!")}) == 4
