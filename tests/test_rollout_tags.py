"""The applied tag of a commit lists that commit's actions only, even after a rollout of an earlier one.

A rollout's passes remember the actions they applied (for the tag made when it
succeeds), keyed by the revision being rolled out; a newer commit must not
inherit them.  Revisions are hex strings: the test makes the earlier one sort
*after* the newer one, so a "<" where "!=" belongs cannot pass by luck.
"""

from __future__ import annotations

from reconciler.engine import Engine
from tests.support import SpecRepo
from tests.test_rollout_engine import Clock, alias_spec, pass_at, world

__all__ = ["world"]  # the engine fixture of the rollout tests


def test_a_commit_after_an_unfinished_rollout_is_tagged_with_its_own_actions(
    world: tuple[SpecRepo, Engine, Clock],
) -> None:
    """Rollout of A stops at 10 %; B (no rollout) applies at once, and B's tag counts B's one action, not A's."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', "    steps: [{setWeight: 10}, {pause: {}}]\n"))
    a = repo.commit("A: version 2 with a rollout")
    for attempt in range(64):  # A's sha in the upper half, so that B below can be made to sort before it
        if a >= "8":
            break
        repo.git("commit", "-q", "--amend", "-m", f"A: version 2 with a rollout ({attempt})")
        a = repo.head()
    assert a >= "8"
    assert pass_at(engine, clock, 0).progressing
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}'))
    b = repo.commit("B: version 2 at once")
    for attempt in range(64):  # B's sha must sort before A's (at least one try in two)
        if b < a:
            break
        repo.git("commit", "-q", "--amend", "-m", f"B: version 2 at once ({attempt})")
        b = repo.head()
    assert b < a
    result = pass_at(engine, clock, 1)
    assert result.ok and not result.progressing and result.revision == b, result.error
    [tag] = [t for t in engine.history() if t.revision == b]
    assert tag.message["action_count"] == len(result.applied) == 1
    assert [x["action"] for x in tag.message["actions"]] == ["update_alias"]
