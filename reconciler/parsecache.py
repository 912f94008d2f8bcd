"""The parse cache: parsed spec files and definitions by git blob id, bounded in bytes, in SQLite.

Used by the engine (through ``StateDir.load_cache``) as the ``cache`` mapping
of ``specs.load_desired``.  Entries are read one by one when asked for, never
the whole cache at once, so what an old commit left behind costs nothing in
memory.  Each entry carries an HMAC (keyed by a secret of this state
directory, ``cache.key``, mode 0600) over its key and value: an entry this
state directory did not write — a planted or copied cache file — is never
taken over the blob itself.  Values are ``marshal`` bytes (a cold load at
10,000 documents encodes 3.4 MB: JSON took 6 % of a cold ``validate``), which
are decoded only once their MAC is checked: marshal is not meant for data
anyone else may have written, and none reaches it.  The MAC covers the
marshal format version, so another Python's entries are parsed afresh, as are
the JSON entries of earlier versions.  Each save stamps the entries the load used with
a new generation; entries no load used for ``KEEP_GENERATIONS`` generations
are forgotten, and beyond ``MAX_CACHE_BYTES`` the least recently used go
first (DESIGN §11: one hostile commit, once reverted, costs nothing more).
"""

from __future__ import annotations

import hashlib
import hmac
import marshal
import os
import secrets
import sqlite3
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

CACHE_DB = "parse-cache.sqlite3"
KEY_FILE = "cache.key"
LEGACY_CACHE_FILE = "spec-cache.json"  # the earlier whole-file JSON cache: removed, never read
MAX_CACHE_BYTES = 192 << 20  # on disk; a commit's definitions are at most 64 MiB (their text and canonical JSON)
KEEP_GENERATIONS = 64  # loads (passes, commands) an unused entry survives
PREFETCH_CHUNK = 500  # keys per query of ``prefetch`` (SQLite allows 32,766 parameters)
FORMAT = f"marshal{marshal.version}"  # in every MAC: an entry of another format is never decoded

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    mac TEXT NOT NULL,
    size INTEGER NOT NULL,
    used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _secret(state_dir: Path) -> bytes:
    """This state directory's cache key, made on first use (readable by its owner only)."""
    path = state_dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        pass
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile by another process
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex())
    return key


def _loads(value: bytes, key: str) -> Any:
    try:
        return marshal.loads(value)
    except (ValueError, EOFError, TypeError):  # cannot happen to a value with a good MAC; then: parse the blob
        raise KeyError(key) from None


class ParseCache(MutableMapping[str, Any]):
    """Parsed specs by blob id; lazily read, written at ``save``; a failing cache only costs speed."""

    def __init__(self, state_dir: Path, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.state_dir = state_dir
        self.path = state_dir / CACHE_DB
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._key: bytes | None = None
        self._new: dict[str, bytes] = {}  # key -> marshalled value, written at save
        self._used: set[str] = set()
        self._hot: dict[str, bytes] = {}  # key -> value read (MAC checked) by ``prefetch``, not asked for yet
        self._absent: set[str] = set()  # keys ``prefetch`` found no (valid) entry for
        (state_dir / LEGACY_CACHE_FILE).unlink(missing_ok=True)

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                self._key = _secret(self.state_dir)
                db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # no fsync per save: a lost save only costs a parse
                db.executescript(SCHEMA)
                self._db = db
            except (OSError, sqlite3.Error):
                return None  # no cache: everything is parsed afresh
        return self._db

    def _mac(self, key: str, value: bytes) -> str:
        assert self._key is not None
        return hmac.new(self._key, f"{key}\x00{FORMAT}\x00".encode() + value, hashlib.sha256).hexdigest()

    def _checked(self, key: object, value: object, mac: object) -> bytes | None:
        """A row's value if this state directory wrote it (in this format), else None."""
        if not isinstance(value, bytes) or not hmac.compare_digest(str(mac), self._mac(str(key), value)):
            return None
        return value

    def prefetch(self, keys: list[str]) -> None:
        """Read the entries of ``keys`` in a few queries (instead of one each when asked for)."""
        db = self._conn()
        if db is None:
            return
        wanted = [k for k in dict.fromkeys(keys) if k not in self._new and k not in self._hot]
        try:
            for start in range(0, len(wanted), PREFETCH_CHUNK):
                chunk = wanted[start : start + PREFETCH_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(f"SELECT key, value, mac FROM entries WHERE key IN ({marks})", chunk)
                for key, value, mac in rows:
                    checked = self._checked(key, value, mac)
                    if checked is not None:
                        self._hot[str(key)] = checked
        except sqlite3.Error:
            return
        self._absent.update(k for k in wanted if k not in self._hot)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self._new or key in self._hot:
            return True
        if key in self._absent:
            return False
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __getitem__(self, key: str) -> Any:
        if key in self._new:
            self._used.add(key)
            return marshal.loads(self._new[key])
        hot = self._hot.pop(key, None)
        if hot is not None:
            value = _loads(hot, key)
            self._used.add(key)
            return value
        if key in self._absent:
            raise KeyError(key)
        db = self._conn()
        if db is None:
            raise KeyError(key)
        try:
            row = db.execute("SELECT value, mac FROM entries WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            row = None
        checked = None if row is None else self._checked(key, row[0], row[1])
        if checked is None:
            raise KeyError(key)  # absent, or not written by this state directory: parse the blob
        value = _loads(checked, key)
        self._used.add(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._new[key] = marshal.dumps(value)
        self._used.add(key)
        self._absent.discard(key)

    def __delitem__(self, key: str) -> None:
        self._new.pop(key, None)
        self._hot.pop(key, None)
        db = self._conn()
        if db is not None:
            db.execute("DELETE FROM entries WHERE key = ?", (key,))

    def __iter__(self) -> Iterator[str]:
        db = self._conn()
        keys = [str(k) for (k,) in db.execute("SELECT key FROM entries")] if db is not None else []
        return iter(sorted(set(keys) | set(self._new)))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def save(self) -> None:
        """Write new entries, stamp the used ones, forget the stale, keep the total under ``max_bytes``."""
        db = self._conn()
        if db is None or not (self._used or self._new):
            self._new.clear()
            self._hot.clear()
            self._absent.clear()
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
            generation = (int(row[0]) if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('generation', ?)", (generation,))
            db.executemany(
                "INSERT OR REPLACE INTO entries (key, value, mac, size, used) VALUES (?, ?, ?, ?, ?)",
                [(k, v, self._mac(k, v), len(k) + len(v), generation) for k, v in self._new.items()],
            )
            stamped = [(generation, k) for k in self._used if k not in self._new]  # new ones are stamped above
            db.executemany("UPDATE entries SET used = ? WHERE key = ?", stamped)
            db.execute("DELETE FROM entries WHERE used <= ?", (generation - KEEP_GENERATIONS,))
            total = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
            if total > self.max_bytes:
                doomed: list[str] = []
                for key, size in db.execute("SELECT key, size FROM entries ORDER BY used, key"):
                    if total <= self.max_bytes:
                        break
                    doomed.append(str(key))
                    total -= int(size)
                db.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in doomed])
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
        finally:
            self._new.clear()
            self._used.clear()
            self._hot.clear()
            self._absent.clear()

    def total_bytes(self) -> int:
        db = self._conn()
        return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]) if db is not None else 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
