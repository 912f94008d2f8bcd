"""DESIGN §2-§4 as an outside tester drives them: the installed ``reconciler`` run as a subprocess.

Every command runs inside a real temporary git repository with no ``--repo``
or ``--state-dir``: the repository is the one containing the current
directory, the branch its current branch, the state ``.git/reconciler/`` in its
git directory.  Each test pins one behaviour of the contract (or of the README where
DESIGN is silent).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support import Result, SpecRepo, run_reconciler

ALIASES = "deploy_specs/aliases.yaml"


def cli(repo: SpecRepo, *args: str, cwd: Path | None = None) -> Result:
    return run_reconciler(cwd or repo.path, *args)


def cli_json(repo: SpecRepo, *args: str) -> Any:
    result = cli(repo, *args, "--output", "json")
    assert result.stdout, result.stderr
    return result.json


def edit(repo: SpecRepo, relpath: str, old: str, new: str) -> None:
    text = (repo.path / relpath).read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {relpath}"
    repo.write(relpath, text.replace(old, new))


def line_of(repo: SpecRepo, relpath: str, fragment: str, after: str = "") -> int:
    """1-based line of the first ``fragment`` at or after the first ``after``."""
    lines = (repo.path / relpath).read_text(encoding="utf-8").splitlines()
    start = next(i for i, text in enumerate(lines) if after in text)
    return next(i for i, text in enumerate(lines) if i >= start and fragment in text) + 1


@pytest.fixture
def checkout(repo: SpecRepo) -> SpecRepo:
    """The example specs committed, orders-handler versions 1 and 2 published (state in .git/reconciler/)."""
    repo.copy_example()
    repo.commit("example specs")
    for expected in ("1", "2"):
        assert cli(repo, "local", "publish-version", "orders-handler").stdout.strip() == expected
    return repo


@pytest.fixture
def live(checkout: SpecRepo) -> SpecRepo:
    """The example applied once (applied/default/1)."""
    assert cli(checkout, "apply").code == 0
    return checkout


# -------------------------------------------------------- §4 the command line


def test_commands_in_a_subdirectory_use_the_repository_root(checkout: SpecRepo) -> None:
    """apply run in deploy_specs/ without --repo applies the repository's branch, state in <root>/.git/reconciler/."""
    result = cli(checkout, "apply", "--output", "json", cwd=checkout.path / "deploy_specs")
    assert result.code == 0, result.stderr
    assert result.json["revision"] == checkout.head() and result.json["tag"] == "applied/default/1"
    assert (checkout.path / ".git" / "reconciler").is_dir() and not (checkout.path / "deploy_specs" / ".git").exists()
    assert checkout.git("status", "--porcelain") == ""


def test_python_m_reconciler_is_the_same_program(live: SpecRepo) -> None:
    """python -m reconciler status prints what the reconciler script prints."""
    module = run_reconciler(live.path, "status", "--output", "json", module=True)
    assert module.code == 0 and json.loads(module.stdout) == cli_json(live, "status")


def test_an_error_message_holding_a_newline_is_still_one_line(checkout: SpecRepo) -> None:
    """Errors are one line each on stderr, even when a value in them (here --path) holds a newline."""
    result = cli(checkout, "validate", "--path", "no\nsuch")
    assert result.code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:"), result.stderr


def test_a_corrupt_local_backend_is_an_error_line(checkout: SpecRepo) -> None:
    """A local backend file that is not SQLite makes plan exit 1 with one error line naming it, no traceback."""
    (checkout.path / ".git" / "reconciler" / "local-backend.sqlite3").write_bytes(b"not a database\n" * 100)
    result = cli(checkout, "plan")
    assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error:") and "local-backend.sqlite3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------- §2 specs and validation


def test_a_document_with_a_bad_name_still_has_its_spec_checked(checkout: SpecRepo) -> None:
    """validate lists every error: a bad metadata.name does not hide the errors in that document's spec."""
    checkout.write(
        "deploy_specs/bad.yaml",
        "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: bad name}\n"
        "spec:\n  api: orders\n  variables: {lambdaAlias: prod, bad-var: x}\n",
    )
    checkout.commit("bad stage")
    result = cli(checkout, "validate", "--output", "json")
    assert result.code == 1
    fields = {(e["file"], e["line"], e["field"]) for e in result.json["errors"]}
    assert fields == {
        ("deploy_specs/bad.yaml", 3, "metadata.name"),
        ("deploy_specs/bad.yaml", 6, "spec.variables.bad-var"),
    }
    assert len(result.stderr.strip().splitlines()) == 2


