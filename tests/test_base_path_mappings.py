"""BasePathMapping (DESIGN §10): a custom domain's path -> a stage, on the local backend, through the real CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.backends.local import LocalCloud
from reconciler.errors import BackendError
from tests.support import SpecRepo
from tests.test_cli_flags import run

DOMAIN = "api.example.com"
MAPPINGS = "deploy_specs/mappings.yaml"


def mapping(name: str, base_path: str | None, stage: str, adopt: bool = False, domain: str = DOMAIN) -> str:
    base = "" if base_path is None else f"  basePath: {base_path!r}\n"
    flag = ", adopt: true" if adopt else ""
    return (
        f"apiVersion: reconciler/v1\nkind: BasePathMapping\nmetadata: {{name: {name}{flag}}}\n"
        f"spec:\n  domain: {domain}\n{base}  api: orders\n  stage: {stage}\n"
    )


def mappings(*docs: str) -> str:
    return "---\n".join(docs)


def actions(plan: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["action"], a["resource"]) for a in plan["actions"]]


@pytest.fixture
def domain_repo(example_repo: SpecRepo) -> SpecRepo:
    """The example specs applied, and the custom domain api.example.com made (as by hand, with its certificate)."""
    assert example_repo.cli("local", "create-domain", DOMAIN).code == 0
    assert example_repo.cli("apply").code == 0
    return example_repo


def _hand_made_mapping(repo: SpecRepo, base_path: str, stage: str) -> None:
    """A mapping made in the console: it exists, and no instance manages it."""
    cloud = LocalCloud(repo.state_dir)
    try:
        with cloud.transaction():
            cloud.create_base_path_mapping(DOMAIN, base_path, cloud.api_id("orders"), stage, managed=False)
    finally:
        cloud.close()


# ------------------------------------------------------------------ create, update, prune


def test_a_mapping_is_created_after_its_api_and_stage_exist(example_repo: SpecRepo) -> None:
    """A first apply of API, stages, aliases and a mapping runs the mapping last; status shows it, and its URL."""
    assert example_repo.cli("local", "create-domain", DOMAIN).code == 0
    example_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v1"))
    example_repo.commit("map api.example.com/v1")
    plan = example_repo.cli_json("plan")
    assert [name for name, _ in actions(plan)] == [
        "create_api",
        "create_deployment",
        "create_deployment",
        "create_stage",
        "create_stage",
        "create_stage",
        "create_stage",
        "create_stage",
        "create_alias",
        "create_alias",
        "create_alias",
        "create_base_path_mapping",
    ]
    assert plan["actions"][-1] == {
        "action": "create_base_path_mapping",
        "resource": "BasePathMapping/api.example.com/v1",
        "changes": {"api": [None, "orders"], "stage": [None, "v1"]},
    }
    assert example_repo.cli("apply").code == 0
    status = example_repo.cli_json("status")
    assert status["basePathMappings"] == {
        "api.example.com/v1": {
            "api": "orders",
            "restApiId": status["apis"]["orders"]["id"],
            "stage": "v1",
            "url": "https://api.example.com/v1",
            "managed": True,
        }
    }
    assert example_repo.cli("plan").code == 0  # in sync
    assert "base path mappings (1)\n  https://api.example.com/v1  → orders/v1" in example_repo.cli("status").stdout


def test_moving_a_mapping_to_another_stage_is_one_update(domain_repo: SpecRepo) -> None:
    """v1 -> v2 in the spec: update_base_path_mapping with the stage's old and new name, then in sync."""
    domain_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v1"))
    domain_repo.commit("map v1")
    assert domain_repo.cli("apply").code == 0
    domain_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v2"))
    domain_repo.commit("v1 now serves the v2 stage")
    plan = domain_repo.cli_json("plan")
    assert plan["actions"] == [
        {
            "action": "update_base_path_mapping",
            "resource": "BasePathMapping/api.example.com/v1",
            "changes": {"stage": ["v1", "v2"]},
        }
    ]
    assert domain_repo.cli("apply").code == 0
    assert domain_repo.cli_json("status")["basePathMappings"]["api.example.com/v1"]["stage"] == "v2"
    assert domain_repo.cli("plan").code == 0


