"""SIGTERM during the daemon's start-up (before it serves) still ends it cleanly with exit 0.

The daemon is held at a known point of its start-up without any timing: the
repository's ``.git/config`` is replaced by a FIFO, so the daemon's first read
of it (opening the repository) waits until the test writes the content.  The
test sends SIGTERM while the daemon waits there, then lets it go on.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon.conftest import Daemon, wait_for
from tests.support import SpecRepo

pytestmark = pytest.mark.daemon


def open_writer_when_read(fifo: Path, timeout: float = 20.0) -> int:
    """The write end of ``fifo``, opened as soon as a reader has it open (ENXIO until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise AssertionError(f"nothing opened {fifo} for reading within {timeout} s") from exc
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_daemon_opens_the_repository_exits_0_and_applies_nothing(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon], tmp_path: Path, sig: signal.Signals
) -> None:
    """A stop that arrives while the daemon is still opening the repository ends it with 0, before any pass."""
    config = example_repo.path / ".git" / "config"
    content = config.read_bytes()
    config.unlink()
    os.mkfifo(config)
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, ready=False)
    fd = open_writer_when_read(config)
    try:
        regular = tmp_path / "config"
        regular.write_bytes(content)
        os.replace(regular, config)  # every later open gets the real file; the daemon still waits on the FIFO
        daemon.proc.send_signal(sig)
        os.set_blocking(fd, True)
        os.write(fd, content)
    finally:
        os.close(fd)
    assert daemon.proc.wait(10) == 0, daemon.log_text()
    assert not daemon.events("reconcile")
    wait_for(lambda: example_repo.cli_json("status")["applied_revision"] is None, 1.0, "nothing applied")
