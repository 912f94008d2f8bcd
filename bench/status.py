"""``GET /status`` latency of ``reconciler run`` (a benchmark, not a test).

Starts the real daemon (``python -m reconciler run``, local backend) on the
example repository and on a generated one with 10,000 resources (5,000 stages
and 5,000 aliases, as bench/scale.py makes it), waits for its first pass, then
times ``--requests`` requests of ``/status`` over one keep-alive connection,
each beside a ``/healthz`` request on the same connection (the floor: the same
server, thread hand-off and round trip, no work).  At 10k the document is
megabytes, so a second floor is measured in the same run: a bare uvicorn
process (h11, as the daemon's) serving a body of the same size, to tell the
cost of sending the bytes from the cost of answering.  Prints per size the
median of each run's median, and the ratios.

``--source DIR`` runs the daemon from another checkout of the package (e.g.
``git archive <commit> | tar -x -C DIR``), to compare with an older commit.

Usage: python bench/status.py [--runs 3] [--requests 200] [--sizes example 5000] [--source DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import make_repo  # noqa: E402
from bench.scale import prepare  # noqa: E402

BYTES_FLOOR = r"""
import socket, sys, uvicorn
size = int(sys.argv[1])
body = b"x" * size
headers = [(b"content-type", b"application/json"), (b"content-length", str(size).encode())]

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # as httpapi._listen: TCP_NODELAY
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(app, http="h11", loop="asyncio", lifespan="off", ws="none", log_config=None,
                        access_log=False, server_header=False)
uvicorn.Server(config).run(sockets=[sock])
"""


def bytes_floor(size: int, requests: int) -> float:
    """Median ms of GET of a ``size``-byte body from a bare uvicorn process (no daemon, no thread hand-off)."""
    proc = subprocess.Popen([sys.executable, "-c", BYTES_FLOOR, str(size)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(10):
            get(conn, "/")
        times = [get(conn, "/")[0] for _ in range(requests)]
        conn.close()
        return statistics.median(times)
    finally:
        proc.terminate()
        proc.wait(10)


def started_address(proc: subprocess.Popen[str], timeout: float = 600.0) -> str:
    """The ``listen`` of the daemon's ``started`` log line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the daemon exited with {proc.wait()}")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "started":
            return str(event["listen"])
    raise SystemExit("the daemon did not start")


def get(conn: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    began = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - began) * 1000
    if response.status != 200:
        raise SystemExit(f"{path}: {response.status} {body[:200]!r}")
    return elapsed, body


def measure(repo: Path, state: Path, requests: int, source: str | None) -> tuple[float, float, float, int, int]:
    """Median ms of /status, of /healthz and of the same bytes from a bare server; resources listed; bytes."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if source is not None:
        env["PYTHONPATH"] = source
    argv = [sys.executable, "-m", "reconciler", "run", "--repo", str(repo), "--state-dir", str(state)]
    argv += ["--listen", "127.0.0.1:0", "--log-format", "json", "--resync-interval", "3600"]
    daemon = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=source or repo.parent
    )
    try:
        host, _, port = started_address(daemon).rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        deadline = time.monotonic() + 900
        while True:  # the first pass creates everything
            status = json.loads(get(conn, "/status")[1])
            if status["applied_revision"] == head.stdout.strip() and status["sync"] == "synced":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"not applied: {status['sync_reason']}")
            time.sleep(0.2)
        size = len(get(conn, "/status")[1])
        for _ in range(10):  # warm-up: connection, threads, the rendered snapshot
            get(conn, "/status")
            get(conn, "/healthz")
        status_ms: list[float] = []
        floor_ms: list[float] = []
        for _ in range(requests):
            status_ms.append(get(conn, "/status")[0])
            floor_ms.append(get(conn, "/healthz")[0])
        resources = len(status["stages"]) + len(status["aliases"])
        conn.close()
        same_bytes = bytes_floor(size, requests)
        return statistics.median(status_ms), statistics.median(floor_ms), same_bytes, resources, size
    finally:
        daemon.terminate()
        daemon.wait(30)


def run(size: str, requests: int, source: str | None) -> tuple[float, float, float, int, int]:
    base = Path(tempfile.mkdtemp(prefix=f"reconciler-status-{size}-"))
    try:
        if size == "example":
            repo, state = make_repo(base)
        else:
            repo, state = prepare(base, int(size))
        return measure(repo, state, requests, source)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--sizes", nargs="+", default=["example", "5000"], help="example, or N (N stages + N aliases)")
    parser.add_argument("--source", help="run the daemon from this checkout of the package (PYTHONPATH)")
    args = parser.parse_args()
    print(f"GET /status beside GET /healthz on the same daemon, {args.requests} each, median of {args.runs} runs")
    print(
        f"{'repository':<22} {'resources':>9} {'bytes':>9} {'/healthz ms':>11} {'same bytes ms':>13} "
        f"{'/status ms':>10} {'x /healthz':>10} {'x bytes':>8}"
    )
    for size in args.sizes:
        results = [run(size, args.requests, args.source) for _ in range(args.runs)]
        status, floor, same = (statistics.median(r[i] for r in results) for i in range(3))
        ratio = statistics.median(r[0] / r[1] for r in results)
        over_bytes = statistics.median(r[0] / max(r[1], r[2]) for r in results)
        name = "example" if size == "example" else f"generated, N = {size}"
        print(
            f"{name:<22} {results[0][3]:>9} {results[0][4]:>9} {floor:>11.2f} {same:>13.2f} "
            f"{status:>10.2f} {ratio:>10.2f} {over_bytes:>8.2f}"
        )


if __name__ == "__main__":
    main()
