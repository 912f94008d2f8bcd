"""Leader election for ``run --lock``: the ``Lease`` protocol (one shared lease item) and the ``Elector`` timing.

Called by ``daemon.py``.  A ``Lease`` store only does conditional writes of
one item (holder id, expiry): take it when it is free, expired or already
ours; ``backends/aws_lease.py`` is the DynamoDB one.  The ``Elector`` decides
*when*: it renews every ``renew_every`` seconds, polls as a standby (waking
just after the current holder's lease would lapse), and counts a lease as
valid only until ``duration`` seconds after the write that took it was *sent*
(on the monotonic clock, so a slow answer never extends it).  A leader that
cannot renew stops counting itself leader ``margin`` seconds before its lease
ends, which is what the daemon checks before each action.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from reconciler.errors import ReconcilerError, UsageError

log = structlog.get_logger("reconciler.lease")

DEFAULT_DURATION = 15.0  # seconds a lease lasts
DEFAULT_RENEW_EVERY = 5.0  # seconds between renewals (and between a standby's attempts)
ERROR_RETRY = 1.0  # seconds before the next attempt after a failed write
LAPSE_SLACK = 0.05  # a standby tries this long after the holder's lease would lapse
STOP_TIMEOUT = 5.0  # seconds ``stop`` waits at most for a renewal in flight and the release


class LeaseError(ReconcilerError):
    """The lease store could not be read or written; ``temporary`` unless it cannot work at all (no table)."""

    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease and until when (wall clock, Unix seconds); both ``None`` when nobody does."""

    holder: str | None = None
    expires_at: float | None = None


class Lease(Protocol):
    """One lease item in a shared store, written only with conditional writes."""

    def acquire(self, holder: str, duration: float) -> bool:
        """Take or renew the lease for ``duration`` seconds if it is free, expired or ``holder``'s; False if not."""
        ...

    def read(self) -> LeaseHolder: ...

    def release(self, holder: str) -> None:
        """Give the lease up if ``holder`` has it (so a standby takes over without waiting for it to lapse)."""
        ...

    def close(self) -> None: ...


class Elector:
    """Keeps (or waits for) one lease; ``is_leader`` is what may act, checked before every action."""

    def __init__(
        self,
        lease: Lease,
        holder: str,
        duration: float = DEFAULT_DURATION,
        renew_every: float = DEFAULT_RENEW_EVERY,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        margin = renew_every if margin is None else margin
        if not (renew_every > 0 and margin >= 0 and renew_every + margin < duration):
            raise UsageError(
                f"lease of {duration:g} s renewed every {renew_every:g} s: the renewal interval must be "
                f"positive and less than the lease minus {margin:g} s (e.g. --lease-duration 15 "
                "--lease-renew-interval 5)"
            )
        self.lease = lease
        self.holder = holder
        self.duration = duration
        self.renew_every = renew_every
        self.margin = margin
        self._clock = clock
        self._wall = wall_clock
        self._on_change = on_change
        self._valid_until = -math.inf  # monotonic time the lease we hold ends (as far as we know)
        self._leading = False  # what on_change was last told
        self._seen = LeaseHolder()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------- queries

    def remaining(self) -> float:
        """Seconds left of the lease we hold (0 when we hold none)."""
        return max(0.0, self._valid_until - self._clock())

    def is_leader(self) -> bool:
        """We hold the lease with more than ``margin`` seconds left: safe to start an action."""
        return self.remaining() > self.margin

    def view(self) -> dict[str, object]:
        """For ``/status``: this replica's id, the holder it last saw and the time left of its own lease."""
        with self._lock:
            seen = self._seen
        expires_in = None if seen.expires_at is None else round(seen.expires_at - self._wall(), 1)
        return {
            "id": self.holder,
            "leader": seen.holder,
            "leader_expires_in_s": expires_in,
            "remaining_s": round(self.remaining(), 1),
        }

    # ---------------------------------------------------------------- acting

    def step(self) -> float:
        """One attempt to take or renew the lease; returns the seconds to wait before the next."""
        sent = self._clock()
        try:
            won = self.lease.acquire(self.holder, self.duration)
        except LeaseError as exc:
            if not exc.temporary and self._valid_until == -math.inf:
                raise  # e.g. no such table: nothing to wait for
            log.warning("lease_write_failed", error=str(exc), remaining_s=round(self.remaining(), 1))
            self._notify()
            return min(self.renew_every, ERROR_RETRY)
        if won:
            self._valid_until = sent + self.duration
            with self._lock:
                self._seen = LeaseHolder(self.holder, self._wall() + self.duration)
            self._notify()
            return self.renew_every
        self._valid_until = -math.inf  # someone else holds it: stop at once, not at our old expiry
        self._notify()
        try:
            seen = self.lease.read()
        except LeaseError as exc:
            log.debug("lease_read_failed", error=str(exc))
            return self.renew_every
        with self._lock:
            self._seen = seen
        if seen.expires_at is None:
            return LAPSE_SLACK  # released between our write and our read: try again now
        return min(self.renew_every, max(LAPSE_SLACK, seen.expires_at - self._wall() + LAPSE_SLACK))

    def _notify(self) -> None:
        leading = self.is_leader()
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("lease_acquired", holder=self.holder, lease_s=self.duration, renew_every_s=self.renew_every)
        else:
            log.warning("lease_lost", holder=self.holder, remaining_s=round(self.remaining(), 1))
        if self._on_change is not None:
            self._on_change(leading)

    def start(self, first_delay: float = 0.0) -> None:
        """Renew (or wait for) the lease in a background thread until ``stop``."""
        self._thread = threading.Thread(target=self._loop, args=(first_delay,), name="lease", daemon=True)
        self._thread.start()

    def _loop(self, delay: float) -> None:
        while not self._stop.wait(delay):
            try:
                delay = self.step()
            except LeaseError as exc:  # a permanent one (e.g. the table was deleted): keep trying, loudly
                log.error("lease_write_failed", error=str(exc), remaining_s=round(self.remaining(), 1))
                self._notify()
                delay = self.renew_every
            except Exception as exc:  # never let the renewals die silently: the leader must notice
                log.exception("lease_step_crashed", error=str(exc))
                self._notify()
                delay = ERROR_RETRY

    def stop(self, release: bool = True, timeout: float = STOP_TIMEOUT) -> None:
        """Stop renewing; with ``release``, give the lease up so a standby takes over at once.

        Waits at most ``timeout`` seconds in all (a store that hangs must not hold
        up the exit): a renewal in flight or a release still unanswered is left to
        the process exit, and the lease then lapses on its own.
        """
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        held = self.remaining() > 0
        self._valid_until = -math.inf
        busy = self._thread is not None and self._thread.is_alive()
        if release and held:
            releasing = threading.Thread(target=self._release, name="lease-release", daemon=True)
            releasing.start()
            releasing.join(max(0.0, deadline - time.monotonic()))
            busy = busy or releasing.is_alive()
        if busy:
            log.warning("lease_stop_timed_out", holder=self.holder, waited_s=timeout)
        else:
            self.lease.close()

    def _release(self) -> None:
        try:
            self.lease.release(self.holder)
            log.info("lease_released", holder=self.holder)
        except LeaseError as exc:
            log.warning("lease_release_failed", error=str(exc))
