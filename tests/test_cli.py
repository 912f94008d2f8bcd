"""Functional tests: the real CLI on real temporary git repositories, with the local backend.

Each test drives ``reconciler`` in-process exactly as a user would (commit,
plan, apply, revert, rollback) and checks exit codes, the JSON of DESIGN §4,
git tags and the live state the local backend holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from reconciler.backends.local import LocalCloud
from tests.support import SpecRepo, with_state_dir

STAGES = "deploy_specs/stages.yaml"
ALIASES = "deploy_specs/aliases.yaml"
OPENAPI = "deploy_specs/openapi.yaml"
SHA = re.compile(r"[0-9a-f]{40}")


def edit(repo: SpecRepo, relpath: str, old: str, new: str) -> None:
    """Replace ``old`` (which must be there) by ``new`` in a working-tree file."""
    text = (repo.path / relpath).read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {relpath}"
    repo.write(relpath, text.replace(old, new))


def deployment_count(repo: SpecRepo) -> int:
    cloud = LocalCloud(repo.state_dir)
    try:
        return int(cloud.db.execute("SELECT COUNT(*) FROM deployments").fetchone()[0])
    finally:
        cloud.close()


def stage(repo: SpecRepo, name: str = "prod") -> dict[str, Any]:
    stages: dict[str, Any] = repo.cli_json("status")["stages"]
    return dict(stages[f"orders/{name}"])


def routing(repo: SpecRepo, alias: str = "prod") -> dict[str, Any]:
    aliases: dict[str, Any] = repo.cli_json("status")["aliases"]
    return dict(aliases[f"orders-handler/{alias}"]["routing"])


def tags(repo: SpecRepo, instance: str = "default") -> list[str]:
    listed = repo.git("tag", "-l", f"applied/{instance}/*").split()
    return sorted(listed, key=lambda t: int(t.rsplit("/", 1)[1]))


def applied(repo: SpecRepo) -> SpecRepo:
    result = repo.cli("apply")
    assert result.code == 0, result.stderr
    return repo


def applied_commit(repo: SpecRepo, message: str) -> str:
    """Commit the working tree and apply it; return the commit."""
    revision = repo.commit(message)
    applied(repo)
    return revision


@pytest.fixture
def live_repo(example_repo: SpecRepo) -> SpecRepo:
    """The example specs, applied once."""
    return applied(example_repo)


# ------------------------------------------------------------------ first apply


def test_first_apply_exits_zero_and_tags_the_commit(example_repo: SpecRepo) -> None:
    """A first apply succeeds and tags the head applied/default/1."""
    result = example_repo.cli("apply")
    assert result.code == 0 and result.stderr == ""
    assert "applied/default/1" in result.stdout
    assert example_repo.git("rev-parse", "applied/default/1^{commit}") == example_repo.head()


def test_applied_tag_is_annotated_with_a_json_message(example_repo: SpecRepo) -> None:
    """The tag is an annotated tag whose message is a JSON summary: time, revision, actions."""
    applied(example_repo)
    assert example_repo.git("cat-file", "-t", "applied/default/1") == "tag"
    message = json.loads(example_repo.git("tag", "-l", "--format=%(contents)", "applied/default/1"))
    assert message["revision"] == example_repo.head()
    assert {"action": "create_api", "resource": "RestApi/orders"} in message["actions"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", message["time"])


def test_apply_json_reports_result_and_tag(example_repo: SpecRepo) -> None:
    """apply --output json names the revision, the result, the tag and every applied action."""
    report = example_repo.cli_json("apply")
    assert report["revision"] == example_repo.head()
    assert report["result"] == "success" and report["tag"] == "applied/default/1" and report["error"] is None
    assert [a["action"] for a in report["applied"]][:3] == ["create_api", "create_deployment", "create_deployment"]


def test_second_apply_changes_nothing_and_tags_nothing(live_repo: SpecRepo) -> None:
    """Applying an applied commit again is a no-op: exit 0, no new tag, no new deployment."""
    before = deployment_count(live_repo)
    report = live_repo.cli_json("apply")
    assert report["result"] == "noop" and report["tag"] is None
    assert tags(live_repo) == ["applied/default/1"] and deployment_count(live_repo) == before


# ------------------------------------------------------------ plan: exit codes


def test_plan_exits_2_when_there_are_changes(example_repo: SpecRepo) -> None:
    """plan exits 2 while the backend differs from the commit."""
    assert example_repo.cli("plan").code == 2


def test_plan_exits_0_in_sync(live_repo: SpecRepo) -> None:
    """plan exits 0 once the commit is applied."""
    result = live_repo.cli("plan")
    assert result.code == 0 and "In sync" in result.stdout


def test_plan_exits_1_on_invalid_specs(live_repo: SpecRepo) -> None:
    """plan exits 1 when the head does not validate, with the error on stderr."""
    edit(live_repo, STAGES, "api: orders", "api: nowhere")
    live_repo.commit("unknown api")
    result = live_repo.cli("plan")
    assert result.code == 1 and "spec.api" in result.stderr and "Traceback" not in result.stderr


def test_plan_exits_1_for_an_unpublished_version(live_repo: SpecRepo) -> None:
    """An alias to a version the backend lacks fails at plan time, naming file and field."""
    edit(live_repo, ALIASES, '{"2": 100}', '{"3": 100}')
    live_repo.commit("version 3 is not published")
    result = live_repo.cli("plan")
    assert result.code == 1
    assert f"{ALIASES}:" in result.stderr and "spec.routing" in result.stderr and "version 3" in result.stderr


def test_plan_json_has_the_documented_shape(live_repo: SpecRepo) -> None:
    """plan --output json: revision, in_sync and actions with [old, new] per changed field."""
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 90, "2": 10}')
    live_repo.commit("more traffic to version 2")
    result = live_repo.cli("plan", output="json")
    assert result.code == 2
    assert result.json["revision"] == live_repo.head() and result.json["in_sync"] is False
    assert result.json["actions"] == [
        {
            "action": "update_alias",
            "resource": "Alias/orders-handler/prod",
            "changes": {"routing": [{"1": 95, "2": 5}, {"1": 90, "2": 10}]},
        }
    ]


def test_plan_json_error_keeps_stdout_a_json_document(live_repo: SpecRepo) -> None:
    """With --output json an error still leaves stdout parseable, and stderr one line per error."""
    edit(live_repo, STAGES, "api: orders", "api: nowhere")
    live_repo.commit("unknown api")
    result = live_repo.cli("plan", output="json")
    assert result.code == 1
    assert result.json["valid"] is False
    assert len(result.stderr.strip().splitlines()) == len(result.json["errors"])


# -------------------------------------------------------------- status, history


def test_status_json_has_the_documented_shape(live_repo: SpecRepo) -> None:
    """status --output json carries revisions, pin, last error, stages and aliases as DESIGN §4 says."""
    status = live_repo.cli_json("status")
    head = live_repo.head()
    assert status["instance"] == "default"
    assert status["desired_revision"] == status["applied_revision"] == status["attempted_revision"] == head
    assert status["pinned"] is None and status["last_error"] is None
    prod = status["stages"]["orders/prod"]
    assert prod["variables"] == {"lambdaAlias": "prod"}
    assert len(prod["definition_sha256"]) == 64 and prod["deployment_id"] and prod["url"].startswith("https://")
    assert prod["canary"]["percentTraffic"] == 10.0 and isinstance(prod["canary"]["percentTraffic"], float)
    assert prod["canary"]["variables"] == {"lambdaAlias": "test"}
    assert prod["canary"]["deployment_id"] == prod["deployment_id"]
    assert prod["canary"]["definition_sha256"] == prod["definition_sha256"]
    assert status["stages"]["orders/dev"]["canary"] is None
    assert status["aliases"]["orders-handler/prod"]["routing"] == {"1": 95, "2": 5}
    assert status["aliases"]["orders-handler/dev"]["routing"] == {"$LATEST": 100}


def test_pinned_stage_serves_its_own_definition(live_repo: SpecRepo) -> None:
    """The v1 stage, pinned to openapi-v1.yaml, runs another deployment than v2."""
    assert stage(live_repo, "v1")["deployment_id"] != stage(live_repo, "v2")["deployment_id"]
    assert stage(live_repo, "v2")["deployment_id"] == stage(live_repo, "prod")["deployment_id"]


def test_history_json_is_newest_first(live_repo: SpecRepo) -> None:
    """history --output json lists applied tags newest first with revision, time and action count."""
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 90, "2": 10}')
    second = applied_commit(live_repo, "shift")
    history = live_repo.cli_json("history")
    assert [h["tag"] for h in history] == ["applied/default/2", "applied/default/1"]
    assert history[0]["revision"] == second and history[0]["actions"] == 1
    assert re.match(r"\d{4}-\d\d-\d\dT", history[0]["applied_at"])


def test_tags_are_numbered_one_two_three_and_annotated(live_repo: SpecRepo) -> None:
    """Each apply that changed something adds the next applied/default/<n>, an annotated tag."""
    for old, new in (("10", "20"), ("20", "30")):
        edit(live_repo, STAGES, f"percentTraffic: {old}", f"percentTraffic: {new}")
        applied_commit(live_repo, f"canary {new}")
    assert tags(live_repo) == ["applied/default/1", "applied/default/2", "applied/default/3"]
    assert {live_repo.git("cat-file", "-t", t) for t in tags(live_repo)} == {"tag"}


def test_instances_keep_separate_tag_sequences(live_repo: SpecRepo, tmp_path: Path) -> None:
    """--instance blue (with its own state) numbers its tags from 1, beside default's."""
    blue = with_state_dir(live_repo, tmp_path / "blue-state")
    blue.publish("orders-handler", times=2)
    assert blue.cli("apply", "--instance", "blue").code == 0
    assert tags(live_repo, "blue") == ["applied/blue/1"]
    assert tags(live_repo) == ["applied/default/1"]
    assert [h["tag"] for h in blue.cli_json("history", "--instance", "blue")] == ["applied/blue/1"]