def test_a_removed_mapping_is_an_orphan_deleted_only_with_prune(domain_repo: SpecRepo) -> None:
    """Without --prune the mapping stays (listed as orphan); with it, it is deleted."""
    domain_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v1"))
    domain_repo.commit("map v1")
    assert domain_repo.cli("apply").code == 0
    domain_repo.remove(MAPPINGS)
    domain_repo.commit("unmap v1")
    plan = domain_repo.cli_json("plan")
    assert (plan["actions"], plan["orphans"]) == ([], ["BasePathMapping/api.example.com/v1"])
    assert domain_repo.cli("apply").code == 0
    assert "api.example.com/v1" in domain_repo.cli_json("status")["basePathMappings"]
    pruned = domain_repo.cli_json("plan", "--prune")
    assert pruned["actions"] == [
        {
            "action": "delete_base_path_mapping",
            "resource": "BasePathMapping/api.example.com/v1",
            "changes": {"api": ["orders", None], "stage": ["v1", None]},
        }
    ]
    assert domain_repo.cli("apply", "--prune").code == 0
    assert domain_repo.cli_json("status")["basePathMappings"] == {}


def test_a_mapping_is_deleted_before_the_stage_it_points_at(domain_repo: SpecRepo) -> None:
    """Removing stage v1 and its mapping together: the mapping goes first, then the stage."""
    domain_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v1"))
    domain_repo.commit("map v1")
    assert domain_repo.cli("apply").code == 0
    stages = (domain_repo.path / "deploy_specs/stages.yaml").read_text(encoding="utf-8")
    kept = [doc for doc in stages.split("---\n") if "name: v1}" not in doc]
    assert len(kept) == len(stages.split("---\n")) - 1
    domain_repo.write("deploy_specs/stages.yaml", "---\n".join(kept))
    domain_repo.remove(MAPPINGS)
    domain_repo.commit("retire v1")
    assert actions(domain_repo.cli_json("plan", "--prune")) == [
        ("delete_base_path_mapping", "BasePathMapping/api.example.com/v1"),
        ("delete_stage", "Stage/orders/v1"),
    ]
    assert domain_repo.cli("apply", "--prune").code == 0
    status = domain_repo.cli_json("status")
    assert status["basePathMappings"] == {} and "orders/v1" not in status["stages"]


def test_the_root_mapping_is_written_none(domain_repo: SpecRepo) -> None:
    """basePath omitted and basePath "(none)" are the same root mapping, named BasePathMapping/<domain>/(none)."""
    domain_repo.write(MAPPINGS, mapping("root", None, "prod"))
    domain_repo.commit("map the root")
    assert actions(domain_repo.cli_json("plan")) == [
        ("create_base_path_mapping", "BasePathMapping/api.example.com/(none)")
    ]
    assert domain_repo.cli("apply").code == 0
    assert domain_repo.cli_json("status")["basePathMappings"]["api.example.com/(none)"]["url"] == (
        "https://api.example.com/"
    )
    domain_repo.write(MAPPINGS, mapping("root", "(none)", "prod"))
    domain_repo.commit("the root, written out")
    assert domain_repo.cli("plan").code == 0  # the same mapping: in sync


def test_a_mapping_to_a_domain_that_does_not_exist_is_a_plan_error(example_repo: SpecRepo) -> None:
    """No domain: plan exits 1 with file, line and field, says how to make it, and apply changes nothing."""
    example_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v1"))
    example_repo.commit("map a domain nobody made")
    result = example_repo.cli("plan")
    assert result.code == 1
    assert f"{MAPPINGS}:5: spec.domain: custom domain name 'api.example.com' does not exist" in result.stderr
    assert "reconciler local create-domain api.example.com" in result.stderr
    assert example_repo.cli("apply").code == 1
    assert example_repo.cli_json("status")["apis"] == {}


