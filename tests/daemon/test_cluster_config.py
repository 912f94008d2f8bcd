"""Configuration as a container gets it: every flag also from RECONCILER_<FLAG>; flag > environment > default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reconciler.cli import parse
from tests.support import SpecRepo


@pytest.fixture
def moved_specs(example_repo: SpecRepo) -> SpecRepo:
    """The example specs moved to specs/ (so the default --path deploy_specs finds nothing)."""
    example_repo.git("mv", "deploy_specs", "specs")
    example_repo.commit("specs moved")
    return example_repo


def test_environment_variable_sets_a_flag(moved_specs: SpecRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """RECONCILER_PATH=specs does what --path specs does."""
    assert moved_specs.cli("validate").code == 1
    monkeypatch.setenv("RECONCILER_PATH", "specs")
    result = moved_specs.cli("validate")
    assert result.code == 0, result.stderr


def test_flag_overrides_the_environment(moved_specs: SpecRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """--path on the command line wins over RECONCILER_PATH."""
    monkeypatch.setenv("RECONCILER_PATH", "nowhere")
    assert moved_specs.cli("validate").code == 1
    assert moved_specs.cli("validate", "--path", "specs").code == 0


@pytest.mark.parametrize(
    ("variable", "value", "flag", "expected"),
    [
        pytest.param("RECONCILER_INTERVAL", "7", "interval", 7.0, id="number"),
        pytest.param("RECONCILER_PUSH_TAGS", "true", "push_tags", True, id="switch-on"),
        pytest.param("RECONCILER_PRUNE", "0", "prune", False, id="switch-off"),
        pytest.param("RECONCILER_LOCK", "dynamodb://t", "lock", "dynamodb://t", id="lock"),
        pytest.param("RECONCILER_SSH_KEY", "/etc/k", "ssh_key", "/etc/k", id="ssh-key"),
    ],
)
def test_run_flags_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, flag: str, expected: object
) -> None:
    """Every kind of run flag (number, switch, string) takes its RECONCILER_ variable's value."""
    monkeypatch.setenv(variable, value)
    assert parse(["run"])[1][flag] == expected


def test_help_names_each_variable_and_the_effective_default() -> None:
    """--help shows RECONCILER_<FLAG> beside each option, with the default in force and where it came from."""
    env = {"PATH": "/usr/bin:/bin", "RECONCILER_INTERVAL": "7", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "--help"], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # help lines wrap wherever the terminal width says
    for option, help_tail in [
        ("--interval S", "[env RECONCILER_INTERVAL; default: 7 from RECONCILER_INTERVAL]"),
        ("--resync-interval S", "[env RECONCILER_RESYNC_INTERVAL; default: 300]"),
        ("--lock dynamodb://TABLE", "[env RECONCILER_LOCK; default: none (one daemon per state directory"),
        ("--push-tags", "[env RECONCILER_PUSH_TAGS; default: off]"),
        ("--repo REPO", "[env RECONCILER_REPO; default: .]"),
    ]:
        entry = text[text.index(option + " ") :]
        assert entry.index(help_tail) < entry.index(" --", len(option)), option


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("RECONCILER_BACKEND", "gcp", id="not-a-choice"),
        pytest.param("RECONCILER_PUSH_TAGS", "maybe", id="not-a-switch"),
    ],
)
def test_bad_environment_value_is_an_error_naming_the_variable(
    repo: SpecRepo, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A variable with a value its flag would refuse is a usage error (exit 1) that names the variable."""
    monkeypatch.setenv(variable, value)
    result = repo.cli("status")
    assert result.code == 1
    assert f"{variable}={value!r}" in result.stderr