def test_publish_version_prints_the_next_number(repo: SpecRepo) -> None:
    """local publish-version prints 1, then 2."""
    assert repo.publish("fn", times=2) == ["1", "2"]


# ------------------------------------------------- changes without redeployment


def test_canary_weight_change_creates_no_deployment(live_repo: SpecRepo) -> None:
    """Moving the canary from 10 % to 25 % updates the stage only."""
    before = deployment_count(live_repo)
    edit(live_repo, STAGES, "percentTraffic: 10", "percentTraffic: 25")
    live_repo.commit("canary 25 %")
    assert [a["action"] for a in live_repo.cli_json("plan")["actions"]] == ["update_stage"]
    applied(live_repo)
    assert stage(live_repo)["canary"]["percentTraffic"] == 25.0
    assert deployment_count(live_repo) == before


def test_alias_weight_change_creates_no_deployment(live_repo: SpecRepo) -> None:
    """Shifting alias weights updates the alias only; the API is not redeployed."""
    before = deployment_count(live_repo)
    prod_deployment = stage(live_repo)["deployment_id"]
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    applied_commit(live_repo, "half and half")
    assert routing(live_repo) == {"1": 50, "2": 50}
    assert deployment_count(live_repo) == before and stage(live_repo)["deployment_id"] == prod_deployment


