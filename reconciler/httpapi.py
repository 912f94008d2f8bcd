"""The daemon's HTTP endpoints, served by uvicorn from a thread of its own; started and stopped by ``daemon.py``.

``GET /healthz`` (alive), ``GET /readyz`` (able to apply), ``GET /metrics``
(Prometheus), ``GET /status`` (the ``status`` JSON plus ``role``, its live part pre-rendered) and
``POST /hooks/git`` (a verified webhook triggers a fetch; the payload is never
read for content).

These endpoints face the internet in a cluster, so they run on uvicorn with
its h11 parser (a server made for that: chunked bodies, a real listen
backlog, flow control that stops reading a body the application is not
consuming, ``TCP_NODELAY``, one event loop instead of a thread per
connection).  A webhook body is hashed as it streams in, never held (DESIGN
§11): an announced body over 25 MB gets 413 before a byte of it is read, at
most ``MAX_BODIES_READ`` bodies are read at once (503 beyond), a body that
stalls is cut off.  Signatures accepted: GitHub ``X-Hub-Signature-256``,
Gitea ``X-Gitea-Signature``, Bitbucket Cloud/Server ``X-Hub-Signature``
(sha256), a shared token in ``X-Gitlab-Token`` / ``X-Reconciler-Token``; all
compared in constant time.  A delivery id seen before (``X-GitHub-Delivery``,
``X-Gitlab-Event-UUID``, ``X-Request-UUID``, ``X-Gitea-Delivery``) is
acknowledged and ignored, and the fetches webhooks cause are coalesced to
at most one per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
import uvicorn

from reconciler.errors import ReconcilerError, UsageError

log = structlog.get_logger("reconciler.http")

MAX_WEBHOOK_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
MAX_BODIES_READ = 4  # webhook bodies read at once; more get 503 (each costs a flow-control buffer, ~64 KiB)
BODY_IDLE_TIMEOUT = 10.0  # seconds a webhook body may stall between chunks
BODY_TIMEOUT = 60.0  # seconds a whole webhook body may take
WEBHOOK_FETCH_PERIOD = 1.0  # at most one webhook-caused fetch per this many seconds
DELIVERIES_REMEMBERED = 4096  # recent delivery ids kept for dedupe (bounded memory)
MAX_CONNECTIONS = 256  # open connections beyond which uvicorn answers 503
BACKLOG = 1024  # the listen backlog (the kernel caps it at net.core.somaxconn)
TOKEN_HEADERS = ("X-Reconciler-Token", "X-Gitlab-Token")
DELIVERY_HEADERS = ("X-GitHub-Delivery", "X-Gitlab-Event-UUID", "X-Request-UUID", "X-Gitea-Delivery")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class DaemonView(Protocol):
    """What the endpoints need from the daemon."""

    def healthy(self) -> bool: ...
    def health_problem(self) -> str | None: ...
    def ready(self) -> bool: ...
    def not_ready_reason(self) -> str | None: ...
    def status_body(self) -> bytes: ...
    def metrics_text(self) -> tuple[bytes, str]: ...
    def webhook(self) -> bool: ...
    def webhook_rejected(self) -> None: ...


class Headers(Protocol):
    def get(self, name: str, /) -> str | None: ...


class _Verifier(Protocol):
    def update(self, data: bytes) -> None: ...
    def verdict(self) -> str | None: ...


class _Signature:
    """An HMAC-SHA256 over the body as it streams, compared at the end with what the sender claims."""

    def __init__(self, secret: bytes, header: str, claimed: str, prefix: str) -> None:
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)
        self._header, self._claimed, self._prefix = header, claimed.strip(), prefix

    def update(self, data: bytes) -> None:
        self._mac.update(data)

    def verdict(self) -> str | None:
        expected = self._prefix + self._mac.hexdigest()
        if hmac.compare_digest(self._claimed.encode(), expected.encode()):
            return None
        return f"{self._header} does not match the payload"


class _Settled:
    """A verdict known before the body (a token, or a refusal): the body is only counted."""

    def __init__(self, verdict: str | None) -> None:
        self._verdict = verdict

    def update(self, data: bytes) -> None:
        return None

    def verdict(self) -> str | None:
        return self._verdict


@dataclass(frozen=True)
class WebhookAuth:
    """Verifies a webhook request against the shared secret (``RECONCILER_WEBHOOK_SECRET``)."""

    secret: bytes | None

    def verifier(self, headers: Headers) -> _Verifier:
        """How this request proves itself, chosen from its headers before the body is read."""
        if not self.secret:
            return _Settled("webhooks are disabled: RECONCILER_WEBHOOK_SECRET is not set")
        for header, prefix in (("X-Hub-Signature-256", "sha256="), ("X-Gitea-Signature", "")):
            claimed = headers.get(header)
            if claimed is not None:
                return _Signature(self.secret, header, claimed, prefix)
        claimed = headers.get("X-Hub-Signature")  # Bitbucket Cloud and Server; GitHub's legacy sha1 is refused
        if claimed is not None:
            if not claimed.strip().startswith("sha256="):
                return _Settled("X-Hub-Signature is not sha256 (sha1 signatures are not accepted)")
            return _Signature(self.secret, "X-Hub-Signature", claimed, "sha256=")
        for name in TOKEN_HEADERS:
            token = headers.get(name)
            if token is not None:
                ok = hmac.compare_digest(token.strip().encode(), self.secret)
                return _Settled(None if ok else f"{name} does not match")
        return _Settled("no X-Hub-Signature-256, X-Gitea-Signature, X-Hub-Signature or token header")

    def verify(self, headers: Headers, body: bytes) -> str | None:
        """``None`` when the request (headers and whole body) is authentic, else why not (never what was sent)."""
        verifier = self.verifier(headers)
        verifier.update(body)
        return verifier.verdict()


class _HeaderMap:
    """ASGI headers (lower-case bytes pairs) read by name; the first of repeated headers counts."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._items: dict[str, str] = {}
        for name, value in raw:
            self._items.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def get(self, name: str, /) -> str | None:
        return self._items.get(name.lower())


