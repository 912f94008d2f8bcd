"""Rollouts through the real CLI: ``rollout promote|abort``, ``local set-alarm``, ``status`` and ``apply`` output,
and the README's rollout walkthrough run verbatim on a fresh repository holding the example specs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import EXAMPLE, SpecRepo
from tests.test_rollout_engine import ALIAS, STEPS, alias_spec
from tests.test_specs import BASE

README = Path(__file__).resolve().parent.parent / "README.md"
WALKTHROUGH = "### Walkthrough: a rollout of the example's prod alias"


@pytest.fixture
def rolling(repo: SpecRepo) -> SpecRepo:
    """Base specs applied (prod at version 1), then version 2 with a rollout applied: 10 % live."""
    for path, text in BASE.items():
        repo.write(path, text)
    repo.commit("base")
    repo.publish("orders-handler", 2)
    assert repo.cli("apply").code == 0
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    repo.commit("version 2, rolled out")
    return repo


def test_apply_reports_the_rollout_under_way_and_exits_0(rolling: SpecRepo) -> None:
    """apply: exit 0, the step line, and not in sync yet (JSON)."""
    result = rolling.cli("apply", output="json")
    assert result.code == 0, result.stderr
    data = result.json
    assert data["in_sync"] is False and data["tag"] is None
    assert data["rollouts"][ALIAS]["weight"] == 10 and data["rollouts"][ALIAS]["phase"] == "progressing"
    text = rolling.cli("status")
    assert f"  {ALIAS}  progressing  step 2/4  10 % → 2  failures 0" in text.stdout


def test_promote_and_promote_full_through_the_record(rolling: SpecRepo) -> None:
    """promote leaves the pause; --full goes to 100 % and the commit is tagged."""
    rolling.cli("apply")
    assert rolling.cli("rollout", "promote", ALIAS).code == 0
    rolling.cli("apply")
    assert rolling.cli_json("status")["rollouts"][ALIAS] | {"message": None} == rolling.cli_json("status")["rollouts"][
        ALIAS
    ] | {"phase": "paused", "weight": 50, "message": None}
    assert rolling.cli("rollout", "promote", "--full", ALIAS).code == 0
    result = rolling.cli("apply", output="json")
    assert result.code == 0 and result.json["tag"] and result.json["in_sync"] is True
    assert rolling.cli_json("status")["aliases"]["orders-handler/prod"]["routing"] == {"2": 100}


def test_abort_rolls_back_and_exits_1_on_the_next_apply(rolling: SpecRepo) -> None:
    """abort: the next apply rolls back, exits 1 with the reason on stderr, and last_error says it."""
    rolling.cli("apply")
    assert rolling.cli("rollout", "abort", ALIAS).code == 0
    result = rolling.cli("apply")
    assert result.code == 1 and "aborted by `reconciler rollout abort`" in result.stderr
    status = rolling.cli_json("status")
    assert status["aliases"]["orders-handler/prod"]["routing"] == {"1": 100}
    assert "aborted" in status["last_error"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(("rollout", "promote", "Alias/orders-handler/nope"), "no rollout of Alias/orders-handler/nope"),
        pytest.param(("rollout", "abort", "Stage/orders/prod"), "no rollout of Stage/orders/prod"),
        pytest.param(("local", "set-alarm", "orders-5xx", "RED"), "'RED' is not one of"),
    ],
)
def test_bad_rollout_commands_are_one_line_errors(rolling: SpecRepo, args: tuple[str, ...], fragment: str) -> None:
    """A resource without a rollout, or an unknown alarm state: exit 1, one line, no traceback, nothing written."""
    rolling.cli("apply")
    before = rolling.cli_json("status")["rollouts"]
    result = rolling.cli(*args)
    assert result.code != 0 and fragment in result.stderr and "Traceback" not in result.stderr
    assert rolling.cli_json("status")["rollouts"] == before


def test_set_alarm_says_whether_it_changed(rolling: SpecRepo) -> None:
    """set-alarm creates the alarm, and says so when a state is set again unchanged."""
    assert rolling.cli("local", "set-alarm", "orders-5xx", "OK").stdout.strip() == "alarm orders-5xx: OK"
    assert "(unchanged)" in rolling.cli("local", "set-alarm", "orders-5xx", "OK").stdout


def _walkthrough() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split(WALKTHROUGH, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_rollout_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Every line of the README's rollout walkthrough, in a fresh repository with the example specs."""
    repo = SpecRepo(tmp_path / "clone")
    repo.copy_example()
    repo.commit("the example")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    lines = _walkthrough()
    assert len(lines) > 10 and (EXAMPLE / "aliases.yaml").exists()
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=repo.path, env=env, capture_output=True, text=True, timeout=120)
        expected = 1 if "# exit 1" in line else 0
        assert done.returncode == expected, f"{line}\n{done.stdout}\n{done.stderr}"

    def reconciler_json(*args: str) -> Any:
        done = subprocess.run(["reconciler", *args, "-o", "json"], cwd=repo.path, env=env, capture_output=True)
        return json.loads(done.stdout)

    status = reconciler_json("status")
    assert status["aliases"]["orders-handler/prod"]["routing"] == {"3": 100}
    assert "aborted" in status["rollouts"][ALIAS]["message"]
    tags = [t["tag"] for t in reconciler_json("history")]
    assert len(tags) == 2, tags  # the example with prod at 2, then prod at 3 (the rollout); never the failed ones


def test_plan_during_a_pause_is_not_in_sync_and_shows_the_rollout(rolling: SpecRepo) -> None:
    """Mid-rollout nothing needs applying right now, yet live is not what git says: exit 2, the rollout shown."""
    rolling.cli("apply")
    result = rolling.cli("plan")
    assert result.code == 2 and f"  {ALIAS}  progressing  step 2/4" in result.stdout
    data = rolling.cli("plan", output="json").json
    assert data["in_sync"] is False and data["actions"] == [] and data["rollouts"][ALIAS]["weight"] == 10