def test_definition_change_creates_exactly_one_deployment(live_repo: SpecRepo) -> None:
    """A new API definition is deployed once, and every stage on it moves to that deployment."""
    before = deployment_count(live_repo)
    old = stage(live_repo)["deployment_id"]
    edit(live_repo, OPENAPI, 'version: "2.0"', 'version: "2.1"')
    applied_commit(live_repo, "definition 2.1")
    assert deployment_count(live_repo) == before + 1
    new = stage(live_repo)["deployment_id"]
    assert new != old and stage(live_repo, "dev")["deployment_id"] == new
    assert stage(live_repo, "v1")["deployment_id"] != new


def test_git_revert_points_back_at_the_old_deployment(live_repo: SpecRepo) -> None:
    """Reverting a definition change re-points the stage at the first deployment id, creating none."""
    original = stage(live_repo)["deployment_id"]
    edit(live_repo, OPENAPI, 'version: "2.0"', 'version: "2.1"')
    applied_commit(live_repo, "definition 2.1")
    count = deployment_count(live_repo)
    live_repo.git("revert", "--no-edit", "HEAD")
    plan = live_repo.cli_json("plan")
    assert "create_deployment" not in [a["action"] for a in plan["actions"]]
    applied(live_repo)
    assert stage(live_repo)["deployment_id"] == original
    assert deployment_count(live_repo) == count


