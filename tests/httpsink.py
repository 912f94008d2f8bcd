"""A real local HTTP server standing in for Slack, a webhook receiver or the GitHub API in notification tests."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    """One scripted answer: a status, headers, a body; ``hang`` keeps the request open until the server stops."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False


class StandIn:
    """Records every request; answers from ``script`` in order, then with ``default``.

    Only answered requests are recorded (``arrived`` counts every request as
    soon as it comes in, hanging ones included).
    """

    def __init__(self, *script: Answer, default: Answer | None = None) -> None:
        self.script = list(script)
        self.default = default or Answer()
        self.received: list[Received] = []
        self.arrived = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with stand_in._lock:
                    stand_in.arrived += 1
                    answer = stand_in.script.pop(0) if stand_in.script else stand_in.default
                if answer.hang:
                    stand_in._release.wait(60)
                    return
                with stand_in._lock:
                    stand_in.received.append(
                        Received(
                            "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body, answer.status
                        )
                    )
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answered(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def delivered(self) -> list[Received]:
        """Requests answered with a 2xx (those a sink counts as delivered)."""
        return [r for r in self.answered() if 200 <= r.status < 300]

    def start(self) -> StandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def stand_in(*script: Answer, default: Answer | None = None) -> Iterator[StandIn]:
    server = StandIn(*script, default=default).start()
    try:
        yield server
    finally:
        server.stop()


class Switch:
    """A forwarding proxy in front of ``target`` that can be switched off: then every request gets a 503.

    Stands between the daemon and moto_server, so the backend can fail for a
    while (a temporary error) and come back, with nothing faked on either side.
    """

    def __init__(self, target: str) -> None:
        self.up = True
        self.refused = 0
        parts = urlsplit(target)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        switch = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not switch.up:
                    switch.refused += 1
                    self._answer(503, {"Content-Type": "application/json"}, b'{"message": "switched off"}')
                    return
                connection = http.client.HTTPConnection(host, port, timeout=30)
                try:
                    connection.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    response = connection.getresponse()
                    data = response.read()
                    headers = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
                    self._answer(response.status, headers, data)
                finally:
                    connection.close()

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}
