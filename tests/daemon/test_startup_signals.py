"""SIGTERM during the daemon's start-up (before it serves, even before Python has imported it) ends it with exit 0.

The daemon is held at a known point of its start-up without any timing: the
repository's ``.git/config`` is replaced by a FIFO, so the daemon's first read
of it (opening the repository) waits until the test writes the content.  The
test sends SIGTERM while the daemon waits there, then lets it go on.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon.conftest import Daemon, wait_for
from tests.support import RECONCILER, SpecRepo

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


def started_and_stopped_at_startup(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """The real console script, started with the ``startup`` failpoint: it SIGSTOPs itself before any heavy import.

    Returns once the process is stopped there (``waitpid`` with ``WUNTRACED``: no polling, no timing).
    """
    env = {**os.environ, "RECONCILER_FAILPOINTS": "startup=stop", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(RECONCILER), *argv], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"expected the process stopped at the startup failpoint, got status {status}"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_python_still_imports_ends_the_daemon_with_0_and_applies_nothing(
    example_repo: SpecRepo, tmp_path: Path, sig: signal.Signals
) -> None:
    """A stop that arrives before the imports (the console script holds it from its first line) exits 0, cleanly."""
    log = tmp_path / "daemon.log"
    argv = ["run", "--repo", str(example_repo.path), "--state-dir", str(example_repo.state_dir)]
    proc = started_and_stopped_at_startup([*argv, "--listen", "127.0.0.1:0", "--log-format", "json"], tmp_path, log)
    proc.send_signal(sig)  # pending while stopped: handled by whatever handler is in place on SIGCONT
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(30) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    events = [json.loads(line)["event"] for line in text.splitlines() if line.startswith("{")]
    assert "stop_during_startup" in events and "reconcile" not in events, events
    assert example_repo.cli_json("status")["applied_revision"] is None


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        pytest.param(signal.SIGTERM, -signal.SIGTERM, id="SIGTERM-143"),
        pytest.param(signal.SIGINT, 130, id="SIGINT-130"),
    ],
)
def test_a_signal_held_during_the_imports_of_a_one_shot_command_still_ends_it_as_before(
    example_repo: SpecRepo, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """validate gets the held signal back as it starts: killed by SIGTERM (143), 130 for SIGINT, no traceback."""
    log = tmp_path / "validate.log"
    argv = ["validate", "--repo", str(example_repo.path), "--state-dir", str(example_repo.state_dir)]
    proc = started_and_stopped_at_startup(argv, tmp_path, log)
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(30) == code, log.read_text()
    assert "Traceback" not in log.read_text() and "Valid at" not in log.read_text()
