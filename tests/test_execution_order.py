"""The order a plan's actions run in: API by API inside the run of API/stage actions, the rest in place."""

from __future__ import annotations

from reconciler.engine import execution_order
from reconciler.model import (
    AdoptAlias,
    AdoptApi,
    AdoptStage,
    CreateBasePathMapping,
    CreateDeployment,
    DeleteBasePathMapping,
    DeleteStage,
    UpdateAlias,
    UpdateApi,
    UpdateBasePathMapping,
    UpdateStage,
)
from tests.support import make_definition

V = make_definition("v")


def stage(api: str, name: str) -> UpdateStage:
    return UpdateStage(api=api, stage=name, description=None, definition=V, variables={}, canary=None)


def test_each_apis_chain_runs_together_and_everything_else_keeps_its_place() -> None:
    plan = [
        AdoptApi(api="b", instance="default"),
        UpdateApi(api="a", description=None, definition=V),
        UpdateApi(api="b", description=None, definition=V),
        CreateDeployment(api="a", definition=V, api_definition=V, revision=None),
        CreateDeployment(api="b", definition=V, api_definition=V, revision=None),
        stage("a", "one"),
        AdoptStage(api="b", stage="one", instance="default"),
        stage("b", "one"),
        stage("a", "two"),
        AdoptAlias(function="f", alias="x", instance="default", revision_id=None),
        UpdateAlias(function="f", alias="x", description=None, routing={"1": 100.0}),
        DeleteStage(api="a", stage="old"),
    ]
    assert [(a.action, a.resource) for a in execution_order(plan)] == [
        ("adopt_api", "RestApi/b"),
        ("update_api", "RestApi/b"),
        ("create_deployment", "RestApi/b"),
        ("adopt_stage", "Stage/b/one"),
        ("update_stage", "Stage/b/one"),
        ("update_api", "RestApi/a"),
        ("create_deployment", "RestApi/a"),
        ("update_stage", "Stage/a/one"),
        ("update_stage", "Stage/a/two"),
        ("adopt_alias", "Alias/f/x"),
        ("update_alias", "Alias/f/x"),
        ("delete_stage", "Stage/a/old"),
    ]
    assert sorted(map(id, execution_order(plan))) == sorted(map(id, plan))  # the same actions, each once


def test_mapping_actions_run_after_every_stage_and_their_deletes_before_any_stage_delete() -> None:
    """A plan's mapping creates/updates follow the stages (and aliases); its mapping deletes precede stage deletes."""
    plan = [
        UpdateApi(api="a", description=None, definition=V),
        stage("a", "one"),
        CreateBasePathMapping(domain="api.example.com", base_path="v1", api="a", stage="one"),
        UpdateBasePathMapping(domain="api.example.com", base_path="v2", api="a", stage="one"),
        DeleteBasePathMapping(domain="api.example.com", base_path="old"),
        DeleteStage(api="a", stage="old"),
    ]
    assert [(a.action, a.resource) for a in execution_order(plan)] == [
        ("update_api", "RestApi/a"),
        ("update_stage", "Stage/a/one"),
        ("create_base_path_mapping", "BasePathMapping/api.example.com/v1"),
        ("update_base_path_mapping", "BasePathMapping/api.example.com/v2"),
        ("delete_base_path_mapping", "BasePathMapping/api.example.com/old"),
        ("delete_stage", "Stage/a/old"),
    ]
