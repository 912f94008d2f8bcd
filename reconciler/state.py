"""The state directory: per-instance records, the spec parse cache, the writer lock.

Records (last attempted / applied revision, last error, rollback pin) are
small JSON files replaced atomically, so a kill at any moment leaves either
the old or the new record.  The parse cache (``parsecache``) maps git blob
ids to parsed YAML, so an unchanged file is never parsed twice.  Used by the
engine.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from reconciler.errors import StateError
from reconciler.parsecache import ParseCache

LOCK_FILE = "writer.lock"


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    """Write ``data`` as JSON so that readers see the old or the new file, never half; ``durable``: on disk
    (fsync) before it replaces the old one, else a power loss may leave the old file (never a half one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, separators=(",", ":")))
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Pin:
    revision: str
    tag: str | None
    pinned_at: str


@dataclass
class InstanceRecord:
    """What one instance last attempted and applied (Flux keeps these apart)."""

    instance: str
    attempted_revision: str | None = None
    applied_revision: str | None = None
    applied_at: str | None = None
    last_error: str | None = None
    last_attempt_at: str | None = None
    pinned: Pin | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    branch: str | None = None  # the branch this instance follows, recorded at its first apply
    version: int = 0  # raised by every write (records.RecordStore's conditional writes)

    def as_json(self) -> dict[str, Any]:
        """The record as JSON-ready data (``dataclasses.asdict`` without its deep copy: it is serialised at once)."""
        data = {name: getattr(self, name) for name in RECORD_FIELDS}
        data["pinned"] = None if self.pinned is None else asdict(self.pinned)
        return data


RECORD_FIELDS = tuple(f.name for f in fields(InstanceRecord))


def record_from_json(raw: Any) -> InstanceRecord:
    """A record from its JSON form (``InstanceRecord.as_json``); ValueError or TypeError if it has another shape."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
    _check_record_shape(raw)
    raw = dict(raw)
    pin = raw.pop("pinned", None)
    return InstanceRecord(**raw, pinned=Pin(**pin) if pin else None)


def _check_record_shape(raw: Any) -> None:
    """A record read back must have the types its fields are used as (a wrong one is a TypeError later)."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
    names = {dict: "an object", str: "a string", int: "a whole number", type(None): "null"}
    for name, value in raw.items():
        if name == "extra":
            wanted: tuple[type, ...] = (dict,)
        elif name == "pinned":
            wanted = (dict, type(None))
        elif name == "version":
            wanted = (int,)
        else:
            wanted = (str, type(None))
        if not isinstance(value, wanted) or isinstance(value, bool):
            expected = " or ".join(names[t] for t in wanted)
            raise TypeError(f"field {name!r} is {type(value).__name__}; expected {expected}")
    pin = raw.get("pinned")
    if isinstance(pin, dict):
        for name in ("revision", "tag", "pinned_at"):
            if not isinstance(pin.get(name), str | None) or (name != "tag" and pin.get(name) is None):
                raise TypeError(f"field 'pinned.{name}' is {type(pin.get(name)).__name__}; expected a string")


class StateDir:
    """``--state-dir``: created on first use, ignored by git."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {path}: {exc.strerror}") from None
        ignore = path / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# written by reconciler: local state, never committed\n*\n", encoding="utf-8")

    # --------------------------------------------------------------- records

    def _record_path(self, instance: str) -> Path:
        return self.path / "instances" / f"{instance}.json"

    def load_record(self, instance: str) -> InstanceRecord:
        path = self._record_path(instance)
        if not path.exists():
            return InstanceRecord(instance=instance)
        try:
            return record_from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise StateError(f"the record {path} is unreadable ({exc}); delete it to start afresh") from None
        except OSError as exc:
            raise StateError(f"the record {path} is unreadable ({exc.strerror or exc})") from None

    def save_record(self, record: InstanceRecord, durable: bool = True) -> None:
        write_json_atomic(self._record_path(record.instance), record.as_json(), durable)

    # ----------------------------------------------------------------- cache

    def load_cache(self) -> ParseCache:
        return ParseCache(self.path)

    # ------------------------------------------------------------------ lock

    @contextmanager
    def writer_lock(self, what: str, wait: float = 0.0) -> Iterator[None]:
        """Exclusive: a second writer on this state dir is refused, after ``wait`` seconds of trying.

        ``flock`` has no timeout, so a wait is a short poll; the daemon holds this
        lock only for the length of one reconcile, which a CLI writer waits out.
        """
        path = self.path / LOCK_FILE
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the with-block
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(0.02)
                        continue
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StateError(
                    f"the state directory {self.path} is in use by {holder}; "
                    "only one reconciler may write to a state directory (stop it, or use another --state-dir)"
                ) from None
            holder = f"{what} (pid {os.getpid()})\n"
            handle.seek(0)
            if handle.read() != holder:  # a daemon takes it every pass: rewrite only when the holder changes
                handle.seek(0)
                handle.truncate()
                handle.write(holder)
                handle.flush()
            yield
        finally:
            handle.close()
