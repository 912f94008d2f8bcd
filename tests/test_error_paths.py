"""Error paths no other test reached: YAML merge keys and tags, definition limits and content, a damaged record.

Each test fails if its path is removed: a merge key that stops merging, a tag
that is constructed instead of refused, a definition over 10 MiB that is read,
a definition that is not UTF-8 / not YAML / not a mapping that slips through,
and a damaged instance record that ends in a traceback instead of one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import Config, make_backend
from reconciler.errors import StateError
from tests.support import SpecRepo

SPEC = "deploy_specs/zz-extra.yaml"
DEFINITION = "deploy_specs/extra-openapi.yaml"
STAGE_HEAD = "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: extra}\n"


def committed(repo: SpecRepo, files: dict[str, str | bytes]) -> SpecRepo:
    for relpath, content in files.items():
        if isinstance(content, bytes):
            target = repo.path / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        else:
            repo.write(relpath, content)
    repo.commit("extra specs")
    return repo


def errors_of(repo: SpecRepo) -> list[dict[str, Any]]:
    """The errors ``validate --output json`` reports (it must exit 1, with no traceback)."""
    result = repo.cli("validate", output="json")
    assert "Traceback" not in result.stderr
    assert result.code == 1, result.stdout
    errors: list[dict[str, Any]] = result.json["errors"]
    return errors


# ------------------------------------------------------------------ YAML merge keys


MERGED = (
    STAGE_HEAD
    + """spec:
  api: orders
  variables: &prod {lambdaAlias: prod, tier: gold}
  canary:
    percentTraffic: 10
    variables:
      <<: *prod
      lambdaAlias: test
"""
)


def test_a_merge_key_merges_and_explicit_keys_win(example_repo: SpecRepo) -> None:
    """``<<: *anchor`` copies the anchored mapping's keys; a key written beside it wins over the merged one."""
    committed(example_repo, {SPEC: MERGED})
    assert example_repo.cli("apply").code == 0
    stage = example_repo.cli_json("status")["stages"]["orders/extra"]
    assert stage["variables"] == {"lambdaAlias": "prod", "tier": "gold"}
    assert stage["canary"]["variables"] == {"lambdaAlias": "test", "tier": "gold"}


def test_a_merge_of_several_mappings_takes_the_first_one_s_value(example_repo: SpecRepo) -> None:
    """``<<: [*a, *b]``: a key both have comes from the first (YAML's merge rule)."""
    text = (
        STAGE_HEAD
        + """spec:
  api: orders
  variables:
    <<: [{lambdaAlias: prod}, {lambdaAlias: test, tier: gold}]
"""
    )
    committed(example_repo, {SPEC: text})
    assert example_repo.cli("apply").code == 0
    stage = example_repo.cli_json("status")["stages"]["orders/extra"]
    assert stage["variables"] == {"lambdaAlias": "prod", "tier": "gold"}


@pytest.mark.parametrize(
    "merge",
    ["<<: just-a-string", "<<: [lambdaAlias, prod]", "<<: [{lambdaAlias: prod}, 5]"],
    ids=["scalar", "list-of-scalars", "mapping-then-scalar"],
)
def test_a_merge_key_that_names_no_mapping_is_an_error_at_its_line(example_repo: SpecRepo, merge: str) -> None:
    """``<<`` of something other than mappings is refused, naming the file and the line of the merge key."""
    text = STAGE_HEAD + f"spec:\n  api: orders\n  variables:\n    {merge}\n"
    committed(example_repo, {SPEC: text})
    [error] = [e for e in errors_of(example_repo) if e["file"] == SPEC]
    assert error["line"] == 7 and "merge key (<<) needs a mapping" in error["message"]


# -------------------------------------------------------------------- YAML tags


@pytest.mark.parametrize(
    ("value", "line"),
    [
        pytest.param("description: !!python/name:os.system", 6, id="python-tag-on-a-scalar"),
        pytest.param("variables: !!python/object:collections.OrderedDict {lambdaAlias: prod}", 6, id="on-a-mapping"),
        pytest.param("variables: !!python/tuple [lambdaAlias, prod]", 6, id="on-a-sequence"),
        pytest.param("variables: !custom {lambdaAlias: prod}", 6, id="local-tag-on-a-mapping"),
    ],
)
def test_a_tag_on_a_scalar_mapping_or_sequence_is_refused(example_repo: SpecRepo, value: str, line: int) -> None:
    """Python (and any unknown) tags are refused wherever they stand, at their line; nothing is constructed."""
    text = STAGE_HEAD + f"spec:\n  api: orders\n  {value}\n"
    committed(example_repo, {SPEC: text})
    [error] = [e for e in errors_of(example_repo) if e["file"] == SPEC]
    assert error["line"] == line and "unsupported YAML tag" in error["message"], error


def test_a_yaml_value_json_cannot_hold_is_refused(example_repo: SpecRepo) -> None:
    """A standard but non-JSON YAML value (binary) in a spec is an error asking for a quoted string."""
    text = STAGE_HEAD + "spec:\n  api: orders\n  description: !!binary aGVsbG8=\n"
    committed(example_repo, {SPEC: text})
    [error] = [e for e in errors_of(example_repo) if e["file"] == SPEC]
    assert error["line"] == 6 and "a YAML binary value" in error["message"], error


# ------------------------------------------------------------------ definitions


