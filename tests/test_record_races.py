"""No lost updates of the instance record (DESIGN §13): what another process writes during a pass survives it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.engine import ActionDone, Config, Engine
from reconciler.records import FileRecordStore
from reconciler.rollout import PROMOTE
from reconciler.rollouts import load_states
from reconciler.state import InstanceRecord, Pin, StateDir
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


class ReadBack(StateDir):
    """A state directory whose every record write is read back at once by ``reader`` (as the daemon's record
    watcher does when the file lands, from its own thread)."""

    reader: FileRecordStore | None = None

    def save_record(self, record: InstanceRecord, durable: bool = True) -> None:
        super().save_record(record, durable)
        if self.reader is not None:
            self.reader.load(record.instance)


def test_a_store_never_takes_its_own_write_for_a_foreign_one(tmp_path: Path) -> None:
    """The daemon wakes for a record version it did not write (a pin, a resume), never for its own writes,
    even when its watcher reads the file the moment it is replaced; another store's write still counts."""
    state = ReadBack(tmp_path / "state")
    store = FileRecordStore(state)
    state.reader = store
    foreign: list[str] = []
    store.watch(foreign.append)
    store.load("default")
    for n in range(5):
        store.update("default", lambda record, n=n: record.extra.update(n=n), durable=n % 2 == 0)
    assert foreign == []
    state.reader = None
    FileRecordStore(StateDir(tmp_path / "state")).update("default", lambda record: record.extra.update(n=9))
    store.load("default")
    assert foreign == ["default"]


def test_a_store_keeps_a_copy_of_the_newest_record_it_loaded_or_wrote(tmp_path: Path) -> None:
    """``latest`` answers without a read (the daemon's /status snapshot after a pass): the newest record this
    store loaded or wrote, a copy that the loader's later changes and a failed write leave as it was; another
    process's write shows once this store has loaded it."""
    store = FileRecordStore(StateDir(tmp_path / "state"))
    assert store.latest("default") is None
    loaded = store.load("default")
    loaded.last_error = "changed in memory, never written"
    kept = store.latest("default")
    assert kept is not None and kept.last_error is None and kept.version == loaded.version
    written = store.update("default", lambda record: record.extra.update(n=1))
    kept = store.latest("default")
    assert kept is not None and kept.version == written.version and kept.extra == {"n": 1}
    kept.extra["n"] = 2  # a copy each time
    assert store.latest("default").extra == {"n": 1}  # type: ignore[union-attr]

    def fails(record: InstanceRecord) -> None:
        record.extra.update(n=3)
        raise RuntimeError("the change fails half way")

    with pytest.raises(RuntimeError):
        store.update("default", fails)  # its change, made to the record loaded for it, is never kept
    assert store.latest("default").extra == {"n": 1}  # type: ignore[union-attr]
    other = FileRecordStore(StateDir(tmp_path / "state")).update("default", lambda record: record.extra.update(n=4))
    assert store.latest("default").version == written.version  # type: ignore[union-attr]  # not read yet
    store.load("default")
    assert store.latest("default").version == other.version  # type: ignore[union-attr]