# ------------------------------------------------------------------ ownership and adoption


def test_a_mapping_made_by_hand_is_never_touched_without_adopt(domain_repo: SpecRepo) -> None:
    """An unmanaged mapping named by a spec: plan exits 1 saying how to adopt it; prune leaves it alone."""
    _hand_made_mapping(domain_repo, "v1", "v1")
    domain_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v2"))
    domain_repo.commit("map v1 to v2")
    result = domain_repo.cli("plan")
    assert result.code == 1
    assert f"{MAPPINGS}:3: metadata.name:" in result.stderr
    assert "base path mapping api.example.com/v1 already exists and is not managed" in result.stderr
    assert "set `adopt: true`" in result.stderr
    domain_repo.remove(MAPPINGS)
    domain_repo.commit("no mapping")
    assert domain_repo.cli("apply", "--prune").code == 0
    assert domain_repo.cli_json("status")["basePathMappings"]["api.example.com/v1"]["managed"] is False


def test_adopting_a_mapping_marks_it_then_moves_it(domain_repo: SpecRepo) -> None:
    """adopt: true -> adopt_base_path_mapping, then the usual update; from then on it is managed (and prunable)."""
    _hand_made_mapping(domain_repo, "v1", "v1")
    domain_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v2", adopt=True))
    domain_repo.commit("adopt v1, pointing it at v2")
    plan = domain_repo.cli_json("plan")
    assert [(a["action"], a["changes"]) for a in plan["actions"]] == [
        ("adopt_base_path_mapping", {"owner": [None, "default"]}),
        ("update_base_path_mapping", {"stage": ["v1", "v2"]}),
    ]
    assert domain_repo.cli("apply").code == 0
    shown = domain_repo.cli_json("status")["basePathMappings"]["api.example.com/v1"]
    assert (shown["stage"], shown["managed"]) == ("v2", True)
    domain_repo.remove(MAPPINGS)
    domain_repo.commit("drop it")
    assert domain_repo.cli("apply", "--prune").code == 0
    assert domain_repo.cli_json("status")["basePathMappings"] == {}


def test_adopting_a_mapping_that_points_where_the_spec_says_is_adopt_alone(domain_repo: SpecRepo) -> None:
    """An adopted mapping that already points at the spec's stage gets only the adopt action."""
    _hand_made_mapping(domain_repo, "v1", "v1")
    domain_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v1", adopt=True))
    domain_repo.commit("adopt v1")
    assert actions(domain_repo.cli_json("plan")) == [("adopt_base_path_mapping", "BasePathMapping/api.example.com/v1")]


def test_another_instances_mapping_is_refused_and_never_pruned(domain_repo: SpecRepo, tmp_path: Path) -> None:
    """team-b naming default's mapping: exit 1 naming 'default'; team-b's prune leaves it; team-b's own works."""
    domain_repo.write(MAPPINGS, mapping("orders-v1", "v1", "v1"))
    domain_repo.commit("map v1")
    assert domain_repo.cli("apply").code == 0
    other = SpecRepo(tmp_path / "other", state_dir=domain_repo.state_dir)
    other.copy_example()
    for spec in ("stages.yaml", "orders.yaml"):  # the same stages, of API b
        text = (other.path / "deploy_specs" / spec).read_text(encoding="utf-8")
        other.write(f"deploy_specs/{spec}", text.replace("api: orders", "api: b").replace("name: orders", "name: b"))
    other.remove("deploy_specs/aliases.yaml")
    other.write(MAPPINGS, mapping("b-v1", "v1", "v1").replace("api: orders", "api: b"))
    other.commit("team b maps the same path")
    result = other.cli("plan", "--instance", "team-b")
    assert result.code == 1
    assert "base path mapping api.example.com/v1 is managed by reconciler instance 'default'" in result.stderr
    other.write(MAPPINGS, mapping("b-v2", "v2", "v2").replace("api: orders", "api: b"))
    other.commit("team b maps its own path")
    assert other.cli("apply", "--prune", "--instance", "team-b").code == 0
    shown = other.cli_json("status", "--instance", "team-b")["basePathMappings"]
    assert {key: m["api"] for key, m in shown.items()} == {"api.example.com/v1": "orders", "api.example.com/v2": "b"}
    assert domain_repo.cli("plan").code == 0  # default's mapping is as it was


