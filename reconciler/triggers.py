"""What wakes the daemon's worker: pending reasons, the ref watcher, scheduled wake-ups; used by ``daemon.py``.

A trigger only *names a reason* (``GIT``, ``FETCH``, ``RESYNC``, …) in one
``Triggers`` set; the worker (``worker.py``) takes every pending reason at
once, so any number of triggers during a pass coalesce into one more.  The
sources are watchfiles on the refs of a local repository (and the instance
record), APScheduler's interval jobs (fetch, resync, record poll) and its
one-shot jobs (a retry after backoff, a rollout's next step), and callers such
as the webhook; ``TriggerSources`` owns the watcher thread and the scheduler.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
import watchfiles
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.metrics import Metrics

log = structlog.get_logger("reconciler.daemon")

STARTUP, GIT, STATE, FETCH, WEBHOOK, RESYNC, RETRY = "startup", "git", "state", "fetch", "webhook", "resync", "retry"
LEADER = "leader"  # this replica has just taken the --lock lease
ROLLOUT = "rollout"  # a rollout's next step (or analysis) is due
REASONS = (STARTUP, GIT, STATE, FETCH, WEBHOOK, RESYNC, RETRY, LEADER, ROLLOUT)
NEWS = frozenset({GIT, STATE, FETCH, WEBHOOK})  # reasons that only matter if the target revision moved
FETCHING = frozenset({STARTUP, FETCH, WEBHOOK, RETRY, LEADER})  # reasons that fetch a remote repository first
RECORD_POLL = 5.0  # seconds between reads of the record for pins made elsewhere (remote repo or --lock)


class Triggers:
    """Pending reasons for a pass; firing while one is pending or running only adds to the set."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._closed = False

    def fire(self, reason: str) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._pending.add(reason)
            self._cond.notify()
            return True

    def take(self) -> set[str] | None:
        """Every pending reason at once (blocks until there is one); ``None`` once closed."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            taken, self._pending = self._pending, set()
            return taken

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RefFilter:
    """watchfiles filter: only the refs that can move the followed branch (HEAD, the branch, packed-refs).

    With ``record`` (the instance record in the state dir) it also wakes when a
    ``rollback`` or ``resume`` run beside the daemon pins or unpins the instance.
    """

    def __init__(self, git_dir: Path, common_dir: Path, branch: str, record: Path | None = None) -> None:
        git_dir, common_dir = Path(os.path.realpath(git_dir)), Path(os.path.realpath(common_dir))
        self.record = str(Path(os.path.realpath(record.parent)) / record.name) if record else None
        self.paths = frozenset(
            str(p)
            for p in (
                git_dir / "HEAD",
                common_dir / "packed-refs",
                common_dir / "refs" / "heads" / branch,
                common_dir / "refs" / "remotes" / "origin" / branch,
            )
        )
        self.roots = sorted(
            {str(git_dir), str(common_dir)} | ({str(Path(self.record).parent)} if self.record else set())
        )

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return path in self.paths or path == self.record


class TriggerSources:
    """Everything that fires a reason into ``triggers``: the ref watcher, the scheduler's jobs, direct calls."""

    def __init__(self, triggers: Triggers, metrics: Metrics, stopping: threading.Event) -> None:
        self.triggers = triggers
        self.metrics = metrics
        self.stopping = stopping
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self._watcher: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """The scheduler runs (one-shot wake-ups can be booked)."""
        return bool(self.scheduler.running)

    def fire(self, reason: str) -> bool:
        if self.stopping.is_set():
            return False
        self.metrics.triggers.labels(reason).inc()
        return self.triggers.fire(reason)

    def record_changed(self, instance: str) -> None:
        """The record store saw a version this process did not write: a pin, a resume, a rollout command."""
        log.info("record_changed", instance=instance)
        self.fire(STATE)

    # ------------------------------------------------------------ scheduler

    def start(
        self, fetch_interval: float | None, resync_interval: float, check_record: Callable[[], None] | None
    ) -> None:
        """The interval jobs: fetch (a remote repository), resync, and a poll of the record for pins made elsewhere."""
        if fetch_interval is not None:
            self.scheduler.add_job(self.fire, "interval", seconds=fetch_interval, args=[FETCH], id="fetch")
        self.scheduler.add_job(self.fire, "interval", seconds=resync_interval, args=[RESYNC], id="resync")
        if check_record is not None:
            self.scheduler.add_job(check_record, "interval", seconds=RECORD_POLL, id="record")
        self.scheduler.start()

    def fire_at(self, reason: str, when: datetime) -> None:
        """Fire ``reason`` once at ``when`` (replacing a wake-up already booked for it)."""
        self.scheduler.add_job(
            self.fire,
            "date",
            run_date=when,
            args=[reason],
            id=reason,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def cancel(self, reason: str) -> None:
        """Drop the one-shot wake-up booked for ``reason``, if any."""
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(reason)

    # -------------------------------------------------------------- watcher

    def watch(self, refs: RefFilter, debounce: float, check_record: Callable[[], None]) -> None:
        """Fire ``GIT`` when the followed refs move; a write to the record goes to ``check_record``."""
        self._watcher = threading.Thread(
            target=self._watch, args=(refs, debounce, check_record), name="watch", daemon=True
        )
        self._watcher.start()

    def _watch(self, refs: RefFilter, debounce: float, check_record: Callable[[], None]) -> None:
        debounce_ms = max(1, round(debounce * 1000))
        step_ms = max(1, min(10, debounce_ms // 4))  # watchfiles reports a change within 1-2 steps
        while not self.stopping.is_set():
            try:
                for changes in watchfiles.watch(
                    *refs.roots,
                    watch_filter=refs,
                    debounce=debounce_ms,
                    step=step_ms,
                    stop_event=self.stopping,
                    raise_interrupt=False,
                ):
                    if all(path == refs.record for _, path in changes):
                        check_record()  # fires only for a write of another process (a pin, a resume)
                    else:
                        self.fire(GIT)
            except Exception as exc:  # e.g. .git replaced under us: watch again shortly
                log.warning("watch_failed", error=str(exc))
                self.stopping.wait(1.0)

    # ----------------------------------------------------------------- stop

    def close(self) -> None:
        """No more reasons: the worker's ``take`` returns ``None``; the scheduler stops (without waiting)."""
        self.triggers.close()
        self.scheduler.shutdown(wait=False)

    def join_watcher(self, timeout: float) -> None:
        if self._watcher is not None:
            self._watcher.join(timeout)
