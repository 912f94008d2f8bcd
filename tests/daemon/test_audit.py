"""Audit findings on the daemon: each test pins one behaviour a user of ``reconciler run`` relies on."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.backends.local import LocalCloud
from tests.daemon.conftest import Daemon, wait_for
from tests.support import SpecRepo

pytestmark = pytest.mark.daemon


def run_once(repo: SpecRepo, *flags: str) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "reconciler", "run", "--once", "--repo", str(repo.path)]
    argv += ["--state-dir", str(repo.state_dir), "--log-format", "json", *flags]
    return subprocess.run(argv, capture_output=True, timeout=30)


def test_once_without_self_heal_reports_drift_and_leaves_it(example_repo: SpecRepo) -> None:
    """``run --once --no-self-heal`` at the applied revision reports drift and does not correct it."""
    assert run_once(example_repo).returncode == 0
    cloud = LocalCloud(example_repo.state_dir)
    cloud.update_alias("orders-handler", "prod", "1", {}, "clicked in the console")
    cloud.close()
    done = run_once(example_repo, "--no-self-heal")
    assert done.returncode == 0, done.stderr
    assert b'"event": "drift"' in done.stderr
    assert example_repo.cli_json("status")["aliases"]["orders-handler/prod"]["routing"] == {"1": 100}


def test_client_that_resets_the_connection_logs_no_traceback(running: Daemon) -> None:
    """A client that hangs up mid-request is no error: no traceback, and the server keeps answering."""
    host, port = running.base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    wait_for(lambda: running.request("/healthz")[0] == 200)
    assert running.stop() == 0
    assert not [e for e in running.events() if "exception" in e or e.get("level") == "error"]


def test_once_with_a_failing_fetch_exits_1_without_promising_a_retry(tmp_path: Path) -> None:
    """``run --once`` on a remote it cannot fetch exits 1 after one fetch_failed line, no retry_scheduled."""
    argv = [sys.executable, "-m", "reconciler", "run", "--once", "--repo", (tmp_path / "nowhere").as_uri()]
    argv += ["--state-dir", str(tmp_path / "state"), "--log-format", "json"]
    done = subprocess.run(argv, capture_output=True, timeout=30)
    assert done.returncode == 1
    events = [json.loads(line)["event"] for line in done.stderr.splitlines()]
    assert "fetch_failed" in events and "retry_scheduled" not in events


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        pytest.param("--resync-interval", "-1", id="negative-resync"),
        pytest.param("--resync-interval", "0", id="zero-resync"),
        pytest.param("--interval", "0", id="zero-fetch-interval"),
        pytest.param("--debounce", "-0.5", id="negative-debounce"),
    ],
)
def test_interval_that_is_not_positive_is_refused_at_start(example_repo: SpecRepo, flag: str, value: str) -> None:
    """A zero or negative interval (which would spin the scheduler) stops the start with one line naming the flag."""
    argv = [sys.executable, "-m", "reconciler", "run", "--repo", str(example_repo.path), "--listen", "127.0.0.1:0"]
    argv += ["--state-dir", str(example_repo.state_dir), "--log-format", "json", flag, value]
    done = subprocess.run(argv, capture_output=True, timeout=30)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "cannot_start" and flag in event["error"]


def git_processes_naming(text: str) -> list[int]:
    """Pids of the git processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode(errors="replace")).name.startswith("git") and text.encode() in b" ".join(argv):
            found.append(int(cmdline.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_sigterm_during_a_hung_fetch_leaves_no_git_process_behind(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    """A daemon stopped while git waits on a remote that never answers exits 0 at once, taking its git processes
    along."""
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/specs.git"
        daemon = start_daemon(url, tmp_path / "state", ready=False)
        wait_for(lambda: git_processes_naming(url), what="git to connect")
        # A fetch is no action in flight: the daemon ends it at once (about 1.7 s measured under load), well
        # before the 8 s grace it gives an action (which a stop timeout of 6 s would catch).
        assert daemon.stop(timeout=6) == 0
        assert daemon.events("stopped")[-1]["clean"] is True
        try:
            wait_for(lambda: not git_processes_naming(url), 6.0, "the git processes to end")
        finally:
            for pid in git_processes_naming(url):
                os.kill(pid, signal.SIGKILL)


def test_webhook_secret_with_a_trailing_newline_still_verifies(example_repo: SpecRepo, tmp_path: Path) -> None:
    """A secret mounted from a file (``kubectl create secret --from-file``) ends in a newline; it is not part of it."""
    env = {**os.environ, "RECONCILER_WEBHOOK_SECRET": "from-a-file-7c2e\n", "PYTHONUNBUFFERED": "1"}
    daemon = Daemon(str(example_repo.path), example_repo.state_dir, tmp_path / "daemon.log", env=env)
    try:
        daemon.wait_ready()
        body = b'{"ref": "refs/heads/main"}'
        signature = "sha256=" + hmac.new(b"from-a-file-7c2e", body, hashlib.sha256).hexdigest()
        assert daemon.request("/hooks/git", body, {"X-Hub-Signature-256": signature})[0] == 202
        assert daemon.request("/hooks/git", body, {"X-Reconciler-Token": "from-a-file-7c2e"})[0] == 202
    finally:
        assert daemon.stop() == 0