# --------------------------------------------------------------- bad commits


def test_invalid_commit_applies_nothing(live_repo: SpecRepo) -> None:
    """A commit with one bad file applies none of its (otherwise good) changes: exit 1, live unchanged."""
    good = live_repo.head()
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    edit(live_repo, STAGES, "percentTraffic: 10", "percentTraffic: 101")
    bad = live_repo.commit("good alias change, bad canary")
    result = live_repo.cli("apply")
    assert result.code == 1 and "percentTraffic" in result.stderr and "Traceback" not in result.stderr
    assert routing(live_repo) == {"1": 95, "2": 5}
    status = live_repo.cli_json("status")
    assert status["applied_revision"] == good and status["attempted_revision"] == bad
    assert "percentTraffic" in status["last_error"]
    assert tags(live_repo) == ["applied/default/1"]


def test_next_good_commit_applies_after_an_invalid_one(live_repo: SpecRepo) -> None:
    """After a bad commit, fixing it in a new commit applies and clears the error."""
    edit(live_repo, STAGES, "percentTraffic: 10", "percentTraffic: 101")
    live_repo.commit("bad canary")
    assert live_repo.cli("apply").code == 1
    edit(live_repo, STAGES, "percentTraffic: 101", "percentTraffic: 20")
    fixed = applied_commit(live_repo, "fix canary")
    status = live_repo.cli_json("status")
    assert status["applied_revision"] == fixed and status["last_error"] is None
    assert status["stages"]["orders/prod"]["canary"]["percentTraffic"] == 20.0


# ----------------------------------------------------------- rollback, resume


@pytest.fixture
def two_applied(live_repo: SpecRepo) -> tuple[SpecRepo, str, str]:
    """applied/default/1 at the example, applied/default/2 at a 50/50 alias split."""
    first = live_repo.head()
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    second = applied_commit(live_repo, "half and half")
    return live_repo, first, second


def test_rollback_defaults_to_the_tag_before_the_current(two_applied: tuple[SpecRepo, str, str]) -> None:
    """rollback without a target applies the previous applied tag's revision and pins to it."""
    repo, first, _ = two_applied
    assert repo.cli("rollback").code == 0
    assert routing(repo) == {"1": 95, "2": 5}
    pinned = repo.cli_json("status")["pinned"]
    assert pinned["revision"] == first and pinned["tag"] == "applied/default/1"


def test_pinned_instance_does_not_apply_newer_commits(two_applied: tuple[SpecRepo, str, str]) -> None:
    """While pinned, apply keeps the pinned revision even when the branch moves on."""
    repo, first, _ = two_applied
    repo.cli("rollback")
    edit(repo, ALIASES, '{"1": 50, "2": 50}', '{"2": 100}')
    repo.commit("all to version 2")
    report = repo.cli_json("apply")
    assert report["revision"] == first and report["result"] == "noop"
    assert routing(repo) == {"1": 95, "2": 5}


def test_resume_unpins_and_the_next_apply_follows_the_branch(two_applied: tuple[SpecRepo, str, str]) -> None:
    """resume clears the pin; the next apply applies the branch head."""
    repo, _, _ = two_applied
    repo.cli("rollback")
    edit(repo, ALIASES, '{"1": 50, "2": 50}', '{"2": 100}')
    head = repo.commit("all to version 2")
    assert repo.cli("resume").code == 0
    assert repo.cli_json("status")["pinned"] is None
    assert repo.cli_json("apply")["revision"] == head
    assert routing(repo) == {"2": 100}


def test_rollback_to_a_named_tag(two_applied: tuple[SpecRepo, str, str]) -> None:
    """rollback applied/default/1 rolls back to that tag and tags the rollback as a new apply."""
    repo, first, _ = two_applied
    assert repo.cli("rollback", "applied/default/1").code == 0
    assert repo.cli_json("status")["applied_revision"] == first
    assert tags(repo)[-1] == "applied/default/3"
    assert repo.cli_json("history")[0]["rollback"] is True


