"""Spec validation through ``reconciler validate --output json`` on real temporary git repositories.

Each bad input is committed next to a valid base set of specs; the error must
name the file, the line (where it can be known), the field, and what was
expected.  In the case texts the offending line is marked with ``# <-``.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tests.support import SpecRepo

OPENAPI = """\
openapi: 3.0.1
info: {title: orders, version: "1"}
paths:
  /orders:
    get:
      x-amazon-apigateway-integration:
        type: aws_proxy
        uri: arn:aws:lambda:us-east-1:123456789012:function:orders-handler:${stageVariables.lambdaAlias}
"""

CANARY_OPENAPI = OPENAPI.replace('version: "1"', 'version: "2"').replace(
    "function:orders-handler:", "function:orders-${stageVariables.canaryOnly}:"
)

BASE = {
    "deploy_specs/api.yaml": """\
apiVersion: reconciler/v1
kind: RestApi
metadata: {name: orders}
spec:
  definition: openapi.yaml
""",
    "deploy_specs/openapi.yaml": OPENAPI,
    "deploy_specs/stages.yaml": """\
apiVersion: reconciler/v1
kind: Stage
metadata: {name: prod}
spec:
  api: orders
  variables: {lambdaAlias: prod}
""",
    "deploy_specs/aliases.yaml": """\
apiVersion: reconciler/v1
kind: Alias
metadata: {name: prod}
spec:
  function: orders-handler
  routing: {"1": 100}
""",
}


def stage(body: str, name: str = "bad") -> str:
    return f"apiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: {name}}}\nspec:\n{body}"


def alias(body: str, name: str = "bad") -> str:
    return f"apiVersion: reconciler/v1\nkind: Alias\nmetadata: {{name: {name!r}}}\nspec:\n{body}"


def marked_line(text: str) -> int | None:
    """The 1-based line carrying the ``# <-`` marker, if any."""
    for number, line in enumerate(text.splitlines(), start=1):
        if "# <-" in line:
            return number
    return None


@pytest.fixture
def spec_repo(repo: SpecRepo) -> SpecRepo:
    """A repository whose first commit holds a valid base set of specs."""
    for path, text in BASE.items():
        repo.write(path, text)
    repo.commit("valid base specs")
    return repo


def validate(repo: SpecRepo) -> tuple[int, dict[str, Any]]:
    result = repo.cli("validate", output="json")
    assert "Traceback" not in result.stderr
    return result.code, result.json


BAD = "deploy_specs/zz-bad.yaml"  # sorts last, so a duplicate is reported here

