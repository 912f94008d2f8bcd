"""A real HTTP proxy in front of moto_server, for the aws tests: records requests, can lose an answer.

``LossyProxy`` forwards every request to moto and returns moto's answer, except
that a request matching ``drop`` (method and path pattern) is forwarded, and
then its connection is closed without a byte of answer: exactly what a client
sees when the network loses AWS's response after AWS acted on the request.
``rewrite`` (request, answer body) -> body lets a test add to an answer what
AWS sends and moto does not (e.g. the ``warnings`` of an import).
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes


@dataclass
class LossyProxy:
    upstream: str
    drop: tuple[str, re.Pattern[str]] | None = None
    drops_left: int = 0
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    rewrite: Callable[[Recorded, bytes], bytes] | None = None

    def matching(self, method: str, pattern: str) -> list[Recorded]:
        compiled = re.compile(pattern)
        return [r for r in self.requests if r.method == method and compiled.fullmatch(r.path.split("?")[0])]


def _handler(proxy: LossyProxy) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorded = Recorded(self.command, self.path, body)
            proxy.requests.append(recorded)
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(self.command, self.path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            connection.close()
            if proxy.drop is not None and proxy.drops_left > 0:
                method, pattern = proxy.drop
                if self.command == method and pattern.fullmatch(self.path.split("?")[0]):
                    proxy.drops_left -= 1
                    self.close_connection = True
                    self.connection.shutdown(2)  # the answer is lost: the client sees the connection end
                    return
            if proxy.rewrite is not None:
                data = proxy.rewrite(recorded, data)
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler


@contextmanager
def lossy_proxy(upstream: str) -> Iterator[LossyProxy]:
    """A proxy on a free loopback port in front of ``upstream``, stopped on exit."""
    proxy = LossyProxy(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
