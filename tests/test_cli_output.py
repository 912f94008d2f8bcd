"""What the CLI prints for people: progress while applying, the status verdict and table, pin messages.

Real repositories and the real local backend, driven in-process as ``reconciler`` is.
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from reconciler.backends.local import LocalCloud
from reconciler.cli import Out, Progress, main
from reconciler.engine import ActionDone
from reconciler.model import UpdateAlias
from tests.support import SpecRepo

ALIASES = "deploy_specs/aliases.yaml"
STAGES = "deploy_specs/stages.yaml"
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] ([+~-]) (\S+) \((\w+)\) \d+\.\d+s$")
FULL_SHA = re.compile(r"\b[0-9a-f]{40}\b")


def edit(repo: SpecRepo, relpath: str, old: str, new: str) -> None:
    text = (repo.path / relpath).read_text(encoding="utf-8")
    assert old in text
    repo.write(relpath, text.replace(old, new))


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Probe(io.StringIO):
    """stdout that notes, for each progress line, how many stages the local backend held when it was written."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.seen: list[tuple[str, int]] = []

    def write(self, text: str) -> int:
        if text.startswith("["):
            cloud = LocalCloud(self.state_dir)
            try:
                stages = int(cloud.db.execute("SELECT COUNT(*) FROM stages").fetchone()[0])
            finally:
                cloud.close()
            self.seen.append((text, stages))
        return super().write(text)


# ------------------------------------------------------------------ progress


def test_apply_prints_each_action_numbered_with_its_duration(example_repo: SpecRepo) -> None:
    """`[3/11] + RestApi/orders (create_deployment) 0.0s`: one line per action, in order, then the summary."""
    result = example_repo.cli("apply")
    assert result.code == 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    matches = [PROGRESS.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m[1]) for m in matches if m] == list(range(1, 12))
    assert {m[2] for m in matches if m} == {"11"}
    assert lines[0].startswith("[1/11] + RestApi/orders (create_api) ")
    assert result.stdout.rstrip().splitlines()[-1].startswith("Applied 11 actions at ")


def test_each_action_is_printed_when_it_completes(example_repo: SpecRepo) -> None:
    """A stage's line is written right after that stage exists, before the next one is made (not at the end)."""
    probe = Probe(example_repo.state_dir)
    with redirect_stdout(probe), redirect_stderr(io.StringIO()):
        code = main(["apply", "--repo", str(example_repo.path), "--state-dir", str(example_repo.state_dir)])
    assert code == 0
    stage_lines = [(text, stages) for text, stages in probe.seen if "(create_stage)" in text]
    assert [stages for _, stages in stage_lines] == [1, 2, 3, 4, 5]


def test_apply_json_prints_no_progress(example_repo: SpecRepo) -> None:
    """With -o json stdout is the one JSON document."""
    assert example_repo.cli_json("apply")["result"] == "success"


def test_rollback_prints_progress_too(example_repo: SpecRepo) -> None:
    """rollback shows its actions as apply does."""
    assert example_repo.cli("apply").code == 0
    edit(example_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    example_repo.commit("half and half")
    assert example_repo.cli("apply").code == 0
    result = example_repo.cli("rollback")
    assert result.code == 0
    assert "[1/1] ~ Alias/orders-handler/prod (update_alias) " in result.stdout


def update(percent: float) -> UpdateAlias:
    routing = {"1": percent, "2": 100 - percent}
    return UpdateAlias("orders-handler", "prod", None, routing, changes={"routing": ({"1": 100}, routing)})


def test_a_wait_shows_a_live_line_on_a_terminal() -> None:
    """On a terminal, a paced call's wait shows what it waits for, and the next action's line erases it."""
    stdout, live = Terminal(), Terminal()
    progress = Progress(Out("text", stdout, colour="never"), live)
    progress.action(ActionDone(update(90), 1, 3, 0.4))
    progress.wait(4.2, "CreateDeployment quota")
    assert "[2/3] waiting 4.2s for the CreateDeployment quota" in live.getvalue()
    progress.action(ActionDone(update(80), 2, 3, 4.3))
    progress.close()
    assert live.getvalue().endswith("\r\033[K")
    assert stdout.getvalue().splitlines()[0] == "[1/3] ~ Alias/orders-handler/prod (update_alias) 0.4s"


def test_no_live_line_off_a_terminal() -> None:
    """Piped, nothing but the action lines is written."""
    stdout, live = io.StringIO(), io.StringIO()
    progress = Progress(Out("text", stdout, colour="never"), live)
    progress.wait(4.2, "CreateDeployment quota")
    progress.close()
    assert live.getvalue() == ""


def test_a_failed_action_says_so(example_repo: SpecRepo) -> None:
    """The action that failed is marked, with how long it took."""
    stdout = io.StringIO()
    Progress(Out("text", stdout, colour="never")).action(ActionDone(update(90), 2, 3, 1.5, RuntimeError("x")))
    assert stdout.getvalue().splitlines()[0] == "[2/3] ! Alias/orders-handler/prod (update_alias) failed after 1.5s"


# ------------------------------------------------------------------ status


@pytest.fixture
def live_repo(example_repo: SpecRepo) -> SpecRepo:
    assert example_repo.cli("apply").code == 0
    return example_repo


def first_line(repo: SpecRepo) -> str:
    result = repo.cli("status")
    assert result.code == 0, result.stderr
    return result.stdout.splitlines()[0]


def test_status_says_synced_first(live_repo: SpecRepo) -> None:
    """After an apply the first line is the verdict `synced`, with the short SHA and its tag."""
    head = live_repo.head()
    assert first_line(live_repo) == f"synced: {head[:12]} (applied/default/1), the head of main, is applied and live"
    assert live_repo.cli_json("status")["sync"] == "synced"


def test_status_shows_short_shas_with_tags_and_aligned_columns(live_repo: SpecRepo) -> None:
    """No 40-character SHA in the text; revisions carry their tag; stage columns line up."""
    text = live_repo.cli("status").stdout
    assert not FULL_SHA.search(text)
    assert re.search(r"^applied +[0-9a-f]{12}  applied/default/1  at ", text, re.MULTILINE)
    stage_rows = [line for line in text.splitlines() if line.startswith("  orders/")]
    assert len(stage_rows) == 5 and len({row.index("https://") for row in stage_rows}) == 1
    assert "  orders-handler/prod  1 95%, 2 5%" in text


def test_a_new_commit_is_out_of_sync(live_repo: SpecRepo) -> None:
    """A commit not yet applied makes the verdict out_of_sync, naming both revisions."""
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    head = live_repo.commit("half and half")
    line = first_line(live_repo)
    assert line.startswith(f"out_of_sync: main is at {head[:12]}; applied is ")
    assert live_repo.cli_json("status")["sync"] == "out_of_sync"


def test_drift_is_out_of_sync(live_repo: SpecRepo) -> None:
    """A console edit of a managed alias makes the applied revision out_of_sync (drift)."""
    cloud = LocalCloud(live_repo.state_dir)
    cloud.update_alias("orders-handler", "prod", "2", {}, "production")
    cloud.close()
    line = first_line(live_repo)
    assert line.startswith("out_of_sync:") and "drift" in line and "1 place" in line


def test_a_failed_pass_is_failed(live_repo: SpecRepo) -> None:
    """After an apply of an invalid commit the verdict is failed, with the error."""
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 90, "2": 5}')
    live_repo.commit("routing that sums to 95")
    assert live_repo.cli("apply").code == 1
    line = first_line(live_repo)
    assert line.startswith("failed: the last pass, at ") and "summing to 100" in line


