"""Notices the state directory being deleted or replaced under a running daemon.

The daemon's lock lives in a file of the state directory; ``rm -rf`` of the
directory (or a volume swapped under the pod) frees it, so a second daemon
could start and both would apply and tag.  ``StateWatch`` remembers the
identity (device, inode) of the daemon's lock file and of the files it writes
(the local backend's database, the instance records folder) once they exist,
and ``problem()`` says which of them is gone or is another file now.  The
daemon then stops writing and reports unhealthy.  Used by ``daemon.py``; only
``os.stat`` calls.
"""

from __future__ import annotations

import os
from pathlib import Path


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class StateWatch:
    """Identities of files in the state directory; ``problem`` is None while they are all still the same."""

    def __init__(self, root: Path, paths: list[Path]) -> None:
        self.root = root
        self.paths = paths
        self._seen: dict[Path, tuple[int, int]] = {}
        self.note()

    def note(self) -> None:
        """Remember files that exist now and were not seen before (e.g. a database made by the first pass)."""
        for path in self.paths:
            if path not in self._seen and (found := _identity(path)) is not None:
                self._seen[path] = found

    def problem(self) -> str | None:
        for path, seen in self._seen.items():
            now = _identity(path)
            if now != seen:
                what = "was deleted" if now is None else "was replaced by another file"
                return (
                    f"the state directory {self.root} was deleted or replaced under the running daemon ({path.name} "
                    f"{what}); stopped writing so that no second writer can collide with it; restart the daemon"
                )
        return None
