"""Fault injection for crash tests: named points in the engine that can kill or raise on demand.

``RECONCILER_FAILPOINTS="name=kill,other=raise"`` (read once per process)
makes ``hit("name")`` SIGKILL the process (``kill``), raise ``RuntimeError``
(``raise``) or SIGSTOP it (``stop``: a test waits for the stop with
``waitpid(WUNTRACED)``, signals it, then sends SIGCONT); unset, ``hit`` does
nothing.  A kill at an exact boundary (after the
last action, during ``git tag``, before and after a record write) is what
proves crash safety without timing; etcd's gofail and TiKV's fail-rs do the
same.  Used by ``__main__`` (``startup``), ``engine``, ``gitsource`` and ``daemon``; no I/O otherwise.
"""

from __future__ import annotations

import os
import signal

ENV = "RECONCILER_FAILPOINTS"
_points: dict[str, str] | None = None


def _load() -> dict[str, str]:
    global _points
    if _points is None:
        raw = os.environ.get(ENV, "")
        _points = dict(item.split("=", 1) for item in raw.split(",") if "=" in item)
    return _points


def hit(name: str) -> None:
    """Kill, raise or stop here when ``RECONCILER_FAILPOINTS`` names this point; otherwise nothing."""
    action = _load().get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise RuntimeError(f"failpoint {name}: injected crash")
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
