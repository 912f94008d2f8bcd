"""Commit-to-applied latency with and without dead notification sinks (a benchmark, not a test).

Runs the real daemon (``python -m reconciler run``) twice on fresh copies of
the example repository, the same way ``latency.py`` does: once with no
``--notify``, once with a webhook and a Slack sink whose server accepts the
connection and never answers (every request hangs until the read time-out).
Each run makes N commits and measures ``git commit`` returning -> the
daemon's ``reconcile`` line for that revision on its pipe.  The two rows
should be the same within noise: delivery is on its own threads and queues.

Usage: python bench/notify_latency.py [--commits 30]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import Arrivals, commit_change, git, make_repo, percentile


def dead_server() -> tuple[socket.socket, str]:
    """A listening socket that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)  # kept open, never read from or answered

    threading.Thread(target=accept, daemon=True).start()
    host, port = server.getsockname()
    return server, f"http://{host}:{port}"


def measure(commits: int, notify: list[str]) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="reconciler-notify-latency-"))
    daemon = None
    try:
        repo, state = make_repo(base)
        argv = [sys.executable, "-m", "reconciler", "run", "--repo", str(repo), "--state-dir", str(state)]
        argv += ["--listen", "127.0.0.1:0", "--log-format", "json", "--resync-interval", "3600", *notify]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=base)
        assert daemon.stdout is not None
        applied = Arrivals(daemon.stdout, "daemon")
        applied.wait(git(repo, "rev-parse", "HEAD"), timeout=30)
        for warmup in range(3):
            applied.wait(commit_change(repo, -1 - warmup)[0])
        lags: list[float] = []
        for n in range(commits):
            time.sleep(random.uniform(0.05, 0.15))
            sha, t0 = commit_change(repo, n)
            lags.append((applied.wait(sha) - t0) * 1000)
        return lags
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(15)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=30)
    args = parser.parse_args()
    server, url = dead_server()
    try:
        rows = [
            ("no --notify", measure(args.commits, [])),
            (
                "webhook + slack sinks that never answer",
                measure(args.commits, ["--notify", f"webhook:{url}/hook", "--notify", f"slack:{url}/services/T/B/X"]),
            ),
        ]
    finally:
        server.close()
    print(f"commit -> applied, {args.commits} commits each (ms)")
    print(f"{'daemon':42} {'p50':>7} {'p95':>7} {'max':>7} {'mean':>7}")
    for name, values in rows:
        p50, p95 = percentile(values, 50), percentile(values, 95)
        print(f"{name:42} {p50:7.1f} {p95:7.1f} {max(values):7.1f} {statistics.fmean(values):7.1f}")


if __name__ == "__main__":
    main()
