"""The aws backend's pure parts: markers read back as written, stage patches, aliases a stage reaches."""

from __future__ import annotations

import json

import pytest

from reconciler.backends.aws_model import (
    MANAGED_TAG,
    AliasRef,
    ApiMarker,
    CanaryTarget,
    alias_description,
    alias_refs,
    api_description,
    deployment_description,
    live_api,
    parse_alias_description,
    parse_api_description,
    parse_deployment_description,
    stage_patch,
)
from reconciler.model import LiveCanary, LiveStage
from reconciler.openapi import lambda_targets
from reconciler.specs import Definition

SHA = "ab" * 32


@pytest.mark.parametrize(
    "description",
    [pytest.param("Orders service", id="text"), pytest.param(None, id="none"), pytest.param("a [b] c", id="brackets")],
)
def test_api_description_marker_round_trips(description: str | None) -> None:
    """The spec's description and the definition hash come back out of the stored description."""
    assert parse_api_description(api_description(description, SHA)) == ApiMarker(description, SHA, True, None)


@pytest.mark.parametrize(
    ("owner", "sha", "stored"),
    [
        pytest.param("default", SHA, f"Orders [reconciler:definition-sha256={SHA}]", id="default-as-before"),
        pytest.param("team-b", SHA, f"Orders [reconciler:owner=team-b definition-sha256={SHA}]", id="named"),
        pytest.param("default", None, "Orders [reconciler:owner=default]", id="adopted-no-hash-yet"),
    ],
)
def test_api_description_marker_names_its_owner(owner: str, sha: str | None, stored: str) -> None:
    """The marker names a non-default owner (and any owner before a hash is known), and reads back."""
    assert api_description("Orders", sha, owner) == stored
    assert parse_api_description(stored) == ApiMarker(
        "Orders", sha, True, None if stored.count("owner=") == 0 else owner
    )


def test_api_description_without_marker_has_no_hash() -> None:
    """A description someone wrote by hand yields no definition hash (so the plan imports the definition)."""
    assert parse_api_description("hand made") == ApiMarker("hand made", None, False, None)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        pytest.param(alias_description("production"), (True, None, "production"), id="ours"),
        pytest.param(alias_description(None), (True, None, None), id="ours-no-text"),
        pytest.param(alias_description("prod", "team-b"), (True, "team-b", "prod"), id="named-instance"),
        pytest.param("[reconciler:team-b]", (True, "team-b", None), id="named-no-text"),
        pytest.param("[reconciler]x", (False, None, "[reconciler]x"), id="marker-glued"),
        pytest.param("production", (False, None, "production"), id="not-ours"),
        pytest.param(None, (False, None, None), id="empty"),
    ],
)
def test_alias_marker_decides_ownership(stored: str | None, expected: tuple[bool, str | None, str | None]) -> None:
    """Only a description starting with the marker (alone or followed by a space) is the tool's."""
    assert parse_alias_description(stored) == expected


def test_deployment_description_round_trips_and_ignores_hand_made_ones() -> None:
    """A deployment's JSON description gives its hash and revision; free text gives nothing."""
    assert parse_deployment_description(deployment_description(SHA, "r1")) == (SHA, "r1")
    assert parse_deployment_description("deployed from the console") == (None, None)


def _stage(variables: dict[str, str], canary: LiveCanary | None = None) -> LiveStage:
    return LiveStage("orders", "prod", "d1", SHA, "Prod", variables, canary, "https://x", True)


def test_stage_patch_replaces_new_and_changed_variables_and_removes_old_ones() -> None:
    """Variables are replaced (never added) or removed; unchanged ones are not sent."""
    ops = stage_patch(
        _stage({"keep": "1", "change": "a", "drop": "x"}), "d1", "Prod", {"keep": "1", "change": "b", "new": "n"}, None
    )
    assert ops == [
        {"op": "replace", "path": "/variables/change", "value": "b"},
        {"op": "replace", "path": "/variables/new", "value": "n"},
        {"op": "remove", "path": "/variables/drop"},
    ]


def test_stage_patch_in_sync_is_empty() -> None:
    """A stage already as wanted needs no UpdateStage at all."""
    canary = LiveCanary(10.0, SHA, "d2", {"v": "1"})
    assert stage_patch(_stage({"a": "1"}, canary), "d1", "Prod", {"a": "1"}, CanaryTarget(10.0, "d2", {"v": "1"})) == []