# ------------------------------------------------------------------ validation


def _validation(repo: SpecRepo, text: str) -> list[dict[str, Any]]:
    repo.write(MAPPINGS, text)
    repo.commit("mappings")
    result = repo.cli("validate", output="json")
    assert result.code == 1, result.stdout
    errors: list[dict[str, Any]] = result.json["errors"]
    return [e for e in errors if e["file"] == MAPPINGS]


@pytest.mark.parametrize(
    ("text", "line", "field", "expected"),
    [
        pytest.param(mapping("m", "v1/orders", "v1"), 6, "spec.basePath", "one segment, no /", id="multi-level"),
        pytest.param(mapping("m", "v 1", "v1"), 6, "spec.basePath", "letters, digits and $-_.+!*'()", id="space"),
        pytest.param(mapping("m", "", "v1"), 6, "spec.basePath", "got ''", id="empty-base-path"),
        pytest.param(mapping("m", "v1", "v1", domain="API.example.com"), 5, "spec.domain", "lowercase", id="upper"),
        pytest.param(mapping("m", "v1", "v1", domain="localhost"), 5, "spec.domain", "like api.example.com", id="tld"),
        pytest.param(mapping("m", "v1", "v1", domain="a..b.com"), 5, "spec.domain", "got 'a..b.com'", id="dots"),
        pytest.param(mapping("m", "v1", "nope"), 8, "spec.stage", "a Stage of API 'orders'", id="unknown-stage"),
        pytest.param(
            mapping("m", "v1", "v1").replace("name: m}", "name: ''}"), 3, "metadata.name", "1-128", id="no-name"
        ),
        pytest.param(mapping("m", "v1", "bad stage"), 8, "spec.stage", "[A-Za-z0-9_-]", id="stage-name"),
        pytest.param(
            mapping("m", "v1", "v1").replace("api: orders", "api: shop"),
            7,
            "spec.api",
            "expected the name of a RestApi in the specs, got 'shop'",
            id="unknown-api",
        ),
        pytest.param(mapping("m", "v1", "v1").replace("  stage: v1\n", ""), 4, "spec.stage", "required", id="no-stage"),
        pytest.param(
            mapping("m", "v1", "v1") + "  weight: 5\n", 9, "spec.weight", "unknown field; expected one of", id="unknown"
        ),
        pytest.param(
            mappings(mapping("m", "v1", "v1"), mapping("n", "v1", "v2")),
            12,
            "metadata.name",
            f"duplicate mapping of {DOMAIN}/v1; first defined at {MAPPINGS}:1",
            id="duplicate",
        ),
        pytest.param(
            mappings(mapping("root", None, "prod"), mapping("m", "v1", "v1")),
            14,
            "spec.basePath",
            "expected the root mapping alone on a domain",
            id="root-and-named",
        ),
    ],
)
def test_bad_mappings_are_refused_with_file_line_field_expected(
    example_repo: SpecRepo, text: str, line: int, field: str, expected: str
) -> None:
    """Each bad mapping is one error naming the file, the line, the field and what was expected."""
    errors = _validation(example_repo, text)
    assert [(e["line"], e["field"]) for e in errors] == [(line, field)], errors
    assert expected in errors[0]["message"]
    assert "expected" in errors[0]["message"]