class RecentIds:
    """The last ``size`` delivery ids seen (a bounded memory, oldest forgotten first)."""

    def __init__(self, size: int = DELIVERIES_REMEMBERED) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, delivery: str) -> bool:
        """True if ``delivery`` was seen before; else remember it."""
        if delivery in self._ids:
            self._ids.move_to_end(delivery)
            return True
        self._ids[delivery] = None
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


class Coalescer:
    """Calls ``fire`` at most once per ``period`` seconds: the first call at once, later ones folded into one."""

    def __init__(self, fire: Callable[[], bool], period: float = WEBHOOK_FETCH_PERIOD) -> None:
        self.fire, self.period = fire, period
        self._last = -float("inf")
        self._scheduled: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self._scheduled is not None:
            return True  # one is due already, and will see this delivery's commit too
        wait = self._last + self.period - loop.time()
        if wait <= 0:
            self._last = loop.time()
            return self.fire()
        self._scheduled = loop.call_later(wait, self._later, loop)
        return True

    def _later(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = None
        self._last = loop.time()
        self.fire()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080``, ``:8080`` for all interfaces) as a (host, port) pair."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Refused(Exception):
    """A webhook body that is not read to its end: answer ``code`` and close the connection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class App:
    """The ASGI application: routes, the webhook's streaming check, dedupe and fetch coalescing."""

    def __init__(self, view: DaemonView, auth: WebhookAuth) -> None:
        self.view, self.auth = view, auth
        self.reading = 0  # webhook bodies being read now (touched on the event loop only)
        self.deliveries = RecentIds()
        self.coalesce = Coalescer(view.webhook)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method in ("GET", "HEAD"):
            await self._get(path, send)
        elif method == "POST" and path == "/hooks/git":
            await self._webhook(scope, receive, send)
        elif method == "POST":
            await _json(send, 404, {"error": f"no such endpoint {path}"}, close=True)
        else:
            await _json(send, 405, {"error": f"{method} is not served here"}, close=True)

    async def _get(self, path: str, send: Send) -> None:
        view = self.view
        if path == "/healthz":
            problem = await _off_loop(view.health_problem)
            await _text(send, 503 if problem else 200, f"unhealthy: {problem}" if problem else "ok")
        elif path == "/readyz":
            why = await _off_loop(view.not_ready_reason)
            await _text(send, 503 if why else 200, f"not ready: {why}" if why else "ready")
        elif path == "/metrics":
            body, content_type = await _off_loop(view.metrics_text)
            await _respond(send, 200, body, content_type)
        elif path == "/status":
            try:
                await _respond(send, 200, await _off_loop(view.status_body), "application/json")
            except ReconcilerError as exc:  # e.g. not cloned yet, backend unreachable
                await _json(send, 503, {"error": str(exc)})
            except Exception as exc:  # a status read must never take the server down
                log.error("status_failed", error=str(exc), exc_info=True)  # a bug: the traceback is for its report
                await _json(send, 500, {"error": str(exc)})
        else:
            await _json(send, 404, {"error": f"no such endpoint {path}"})

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        headers = _HeaderMap(scope["headers"])
        length = headers.get("content-length")  # h11 already refused one that is no byte count (400)
        chunked = "chunked" in (headers.get("transfer-encoding") or "").lower()
        if not chunked and length is not None and int(length) > MAX_WEBHOOK_BYTES:
            await _json(send, 413, {"error": f"payload over {MAX_WEBHOOK_BYTES} bytes"}, close=True)
            return
        if self.reading >= MAX_BODIES_READ:
            await _json(send, 503, {"error": "busy: too many webhook deliveries at once; retry"}, close=True)
            return
        verifier = self.auth.verifier(headers)
        self.reading += 1
        try:
            await _stream(receive, verifier)
        except _Refused as exc:
            log.warning("webhook_refused", client=client, code=exc.code, reason=str(exc))
            await _json(send, exc.code, {"error": str(exc)}, close=True)
            return
        except _Gone:
            return
        finally:
            self.reading -= 1
        problem = verifier.verdict()
        if problem is not None:
            self.view.webhook_rejected()
            log.warning("webhook_rejected", client=client, reason=problem)
            await _json(send, 401, {"error": "unauthorized"})
            return
        event = headers.get("x-github-event") or headers.get("x-gitlab-event") or headers.get("x-event-key")
        delivery = next((value for name in DELIVERY_HEADERS if (value := headers.get(name))), None)
        if delivery is not None and self.deliveries.seen(delivery[:200]):
            log.info("webhook_duplicate", client=client, delivery=delivery[:200], forge_event=event)
            await _json(send, 202, {"accepted": False, "duplicate": True})
            return
        if not self.coalesce(asyncio.get_running_loop()):
            await _json(send, 503, {"error": "shutting down"})
            return
        log.info("webhook_accepted", client=client, forge_event=event, delivery=delivery)
        await _json(send, 202, {"accepted": True})


