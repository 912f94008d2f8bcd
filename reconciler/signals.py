"""SIGTERM/SIGINT from the first moment of the process, held until the command takes them over.

The console script (``__main__.run``, also ``python -m reconciler``) calls ``hold`` before any heavy import,
so a stop that arrives while Python is still importing is neither the default
handler's exit 143 without a word nor a ``KeyboardInterrupt`` traceback.
``reconciler run`` adopts a held signal (the daemon stops as soon as it can,
exit 0, as for any SIGTERM); every other command calls ``release`` as it
starts: the handlers it found come back and a held signal is delivered again,
so it ends as it always did (143 for SIGTERM, 130 for SIGINT).  No imports
beyond the standard library: this runs before everything else.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_held: list[int] = []  # the signals that arrived while held, in order
_found: dict[int, Any] = {}  # the handlers ``hold`` replaced (restored by ``release``)


def _hold(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


def hold() -> None:
    """From now on, remember SIGTERM/SIGINT instead of dying (main thread only; an ignored signal stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        found = signal.getsignal(signum)
        if found is not signal.SIG_IGN:  # e.g. SIGINT of a job started in the background by a shell
            _found[signum] = found
            signal.signal(signum, _hold)


def held() -> bool:
    """Whether a SIGTERM or SIGINT arrived while held."""
    return bool(_held)


def release() -> None:
    """The handlers ``hold`` found come back; a signal held meanwhile is delivered again, now."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, found in list(_found.items()):
        if signal.getsignal(signum) is _hold:
            signal.signal(signum, found)
        del _found[signum]
    if _held:
        signum = _held[0]
        _held.clear()
        os.kill(os.getpid(), signum)
