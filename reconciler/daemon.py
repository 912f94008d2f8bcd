"""The daemon (``reconciler run``): builds its parts, starts them, and stops them on SIGTERM/SIGINT.

Called by ``cli.py``.  The parts, each a module: ``triggers`` (what wakes the
worker: watchfiles on the git refs of a local repository, APScheduler jobs for
fetches, resyncs, retries and rollout steps, webhooks), ``worker`` (one thread
that takes every pending reason at once and runs one pass through the engine,
so reconciles never overlap and triggers during a pass coalesce into one
more), ``httpview`` (what the endpoints of ``httpapi`` read: health,
readiness, metrics, ``/status`` through an engine of its own).  Logging is set
up by ``logs``, metrics live in ``metrics``.

With ``--lock`` an ``Elector`` (``lease``) keeps or waits for a shared lease:
only its holder reconciles, and the worker checks the lease before every
action; a standby fetches and serves HTTP (ready once it follows the branch)
and takes over when the lease lapses.  With ``--push-tags`` the applied tags
of a remote repository are numbered after the remote's and pushed, renumbered
if another replica took the number first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from uuid import uuid4

import structlog

from reconciler import signals
from reconciler.backends.local import DB_NAME
from reconciler.daemonconfig import DaemonConfig, check_intervals
from reconciler.engine import Config, Engine, signature_policy
from reconciler.errors import ReconcilerError, StateError
from reconciler.gitsource import check_branch_name, is_remote, redact
from reconciler.httpapi import HttpApi, WebhookAuth
from reconciler.httpview import HttpView
from reconciler.lease import STOP_TIMEOUT, Elector
from reconciler.logs import configure_logging
from reconciler.metrics import Metrics
from reconciler.state import StateDir
from reconciler.statepath import url_state_path
from reconciler.statewatch import StateWatch
from reconciler.stores import make_lease
from reconciler.triggers import LEADER, REASONS, STARTUP, RefFilter, Triggers, TriggerSources
from reconciler.worker import Worker

log = structlog.get_logger("reconciler.daemon")

STOP_GRACE = 8.0  # seconds the worker gets to finish the action in flight (the contract says exit within 10 s)
STOP_BUDGET = 9.0  # seconds from SIGTERM to the return of run(), whatever hangs (worker, lease store, watcher)
NOTIFY_GRACE = 2.0  # seconds queued notifications get at SIGTERM (within STOP_BUDGET) or after --once


class Daemon:
    """One instance following one branch; ``run`` blocks until SIGTERM/SIGINT."""

    def __init__(
        self,
        config: Config,
        settings: DaemonConfig,
        stopping: threading.Event | None = None,
    ) -> None:
        check_intervals(settings)  # here, so that the refusal is logged in the --log-format asked for
        self.settings = settings
        if settings.lock and config.lock is None:
            config = replace(config, lock=settings.lock)  # the instance record lives in the lock table too
        self.remote = is_remote(config.repo)
        engine: Engine | None = None
        if self.remote:
            if config.branch is not None:
                check_branch_name(config.branch)
            state_dir = url_state_path(config.state_dir)
            config = replace(config, state_dir=str(state_dir), branch=config.branch or "main")
            self.state = StateDir(state_dir)
            if config.allowed_signers is not None or config.trusted_gpg_keys is not None:
                signature_policy(config, state_dir)  # a missing key file stops the start, not every later pass
        else:
            engine = Engine(config)
            config = replace(config, branch=engine.branch)  # followed even if the checkout switches
            engine.config = config  # so a later checkout of another branch is no refusal: it is not followed
            self.state = engine.state
        self.config = config
        self.metrics = Metrics(REASONS)
        self.stopping = stopping or threading.Event()
        self.sources = TriggerSources(Triggers(), self.metrics, self.stopping)
        if engine is not None:
            engine.records.watch(self.sources.record_changed)
        self.elector: Elector | None = None
        if settings.lock:
            lease = make_lease(
                settings.lock, f"reconciler/{config.instance}", region=config.region, endpoint_url=config.endpoint_url
            )
            self.elector = Elector(
                lease,
                f"{socket.gethostname()}-{os.getpid()}-{uuid4().hex[:6]}",
                duration=settings.lease_duration,
                renew_every=settings.lease_renew_interval,
                on_change=self._on_leadership,
            )
        self.metrics.leader.set(1 if self.elector is None else 0)
        self.worker = Worker(
            config, settings, self.state, engine, self.remote, self.metrics, self.sources, self.elector, self.stopping
        )
        self.http = HttpView(config, self.worker, self.sources, self.metrics, self.elector)

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        try:
            with self._daemon_lock():
                path = self.state.path
                self.worker.state_watch = StateWatch(
                    path, [path / "daemon" / "writer.lock", path / "instances", path / DB_NAME]
                )
                self._install_signals()
                return self._run_once() if self.settings.once else self._serve()
        except ReconcilerError as exc:
            log.error("cannot_start", error=str(exc))
            return exc.exit_code
        finally:
            self._close()

    def _serve(self) -> int:
        secret = os.environ.get("RECONCILER_WEBHOOK_SECRET", "").strip()  # a mounted file ends in a newline
        http = HttpApi(self.settings.listen, self.http, WebhookAuth(secret.encode() or None))
        worker, sources = self.worker, self.sources
        sources.fire(STARTUP)  # first, so the first pass is the start-up one even when it is also a leader's
        if self.elector is not None:  # the first attempt here: a lease that cannot work at all stops the start
            self.elector.start(self.elector.step())
        http.start()
        # no watcher sees the record of a remote repository or of --lock: poll it for pins made elsewhere
        check_record = worker.check_record if self.remote or self.config.lock else None
        # the scheduler starts before the worker: a pass that fails must find it to retry with
        sources.start(self.settings.interval if self.remote else None, self.settings.resync_interval, check_record)
        worker.notifier.start()
        worker.start()
        if not self.remote:
            assert worker.engine is not None and self.config.branch is not None
            record = self.state.path / "instances" / f"{self.config.instance}.json"
            record.parent.mkdir(parents=True, exist_ok=True)
            refs = RefFilter(worker.engine.repo.git_dir, worker.engine.repo.common_dir, self.config.branch, record)
            sources.watch(refs, self.settings.debounce, worker.check_record)
        log.info(
            "started",
            repo=redact(self.config.repo) if self.remote or worker.engine is None else str(worker.engine.repo.root),
            branch=self.config.branch,
            instance=self.config.instance,
            backend=self.config.backend,
            state_dir=str(self.state.path),
            listen=http.address,
            self_heal=not self.settings.no_self_heal,
            resync_interval_s=self.settings.resync_interval,
            fetch_interval_s=self.settings.interval if self.remote else None,
            webhook=bool(secret),
            lock=self.settings.lock,
            role=worker.role(),
            pid=os.getpid(),
        )
        while not self.stopping.wait(1.0):
            pass
        log.info("stopping")
        deadline = time.monotonic() + STOP_BUDGET
        sources.close()
        http.stop()
        if worker.fetching.is_set():  # a clone or fetch is no action in flight: nothing to finish, end it now
            _end_child_processes()
        worker.thread.join(STOP_GRACE)
        if self.elector is not None:  # after the action in flight: a standby may take over at once
            left = max(0.0, min(STOP_TIMEOUT, deadline - time.monotonic()))
            self.elector.stop(release=not worker.thread.is_alive(), timeout=left)
        sources.join_watcher(max(0.0, min(1.0, deadline - time.monotonic())))
        worker.notifier.close(max(0.0, min(NOTIFY_GRACE, deadline - time.monotonic())))
        if worker.thread.is_alive():  # e.g. a git fetch stuck on a silent remote: it must not outlive us
            _end_child_processes()
        log.info("stopped", clean=not worker.thread.is_alive())
        return 0

    def _run_once(self) -> int:
        self.worker.notifier.start()
        try:
            return self.worker.run_once()
        finally:
            self.worker.notifier.close(NOTIFY_GRACE)

    def _daemon_lock(self) -> contextlib.AbstractContextManager[None]:
        """One daemon per state directory, held for its whole life.

        A lock of its own (``<state-dir>/daemon/writer.lock``), apart from the
        per-pass writer lock, so that ``rollback``, ``resume`` and ``apply`` can
        still run beside the daemon, between its passes.
        """
        what = f"reconciler run, instance {self.config.instance}"
        lock = StateDir(self.state.path / "daemon").writer_lock(what)
        return _reworded(lock, f"another daemon already runs on the state directory {self.state.path}")

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def _on_leadership(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        if leading:
            self.sources.fire(LEADER)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()  # only this: the main thread does the rest outside the handler

    def stop(self) -> None:
        self.stopping.set()
        self.sources.triggers.close()

    def _close(self) -> None:
        if self.worker.thread.is_alive():
            return  # still in an action: the process exit ends it; closing under it would be worse
        engine = self.worker.engine
        if engine is None:
            return
        try:
            engine.close()
        except Exception as exc:
            log.debug("close_failed", error=str(exc))


def _end_child_processes() -> None:
    """Best effort (Linux ``/proc``; elsewhere nothing): SIGTERM every process this one started, and theirs.

    Descendants too: a killed ``git fetch`` leaves its ``git remote-http`` helper running.
    """
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # pid (comm) S ppid
        except (OSError, ValueError, IndexError):
            continue
    ours, found = {os.getpid()}, True
    while found:
        found = False
        for pid, ppid in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                found = True
    for pid in sorted(ours - {os.getpid()}, reverse=True):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


@contextlib.contextmanager
def _reworded(lock: contextlib.AbstractContextManager[None], context: str) -> Iterator[None]:
    """``lock``, with ``context`` put before the message of a StateError it raises when taken."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock)
        except StateError as exc:
            raise StateError(f"{context}: {exc}") from None
        yield


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM/SIGINT set (already set if one came while Python was importing: ``signals.held``).

    The daemon installs its own handlers (setting it too) later.
    """
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
    if signals.held():  # after ours are in place: a signal is either held or sets the event
        log.info("stop_during_startup")
        stopping.set()
    return stopping


def run_daemon(config: Config, settings: DaemonConfig) -> int:
    """``reconciler run``: returns the exit code (0 after SIGTERM/SIGINT)."""
    configure_logging(settings.log_format, verbose=settings.verbose)
    if settings.workdir:
        config = replace(config, extra={**config.extra, "workdir": settings.workdir})
    stopping = _stop_on_signals()  # from the first moment: a SIGTERM during start-up still exits 0
    try:
        daemon = Daemon(config, settings, stopping)
    except ReconcilerError as exc:
        log.error("cannot_start", error=str(exc))
        return exc.exit_code
    return daemon.run()