def test_a_mapping_to_a_stage_that_is_itself_invalid_is_not_a_second_error(example_repo: SpecRepo) -> None:
    """A stage with its own error is reported once; the mapping naming it adds nothing."""
    example_repo.write(
        "deploy_specs/extra.yaml",
        "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: v3}\nspec:\n  api: orders\n  tracingEnabled: 7\n",
    )
    errors = _validation(example_repo, mapping("m", "v3", "v3"))
    assert errors == []


def test_valid_mappings_are_counted_by_validate(example_repo: SpecRepo) -> None:
    example_repo.write(MAPPINGS, mappings(mapping("a", "v1", "v1"), mapping("b", "v2", "v2")))
    example_repo.commit("two mappings")
    result = example_repo.cli("validate")
    assert result.code == 0 and "2 mappings" in result.stdout
    assert example_repo.cli_json("validate")["basePathMappings"] == 2


# ------------------------------------------------------------------ the local backend's own rules


def test_local_help_lists_create_domain_with_an_example() -> None:
    """`local --help` lists create-domain; its own help says what it is for and ends in an example."""
    assert "create-domain" in run("local", "--help").stdout
    helped = run("local", "create-domain", "--help").stdout
    assert "BasePathMapping" in helped and "Example:\n    reconciler local create-domain api.example.com" in helped


def test_create_domain_makes_a_domain_once_and_refuses_a_bad_name(repo: SpecRepo) -> None:
    """local create-domain: created, then exists already; a name AWS would refuse is one error line, exit 1."""
    assert repo.cli("local", "create-domain", DOMAIN).stdout == f"domain {DOMAIN}: created\n"
    assert repo.cli_json("local", "create-domain", DOMAIN) == {"domain": DOMAIN, "created": False}
    bad = repo.cli("local", "create-domain", "Not A Domain")
    assert bad.code == 1
    assert bad.stderr.count("\n") == 1 and "expected a lowercase domain name" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("domain", "base_path", "stage", "code", "message"),
    [
        pytest.param("other.example.com", "v1", "v1", "NotFoundException", "Invalid domain name", id="no-domain"),
        pytest.param(DOMAIN, "v1", "nope", "BadRequestException", "Invalid stage identifier", id="no-stage"),
        pytest.param(DOMAIN, "v2", "v1", "ConflictException", "Base path already exists", id="taken"),
        pytest.param(DOMAIN, "(none)", "v1", "BadRequestException", "Only one base path mapping", id="root-after"),
    ],
)
def test_the_local_backend_refuses_what_api_gateway_refuses(
    domain_repo: SpecRepo, domain: str, base_path: str, stage: str, code: str, message: str
) -> None:
    """A missing domain or stage, a taken base path, a root mapping beside others: AWS's error codes."""
    _hand_made_mapping(domain_repo, "v2", "v2")
    cloud = LocalCloud(domain_repo.state_dir)
    try:
        with pytest.raises(BackendError) as caught, cloud.transaction():
            cloud.create_base_path_mapping(domain, base_path, cloud.api_id("orders"), stage, managed=True)
    finally:
        cloud.close()
    assert caught.value.code == code and message in str(caught.value)


def test_a_stage_a_domain_maps_is_not_deleted(domain_repo: SpecRepo) -> None:
    """Pruning stage v2 while a hand-made mapping points at it fails as on AWS; the stage and mapping stay."""
    _hand_made_mapping(domain_repo, "v2", "v2")
    stages = (domain_repo.path / "deploy_specs/stages.yaml").read_text(encoding="utf-8")
    domain_repo.write(
        "deploy_specs/stages.yaml", "---\n".join(d for d in stages.split("---\n") if "name: v2}" not in d)
    )
    domain_repo.commit("retire v2")
    result = domain_repo.cli("apply", "--prune")
    assert result.code == 1
    assert "Deleting stage v2 failed. Please remove all base path mappings related to the stage" in result.stderr
    status = domain_repo.cli_json("status")
    assert "orders/v2" in status["stages"] and "api.example.com/v2" in status["basePathMappings"]