# -------------------------------------------------------------------- prune


def test_removed_stage_is_an_orphan_until_prune(live_repo: SpecRepo) -> None:
    """A stage whose spec is gone stays (listed as orphan) until apply --prune deletes it."""
    text = (live_repo.path / STAGES).read_text(encoding="utf-8")
    live_repo.write(STAGES, text[: text.index("---\napiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: v2}")])
    live_repo.commit("drop the v2 stage")
    plan = live_repo.cli_json("plan")
    assert plan["orphans"] == ["Stage/orders/v2"] and plan["actions"] == []
    applied(live_repo)
    assert "orders/v2" in live_repo.cli_json("status")["stages"]
    pruned = live_repo.cli_json("apply", "--prune")
    assert [(a["action"], a["resource"]) for a in pruned["applied"]] == [("delete_stage", "Stage/orders/v2")]
    assert "orders/v2" not in live_repo.cli_json("status")["stages"]


def test_prune_refuses_to_empty_the_backend_without_allow_empty(live_repo: SpecRepo) -> None:
    """Specs that declare no stage and no alias make --prune refuse (exit 1, nothing deleted) unless --allow-empty."""
    live_repo.remove(STAGES)
    live_repo.remove("deploy_specs/aliases.yaml")
    live_repo.commit("remove every stage and alias")
    refused = live_repo.cli("apply", "--prune")
    assert refused.code == 1 and "--allow-empty" in refused.stderr and "deploy_specs/" in refused.stderr
    assert len(live_repo.cli_json("status")["stages"]) == 5
    emptied = live_repo.cli_json("apply", "--prune", "--allow-empty")
    assert len(emptied["applied"]) == 8 and live_repo.cli_json("status")["stages"] == {}


def test_unmanaged_resources_are_never_changed_or_pruned(live_repo: SpecRepo) -> None:
    """A stage and an alias made by hand in the 'console' survive apply --prune untouched."""
    cloud = LocalCloud(live_repo.state_dir)
    api_id = cloud.api_id("orders")
    deployment = stage(live_repo)["deployment_id"]
    cloud.create_stage(api_id, "manual", deployment, "by hand", {"who": "ops"}, None, managed=False)
    cloud.create_alias("orders-handler", "manual", "1", {}, "by hand", managed=False)
    cloud.close()
    before = live_repo.cli_json("status")
    assert live_repo.cli_json("plan", "--prune")["actions"] == []
    assert live_repo.cli("apply", "--prune").code == 0
    after = live_repo.cli_json("status")
    assert after["stages"]["orders/manual"] == before["stages"]["orders/manual"]
    assert after["aliases"]["orders-handler/manual"] == before["aliases"]["orders-handler/manual"]


def test_spec_naming_an_unmanaged_stage_is_refused(live_repo: SpecRepo) -> None:
    """A new spec for a stage someone made by hand is a conflict: exit 1, the stage unchanged."""
    cloud = LocalCloud(live_repo.state_dir)
    cloud.create_stage(cloud.api_id("orders"), "manual", stage(live_repo)["deployment_id"], None, {}, None, False)
    cloud.close()
    live_repo.write(
        "deploy_specs/manual.yaml",
        "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: manual}\n"
        "spec: {api: orders, variables: {lambdaAlias: prod}}\n",
    )
    live_repo.commit("take over the manual stage")
    result = live_repo.cli("apply")
    assert result.code == 1 and "not managed" in result.stderr
    assert stage(live_repo, "manual")["variables"] == {}


# ------------------------------------------------------ expected errors, no traceback


