"""The command line itself: where flags may go, suggestions for typos, environment variables, help, colour.

Run in-process through ``reconciler.cli.main`` (as the console script does), on real git repositories.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import grimp
import pytest

from reconciler.cli import main
from tests.support import Result, SpecRepo


def run(*argv: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return Result(code, out.getvalue(), err.getvalue())


def where(repo: SpecRepo) -> tuple[str, ...]:
    return ("--repo", str(repo.path), "--state-dir", str(repo.state_dir))


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result
    assert "Traceback" not in result.stderr
    return lines[0]


# ------------------------------------------------------------ where flags go


def test_common_flags_work_before_the_command(example_repo: SpecRepo) -> None:
    """`reconciler --repo R --state-dir S plan` is `reconciler plan --repo R --state-dir S`."""
    before = run(*where(example_repo), "plan", "-o", "json")
    after = run("plan", *where(example_repo), "-o", "json")
    assert before.code == after.code == 2
    assert json.loads(before.stdout) == json.loads(after.stdout)


def test_a_flag_after_the_command_wins_over_one_before(example_repo: SpecRepo) -> None:
    """Given twice, the flag nearest the command's own arguments (after it) counts."""
    result = run("--output", "text", "plan", *where(example_repo), "--output", "json")
    assert json.loads(result.stdout)["in_sync"] is False


def test_output_json_short_flag(example_repo: SpecRepo) -> None:
    """-o json is --output json, before or after the command."""
    assert run("status", *where(example_repo), "-o", "json").json["instance"] == "default"
    assert run("-o", "json", *where(example_repo), "history").json == []


def test_a_common_flag_before_a_command_it_does_not_apply_to_is_refused(example_repo: SpecRepo) -> None:
    """`reconciler --backend aws validate`: validate reads no backend, and says so."""
    line = one_error_line(run("--backend", "aws", "validate", *where(example_repo)))
    assert "--backend does not apply to `reconciler validate`" in line


def test_usage_errors_exit_1_not_2(example_repo: SpecRepo) -> None:
    """A usage error exits 1 (2 is plan's "changes"), as one line naming where help is."""
    line = one_error_line(run("plan", *where(example_repo), "--rev"))
    assert "--rev" in line and "reconciler plan --help" in line


# ------------------------------------------------------------ typos


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        pytest.param(("plan", "--prnue"), "Did you mean '--prune'?", id="flag"),
        pytest.param(("plna",), "Did you mean 'plan'?", id="command"),
        pytest.param(("local", "publish-verison", "fn"), "Did you mean 'publish-version'?", id="sub-command"),
        pytest.param(("--ouput", "json", "status"), "Did you mean '--output'?", id="flag-before-the-command"),
    ],
)
def test_a_typo_gets_a_suggestion(argv: tuple[str, ...], suggestion: str) -> None:
    """A misspelt command or flag is refused with the closest spelling."""
    assert suggestion in one_error_line(run(*argv))


# ------------------------------------------------------------ environment


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        pytest.param("RECONCILER_INTERVAL", "abc", "run", id="number-for-run"),
        pytest.param("RECONCILER_INTERVAL", "abc", "status", id="number-for-another-command"),
        pytest.param("RECONCILER_OUTPUT", "yaml", "status", id="choice"),
        pytest.param("RECONCILER_PRUNE", "maybe", "plan", id="switch"),
    ],
)
def test_a_bad_environment_value_is_an_error_naming_the_variable(
    repo: SpecRepo, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, command: str
) -> None:
    """RECONCILER_INTERVAL=abc is refused by naming RECONCILER_INTERVAL (not only --interval), and nothing runs."""
    monkeypatch.setenv(variable, value)
    line = one_error_line(run(command, *where(repo)))
    assert f"{variable}={value!r}" in line