def stage_with(definition: str = DEFINITION) -> str:
    name = definition.rsplit("/", 1)[1]
    return STAGE_HEAD + f"spec:\n  api: orders\n  definition: {name}\n  variables: {{lambdaAlias: prod}}\n"


def test_a_definition_over_10_mib_is_refused_unread(example_repo: SpecRepo) -> None:
    """A definition of 10 MiB + 1 byte is an error naming it and the limit, before it is parsed."""
    body = b"openapi: 3.0.1\n" + b"#" * ((10 << 20) + 1 - len(b"openapi: 3.0.1\n"))
    committed(example_repo, {SPEC: stage_with(), DEFINITION: body})
    messages = [e["message"] for e in errors_of(example_repo)]
    assert any(DEFINITION in m and str((10 << 20) + 1) in m and str(10 << 20) in m for m in messages), messages


def test_a_definition_of_exactly_10_mib_is_read(example_repo: SpecRepo) -> None:
    """The limit is inclusive: 10 MiB exactly is parsed (here: found invalid for its content, not its size)."""
    head = b"openapi: 3.0.1\ninfo: {title: t, version: '1'}\npaths: {}\n"
    body = head + b"#" * ((10 << 20) - len(head))
    committed(example_repo, {SPEC: stage_with(), DEFINITION: body})
    result = example_repo.cli("validate", output="json")
    assert "Traceback" not in result.stderr
    assert not any("expected at most" in e["message"] for e in result.json["errors"]), result.json


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"openapi: 3.0.1\ninfo: {title: \xff\xfe}\n", "not valid UTF-8", id="not-utf8"),
        pytest.param("openapi: 3.0.1\npaths: {/orders: [unclosed\n", "invalid YAML", id="not-yaml"),
        pytest.param("- openapi\n- 3.0.1\n", "expected", id="a-list-not-a-mapping"),
        pytest.param("openapi: 3.0.1\npaths: !!python/name:os.system\n", "unsupported YAML tag", id="python-tag"),
        pytest.param("{}\n", "expected", id="no-openapi-version"),
    ],
)
def test_invalid_definition_content_is_an_error_naming_the_file(
    example_repo: SpecRepo, content: str | bytes, fragment: str
) -> None:
    """A definition that is not UTF-8, not YAML, not a mapping or not OpenAPI fails validate, naming the file."""
    committed(example_repo, {SPEC: stage_with(), DEFINITION: content})
    messages = [e["message"] for e in errors_of(example_repo) if e["file"] == SPEC]
    assert any(DEFINITION.rsplit("/", 1)[1] in m and fragment in m for m in messages), messages


def test_invalid_json_definition_is_an_error_naming_the_file(example_repo: SpecRepo) -> None:
    """A ``.json`` definition with a syntax error fails validate with its name, not a traceback."""
    definition = "deploy_specs/extra-openapi.json"
    committed(example_repo, {SPEC: stage_with(definition), definition: '{"openapi": "3.0.1", "paths": {,}}\n'})
    messages = [e["message"] for e in errors_of(example_repo) if e["file"] == SPEC]
    assert any("extra-openapi.json" in m for m in messages), messages


# ------------------------------------------------------------- a damaged record


@pytest.mark.parametrize(
    "content",
    ['{"instance": "default", "applied_rev', "[1, 2, 3]\n", '{"instance": "default", "no_such_field": 1}\n'],
    ids=["truncated", "wrong-shape", "unknown-field"],
)
@pytest.mark.parametrize("command", ["status", "apply", "rollback"])
def test_a_damaged_instance_record_is_one_error_line_naming_it(
    example_repo: SpecRepo, content: str, command: str
) -> None:
    """A truncated or misshapen instance record stops the command with exit 1 and one line naming the file."""
    assert example_repo.cli("apply").code == 0
    record = example_repo.state_dir / "instances" / "default.json"
    assert record.exists()
    record.write_text(content, encoding="utf-8")
    result = example_repo.cli(command)
    assert result.code == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "default.json" in lines[0], result.stderr


def test_a_key_written_twice_beside_a_merge_is_still_a_duplicate(example_repo: SpecRepo) -> None:
    """Overriding a merged key is fine; writing the same key twice in the mapping itself stays an error."""
    text = STAGE_HEAD + "spec:\n  api: orders\n  variables:\n    <<: {tier: gold}\n    tier: a\n    tier: b\n"
    committed(example_repo, {SPEC: text})
    [error] = [e for e in errors_of(example_repo) if e["file"] == SPEC]
    assert error["line"] == 9 and "duplicate key 'tier'" in error["message"], error


@pytest.mark.parametrize("name", ["abc", "aw", "azure", ""])
def test_an_unknown_backend_name_is_refused(tmp_path: Path, name: str) -> None:
    """Only "local" and "aws" name a backend: anything else (even one sorting before "aws") is a StateError."""
    with pytest.raises(StateError) as caught:
        make_backend(Config(backend=name), tmp_path)
    assert "unknown backend" in str(caught.value) and "expected local or aws" in str(caught.value)


def test_status_before_any_apply_of_an_invalid_head_still_answers(example_repo: SpecRepo) -> None:
    """Nothing applied and an invalid head: ``status`` shows the live state (empty) instead of failing."""
    committed(example_repo, {SPEC: STAGE_HEAD + "spec: {api: orders, colour: red}\n"})
    result = example_repo.cli("status", output="json")
    assert result.code == 0, result.stderr
    assert result.json["applied_revision"] is None and result.json["stages"] == {}