@pytest.fixture
def pinned_repo(live_repo: SpecRepo) -> tuple[SpecRepo, str, str]:
    """Applied twice, rolled back to the first; then the branch moved on. Returns (repo, pin, head)."""
    first = live_repo.head()
    edit(live_repo, ALIASES, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    live_repo.commit("half and half")
    assert live_repo.cli("apply").code == 0
    assert live_repo.cli("rollback").code == 0
    edit(live_repo, ALIASES, '{"1": 50, "2": 50}', '{"2": 100}')
    head = live_repo.commit("all to version 2")
    return live_repo, first, head


def test_status_while_pinned_says_pinned_and_not_desired_head(pinned_repo: tuple[SpecRepo, str, str]) -> None:
    """Pinned: verdict pinned; the branch head is shown as such, never as the desired revision."""
    repo, pin, head = pinned_repo
    text = repo.cli("status").stdout
    assert text.startswith(f"pinned: to {pin[:12]} (applied/default/")
    assert f"main is at {head[:12]}" in text.splitlines()[0]
    assert re.search(rf"^pinned +{pin[:12]}  applied/default/\d+  since ", text, re.MULTILINE)
    assert re.search(rf"^branch head +{head[:12]}  \(not applied while pinned\)$", text, re.MULTILINE)
    assert not re.search(r"^desired", text, re.MULTILINE)
    status = repo.cli_json("status")
    assert status["sync"] == "pinned" and status["desired_revision"] == pin and status["branch_head"] == head


def test_apply_while_pinned_says_so(pinned_repo: tuple[SpecRepo, str, str]) -> None:
    """apply while pinned says it applies the pin, not the branch head, and how to follow the branch again."""
    repo, pin, head = pinned_repo
    result = repo.cli("apply")
    assert result.code == 0
    assert result.stdout.startswith(f"Pinned to {pin[:12]} (applied/default/1)")
    assert f"not the head of main ({head[:12]})" in result.stdout and "reconciler resume" in result.stdout


def test_resume_says_whether_anything_was_pinned(pinned_repo: tuple[SpecRepo, str, str]) -> None:
    """resume names the pin it lifts; a second resume says nothing was pinned."""
    repo, pin, _ = pinned_repo
    assert f"unpinned from {pin[:12]} (applied/default/1)" in repo.cli("resume").stdout
    assert repo.cli("resume").stdout.strip() == "Instance 'default' is not pinned; it follows main already."
    assert repo.cli_json("resume")["was_pinned"] is False


# ------------------------------------------------------------------ messages


def test_validate_counts_in_the_singular(example_repo: SpecRepo) -> None:
    """One API is "1 API", not "1 APIs"."""
    result = example_repo.cli("validate")
    assert result.code == 0
    assert result.stdout.strip().endswith(": 1 API, 5 stages, 3 aliases.")


def test_a_missing_stage_variable_is_named(example_repo: SpecRepo) -> None:
    """The error names ${stageVariables.lambdaAlias}, not a placeholder."""
    edit(example_repo, STAGES, "variables: {lambdaAlias: dev}", "variables: {other: dev}")
    example_repo.commit("dev without lambdaAlias")
    result = example_repo.cli("validate")
    assert result.code == 1
    assert "uses ${stageVariables.lambdaAlias}; expected the stage to set lambdaAlias" in result.stderr
    assert "stageVariables.X" not in result.stderr