def test_specs_root_may_be_given_as_a_dot_slash_path(checkout: SpecRepo) -> None:
    """--path ./specs names the same specs root as --path specs (moved away from the default, so --path counts)."""
    checkout.git("mv", "deploy_specs", "specs")
    checkout.commit("specs root moved")
    assert cli(checkout, "validate").code == 1  # the default root is gone: only --path finds the specs
    plain = cli_json(checkout, "validate", "--path", "specs")
    dotted = cli_json(checkout, "validate", "--path", "./specs")
    assert dotted == plain
    assert (dotted["valid"], dotted["apis"], dotted["stages"], dotted["aliases"]) == (True, 1, 5, 3)


def test_a_specs_root_that_is_a_symlink_is_refused(checkout: SpecRepo) -> None:
    """A committed symlink as the specs root is an error, never 'valid, no specs' (which would orphan everything)."""
    checkout.git("mv", "deploy_specs", "real_specs")
    (checkout.path / "deploy_specs").symlink_to("real_specs")
    checkout.commit("specs root behind a symlink")
    result = cli(checkout, "validate")
    assert result.code == 1 and "deploy_specs" in result.stderr and "symbolic link" in result.stderr, result.stderr


def test_a_definition_over_one_mib_is_accepted(checkout: SpecRepo) -> None:
    """The 1 MiB limit is for spec files: a larger OpenAPI definition (the limit is 10 MiB) validates."""
    path = "    get:\n      x-amazon-apigateway-integration: {type: mock}\n"
    paths = "".join(f"  /orders/p{i}:\n{path}" for i in range((1 << 20) // len(path) + 100))
    head = "openapi: 3.0.1\ninfo: {title: orders, version: '2'}\npaths:\n"
    checkout.write("deploy_specs/openapi.yaml", head + paths)
    checkout.commit("a large definition")
    assert (checkout.path / "deploy_specs/openapi.yaml").stat().st_size > 1 << 20
    result = cli(checkout, "validate", "--output", "json")
    assert result.code == 0, result.stderr
    assert result.json["valid"] is True


def test_an_empty_variables_key_means_no_variables(checkout: SpecRepo) -> None:
    """`variables:` left empty (YAML null) is no variables, as Kubernetes reads an empty optional field."""
    checkout.write(
        "deploy_specs/empty.yaml",
        "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: empty}\nspec:\n  api: orders\n"
        "  variables: {lambdaAlias: prod}\n  canary:\n    percentTraffic: 5\n    variables:\n",
    )
    checkout.commit("a canary with no overrides")
    result = cli(checkout, "apply")
    assert result.code == 0, result.stderr
    stage = cli_json(checkout, "status")["stages"]["orders/empty"]
    assert stage["variables"] == {"lambdaAlias": "prod"}
    assert stage["canary"]["percentTraffic"] == 5.0 and stage["canary"]["variables"] == {}


def test_unpublished_version_error_names_the_routing_line(live: SpecRepo) -> None:
    """The plan-time check of routed versions names the line of spec.routing, as schema errors do."""
    edit(live, ALIASES, '{"2": 100}', '{"3": 100}')
    live.commit("test alias to version 3")
    result = cli(live, "plan", "--output", "json")
    assert result.code == 1
    [error] = result.json["errors"]
    routing_line = line_of(live, ALIASES, "routing:", after="metadata: {name: test}")
    assert (error["file"], error["line"], error["field"]) == (ALIASES, routing_line, "spec.routing")


# --------------------------------------------------- §3 apply, tags, rollback


def test_apply_stops_at_the_first_failing_action_and_the_next_apply_converges(checkout: SpecRepo) -> None:
    """A failing action ends the apply: nothing after it, no tag, not applied; the next apply finishes the job."""
    database = checkout.path / ".git" / "reconciler" / "local-backend.sqlite3"
    with sqlite3.connect(database) as db:  # the "cloud" refuses one alias
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON aliases WHEN NEW.name = 'prod'"
            " BEGIN SELECT RAISE(ABORT, 'injected'); END"
        )
    failed = cli(checkout, "apply", "--output", "json")
    assert failed.code == 1 and failed.json["result"] == "failed" and failed.json["tag"] is None
    assert [line for line in failed.stderr.splitlines() if "Alias/orders-handler/prod" in line] == [
        failed.stderr.strip()
    ]
    status = cli_json(checkout, "status")
    assert status["applied_revision"] is None and status["attempted_revision"] == checkout.head()
    assert "Alias/orders-handler/prod" in status["last_error"]
    assert sorted(status["aliases"]) == ["orders-handler/dev"] and len(status["stages"]) == 5
    with sqlite3.connect(database) as db:
        db.execute("DROP TRIGGER refuse")
    done = cli_json(checkout, "apply")
    assert [a["resource"] for a in done["applied"]] == ["Alias/orders-handler/prod", "Alias/orders-handler/test"]
    assert done["tag"] == "applied/default/1" and cli(checkout, "plan").code == 0
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM deployments").fetchone()[0] == 2


def test_applied_tags_are_made_when_git_is_set_to_sign_tags(checkout: SpecRepo) -> None:
    """A repository with tag.gpgSign=true (and no usable signing) still gets its applied tag."""
    checkout.git("config", "tag.gpgSign", "true")
    checkout.git("config", "gpg.program", "false")
    result = cli(checkout, "apply")
    assert result.code == 0 and "tag_failed" not in result.stderr, result.stderr
    assert checkout.git("tag", "-l", "applied/*") == "applied/default/1"
    assert checkout.git("cat-file", "-t", "applied/default/1") == "tag"


def test_rollback_default_after_a_commit_that_changed_no_spec(live: SpecRepo) -> None:
    """rollback without a target works when the last apply was an in-sync commit: back to the tag before the newest."""
    edit(live, ALIASES, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    live.commit("half and half")
    assert cli(live, "apply").code == 0
    live.write("NOTES.md", "not a spec\n")
    live.commit("notes")
    assert cli_json(live, "apply")["result"] == "noop"
    result = cli(live, "rollback")
    assert result.code == 0, result.stderr
    status = cli_json(live, "status")
    assert status["aliases"]["orders-handler/prod"]["routing"] == {"1": 95, "2": 5}
    assert status["pinned"]["tag"] == "applied/default/1"


def test_a_pin_to_a_revision_that_is_gone_says_so(live: SpecRepo) -> None:
    """A pin whose commit was garbage-collected is one clear error naming the pin and resume, not git's own."""
    gone = live.commit("an empty commit, later rewound")
    assert cli(live, "rollback", gone).code == 0
    live.git("reset", "-q", "--hard", "HEAD~1")
    live.git("reflog", "expire", "--expire=now", "--all")
    live.git("gc", "-q", "--prune=now")
    result = cli(live, "plan")
    assert result.code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "pinned" in result.stderr and gone[:12] in result.stderr and "resume" in result.stderr, result.stderr
    assert cli(live, "resume").code == 0 and cli(live, "plan").code == 0


def test_a_rollback_that_fails_for_a_while_stays_pinned_and_the_next_apply_finishes_it(live: SpecRepo) -> None:
    """A temporary failure during rollback keeps the pin, so the next reconcile goes on toward the old revision."""
    first = live.head()
    edit(live, ALIASES, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    live.commit("half and half")
    assert cli(live, "apply").code == 0
    database = live.path / ".git" / "reconciler" / "local-backend.sqlite3"
    with sqlite3.connect(database) as db:  # every alias update fails as a busy database would: temporarily
        db.execute("CREATE TRIGGER busy BEFORE UPDATE ON aliases BEGIN INSERT INTO nowhere VALUES (1); END")
    failed = cli(live, "rollback")
    assert failed.code == 1 and "Alias/orders-handler/prod" in failed.stderr
    assert cli_json(live, "status")["pinned"]["revision"] == first
    with sqlite3.connect(database) as db:
        db.execute("DROP TRIGGER busy")
    assert cli_json(live, "apply")["revision"] == first
    assert cli_json(live, "status")["aliases"]["orders-handler/prod"]["routing"] == {"1": 95, "2": 5}
