"""Fixtures for the daemon tests: the real ``python -m reconciler run`` process, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import SpecRepo

SECRET = "test-webhook-secret-5b1f"
PROD = 'routing: {"1": 95, "2": 5}'


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Daemon:
    """One daemon process with its log file and HTTP address.

    It listens on ``127.0.0.1:0``: the kernel picks a free port (no race with other
    test runs) and the daemon's "started" log event says which.
    """

    def __init__(self, repo: str, state_dir: Path, log_path: Path, *extra: str, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._base: str | None = None
        argv = [sys.executable, "-m", "reconciler", "run", "--repo", repo, "--state-dir", str(state_dir)]
        argv += ["--listen", "127.0.0.1:0", "--log-format", "json", *extra]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=log_path.parent)

    # ------------------------------------------------------------------ HTTP

    @property
    def base(self) -> str:
        if self._base is None:

            def started() -> str | None:
                if self.proc.poll() is not None:
                    raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log_text()}")
                events = self.events("started")
                return f"http://{events[0]['listen']}" if events else None

            self._base = wait_for(started, 20.0, "the daemon to listen")
        return self._base

    def request(self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> dict[str, Any]:
        code, body = self.request("/status")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of ``/metrics`` (0 if absent)."""
        _, body = self.request("/metrics")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                return self.request("/readyz")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout, "/readyz")

    def wait_applied(self, revision: str, timeout: float = 10.0) -> dict[str, Any]:
        result: dict[str, Any] = wait_for(
            lambda: (s := self.status())["applied_revision"] == revision and s, timeout, f"{revision[:12]} applied"
        )
        return result

    # ------------------------------------------------------------------ logs

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        text = self.log_text()
        lines = text.split("\n")[:-1]  # the part after the last newline may still be being written
        events = [json.loads(line) for line in lines if line.strip()]
        return [e for e in events if name is None or e.get("event") == name]

    # ------------------------------------------------------------- lifecycle

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons (``start_daemon(repo_arg, state_dir, *flags)``); any still running are stopped at the end
    (SIGTERM, then SIGKILL after 10 s)."""
    started: list[Daemon] = []
    env = {**os.environ, "RECONCILER_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}

    def start(repo: str, state_dir: Path, *extra: str, ready: bool = True) -> Daemon:
        daemon = Daemon(repo, state_dir, tmp_path / f"daemon-{len(started)}.log", *extra, env=env)
        started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:  # SIGTERM first: a clean exit writes the coverage data of the process
        if daemon.proc.poll() is None:
            daemon.proc.terminate()
    for daemon in started:
        try:
            daemon.proc.wait(10)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(5)


@pytest.fixture
def running(example_repo: SpecRepo, start_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon on the example repository, its first reconcile applied."""
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir)
    daemon.wait_applied(example_repo.head())
    return daemon


def set_prod_routing(repo: SpecRepo, routing: str) -> None:
    """Rewrite the prod alias's routing line in aliases.yaml (the working tree; commit separately)."""
    path = repo.path / "deploy_specs" / "aliases.yaml"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    index = max(i for i, line in enumerate(lines) if line.strip().startswith("routing:"))  # prod is last
    lines[index] = f"  {routing}\n"
    path.write_text("".join(lines), encoding="utf-8")
