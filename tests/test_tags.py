"""Applied tags past ten and with gaps: numbering, ``history`` order and the default rollback target.

Tag numbers are integers: ``applied/default/10`` comes after ``applied/default/9``
(a sort by name would put it before), and the next number follows the highest
one, not the count (a deleted tag leaves a gap that must not be reused).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import SpecRepo

ALIASES = "deploy_specs/aliases.yaml"
PROD = '{"1": 95, "2": 5}'


def shift_prod(repo: SpecRepo, percent: int) -> None:
    """Send ``percent`` % of prod to version 2 in the working tree."""
    text = (repo.path / ALIASES).read_text(encoding="utf-8")
    current = text[text.rindex("routing: ") + len("routing: ") :].strip()
    repo.write(ALIASES, text.replace(current, f'{{"1": {100 - percent}, "2": {percent}}}'))


def apply_shift(repo: SpecRepo, percent: int) -> dict[str, object]:
    shift_prod(repo, percent)
    revision = repo.commit(f"prod: {percent} % on version 2")
    report: dict[str, object] = repo.cli_json("apply")
    assert report["revision"] == revision and report["result"] == "success", report
    return report


@pytest.fixture
def eleven(example_repo: SpecRepo) -> tuple[SpecRepo, list[str]]:
    """Eleven applies (applied/default/1 … 11); returns the repo and the applied revisions, oldest first."""
    revisions: list[str] = []
    assert example_repo.cli_json("apply")["tag"] == "applied/default/1"
    revisions.append(example_repo.head())
    for n in range(2, 12):
        report = apply_shift(example_repo, n)
        assert report["tag"] == f"applied/default/{n}"
        revisions.append(example_repo.head())
    return example_repo, revisions


def test_the_eleventh_apply_is_tagged_11_and_history_lists_by_number(eleven: tuple[SpecRepo, list[str]]) -> None:
    """Tags go on past 10 (10 and 11, not 10 again), and ``history`` lists them newest number first."""
    repo, revisions = eleven
    history = repo.cli_json("history")
    assert [h["tag"] for h in history] == [f"applied/default/{n}" for n in range(11, 0, -1)]
    assert [h["revision"] for h in history] == revisions[::-1]


def test_a_deleted_tag_leaves_a_gap_and_the_next_number_follows_the_highest(
    eleven: tuple[SpecRepo, list[str]],
) -> None:
    """With applied/default/5 deleted, the next apply is tagged 12 (highest + 1), not 11 (count + 1)."""
    repo, _ = eleven
    repo.git("tag", "-d", "applied/default/5")
    assert apply_shift(repo, 30)["tag"] == "applied/default/12"
    numbers = [int(h["tag"].rsplit("/", 1)[1]) for h in repo.cli_json("history")]
    assert numbers == [12, 11, 10, 9, 8, 7, 6, 4, 3, 2, 1]


def test_rollback_without_a_target_goes_to_the_tag_before_the_current_past_ten(
    eleven: tuple[SpecRepo, list[str]],
) -> None:
    """At applied/default/11, ``rollback`` goes to 10 (the previous number), not to 9 (the previous name)."""
    repo, revisions = eleven
    assert repo.cli("rollback").code == 0
    pinned = repo.cli_json("status")["pinned"]
    assert pinned["tag"] == "applied/default/10" and pinned["revision"] == revisions[9]


# Another writer taking the number this one is about to use: git's own writers hold
# ``refs/tags/<name>.lock`` while they write a ref, so a held lock is that race, frozen.
def hold(repo: SpecRepo, *numbers: int) -> list[Path]:
    """The ref locks of ``applied/default/<n>``, as another git writer holds them mid-write."""
    locks = []
    for n in numbers:
        lock = repo.path / ".git" / "refs" / "tags" / "applied" / "default" / f"{n}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("")
        locks.append(lock)
    return locks


def finish(repo: SpecRepo, locks: list[Path]) -> None:
    """The other writer completes: its locks go, its tags exist."""
    for lock in locks:
        lock.unlink()
        repo.git("tag", "-a", f"applied/default/{lock.name.removesuffix('.lock')}", "HEAD", "-m", '{"taken": "yes"}')


def test_a_tag_number_taken_while_tagging_moves_to_the_next_number(example_repo: SpecRepo) -> None:
    """When another writer is making applied/default/1 while this one tags, the apply is tagged 2."""
    locks = hold(example_repo, 1)
    done = example_repo.cli_json("apply")
    assert done["tag"] == "applied/default/2", done
    finish(example_repo, locks)
    assert example_repo.git("tag", "--list", "applied/*").split() == ["applied/default/1", "applied/default/2"]
    assert example_repo.git("rev-parse", "applied/default/2^{commit}") == example_repo.head()


def test_numbers_taken_again_and_again_leave_the_tag_owed_to_the_next_reconcile(example_repo: SpecRepo) -> None:
    """If every number is taken in turn, the apply still succeeds; the tag is made by the next reconcile."""
    locks = hold(example_repo, 1, 2, 3, 4, 5)
    done = example_repo.cli("apply")
    assert done.code == 0, done.stderr
    assert "numbers keep being taken" in done.stderr
    assert example_repo.git("tag", "--list", "applied/*") == ""  # five attempts, each number being written by another
    finish(example_repo, locks)
    assert example_repo.cli_json("apply")["tag"] == "applied/default/6"


def test_rollback_after_an_in_sync_apply_goes_before_the_newest_tag(example_repo: SpecRepo) -> None:
    """A docs-only commit applies nothing and is tagged nothing; rollback then goes to the tag before the newest."""
    assert example_repo.cli("apply").code == 0
    first = example_repo.head()
    apply_shift(example_repo, 20)
    example_repo.write("README.md", "docs only\n")
    docs = example_repo.commit("docs only")
    assert example_repo.cli_json("apply")["result"] == "noop"
    assert example_repo.cli_json("status")["applied_revision"] == docs
    assert example_repo.cli("rollback").code == 0
    pinned = example_repo.cli_json("status")["pinned"]
    assert pinned["tag"] == "applied/default/1" and pinned["revision"] == first