ERRORS = [
    pytest.param(("plan", "--rev", "no-such-rev"), "unknown revision", id="plan-unknown-rev"),
    pytest.param(("apply", "--rev", "no-such-rev"), "unknown revision", id="apply-unknown-rev"),
    pytest.param(("validate", "--rev", "no-such-rev"), "unknown revision", id="validate-unknown-rev"),
    pytest.param(("plan", "--branch", "nope"), "branch 'nope'", id="missing-branch"),
    pytest.param(("apply", "--branch", "nope"), "branch 'nope'", id="apply-missing-branch"),
    pytest.param(("rollback", "applied/default/99"), "applied/default/99", id="rollback-unknown-tag"),
    pytest.param(("rollback",), "no applied tag", id="rollback-without-history"),
    pytest.param(("plan", "--path", "nowhere"), "nowhere", id="missing-specs-root"),
    pytest.param(("rollback", "0" * 40), "unknown revision", id="rollback-unknown-sha"),
    pytest.param(("apply", "--rev", "f" * 40), "unknown revision", id="apply-unknown-sha"),
    pytest.param(("apply", "--instance", "a/b"), "--instance", id="instance-with-slash"),
    pytest.param(("apply", "--instance", "../up"), "--instance", id="instance-escaping-the-state-dir"),
    pytest.param(
        ("local", "publish-version", "fn", "--backend", "aws"),
        "--backend does not apply to `reconciler local publish-version`",
        id="publish-on-aws",
    ),
]


@pytest.mark.parametrize(("args", "fragment"), ERRORS)
def test_expected_errors_are_one_line_without_traceback(
    example_repo: SpecRepo, args: tuple[str, ...], fragment: str
) -> None:
    """An expected error exits 1 with one 'error:' line on stderr, never a traceback."""
    result = example_repo.cli(*args)
    assert result.code == 1
    assert result.stderr.startswith("error:") and fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["plan", "apply", "validate", "status", "history"])
def test_not_a_git_repository_is_an_error_line(tmp_path: Path, command: str) -> None:
    """--repo naming a directory outside git exits 1 with a message, not a traceback."""
    plain = tmp_path / "plain"
    plain.mkdir()
    outside = SpecRepo.__new__(SpecRepo)
    outside.path, outside.state_dir = plain, tmp_path / "state"
    result = outside.cli(command)
    assert result.code == 1
    assert "not inside a git repository" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------ more behaviours of apply


def test_canary_with_its_own_definition_gets_its_own_deployment(live_repo: SpecRepo) -> None:
    """A canary pinned to another definition runs a separate deployment, reported in status."""
    edit(live_repo, STAGES, "    percentTraffic: 10\n", "    percentTraffic: 10\n    definition: openapi-v1.yaml\n")
    applied_commit(live_repo, "canary on the v1 contract")
    prod = stage(live_repo)
    assert prod["canary"]["deployment_id"] == stage(live_repo, "v1")["deployment_id"] != prod["deployment_id"]
    assert prod["canary"]["definition_sha256"] == stage(live_repo, "v1")["definition_sha256"]


def test_interrupted_apply_converges_without_duplicates(example_repo: SpecRepo) -> None:
    """If an apply stopped after some actions, the next apply finishes the job and creates no duplicate."""
    from reconciler.backends.local import LocalBackend
    from reconciler.engine import Config, Engine

    engine = Engine(Config(repo=str(example_repo.path), state_dir=str(example_repo.state_dir)))
    try:
        plan, _, _ = engine.make_plan(example_repo.head())
        backend = LocalBackend(example_repo.state_dir)
        for action in plan.actions[:3]:  # create_api and both deployments, then "crash"
            backend.apply(action)
        backend.close()
    finally:
        engine.close()
    applied(example_repo)
    assert deployment_count(example_repo) == 2
    assert example_repo.cli("plan").code == 0


def test_plan_text_shows_creates_updates_and_deletes(live_repo: SpecRepo) -> None:
    """The text plan marks each action with +, ~ or - and shows old → new for updates."""
    text = (live_repo.path / STAGES).read_text(encoding="utf-8")
    live_repo.write(STAGES, text.replace("metadata: {name: v2}", "metadata: {name: v3}"))
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 90, "2": 10}')
    live_repo.commit("rename v2 to v3, shift weights")
    result = live_repo.cli("plan", "--prune")
    assert result.code == 2
    assert "+ Stage/orders/v3" in result.stdout
    assert "~ Alias/orders-handler/prod" in result.stdout and "→" in result.stdout
    assert "- Stage/orders/v2" in result.stdout