def test_environment_sets_a_common_flag_given_neither_before_nor_after(
    example_repo: SpecRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECONCILER_OUTPUT=json makes status print JSON; --output text on the command line wins."""
    monkeypatch.setenv("RECONCILER_OUTPUT", "json")
    assert run("status", *where(example_repo)).json["instance"] == "default"
    assert run("-o", "text", "status", *where(example_repo)).stdout.startswith("out_of_sync: nothing applied yet")


# ------------------------------------------------------------ help


@pytest.mark.parametrize(
    ("command", "absent", "present"),
    [
        pytest.param(
            ("validate",), ["--backend", "--region", "--instance", "--prune"], ["--rev", "--path"], id="validate"
        ),
        pytest.param(("run",), ["--output", "--color", "--rev"], ["--listen", "--backend", "--lock"], id="run"),
        pytest.param(("history",), ["--prune", "--rev", "--listen"], ["--instance", "--output"], id="history"),
        pytest.param(
            ("local", "publish-version"), ["--backend", "--branch", "--instance"], ["--state-dir"], id="publish-version"
        ),
    ],
)
def test_help_lists_only_the_flags_that_apply_and_an_example(
    command: tuple[str, ...], absent: list[str], present: list[str]
) -> None:
    """Each command's --help lists its own flags (with their variables) and ends in one example."""
    result = run(*command, "--help")
    assert result.code == 0
    options = {word.rstrip(",") for line in result.stdout.splitlines() for word in line.split()[:2]}
    for flag in absent:
        assert flag not in options, flag
    for flag in present:
        assert flag in options, flag
        assert f"RECONCILER_{flag[2:].upper().replace('-', '_')}" in result.stdout
    assert f"Example:\n    reconciler {' '.join(command)}" in result.stdout


def test_publish_version_has_help_text() -> None:
    """`local --help` describes publish-version."""
    result = run("local", "--help")
    assert result.code == 0 and "publish-version" in result.stdout and "Publish a new version" in result.stdout


def test_version() -> None:
    """--version prints the name and version."""
    result = run("--version")
    assert result.code == 0 and result.stdout.startswith("reconciler ")


# ------------------------------------------------------------ colour


@pytest.mark.parametrize(
    ("flag", "no_color", "coloured"),
    [
        pytest.param("always", False, True, id="always"),
        pytest.param("always", True, True, id="always-beats-NO_COLOR"),
        pytest.param("never", False, False, id="never"),
        pytest.param("auto", False, False, id="auto-off-a-terminal"),
    ],
)
def test_color_flag(
    example_repo: SpecRepo, monkeypatch: pytest.MonkeyPatch, flag: str, no_color: bool, coloured: bool
) -> None:
    """--color always|never|auto decides ANSI colour in the text output (auto: a terminal without NO_COLOR)."""
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    result = run("plan", *where(example_repo), "--color", flag)
    assert result.code == 2
    assert ("\033[" in result.stdout) is coloured


# ------------------------------------------------------------ local publish-version


def test_publish_version_works_outside_a_git_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --state-dir, publish-version needs no repository (e.g. to prepare a state dir for CI)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    state = tmp_path / "state"
    assert [run("local", "publish-version", "fn", "--state-dir", str(state)).stdout for _ in range(2)] == ["1\n", "2\n"]
    assert run("local", "publish-version", "fn", "--state-dir", str(state), "-o", "json").json == {
        "function": "fn",
        "version": "3",
    }


def test_nothing_below_the_cli_imports_click() -> None:
    """Configuration flows down as data: only cli.py knows the parser (no click, no argparse below it)."""
    package = Path(__file__).resolve().parent.parent / "reconciler"
    for module in package.rglob("*.py"):
        if module.name == "cli.py":
            continue
        tree = ast.parse(module.read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"click", "argparse"}, module


# The layers of DESIGN.md §7 (upper layers may import lower ones, never the reverse; "|" siblings never each other)
LAYERS = [
    "reconciler.__main__",
    "reconciler.cli",
    "reconciler.daemon",
    "reconciler.httpview",
    "reconciler.worker",
    "reconciler.triggers",
    "reconciler.engine",
    "reconciler.reader",
    "reconciler.plan | reconciler.backends | reconciler.gitsource",
    "reconciler.model",
    "reconciler.specs",
]
PURE = ("reconciler.model", "reconciler.plan", "reconciler.specs")  # no I/O, not even indirectly
IO_MODULES = (
    *("boto3", "botocore", "git", "subprocess", "sqlite3", "socket", "urllib", "urllib3", "uvicorn", "watchfiles"),
    *("reconciler.backends", "reconciler.gitsource", "reconciler.engine", "reconciler.state", "reconciler.parsecache"),
)
BOTO3_USERS = {f"reconciler.backends.{name}" for name in ("aws", "aws_calls", "aws_lease", "aws_records")}


@functools.cache
def import_graph() -> grimp.ImportGraph:
    """Every import of the package (TYPE_CHECKING and function-level ones too), with the packages it uses."""
    return grimp.build_graph("reconciler", include_external_packages=True, cache_dir=None)


def test_no_import_cycle_inside_the_package() -> None:
    """No module of reconciler imports, directly or through others, a module that imports it back."""
    graph = import_graph()
    ours = {m for m in graph.modules if m.startswith("reconciler")}
    cycles = sorted(
        " -> ".join((importer, *chain))
        for importer in ours
        for imported in graph.find_modules_directly_imported_by(importer) & ours
        if (chain := graph.find_shortest_chain(imported, importer)) is not None
    )
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_point_one_way_through_the_layers() -> None:
    """cli -> daemon -> (httpview -> worker -> triggers) -> engine -> plan, backends, gitsource -> model -> specs."""
    illegal = import_graph().find_illegal_dependencies_for_layers(
        layers=[grimp.Layer(*layer.split(" | "), independent=True) for layer in LAYERS]
    )
    found = sorted(f"{d.importer} -> {d.imported}: {[r.heads for r in d.routes]}" for d in illegal)
    assert not found, "imports against the layers:\n" + "\n".join(found)


@pytest.mark.parametrize("module", PURE)
def test_plan_and_specs_reach_no_io_module(module: str) -> None:
    """plan.py, model.py and specs.py do no I/O: no chain of imports leads from them to a module that does."""
    graph = import_graph()
    reached = [io for io in IO_MODULES if io in graph.modules and graph.chain_exists(module, io, as_packages=True)]
    assert not reached, f"{module} reaches {reached}"


def test_only_the_aws_backend_modules_import_boto3() -> None:
    """boto3 and botocore are imported by backends/aws*.py only (the rest stays usable without AWS)."""
    graph = import_graph()
    importers = graph.find_modules_that_directly_import("boto3") | graph.find_modules_that_directly_import("botocore")
    assert importers - BOTO3_USERS == set()


DAEMON_ONLY = {"reconciler.daemon", "uvicorn", "watchfiles", "apscheduler", "prometheus_client"}
AWS_ONLY = {"boto3", "botocore", "reconciler.backends.aws"}
ENGINE = {"reconciler.engine", "reconciler.specs", "pydantic", "git", "structlog"}
# validate reads specs only: no engine, backend, plan, rollout or lease, and no logging (structlog and its asyncio)
NOT_VALIDATE = {"reconciler.engine", "reconciler.backends", "reconciler.plan", "reconciler.model", "reconciler.rollout"}
NOT_VALIDATE |= {"reconciler.rollouts", "reconciler.lease", "reconciler.daemonconfig", "structlog", "asyncio"}


@pytest.mark.parametrize(
    ("argv", "absent"),
    [
        pytest.param(["--help"], ENGINE | DAEMON_ONLY | AWS_ONLY, id="help"),
        pytest.param(["run", "--help"], ENGINE | DAEMON_ONLY | AWS_ONLY, id="run-help"),
        pytest.param(["plan", "--no-such-flag"], ENGINE | DAEMON_ONLY | AWS_ONLY, id="usage-error"),
        pytest.param(["validate"], DAEMON_ONLY | AWS_ONLY | NOT_VALIDATE, id="validate"),
        pytest.param(["validate", "-v", "-o", "json"], DAEMON_ONLY | AWS_ONLY | NOT_VALIDATE, id="validate-verbose"),
        pytest.param(["apply"], DAEMON_ONLY | AWS_ONLY, id="apply-local"),
    ],
)
def test_a_command_imports_only_what_it_needs(example_repo: SpecRepo, argv: list[str], absent: set[str]) -> None:
    """Help and usage errors load no engine; one-shot commands on the local backend load neither daemon nor boto3."""
    script = (
        "import json, sys\n"
        "from reconciler.cli import main\n"
        f"sys.argv = ['reconciler', *{argv!r}, '--state-dir', {str(example_repo.state_dir)!r}]\n"
        "code = main()\n"
        "print(json.dumps([code, sorted(sys.modules)]))\n"
    )
    if argv[-1] == "--help":  # flags after --help are never read; keep argv as a user types it
        script = script.replace(", '--state-dir', " + repr(str(example_repo.state_dir)), "")
    done = subprocess.run([sys.executable, "-c", script], cwd=example_repo.path, capture_output=True, text=True)
    code, modules = json.loads(done.stdout.splitlines()[-1])
    assert code in (0, 1), done.stderr
    loaded = {name for name in modules if any(name == a or name.startswith(f"{a}.") for a in absent)}
    assert loaded == set(), f"{argv}: imported {sorted(loaded)}"
