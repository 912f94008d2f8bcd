"""A live status line on a terminal (spinner and countdown) while the CLI waits; used by ``cli.py`` only.

One line, redrawn in place by a small thread, so that a paced AWS call that waits 5 s shows
``⠙ waiting 4.2s for the CreateDeployment quota`` counting down instead of silence.  The line is
erased before anything else is printed (``clear``) and when the wait is over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
TICK = 0.1  # seconds between redraws


class LiveLine:
    """``show(text, seconds)`` draws ``<frame> <text>`` with ``{left}`` counting down to zero, then erases it."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self._lock = threading.Lock()
        self._text = ""
        self._until = 0.0
        self._drawn = False
        self._frame = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def show(self, text: str, seconds: float) -> None:
        """Show ``text`` (which may hold ``{left}``, the seconds still to wait) for ``seconds``."""
        with self._lock:
            self._text, self._until = text, self.clock() + seconds
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="live-line", daemon=True)
                self._thread.start()
            self._draw()
        self._wake.set()

    def clear(self) -> None:
        """Erase the line (before other output, or when done)."""
        with self._lock:
            self._until = 0.0
            self._erase()

    def _run(self) -> None:
        while True:
            self._wake.wait(TICK)
            self._wake.clear()
            with self._lock:
                if self.clock() >= self._until:
                    self._erase()
                    self._thread = None
                    return
                self._draw()

    def _draw(self) -> None:
        left = max(0.0, self._until - self.clock())
        self._frame = (self._frame + 1) % len(FRAMES)
        self.stream.write(f"\r{FRAMES[self._frame]} {self._text.format(left=f'{left:.1f}s')}\033[K")
        self.stream.flush()
        self._drawn = True

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
