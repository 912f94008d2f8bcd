"""Where instance records live: the ``RecordStore`` protocol and its state-directory implementation.

A record (``state.InstanceRecord``: pin, attempted and applied revision, owed
tag, rollout progress) is changed only through ``update(instance, change)``:
the store reads the newest record, applies ``change`` and writes it back only
if nobody wrote in between (a version number, checked under a file lock here,
with a DynamoDB condition in ``backends/aws_records.py``), trying again
otherwise.  So the daemon and a ``rollback``/``resume`` run beside it (or, with
``--lock``, from a laptop) never lose each other's changes.  A store also tells
its owner when it sees a version it did not write (``on_foreign``): that is how
the daemon wakes for a pin made elsewhere, and never for its own writes.
Used by the engine and the daemon.
"""

from __future__ import annotations

import copy
import fcntl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from reconciler.errors import StateError
from reconciler.state import InstanceRecord, StateDir

UPDATE_ATTEMPTS = 10  # conditional writes tried before an update gives up (each lost race re-reads)


class RecordStore(Protocol):
    """Instance records with versioned, conditional writes."""

    where: str  # for messages: "the state directory /x", "DynamoDB table t"

    def load(self, instance: str) -> InstanceRecord: ...

    def update(self, instance: str, change: Callable[[InstanceRecord], None], durable: bool = True) -> InstanceRecord:
        """Apply ``change`` to the newest record and write it (version + 1) unless another writer won; retry then.

        ``durable=False``: a write whose loss (power failure) the next pass repairs may skip waiting for the
        disk; it is still atomic and still conditional.
        """
        ...

    def watch(self, on_foreign: Callable[[str], None]) -> None:
        """Call ``on_foreign(instance)`` whenever a load sees a version newer than any this store wrote or saw."""
        ...

    def latest(self, instance: str) -> InstanceRecord | None:
        """A copy of the newest record of ``instance`` this store loaded or wrote (None: none yet), without a
        read: what this process last knew of it (a write by another process since is not looked for)."""
        ...

    def close(self) -> None: ...


class VersionTracker:
    """The newest version of each record this process has seen or written, and that record; reports versions it
    did not make."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}
        self._latest: dict[str, InstanceRecord] = {}  # copies: callers change the records they load
        self._lock = threading.Lock()
        self._on_foreign: Callable[[str], None] | None = None

    def watch(self, on_foreign: Callable[[str], None]) -> None:
        self._on_foreign = on_foreign

    def latest(self, instance: str) -> InstanceRecord | None:
        with self._lock:
            record = self._latest.get(instance)
        return None if record is None else copy.deepcopy(record)

    def _keep(self, record: InstanceRecord) -> None:
        """Under the lock: ``record`` is the newest this store knows of its instance unless a newer one is kept."""
        kept = self._latest.get(record.instance)
        if kept is None or record.version >= kept.version:
            self._latest[record.instance] = copy.deepcopy(record)

    def _saw(self, record: InstanceRecord) -> None:
        with self._lock:
            known = self._known.get(record.instance)
            self._known[record.instance] = max(known or 0, record.version)
            foreign = known is not None and record.version > known
            self._keep(record)
        if foreign and self._on_foreign is not None:
            self._on_foreign(record.instance)

    def _wrote(self, record: InstanceRecord) -> None:
        with self._lock:
            self._known[record.instance] = max(self._known.get(record.instance, 0), record.version)
            self._keep(record)

    @contextmanager
    def _writing(self, record: InstanceRecord) -> Iterator[None]:
        """Around a write of ``record``: its version counts as this store's from before the write lands, so that
        a load by another thread right after (the daemon's record watcher) never takes it for a foreign one."""
        with self._lock:
            before = self._known.get(record.instance)
            self._known[record.instance] = max(before or 0, record.version)
        try:
            yield
        except BaseException:
            with self._lock:
                if before is None:
                    self._known.pop(record.instance, None)
                else:
                    self._known[record.instance] = before
            raise
        with self._lock:
            self._keep(record)


class FileRecordStore(VersionTracker):
    """Records as JSON files in the state directory; an update holds ``instances/<instance>.lock`` (flock)."""

    def __init__(self, state: StateDir) -> None:
        super().__init__()
        self.state = state
        self.where = f"the state directory {state.path}"

    def load(self, instance: str) -> InstanceRecord:
        record = self.state.load_record(instance)
        self._saw(record)
        return record

    def update(self, instance: str, change: Callable[[InstanceRecord], None], durable: bool = True) -> InstanceRecord:
        with self._locked(instance):
            record = self.load(instance)
            change(record)
            record.version += 1
            with self._writing(record):
                self.state.save_record(record, durable)
        return record

    @contextmanager
    def _locked(self, instance: str) -> Iterator[None]:
        path = self.state.path / "instances" / f"{instance}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+b")  # noqa: SIM115 - held for the with-block
        except OSError as exc:
            raise StateError(f"cannot lock the record of {instance!r} in {self.where}: {exc.strerror}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # held for one read-change-write: microseconds
            yield
        finally:
            handle.close()

    def close(self) -> None:
        return None