# (text of deploy_specs/bad.yaml, field, fragment of the message)
BAD_INPUTS = [
    pytest.param(
        stage("  api: orders\n  variables: {lambdaAlias: prod}\n  colour: red  # <-\n"),
        "spec.colour",
        "unknown field; expected one of api, definition, description, variables, canary, rollout",
        id="unknown-field",
    ),
    pytest.param(
        stage(
            "  api: orders\n  variables: {lambdaAlias: prod}\n  canary:\n    percentTraffic: 5\n    weight: 5  # <-\n"
        ),
        "spec.canary.weight",
        "unknown field; expected one of percentTraffic, definition, variables",
        id="unknown-nested-field",
    ),
    pytest.param(
        "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: bad}\nspec: {api: orders}\nstatus: {}  # <-\n",
        "status",
        "unknown field; expected apiVersion, kind, metadata, spec",
        id="unknown-envelope-field",
    ),
    pytest.param(
        stage("  api: orders\n  variables: [lambdaAlias, prod]  # <-\n"),
        "spec.variables",
        "expected a mapping, got list",
        id="wrong-type",
    ),
    pytest.param(
        "apiVersion: reconciler/v1\nkind: RestApi\nmetadata: {name: other}\n"
        "spec:  # <-\n  description: no definition\n",
        "spec.definition",
        "required field is missing",
        id="missing-field",
    ),
    pytest.param(
        "apiVersion: reconciler/v1  # <-\nkind: Stage\nmetadata: {name: bad}\n",
        "spec",
        "required field is missing",
        id="missing-envelope-field",
    ),
    pytest.param(
        "apiVersion: reconciler/v2  # <-\nkind: Stage\nmetadata: {name: bad}\nspec: {api: orders}\n",
        "apiVersion",
        "reconciler/v1",
        id="bad-apiVersion",
    ),
    pytest.param(
        "apiVersion: reconciler/v1\nkind: Function  # <-\nmetadata: {name: bad}\nspec: {api: orders}\n",
        "kind",
        "RestApi, Stage, Alias",
        id="bad-kind",
    ),
    pytest.param(
        "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: 'pr od!'}  # <-\nspec:\n"
        "  api: orders\n  variables: {lambdaAlias: prod}\n",
        "metadata.name",
        "[A-Za-z0-9_-]",
        id="bad-stage-name",
    ),
    pytest.param(
        stage("  api: orders\n  variables:\n    lambdaAlias: prod\n    bad-name: x  # <-\n"),
        "spec.variables.bad-name",
        "[A-Za-z0-9_]",
        id="bad-variable-name",
    ),
    pytest.param(
        stage("  api: orders\n  variables:\n    lambdaAlias: 'two words'  # <-\n"),
        "spec.variables.lambdaAlias",
        "'two words'",
        id="bad-variable-value",
    ),
    pytest.param(
        stage("  api: orders\n  variables:\n    lambdaAlias: 5  # <-\n"),
        "spec.variables.lambdaAlias",
        "expected a string, got int 5",
        id="variable-value-not-a-string",
    ),
    pytest.param(
        "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: '123'}  # <-\nspec:\n"
        "  function: orders-handler\n  routing: {'1': 100}\n",
        "metadata.name",
        "not all digits",
        id="alias-name-all-digits",
    ),
    pytest.param(
        alias("  function: orders-handler\n  routing: {'1': 90, '2': 5}  # <-\n"),
        "spec.routing",
        "summing to 100",
        id="routing-sum-not-100",
    ),
    pytest.param(
        alias("  function: orders-handler\n  routing: {'1': 50, '2': 25, '3': 25}  # <-\n"),
        "spec.routing",
        "one or two versions",
        id="routing-three-versions",
    ),
    pytest.param(
        alias("  function: orders-handler\n  routing: {}  # <-\n"),
        "spec.routing",
        "one or two versions",
        id="routing-empty",
    ),
    pytest.param(
        alias("  function: orders-handler\n  routing: {'$LATEST': 90, '2': 10}  # <-\n"),
        "spec.routing",
        "$LATEST",
        id="routing-latest-weighted",
    ),
    pytest.param(
        alias("  function: orders-handler\n  routing: {'1': 150, '2': -50}  # <-\n"),
        "spec.routing",
        "(0, 100]",
        id="routing-percent-out-of-range",
    ),
    pytest.param(
        alias("  function: orders-handler\n  routing: {'v1': 100}  # <-\n"),
        "spec.routing.v1",
        "published version number",
        id="routing-version-not-a-number",
    ),
    pytest.param(
        alias("  function: 'orders handler!'  # <-\n  routing: {'1': 100}\n"),
        "spec.function",
        "Lambda function name",
        id="bad-function-name",
    ),
    pytest.param(
        stage("  api: orders\n  variables: {lambdaAlias: prod}\n  canary:\n    percentTraffic: -1  # <-\n"),
        "spec.canary.percentTraffic",
        "[0, 100]",
        id="canary-percent-negative",
    ),
    pytest.param(
        stage("  api: orders\n  variables: {lambdaAlias: prod}\n  canary:\n    percentTraffic: 100.5  # <-\n"),
        "spec.canary.percentTraffic",
        "[0, 100]",
        id="canary-percent-over-100",
    ),
    pytest.param(
        stage("  api: payments  # <-\n  variables: {lambdaAlias: prod}\n"),
        "spec.api",
        "RestApi",
        id="unknown-api",
    ),
    pytest.param(
        stage("  api: orders\n  variables: {lambdaAlias: prod}\n", name="prod").replace(
            "metadata: {name: prod}", "metadata: {name: prod}  # <-"
        ),
        "metadata.name",
        "duplicate",
        id="duplicate-stage",
    ),
    pytest.param(
        alias("  function: orders-handler\n  routing: {'2': 100}\n", name="prod").replace(
            "metadata: {name: 'prod'}", "metadata: {name: 'prod'}  # <-"
        ),
        "metadata.name",
        "duplicate",
        id="duplicate-alias",
    ),
    pytest.param(
        "apiVersion: reconciler/v1\nkind: RestApi\nmetadata: {name: orders}  # <-\nspec: {definition: openapi.yaml}\n",
        "metadata.name",
        "duplicate RestApi 'orders'",
        id="duplicate-api",
    ),
    pytest.param(
        stage("  api: orders\n  variables: {lambdaAlias: prod}\n", name="ok")
        + "---\n"
        + stage("  api: orders\n  variables: {lambdaAlias: prod}\n  weight: 3  # <-\n", name="second"),
        "spec.weight",
        "unknown field",
        id="error-in-second-document-has-its-absolute-line",
    ),
    pytest.param(
        stage("  api: orders\n  definition: missing.yaml  # <-\n  variables: {lambdaAlias: prod}\n"),
        "spec.definition",
        "does not exist",
        id="definition-missing",
    ),
    pytest.param(
        stage("  api: orders\n  definition: ../../outside.yaml  # <-\n  variables: {lambdaAlias: prod}\n"),
        "spec.definition",
        "leaves the repository",
        id="definition-escapes-repository",
    ),
    pytest.param(
        stage("  api: orders\n  definition: /etc/passwd  # <-\n  variables: {lambdaAlias: prod}\n"),
        "spec.definition",
        "relative path",
        id="definition-absolute-path",
    ),
    pytest.param(
        stage("  api: orders\n  definition: aliases.yaml  # <-\n  variables: {lambdaAlias: prod}\n"),
        "spec.definition",
        "OpenAPI",
        id="definition-not-openapi",
    ),
    pytest.param(
        stage("  api: orders\n  variables: {other: x}  # <-\n"),
        "spec.variables",
        "lambdaAlias",
        id="stage-variable-used-but-not-set",
    ),
    pytest.param(
        stage(
            "  api: orders\n  variables: {lambdaAlias: prod}\n  canary:\n    percentTraffic: 10\n"
            "    definition: canary-openapi.yaml\n    variables: {lambdaAlias: canary}  # <-\n"
        ),
        "spec.canary.variables",
        "canaryOnly",
        id="canary-variable-used-but-not-set",
    ),
    pytest.param(
        stage("  api: orders\n  variables: {lambdaAlias: prod\n  canary: [  # <-\n"),
        "",
        "invalid YAML",
        id="invalid-yaml",
    ),
    pytest.param(
        stage("  api: orders\n  api: payments  # <-\n  variables: {lambdaAlias: prod}\n"),
        "spec.api",
        "duplicate key",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: bad}\nspec: !!python/object/apply:os.system  # <-\n"
        "  - touch PWNED\n",
        "spec",
        "unsupported YAML tag",
        id="python-tag",
    ),
    pytest.param(
        stage("  api: orders\n  description: 2024-01-01  # <-\n  variables: {lambdaAlias: prod}\n"),
        "spec.description",
        "expected a string",
        id="yaml-date-where-a-string-belongs",
    ),
    pytest.param(
        "- just\n- a list  # <-\n".replace("- just\n", "- just  # <-\n").replace("- a list  # <-", "- a list"),
        "",
        "expected a mapping",
        id="document-not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "field", "fragment"), BAD_INPUTS)
def test_bad_input_is_reported_at_file_line_and_field(
    spec_repo: SpecRepo, text: str, field: str, fragment: str
) -> None:
    """A bad spec fails validate with an error naming its file, line, field and what was expected."""
    spec_repo.write("outside.yaml", OPENAPI)
    spec_repo.write("deploy_specs/canary-openapi.yaml", CANARY_OPENAPI)
    spec_repo.write(BAD, text)
    spec_repo.commit("a bad spec")
    code, report = validate(spec_repo)
    assert code == 1 and report["valid"] is False
    errors = [e for e in report["errors"] if e["file"] == BAD and e["field"] == field]
    assert errors, report["errors"]
    (error,) = errors
    assert error["line"] == marked_line(text), error
    assert fragment in error["message"], error
    assert "expected" in error["message"], error


def test_python_tag_is_never_executed(spec_repo: SpecRepo) -> None:
    """A !!python/object/apply tag is rejected without running its command."""
    marker = spec_repo.path.parent / "pwned"
    spec_repo.write(BAD, f"spec: !!python/object/apply:os.system ['touch {marker}']\n")
    spec_repo.commit("hostile yaml")
    code, _ = validate(spec_repo)
    assert code == 1 and not marker.exists()


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{chr(c)}: &{chr(c)} [*{chr(c - 1)},*{chr(c - 1)},*{chr(c - 1)},*{chr(c - 1)},*{chr(c - 1)},"
            f"*{chr(c - 1)},*{chr(c - 1)},*{chr(c - 1)},*{chr(c - 1)}]"
            for c in range(ord("b"), ord("j"))
        ),
    ]
)


