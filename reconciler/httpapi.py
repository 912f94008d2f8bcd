"""The daemon's HTTP endpoints (stdlib ``ThreadingHTTPServer``); started and stopped by ``daemon.py``.

``GET /healthz`` (alive), ``GET /readyz`` (first reconcile done; for a ``--lock``
standby: following the branch, ready to take over), ``GET /metrics``
(Prometheus), ``GET /status`` (the ``status`` JSON plus ``role``: leader or standby) and
``POST /hooks/git`` (a verified webhook triggers a fetch; the payload is never
read for content).  Webhooks are verified with GitHub's ``X-Hub-Signature-256``
HMAC or a shared token header, both compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import structlog

from reconciler.errors import ReconcilerError, UsageError

log = structlog.get_logger("reconciler.http")

MAX_WEBHOOK_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
TOKEN_HEADERS = ("X-Reconciler-Token", "X-Gitlab-Token")


class DaemonView(Protocol):
    """What the endpoints need from the daemon."""

    def healthy(self) -> bool: ...
    def ready(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...
    def metrics_text(self) -> tuple[bytes, str]: ...
    def webhook(self) -> bool: ...
    def webhook_rejected(self) -> None: ...


class Headers(Protocol):
    def get(self, name: str, /) -> str | None: ...


@dataclass(frozen=True)
class WebhookAuth:
    """Verifies a webhook request against the shared secret (``RECONCILER_WEBHOOK_SECRET``)."""

    secret: bytes | None

    def verify(self, headers: Headers, body: bytes) -> str | None:
        """``None`` when the request is authentic, else why not (never echoing what was sent)."""
        if not self.secret:
            return "webhooks are disabled: RECONCILER_WEBHOOK_SECRET is not set"
        signature = headers.get("X-Hub-Signature-256")
        if signature is not None:
            expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            if hmac.compare_digest(signature.strip().encode(), expected.encode()):
                return None
            return "X-Hub-Signature-256 does not match the payload"
        for name in TOKEN_HEADERS:
            token = headers.get(name)
            if token is not None:
                if hmac.compare_digest(token.strip().encode(), self.secret):
                    return None
                return f"{name} does not match"
        return "no X-Hub-Signature-256 or token header"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080``, ``:8080`` for all interfaces) as a (host, port) pair."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    view: DaemonView
    auth: WebhookAuth

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):  # the client hung up or stalled: not our failure
            log.debug("http_client_gone", client=client_address[0], error=str(error))
            return
        log.exception("http_handler_failed", client=client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "reconciler"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may stall a request (a slow or idle client never holds a thread for long)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http_request", client=self.client_address[0], line=format % args)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, json.dumps(data, indent=2).encode() + b"\n", "application/json")

    def _text(self, code: int, text: str) -> None:
        self._send(code, text.encode() + b"\n", "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        view = self.server.view
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok = view.healthy()
            self._text(200 if ok else 503, "ok" if ok else "unhealthy")
        elif path == "/readyz":
            ok = view.ready()
            self._text(
                200 if ok else 503,
                "ready" if ok else "not ready: no first reconcile (or, as a standby, first fetch) yet",
            )
        elif path == "/metrics":
            body, content_type = view.metrics_text()
            self._send(200, body, content_type)
        elif path == "/status":
            try:
                self._json(200, view.status())
            except ReconcilerError as exc:  # e.g. not cloned yet, backend unreachable
                self._json(503, {"error": str(exc)})
            except Exception as exc:  # a status read must never take the server down
                log.warning("status_failed", error=str(exc))
                self._json(500, {"error": str(exc)})
        else:
            self._json(404, {"error": f"no such endpoint {path}"})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/hooks/git":
            self._json(404, {"error": f"no such endpoint {path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_WEBHOOK_BYTES:
            self.close_connection = True
            self._json(413 if length > 0 else 400, {"error": "missing or too large Content-Length"})
            return
        body = self.rfile.read(length)
        problem = self.server.auth.verify(self.headers, body)
        if problem is not None:
            self.server.view.webhook_rejected()
            log.warning("webhook_rejected", client=self.client_address[0], reason=problem)
            self._json(401, {"error": "unauthorized"})
            return
        event = self.headers.get("X-GitHub-Event") or self.headers.get("X-Gitlab-Event")
        if not self.server.view.webhook():
            self._json(503, {"error": "shutting down"})
            return
        log.info("webhook_accepted", client=self.client_address[0], forge_event=event)
        self._json(202, {"accepted": True})


class HttpApi:
    """The endpoints on ``--listen``, served from a background thread."""

    def __init__(self, listen: str, view: DaemonView, auth: WebhookAuth) -> None:
        host, port = parse_listen(listen)
        server_class: type[_Server] = _Server
        if ":" in host:

            class _Server6(_Server):
                address_family = socket.AF_INET6

            server_class = _Server6
        try:
            self.server = server_class((host, port), _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {listen}: {exc.strerror}") from None
        self.server.view = view
        self.server.auth = auth
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