def test_apply_an_explicit_older_revision(two_applied: tuple[SpecRepo, str, str]) -> None:
    """apply --rev applies that commit (without pinning), and a later apply returns to the head."""
    repo, first, second = two_applied
    assert repo.cli_json("apply", "--rev", first)["revision"] == first
    assert routing(repo) == {"1": 95, "2": 5} and repo.cli_json("status")["pinned"] is None
    assert repo.cli_json("apply")["revision"] == second
    assert routing(repo) == {"1": 50, "2": 50}


def test_deleting_an_alias_spec_prunes_the_alias(live_repo: SpecRepo) -> None:
    """An alias whose spec is gone is deleted by apply --prune, and only then."""
    text = (live_repo.path / ALIASES).read_text(encoding="utf-8")
    live_repo.write(ALIASES, text[: text.index("---\napiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: prod}")])
    live_repo.commit("drop the prod alias")
    applied(live_repo)
    assert "orders-handler/prod" in live_repo.cli_json("status")["aliases"]
    live_repo.cli("apply", "--prune")
    assert "orders-handler/prod" not in live_repo.cli_json("status")["aliases"]


def test_drift_on_a_managed_alias_is_planned_and_corrected(live_repo: SpecRepo) -> None:
    """A console edit of a managed alias shows as a change (old → new) and the next apply restores git's routing."""
    cloud = LocalCloud(live_repo.state_dir)
    cloud.update_alias("orders-handler", "prod", "2", {}, "production")
    cloud.close()
    plan = live_repo.cli("plan", output="json")
    assert plan.code == 2
    assert plan.json["actions"][0]["changes"]["routing"] == [{"2": 100}, {"1": 95, "2": 5}]
    applied(live_repo)
    assert routing(live_repo) == {"1": 95, "2": 5}


def test_spec_naming_an_unmanaged_api_is_refused(example_repo: SpecRepo) -> None:
    """An API of the same name made by hand is never taken over: exit 1, its definition untouched."""
    cloud = LocalCloud(example_repo.state_dir)
    api_id = cloud.create_rest_api("orders", "by hand", managed=False)
    cloud.put_rest_api(api_id, '{"swagger": "2.0", "paths": {}}', "handmade", "by hand")
    cloud.close()
    result = example_repo.cli("apply")
    assert result.code == 1 and "RestApi 'orders'" in result.stderr and "not managed" in result.stderr
    cloud = LocalCloud(example_repo.state_dir)
    row = cloud.db.execute("SELECT definition_sha256, managed FROM rest_apis").fetchone()
    cloud.close()
    assert (row["definition_sha256"], row["managed"]) == ("handmade", 0)
    assert tags(example_repo) == []


def test_plan_time_error_applies_nothing_of_the_commit(live_repo: SpecRepo) -> None:
    """An unpublished alias version refuses the whole commit, including its valid canary change."""
    edit(live_repo, STAGES, "percentTraffic: 10", "percentTraffic: 30")
    edit(live_repo, ALIASES, '{"2": 100}', '{"3": 100}')
    live_repo.commit("canary 30 %, test alias to unpublished version 3")
    result = live_repo.cli("apply")
    assert result.code == 1 and "version 3" in result.stderr
    assert stage(live_repo)["canary"]["percentTraffic"] == 10.0
    assert tags(live_repo) == ["applied/default/1"]


def test_a_tag_git_could_not_make_is_made_by_the_next_reconcile(example_repo: SpecRepo) -> None:
    """When git cannot create the applied tag the apply still counts, and the next reconcile makes the owed tag."""
    blocker = example_repo.path / ".git" / "refs" / "tags" / "applied" / "default"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("", encoding="utf-8")  # a file where the tags' folder must go: git cannot lock the ref
    first = example_repo.cli_json("apply")
    assert first["result"] == "success" and first["tag"] is None
    blocker.unlink()
    second = example_repo.cli_json("apply")
    assert second["result"] == "noop" and second["tag"] == "applied/default/1"
    [entry] = example_repo.cli_json("history")
    assert entry["revision"] == example_repo.head() and entry["actions"] == 11
