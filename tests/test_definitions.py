"""Definition checks (DESIGN §10): what API Gateway refuses is refused by ``validate``, what it takes is taken.

Driven through the real CLI on a real git repository; the example definitions
are in ``tests/examples`` (see its README).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.backends.local import LocalCloud
from reconciler.errors import BackendError
from reconciler.gitsource import GitRepo
from reconciler.specs import load_desired
from tests.support import SpecRepo

EXAMPLES = Path(__file__).resolve().parent / "examples"


def api(name: str, definition: str) -> str:
    head = f"apiVersion: reconciler/v1\nkind: RestApi\nmetadata: {{name: {json.dumps(name)}}}\n"
    return head + f"spec:\n  definition: {definition}\n"


def stage(name: str, api_name: str, variables: str) -> str:
    return (
        f"---\napiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: {name}}}\n"
        f"spec:\n  api: {json.dumps(api_name)}\n  variables: {variables}\n"
    )


def validate(repo: SpecRepo) -> tuple[int, list[dict[str, Any]]]:
    result = repo.cli("validate", output="json")
    assert "Traceback" not in result.stderr
    return result.code, result.json["errors"]


def _examples(repo: SpecRepo) -> None:
    repo.write("deploy_specs/calc.json", (EXAMPLES / "calc-swagger2.json").read_text(encoding="utf-8"))
    repo.write("deploy_specs/pets.yaml", (EXAMPLES / "pets-openapi3.yaml").read_text(encoding="utf-8"))


def _commit_examples(repo: SpecRepo) -> None:
    """Both examples committed, each with a prod stage setting only the variable its integration needs."""
    _examples(repo)
    repo.write(
        "deploy_specs/specs.yaml",
        api("calc", "calc.json")
        + stage("prod", "calc", "{calcAlias: prod}")
        + "---\n"
        + api("pets", "pets.yaml")
        + stage("prod", "pets", "{petsHost: pets.example.com}"),
    )
    repo.commit("examples")


def test_real_examples_validate_with_only_the_variables_their_integrations_need(repo: SpecRepo) -> None:
    """The Swagger 2.0 JSON and OpenAPI 3.0 YAML examples validate; a template-only variable is not required."""
    _commit_examples(repo)
    code, errors = validate(repo)
    assert (code, errors) == (0, [])


def test_a_variable_in_an_integration_uri_is_required(repo: SpecRepo) -> None:
    """A stage that does not set the variable its integration uri uses is refused, naming the variable."""
    _examples(repo)
    repo.write("deploy_specs/specs.yaml", api("pets", "pets.yaml") + stage("prod", "pets", "{other: x}"))
    repo.commit("no petsHost")
    code, errors = validate(repo)
    assert code == 1
    assert [e["field"] for e in errors] == ["spec.variables"] and "petsHost" in errors[0]["message"]


def test_a_variable_in_integration_credentials_is_required(repo: SpecRepo) -> None:
    """``credentials`` is resolved at deploy time too: its variable must be set."""
    text = (EXAMPLES / "calc-swagger2.json").read_text(encoding="utf-8")
    repo.write("deploy_specs/calc.json", text.replace("role/apigateway-invoke-calc", "role/${stageVariables.role}"))
    repo.write("deploy_specs/specs.yaml", api("calc", "calc.json") + stage("prod", "calc", "{calcAlias: prod}"))
    repo.commit("role from a variable")
    code, errors = validate(repo)
    assert code == 1 and "role" in errors[0]["message"]


def test_committed_text_is_kept_for_the_import(repo: SpecRepo) -> None:
    """The definition keeps its committed text (YAML 1.1 would retype yes/on/0755); the hash stays canonical."""
    _examples(repo)
    repo.write("deploy_specs/specs.yaml", api("pets", "pets.yaml") + stage("prod", "pets", "{petsHost: h}"))
    revision = repo.commit("pets")
    git = GitRepo(str(repo.path))
    try:
        desired = load_desired(git.spec_source(revision, "deploy_specs"))
    finally:
        git.close()
    definition = desired.apis["pets"].definition
    assert definition.payload == (EXAMPLES / "pets-openapi3.yaml").read_text(encoding="utf-8")
    assert "enum: [yes, no, on, off]" in definition.payload and "default: 0755" in definition.payload
    assert '"enum":[true,false,true,false]' in definition.body  # the canonical form only identifies it


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        pytest.param(
            "openapi.yaml",
            "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {}\n",
            "3.1.0; API Gateway imports Swagger 2.0 and OpenAPI 3.0.x only",
            id="openapi-3.1",
        ),
        pytest.param(
            "openapi.json",
            '{"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": {"/a": {"get": '
            '{"x-amazon-apigateway-integration": {"type": "http", "uri": {"Fn::Sub": "https://${Host}/a"}}}}}}',
            "CloudFormation intrinsic function Fn::Sub",
            id="fn-sub-key",
        ),
        pytest.param(
            "openapi.yaml",
            "openapi: 3.0.1\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get:\n"
            "      x-amazon-apigateway-integration:\n        type: http\n        uri: !Sub 'https://${Host}/a'\n",
            "openapi.yaml:8: CloudFormation intrinsic function !Sub",
            id="sub-tag-with-line",
        ),
        pytest.param(
            "openapi.yaml",
            "openapi: 3.0.1\ninfo: {title: t, version: '1'}\npaths:\n  /orders/{id}:\n    delete:\n"
            "      responses: {'204': {description: gone}}\n",
            "paths./orders/{id}.delete: method DELETE /orders/{id} has no x-amazon-apigateway-integration",
            id="method-without-integration",
        ),
    ],
)
def test_definitions_api_gateway_refuses_are_refused(repo: SpecRepo, name: str, text: str, fragment: str) -> None:
    """OpenAPI 3.1, CloudFormation intrinsics and bare methods fail validate at the spec's definition field."""
    repo.write(f"deploy_specs/{name}", text)
    repo.write("deploy_specs/api.yaml", api("orders", name))
    repo.commit("refused definition")
    code, errors = validate(repo)
    assert code == 1
    assert [(e["file"], e["line"], e["field"]) for e in errors] == [("deploy_specs/api.yaml", 5, "spec.definition")]
    assert fragment in errors[0]["message"], errors