def test_billion_laughs_fails_fast_in_bounded_memory(spec_repo: SpecRepo) -> None:
    """An alias bomb is refused in bounded time and a few MiB, naming the file."""
    spec_repo.write(BAD, BILLION_LAUGHS + "\n")
    spec_repo.commit("alias bomb")
    started = time.monotonic()
    tracemalloc.start()
    try:
        code, report = validate(spec_repo)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 11 s measured on a loaded machine (tracemalloc slows it); an unbounded expansion never ends
    assert time.monotonic() - started < 60
    assert peak < 64 << 20
    assert code == 1
    (error,) = report["errors"]
    assert error["file"] == BAD and "too many nodes" in error["message"]


def test_file_over_one_mib_is_refused_unread(spec_repo: SpecRepo) -> None:
    """A spec file over 1 MiB is an error naming the file and the limit."""
    spec_repo.write(BAD, "# padding\n" * ((1 << 20) // 10 + 1))
    spec_repo.commit("huge file")
    code, report = validate(spec_repo)
    assert code == 1
    (error,) = report["errors"]
    assert error["file"] == BAD and "1048576" in error["message"] and "expected" in error["message"]


def test_non_utf8_bytes_are_reported_with_their_line(spec_repo: SpecRepo) -> None:
    """A spec with bytes that are not UTF-8 is an error at the line holding them."""
    (spec_repo.path / BAD).write_bytes(b"apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: caf\xe9}\n")
    spec_repo.commit("latin-1 file")
    code, report = validate(spec_repo)
    assert code == 1
    (error,) = report["errors"]
    assert (error["file"], error["line"]) == (BAD, 3) and "UTF-8" in error["message"]


def test_committed_symlink_is_refused_and_never_followed(spec_repo: SpecRepo) -> None:
    """A symlink in the tree (mode 120000) is an error; the file it points at is never read."""
    os.symlink("/etc/passwd", spec_repo.path / "deploy_specs" / "passwd.yaml")
    spec_repo.commit("a symlink")
    assert "120000" in spec_repo.git("ls-tree", "HEAD", "deploy_specs/passwd.yaml")
    result = spec_repo.cli("validate", output="json")
    assert result.code == 1
    (error,) = result.json["errors"]
    assert error["file"] == "deploy_specs/passwd.yaml" and "symbolic link" in error["message"]
    assert "expected a regular file" in error["message"]
    assert "root:" not in result.stdout + result.stderr


def test_definition_that_is_a_symlink_is_refused(spec_repo: SpecRepo) -> None:
    """A stage definition that is a committed symlink is refused at spec.definition."""
    os.symlink("openapi.yaml", spec_repo.path / "deploy_specs" / "link.json")
    spec_repo.write(BAD, stage("  api: orders\n  definition: link.json\n  variables: {lambdaAlias: prod}\n"))
    spec_repo.commit("definition through a symlink")
    code, report = validate(spec_repo)
    assert code == 1
    (error,) = report["errors"]
    assert (error["file"], error["field"]) == (BAD, "spec.definition") and "symbolic link" in error["message"]


def test_validate_prints_every_error_not_just_the_first(spec_repo: SpecRepo) -> None:
    """Errors in several files and documents are all reported, in JSON and as stderr lines."""
    spec_repo.write(BAD, stage("  api: payments\n  variables: {lambdaAlias: prod}\n"))
    spec_repo.write("deploy_specs/bad2.yaml", alias("  function: orders-handler\n  routing: {'1': 90}\n"))
    spec_repo.write("deploy_specs/bad3.yaml", "apiVersion: reconciler/v9\nkind: Stage\nmetadata: {name: x}\nspec: {}\n")
    spec_repo.commit("three bad files")
    result = spec_repo.cli("validate", output="json")
    assert result.code == 1
    files = sorted({e["file"] for e in result.json["errors"]})
    assert files == ["deploy_specs/bad2.yaml", "deploy_specs/bad3.yaml", BAD]
    assert len(result.stderr.strip().splitlines()) == len(result.json["errors"])


def test_valid_specs_validate(spec_repo: SpecRepo) -> None:
    """The base specs are valid: exit 0 and a summary of what they hold."""
    code, report = validate(spec_repo)
    assert code == 0
    assert report["valid"] is True and report["errors"] == []
    assert (report["apis"], report["stages"], report["aliases"]) == (1, 1, 1)


def test_uncommitted_edit_is_ignored(spec_repo: SpecRepo) -> None:
    """Specs are read from the commit: a broken but uncommitted working-tree file changes nothing."""
    spec_repo.write("deploy_specs/stages.yaml", "this: [is not valid\n")
    spec_repo.write(BAD, "apiVersion: nope\n")
    code, _ = validate(spec_repo)
    assert code == 0


def test_uncommitted_fix_is_ignored_too(spec_repo: SpecRepo) -> None:
    """A committed error stays an error while its fix is only in the working tree."""
    spec_repo.write(BAD, "apiVersion: nope\n")
    spec_repo.commit("bad")
    spec_repo.remove(BAD)
    code, _ = validate(spec_repo)
    assert code == 1


def test_validate_at_an_older_revision(spec_repo: SpecRepo) -> None:
    """--rev validates that commit, not the head."""
    good = spec_repo.head()
    spec_repo.write(BAD, "apiVersion: nope\n")
    spec_repo.commit("bad")
    assert validate(spec_repo)[0] == 1
    assert spec_repo.cli("validate", "--rev", good).code == 0


def test_openapi_documents_need_no_envelope(spec_repo: SpecRepo, tmp_path: Path) -> None:
    """An OpenAPI file below the specs root is not mistaken for a spec document."""
    spec_repo.write("deploy_specs/nested/openapi-v3.yml", OPENAPI)
    spec_repo.commit("another definition")
    assert validate(spec_repo)[0] == 0


def test_second_validate_from_the_parse_cache_agrees(spec_repo: SpecRepo) -> None:
    """Validating again (parsed specs now come from the cache) gives the same errors as the first time."""
    spec_repo.write(BAD, stage("  api: orders\n  description: 2024-01-01\n  variables: {lambdaAlias: prod}\n"))
    spec_repo.commit("a date")
    first = validate(spec_repo)
    assert first == validate(spec_repo) and first[0] == 1


def test_invalid_api_is_reported_once_not_again_for_its_stages(spec_repo: SpecRepo) -> None:
    """A RestApi whose definition is missing is one error; its stages do not each claim the API is unknown."""
    spec_repo.write("deploy_specs/api.yaml", BASE["deploy_specs/api.yaml"].replace("openapi.yaml", "gone.yaml"))
    spec_repo.commit("the API's definition is gone")
    code, report = validate(spec_repo)
    assert code == 1
    assert [(e["file"], e["field"]) for e in report["errors"]] == [("deploy_specs/api.yaml", "spec.definition")]