def test_alias_refs_resolve_alias_and_function_through_stage_variables() -> None:
    """Both a literal function and a function named by a stage variable lead to the alias the stage names."""
    arn = "arn:aws:lambda:us-east-1:123456789012:function:"
    body = (
        '{"a":"' + arn + 'orders:${stageVariables.alias}/invocations",'
        '"b":"' + arn + '${stageVariables.fn}:${stageVariables.alias}/invocations"}'
    )
    definition = Definition(SHA, body, "openapi.yaml")
    assert alias_refs(definition, {"alias": "prod", "fn": "billing"}) == {
        AliasRef("orders", "prod", "aws", "123456789012"),
        AliasRef("billing", "prod", "aws", "123456789012"),
    }
    assert alias_refs(definition, {"fn": "billing"}) == set()


# Markers as an earlier release wrote them, spelled out (never built with the code under test): a changed
# format would orphan every API, alias and deployment made before, so reading these must keep working.
STORED_API_DESCRIPTION = "Orders service [reconciler:definition-sha256=" + "ab" * 32 + "]"
STORED_ALIAS_DESCRIPTION = "[reconciler] production"
STORED_DEPLOYMENT_DESCRIPTION = '{"revision": "r1", "sha256": "' + "ab" * 32 + '"}'
MANAGED_BY_TAG = {"reconciler:managed": "true"}


def test_markers_written_by_an_earlier_release_are_read_back() -> None:
    """Descriptions and tags exactly as stored in AWS by an earlier release still mean 'ours' (default's)."""
    assert parse_api_description(STORED_API_DESCRIPTION) == ApiMarker("Orders service", SHA, True, None)
    assert parse_api_description("[reconciler:definition-sha256=" + "ab" * 32 + "]") == ApiMarker(None, SHA, True, None)
    assert parse_alias_description(STORED_ALIAS_DESCRIPTION) == (True, None, "production")
    assert parse_alias_description("[reconciler]") == (True, None, None)
    assert parse_deployment_description(STORED_DEPLOYMENT_DESCRIPTION) == (SHA, "r1")
    api = live_api({"name": "orders", "id": "a1", "description": STORED_API_DESCRIPTION, "tags": MANAGED_BY_TAG})
    assert (api.managed, api.owner, api.description, api.definition_sha256) == (True, None, "Orders service", SHA)


def test_markers_are_written_in_the_stored_format() -> None:
    """What this release writes for ``default`` is byte for byte the format above (change it only with a
    migration)."""
    assert api_description("Orders service", SHA) == STORED_API_DESCRIPTION
    assert api_description("Orders service", SHA, "default") == STORED_API_DESCRIPTION
    assert alias_description("production") == STORED_ALIAS_DESCRIPTION
    assert alias_description("production", "default") == STORED_ALIAS_DESCRIPTION
    assert json.loads(deployment_description(SHA, "r1")) == json.loads(STORED_DEPLOYMENT_DESCRIPTION)
    assert MANAGED_TAG == "reconciler:managed"


def test_every_lambda_uri_form_api_gateway_accepts_leads_to_its_alias() -> None:
    """Alias in a variable, the whole function:alias in one variable, AWS:: variables, a literal qualifier."""
    path = "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/"
    uris = [
        path + "arn:aws:lambda:us-east-1:123456789012:function:orders:${stageVariables.alias}/invocations",
        path + "arn:aws:lambda:us-east-1:123456789012:function:${stageVariables.fn}/invocations",
        path + "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:audit:${stageVariables.alias}"
        "/invocations",
        path + "arn:aws:lambda:us-east-1:123456789012:function:billing:live/invocations",
    ]
    body = "paths:\n" + "".join(f"  /p{i}:\n    get:\n      uri: {uri}\n" for i, uri in enumerate(uris))
    definition = Definition(SHA, "{}", "openapi.yaml", text=body)
    assert alias_refs(definition, {"alias": "prod", "fn": "payments:blue"}) == {
        AliasRef("orders", "prod", "aws", "123456789012"),
        AliasRef("payments", "blue", "aws", "123456789012"),
        AliasRef("audit", "prod", "aws", "{account}"),
        AliasRef("billing", "live", "aws", "123456789012"),
    }


def test_a_lambda_integration_whose_permission_cannot_be_worked_out_is_named() -> None:
    """An unset variable or an unqualified function is reported, not silently skipped."""
    path = "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:"
    body = f"a: {path}function:${{stageVariables.fn}}/invocations\nb: {path}function:plain/invocations\n"
    assert lambda_targets(body, {})[1] == [
        "Lambda function ${stageVariables.fn}: stage variable fn is not set",
        "Lambda function plain is invoked without an alias; grant its invoke permission yourself",
    ]