def test_json_with_a_byte_order_mark_is_accepted(repo: SpecRepo) -> None:
    """A JSON definition saved with a UTF-8 BOM validates, and the same content without it has the same hash."""
    text = (EXAMPLES / "calc-swagger2.json").read_text(encoding="utf-8")
    (repo.path / "deploy_specs").mkdir(parents=True)
    (repo.path / "deploy_specs/calc.json").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    repo.write("deploy_specs/plain.json", text)
    repo.write("deploy_specs/specs.yaml", api("calc", "calc.json") + "---\n" + api("plain", "plain.json"))
    revision = repo.commit("bom")
    assert validate(repo) == (0, [])
    git = GitRepo(str(repo.path))
    try:
        desired = load_desired(git.spec_source(revision, "deploy_specs"))
    finally:
        git.close()
    assert desired.apis["calc"].definition.sha256 == desired.apis["plain"].definition.sha256
    assert not desired.apis["calc"].definition.payload.startswith("\ufeff")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        pytest.param("Orders API (v2) / public: ünïcode & more!", True, id="printable-punctuation-unicode"),
        pytest.param("x" * 1024, True, id="1024-characters"),
        pytest.param("x" * 1025, False, id="1025-characters"),
        pytest.param("tab\there", False, id="control-character"),
    ],
)
def test_api_names_follow_aws_rules(repo: SpecRepo, name: str, valid: bool) -> None:
    """API names are 1-1024 printable characters, as API Gateway allows."""
    repo.write("deploy_specs/calc.json", (EXAMPLES / "calc-swagger2.json").read_text(encoding="utf-8"))
    repo.write("deploy_specs/api.yaml", api(name, "calc.json"))
    repo.commit("a name")
    code, errors = validate(repo)
    assert code == (0 if valid else 1), errors
    if not valid:
        assert errors[0]["field"] == "metadata.name" and "1-1024 printable characters" in errors[0]["message"]


def test_a_definition_may_live_anywhere_in_the_repository(repo: SpecRepo) -> None:
    """A definition outside the specs root (but inside the repository) is read from the same commit."""
    repo.write("api/pets.yaml", (EXAMPLES / "pets-openapi3.yaml").read_text(encoding="utf-8"))
    repo.write("deploy_specs/specs.yaml", api("pets", "../api/pets.yaml") + stage("prod", "pets", "{petsHost: h}"))
    repo.commit("definition outside the specs root")
    assert validate(repo) == (0, [])
    repo.write("deploy_specs/specs.yaml", api("pets", "../api/missing.yaml"))
    repo.commit("a missing one")
    code, errors = validate(repo)
    assert code == 1 and "api/missing.yaml does not exist" in errors[0]["message"]


def test_local_backend_refuses_what_api_gateway_refuses(tmp_path: Path) -> None:
    """The local simulation refuses an OpenAPI 3.1 import as API Gateway does (BadRequestException)."""
    cloud = LocalCloud(tmp_path)
    try:
        api_id = cloud.create_rest_api("orders", None, managed=True)
        body = json.dumps({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}})
        with pytest.raises(BackendError, match=r"BadRequestException.*3\.1\.0"):
            cloud.put_rest_api(api_id, body, "x" * 64, None)
    finally:
        cloud.close()


def test_both_examples_apply_on_the_local_backend(repo: SpecRepo) -> None:
    """The Swagger 2.0 JSON and OpenAPI 3.0 YAML examples import, deploy and settle (plan in sync)."""
    _commit_examples(repo)
    result = repo.cli("apply")
    assert result.code == 0, result.stderr
    assert repo.cli_json("plan")["in_sync"] is True