class _Gone(Exception):
    """The client hung up mid-body."""


_T = TypeVar("_T")


async def _off_loop(call: Callable[[], _T]) -> _T:
    """``call()`` on a daemon thread of its own, awaited: the loop never blocks on the daemon, and a call
    stuck in a backend read (e.g. a hung lease store under /status) never holds up the process's exit, as a
    ``ThreadPoolExecutor`` worker would (those are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = call(), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (the server stopped): nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="http-view", daemon=True).start()
    return await future


async def _stream(receive: Receive, verifier: _Verifier) -> None:
    """Read the request body chunk by chunk into ``verifier``; never more than the cap, never too slowly."""
    total, deadline = 0, time.monotonic() + BODY_TIMEOUT
    while True:
        wait = min(BODY_IDLE_TIMEOUT, deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(receive(), timeout=max(0.0, wait))
        except TimeoutError:
            raise _Refused(408, "the payload arrived too slowly") from None
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk: bytes = message.get("body", b"")
        total += len(chunk)
        if total > MAX_WEBHOOK_BYTES:  # a chunked body has no length to refuse it by in advance
            raise _Refused(413, f"payload over {MAX_WEBHOOK_BYTES} bytes")
        verifier.update(chunk)
        if not message.get("more_body", False):
            return


async def _respond(send: Send, code: int, body: bytes, content_type: str, close: bool = False) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    if close:  # a body left unread is not read to reuse the connection: it is closed
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, code: int, data: Any, close: bool = False) -> None:
    await _respond(send, code, json.dumps(data, indent=2).encode() + b"\n", "application/json", close)


async def _text(send: Send, code: int, text: str) -> None:
    await _respond(send, code, text.encode() + b"\n", "text/plain; charset=utf-8")


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket made with ``proto=IPPROTO_TCP``: asyncio sets ``TCP_NODELAY`` only on such sockets
    (and accepted ones inherit the proto), so a response's header and body writes go out at once instead of the
    second waiting ~40 ms for the client's delayed ACK (Nagle)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class HttpApi:
    """The endpoints on ``--listen``, served by uvicorn on an event loop in a background thread."""

    def __init__(self, listen: str, view: DaemonView, auth: WebhookAuth) -> None:
        host, port = parse_listen(listen)
        try:  # bound here, so that a bad address is a start-up error and port 0 is known at once
            self.socket = _listen(host, port)
        except OSError as exc:
            raise UsageError(f"cannot listen on {listen}: {exc.strerror}") from None
        config = uvicorn.Config(
            App(view, auth),
            http="h11",
            loop="asyncio",
            lifespan="off",
            ws="none",
            interface="asgi3",
            log_config=None,
            access_log=False,
            server_header=False,
            backlog=BACKLOG,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=1,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    def _serve(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.socket]))
        except Exception as exc:  # the daemon goes on without HTTP rather than die; /healthz then fails
            log.error("http_server_failed", error=str(exc))

    @property
    def address(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving: open connections get a second to finish, then the loop ends (its thread is a daemon)."""
        self.server.should_exit = True
        self._thread.join(1.5)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(0.5)
        self.socket.close()
