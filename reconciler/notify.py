"""Notifications in the background: the ``Notifier`` the daemon reports to, and the delivery to each sink.

The daemon calls ``observe`` with what a pass saw (``events.transition``
decides whether that is news) and anything else calls ``publish`` with a ready
``Notice``; both only put the event on each sink's bounded queue and return at
once, so a slow or dead sink never delays a reconcile.  One thread per sink
sends its events in order (a GitHub ``pending`` before its ``success``),
retrying with exponential backoff and jitter for up to ``retry_for`` seconds,
and waiting as long as a ``429``/``403`` answer's ``Retry-After`` or GitHub's
``x-ratelimit-reset`` asks; then the event is dropped with a log line.
Results are counted in ``reconciler_notifications_total{sink, result}``:
``success``, ``retried`` (one per failed attempt that is retried), ``failed``
(refused for good, e.g. 404) and ``dropped`` (queue full, out of time, or
still queued at shutdown).  Sink URLs (a Slack URL's path is its secret),
tokens and signatures are never logged.  Called by ``daemon.py``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
import urllib3
from urllib3.util.retry import Retry

from reconciler.events import Notice, NotifyState, Observation, initial_state, transition
from reconciler.sinks import GITHUB_API, Sink, make_sinks

log = structlog.get_logger("reconciler.notify")

RETRY_FOR = 600.0  # seconds an event is retried before it is dropped
QUEUE_SIZE = 256  # events waiting per sink; more are dropped (and counted)
BACKOFF_BASE, BACKOFF_CAP = 1.0, 60.0
TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)
RATE_LIMIT_WAIT = 60.0  # GitHub: "wait at least one minute" after a secondary rate limit without headers
BODY_SHOWN = 200  # characters of a refusal's body put in the log
RESULTS = ("success", "retried", "failed", "dropped")


@dataclass(frozen=True)
class NotifyConfig:
    """The daemon's notification flags: ``--notify`` (each value, or comma-separated), ``--github-api-url``,
    ``--status-url``.  Secrets are not here: they are read from the environment when the sinks are made."""

    sinks: tuple[str, ...] = ()
    github_api_url: str = GITHUB_API
    status_url: str | None = None


Counter = Callable[[str, str], None]  # (sink kind, result)


def event_json(notice: Notice, instance: str, now: float) -> dict[str, Any]:
    """The event as the webhook sink sends it (DESIGN §12; ``id`` and a notice's details are extra)."""
    return {
        "event": notice.event,
        "instance": instance,
        "revision": notice.revision,
        "tag": notice.tag,
        "message": notice.message,
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "actions": [{"action": action, "resource": resource} for action, resource in notice.actions],
        "id": uuid.uuid4().hex,
        **dict(notice.details),
    }


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds before retry ``attempt`` (1, 2, …): exponential, capped, "equal jitter" (half fixed, half random)."""
    ceiling = float(min(cap, base * 2 ** max(0, attempt - 1)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


_RETRY_AFTER = Retry(0)  # only for its parser of Retry-After (seconds or an HTTP date)


def rate_limit_wait(status: int, headers: Mapping[str, str], body: bytes, now: float) -> float | None:
    """Seconds a rate-limit answer asks to wait; None when the answer is not a rate limit.

    ``429`` (Slack, GitHub) and ``503`` with ``Retry-After``; GitHub's primary
    limit (``403``/``429`` with ``x-ratelimit-remaining: 0``: until
    ``x-ratelimit-reset``) and secondary limits (``403``/``429`` with
    ``Retry-After``, or saying so in the body: at least a minute).  A ``403`` that is none of
    these (a token without ``statuses: write``) is a refusal, not a limit.
    """
    retry_after = headers.get("retry-after")
    if retry_after is not None and status in (403, 429, 503):
        with contextlib.suppress(Exception):  # an unparsable value: fall through to the other signs
            return max(0.0, float(_RETRY_AFTER.parse_retry_after(retry_after)))
    if status in (403, 429) and headers.get("x-ratelimit-remaining") == "0":
        with contextlib.suppress(ValueError):
            return max(1.0, float(headers.get("x-ratelimit-reset", "")) - now)
    if status in (403, 429) and b"rate limit" in body.lower():
        return RATE_LIMIT_WAIT
    if status == 429:
        return 0.0  # no hint: the usual backoff
    return None


class Delivery:
    """One sink's queue and the thread that sends it, in order, with retries."""

    def __init__(
        self,
        sink: Sink,
        count: Counter,
        *,
        retry_for: float,
        queue_size: int,
        backoff: float,
        timeout: urllib3.Timeout,
    ) -> None:
        self.sink = sink
        self._http = urllib3.PoolManager(num_pools=2, maxsize=1)  # one thread: one connection, kept alive
        self._count = count
        self._retry_for = retry_for
        self._backoff = backoff
        self._timeout = timeout
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"notify-{sink.kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        """Queue ``event`` if the sink wants it; never blocks (a full queue drops it)."""
        if self.sink.render(event, time.time()) is None:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped(event, "the queue is full")

    def close(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline`` (monotonic), then stop; what is left is dropped."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # after the queued events
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        left = 0
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                left += 1
                self._dropped(event, "the daemon is stopping")
        if left:
            log.warning("notifications_dropped", sink=self.sink.name, count=left, reason="the daemon is stopping")

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._queue.get()
            if event is None:
                return
            try:
                self._deliver(event)
            except Exception as exc:  # a bug here must not end the thread
                log.exception("notification_crashed", sink=self.sink.name, notification=event["event"], error=str(exc))
                self._count(self.sink.kind, "failed")

    def _deliver(self, event: dict[str, Any]) -> None:
        started = time.monotonic()
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            request = self.sink.render(event, time.time())
            if request is None:
                return
            try:
                response = self._http.request(
                    request.method,
                    request.url,
                    body=request.body,
                    headers=dict(request.headers),
                    timeout=self._timeout,
                    retries=False,
                    redirect=False,
                )
            except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out: worth another try
                status, wait, why = None, 0.0, type(exc).__name__
            else:
                status, body = response.status, response.data
                if 200 <= status < 300:
                    self._count(self.sink.kind, "success")
                    log.info("notification_sent", sink=self.sink.name, notification=event["event"], attempts=attempt)
                    return
                hint = rate_limit_wait(status, response.headers, body, time.time())
                if hint is None and status < 500 and status != 408:
                    self._count(self.sink.kind, "failed")
                    log.warning(
                        "notification_refused",
                        sink=self.sink.name,
                        notification=event["event"],
                        status=status,
                        answer=body[:BODY_SHOWN].decode("utf-8", "replace"),
                    )
                    return
                wait, why = hint or 0.0, f"HTTP {status}"
            delay = max(wait, backoff_delay(attempt, self._backoff))
            if time.monotonic() - started + delay > self._retry_for:
                self._dropped(event, f"{why}, still failing after {attempt} attempts")
                return
            self._count(self.sink.kind, "retried")
            log.info(
                "notification_retry",
                sink=self.sink.name,
                notification=event["event"],
                status=status,
                error=why,
                attempt=attempt,
                retry_in_s=round(delay, 2),
            )
            self._stop.wait(delay)
        self._dropped(event, "the daemon is stopping")

    def _dropped(self, event: dict[str, Any], reason: str) -> None:
        self._count(self.sink.kind, "dropped")
        log.warning("notification_dropped", sink=self.sink.name, notification=event["event"], reason=reason)


class Notifier:
    """Turns what passes saw into events and hands them to every sink; nothing here blocks its caller."""

    def __init__(
        self,
        instance: str,
        sinks: Sequence[Sink] = (),
        count: Counter | None = None,
        *,
        state: NotifyState | None = None,
        retry_for: float = RETRY_FOR,
        queue_size: int = QUEUE_SIZE,
        backoff: float = BACKOFF_BASE,
        timeout: urllib3.Timeout = TIMEOUT,
    ) -> None:
        self.instance = instance
        self._count = count or (lambda kind, result: None)
        self._lock = threading.Lock()
        self._state: NotifyState = state or initial_state(None)
        logging.getLogger("urllib3").setLevel(logging.WARNING)  # its debug lines show URL paths (Slack's secret)
        self._deliveries = [
            Delivery(
                sink,
                self._count,
                retry_for=retry_for,
                queue_size=queue_size,
                backoff=backoff,
                timeout=timeout,
            )
            for sink in sinks
        ]
        self._started = False

    @property
    def sinks(self) -> list[str]:
        return [d.sink.name for d in self._deliveries]

    def start(self) -> None:
        if not self._started:
            self._started = True
            for delivery in self._deliveries:
                delivery.start()

    @property
    def state(self) -> NotifyState:
        """What has been said so far (``events.state_json`` makes it JSON for the instance record)."""
        return self._state

    def observe(self, seen: Observation) -> None:
        """What a pass saw; sends what ``events.transition`` says is news."""
        with self._lock:
            self._state, notices = transition(self._state, seen)
        for notice in notices:
            self.publish(notice)

    def publish(self, notice: Notice) -> None:
        """Send ``notice`` to every sink that wants it (the ``EventHook`` for rollouts and the like)."""
        if notice.event != "applying":
            log.info(
                "notify", notification=notice.event, revision=notice.revision, tag=notice.tag, sinks=len(self.sinks)
            )
        if not self._deliveries:
            return
        event = event_json(notice, self.instance, time.time())
        for delivery in self._deliveries:
            delivery.put(event)

    def close(self, timeout: float) -> None:
        """Give queued events up to ``timeout`` seconds in all, then drop the rest (with a log line)."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        for delivery in self._deliveries:
            delivery.close(deadline)


def make_notifier(
    config: NotifyConfig,
    instance: str,
    remote_url: str | None,
    env: Mapping[str, str],
    count: Counter | None = None,
    state: NotifyState | None = None,
) -> Notifier:
    """The notifier for ``config``; a ``UsageError`` naming ``--notify`` if a sink cannot work."""
    sinks = make_sinks(config.sinks, env, remote_url, config.github_api_url, config.status_url)
    for sink in sinks:
        if sink.kind == "webhook" and not getattr(sink, "secret", None):
            log.warning("notify_unsigned", sink=sink.name, hint="set RECONCILER_NOTIFY_SECRET to sign webhooks")
    return Notifier(instance, sinks, count, state=state)
