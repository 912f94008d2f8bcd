"""No lost updates of the instance record (DESIGN §13): what another process writes during a pass survives it."""

from __future__ import annotations

from reconciler.engine import ActionDone, Config, Engine
from reconciler.rollout import PROMOTE
from reconciler.rollouts import load_states
from reconciler.state import InstanceRecord, Pin
from tests.support import SpecRepo
from tests.test_rollout_engine import ALIAS, STEPS, Clock, alias_spec, routing, world

__all__ = ["world"]


def test_a_promote_and_a_pin_made_during_a_pass_are_not_overwritten_by_it(
    world: tuple[SpecRepo, Engine, Clock],
) -> None:
    """A `rollout promote` and a pin written by another process while the daemon applies a step stay in the
    record after the pass, and the next pass carries the promote out."""
    repo, engine, clock = world
    repo.write("deploy_specs/aliases.yaml", alias_spec('{"2": 100}', f"    steps: {STEPS}\n"))
    repo.commit("version 2 with a rollout")
    clock.offset = 0
    assert engine.reconcile().progressing
    laptop = Engine(Config(repo=str(repo.path), state_dir=str(repo.state_dir)))
    pin = Pin(revision=repo.head(), tag=None, pinned_at="2026-01-01T00:00:00+00:00")

    def meanwhile(done: ActionDone) -> None:
        laptop.rollout_command(ALIAS, PROMOTE)

        def pinning(record: InstanceRecord) -> None:
            record.pinned = pin

        laptop.records.update("default", pinning)

    clock.offset = 61  # the pause is over: the step to 50 % is applied, and the promote arrives during it
    result = engine.reconcile(on_action=meanwhile)
    assert result.ok and result.applied and routing(engine) == {"1": 50, "2": 50}
    record = engine.record()
    assert load_states(record.extra)[ALIAS].command == PROMOTE
    assert record.pinned == pin
    laptop.close()
