"""Ownership per instance and adoption (DESIGN §10) in the local backend, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.backends.local import LocalCloud
from tests.support import SpecRepo

ADOPT = """\
apiVersion: reconciler/v1
kind: RestApi
metadata: {name: orders, adopt: true}
spec:
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
  routing: {"2": 100}
"""


def _hand_made(repo: SpecRepo) -> str:
    """An API with one deployment and a prod stage, and a prod alias, none of them managed."""
    cloud = LocalCloud(repo.state_dir)
    try:
        with cloud.transaction():
            api_id = cloud.create_rest_api("orders", "console", managed=False)
            body = json.dumps({"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": {}})
            cloud.put_rest_api(api_id, body, "f" * 64, "console")
            deployment = cloud.create_deployment(api_id, "console deploy", None)
            cloud.create_stage(api_id, "prod", deployment, None, {"lambdaAlias": "prod"}, None, managed=False)
            cloud.create_alias("orders-handler", "prod", "1", {}, "by hand", managed=False)
    finally:
        cloud.close()
    return api_id


def _second_instance_repo(tmp_path: Path, first: SpecRepo) -> SpecRepo:
    """Another repository whose instance shares the first one's local backend (one account)."""
    other = SpecRepo(tmp_path / "other", state_dir=first.state_dir)
    other.copy_example()
    other.commit("the same example specs")
    return other


def test_another_instance_naming_the_same_resources_is_refused(example_repo: SpecRepo, tmp_path: Path) -> None:
    """Instance team-b cannot plan or apply over default's API, stages and aliases: exit 1 naming the owner."""
    assert example_repo.cli("apply").code == 0
    other = _second_instance_repo(tmp_path, example_repo)
    result = other.cli("plan", "--instance", "team-b")
    assert result.code == 1 and "managed by reconciler instance 'default'" in result.stderr


def test_prune_never_deletes_another_instances_stage(example_repo: SpecRepo, tmp_path: Path) -> None:
    """team-b with --prune and specs naming none of default's resources deletes nothing of default's."""
    assert example_repo.cli("apply").code == 0
    other = SpecRepo(tmp_path / "other", state_dir=example_repo.state_dir)
    other.write("deploy_specs/.keep.yaml", "")
    other.commit("no specs")
    result = other.cli("apply", "--instance", "team-b", "--prune", "--allow-empty")
    assert result.code == 0, result.stderr
    assert example_repo.cli_json("plan")["in_sync"] is True


def test_old_marks_belong_to_default(example_repo: SpecRepo) -> None:
    """Rows marked managed before owners were recorded (owner NULL) are default's."""
    assert example_repo.cli("apply").code == 0
    cloud = LocalCloud(example_repo.state_dir)
    try:
        with cloud.transaction() as db:
            for table in ("rest_apis", "stages", "aliases"):
                db.execute(f"UPDATE {table} SET owner = NULL")
    finally:
        cloud.close()
    assert example_repo.cli_json("plan")["in_sync"] is True
    result = example_repo.cli("plan", "--instance", "team-b")
    assert result.code == 1 and "instance 'default'" in result.stderr


def test_adopt_marks_hand_made_resources_and_keeps_the_api_id(repo: SpecRepo) -> None:
    """adopt_api, adopt_stage and adopt_alias, then the usual updates; the API keeps its id; then in sync."""
    repo.copy_example()
    repo.publish("orders-handler", times=2)
    for name in ("orders.yaml", "stages.yaml", "aliases.yaml"):
        repo.remove(f"deploy_specs/{name}")
    repo.write("deploy_specs/specs.yaml", ADOPT)
    repo.commit("adopt")
    api_id = _hand_made(repo)
    plan = repo.cli_json("plan")
    actions = [a["action"] for a in plan["actions"]]
    assert actions[0] == "adopt_api" and "adopt_stage" in actions and "adopt_alias" in actions
    assert actions.index("adopt_stage") < actions.index("update_stage")
    text = repo.cli("plan")
    assert text.code == 2 and "3 to adopt" in text.stdout and "& RestApi/orders  (adopt_api)" in text.stdout
    assert repo.cli("apply", output="json").code == 0
    status = repo.cli_json("status")
    assert status["stages"]["orders/prod"]["url"].startswith(f"https://{api_id}.")
    assert status["aliases"]["orders-handler/prod"]["routing"] == {"2": 100}
    assert repo.cli_json("plan")["in_sync"] is True


def test_without_adopt_the_error_says_how_to_adopt(repo: SpecRepo) -> None:
    """A hand-made API named by a spec without adopt is refused with the way to take it over."""
    repo.copy_example()
    repo.publish("orders-handler", times=2)
    repo.commit("example")
    _hand_made(repo)
    result = repo.cli("plan")
    assert result.code == 1 and "adopt: true" in result.stderr
