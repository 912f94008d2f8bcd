"""The daemon (``reconciler run``): triggers, one coalescing worker, drift checks, backoff, signals.

Called by ``cli.py``.  Triggers (watchfiles on the git refs of a local
repository, APScheduler jobs for fetches and resyncs, retries and webhooks
from ``httpapi``) only *name a reason*; a single worker thread takes every
pending reason at once and runs one pass, so reconciles never overlap and any
number of triggers during a pass coalesce into one more.  All git and engine
work happens on that worker; ``/status`` reads through a second engine of
its own.  Logging is set up by ``logs``, metrics live in ``metrics``.

With ``--lock`` an ``Elector`` (``lease``) keeps or waits for a shared lease:
only its holder reconciles, and it checks the lease before every action; a
standby fetches and serves HTTP (ready once it follows the branch) and takes
over when the lease lapses.  With ``--push-tags`` the applied tags of a remote
repository are numbered after the remote's and pushed, renumbered if another
replica took the number first.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import uuid4

import structlog
import watchfiles
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.backends.local import DB_NAME
from reconciler.engine import ActionDone, Config, Engine, ReconcileResult, signature_policy
from reconciler.errors import GitError, ReconcilerError, StateError, UnverifiedCommitError, UsageError
from reconciler.events import Applying, Outcome, PinSeen, action_pairs, initial_state, notice_of, state_json
from reconciler.gitsource import GitRepo, TagTakenError, check_branch_name, is_remote, redact
from reconciler.httpapi import HttpApi, WebhookAuth
from reconciler.lease import STOP_TIMEOUT, Elector
from reconciler.logs import configure_logging
from reconciler.metrics import Metrics
from reconciler.notify import RESULTS as NOTIFY_RESULTS
from reconciler.notify import Notifier, NotifyConfig, make_notifier
from reconciler.sinks import GITHUB_API
from reconciler.state import InstanceRecord, StateDir
from reconciler.statepath import url_state_path
from reconciler.statewatch import StateWatch
from reconciler.stores import make_lease, make_record_store

log = structlog.get_logger("reconciler.daemon")


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon's own settings (``reconciler run``'s flags, by the same names); the CLI builds it."""

    listen: str = "127.0.0.1:8080"
    interval: float = 30.0  # seconds between fetches of a remote repository
    resync_interval: float = 300.0  # seconds between drift checks
    debounce: float = 0.02  # seconds for git ref changes to settle
    no_self_heal: bool = False
    prune: bool = False
    once: bool = False
    log_format: str = "auto"
    workdir: str | None = None
    push_tags: bool = False
    lock: str | None = None  # dynamodb://TABLE
    lease_duration: float = 15.0
    lease_renew_interval: float = 5.0
    verbose: bool = False
    notify: tuple[str, ...] = ()  # --notify sinks (each value may list several, comma-separated)
    github_api_url: str = GITHUB_API
    status_url: str | None = None  # target_url of GitHub commit statuses
    worker_deadline: float = 900.0  # seconds a pass may go without progress before /healthz fails


STARTUP, GIT, STATE, FETCH, WEBHOOK, RESYNC, RETRY = "startup", "git", "state", "fetch", "webhook", "resync", "retry"
LEADER = "leader"  # this replica has just taken the --lock lease
ROLLOUT = "rollout"  # a rollout's next step (or analysis) is due
REASONS = (STARTUP, GIT, STATE, FETCH, WEBHOOK, RESYNC, RETRY, LEADER, ROLLOUT)
NEWS = frozenset({GIT, STATE, FETCH, WEBHOOK})  # reasons that only matter if the target revision moved
FETCHING = frozenset({STARTUP, FETCH, WEBHOOK, RETRY, LEADER})  # reasons that fetch a remote repository first
RENUMBER_ROUNDS = 3  # times in a row pending tags are renumbered before the push waits for the next fetch
BACKOFF_BASE, BACKOFF_CAP = 1.0, 300.0
RECORD_POLL = 5.0  # seconds between reads of the record for pins made elsewhere (remote repo or --lock)
STATUS_TTL = {"aws": 2.0}  # seconds /status reuses a backend read between passes (AWS reads count against quotas)
STOP_GRACE = 8.0  # seconds the worker gets to finish the action in flight (the contract says exit within 10 s)
STOP_BUDGET = 9.0  # seconds from SIGTERM to the return of run(), whatever hangs (worker, lease store, watcher)
NOTIFY_GRACE = 2.0  # seconds queued notifications get at SIGTERM (within STOP_BUDGET) or after --once
NOTIFIED = "notified"  # instance record key: what the notifier has said (events.state_json), kept across restarts


def backoff_delay(failures: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after ``failures`` consecutive failures: 1, 2, 4 … capped (the exponent too: no overflow)."""
    exponent = min(max(0, failures - 1), 64)
    return float(min(cap, base * 2.0**exponent))


def jittered(delay: float) -> float:
    """``delay`` spread over its upper half ("equal jitter"), so replicas that failed together retry apart."""
    return delay / 2 + random.uniform(0, delay / 2)


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


class Daemon:
    """One instance following one branch; ``run`` blocks until SIGTERM/SIGINT."""

    def __init__(
        self,
        config: Config,
        settings: DaemonConfig,
        stopping: threading.Event | None = None,
    ) -> None:
        _check_intervals(settings)  # here, so that the refusal is logged in the --log-format asked for
        self.settings = settings
        if settings.lock and config.lock is None:
            config = replace(config, lock=settings.lock)  # the instance record lives in the lock table too
        self.remote = is_remote(config.repo)
        self.engine: Engine | None = None
        if self.remote:
            if config.branch is not None:
                check_branch_name(config.branch)
            state_dir = url_state_path(config.state_dir)
            config = replace(config, state_dir=str(state_dir), branch=config.branch or "main")
            self.state = StateDir(state_dir)
            if config.allowed_signers is not None or config.trusted_gpg_keys is not None:
                signature_policy(config, state_dir)  # a missing key file stops the start, not every later pass
        else:
            self.engine = Engine(config)
            config = replace(config, branch=self.engine.branch)  # followed even if the checkout switches
            self.engine.config = config  # so a later checkout of another branch is no refusal: it is not followed
            self.state = self.engine.state
            self.engine.records.watch(self._record_changed)
        self.config = config
        self.state_watch: StateWatch | None = None  # set once the daemon holds its lock
        self._broken: str | None = None  # why this daemon stopped writing (its state directory was replaced)
        self.metrics = Metrics(REASONS)
        self.triggers = Triggers()
        self.stopping = stopping or threading.Event()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.worker = threading.Thread(target=self._work, name="worker", daemon=True)
        self._watcher: threading.Thread | None = None
        self._ready = threading.Event()
        self._fetching = threading.Event()  # the worker waits on a clone or fetch (no action in flight)
        self._status_engine: Engine | None = None
        self._status_lock = threading.Lock()
        self._status_cache: tuple[float, dict[str, Any]] | None = None  # aws: (when, the backend's answer)
        self._failures = 0
        self._beat = time.monotonic()  # the worker's last sign of progress (a pass started, an action done, a fetch)
        self._busy = False  # the worker is in a pass
        self._not_ready: str | None = "no pass has reached the backend yet"
        self._last_target: str | None = None  # what the last pass settled on or is retrying
        self._rollouts_under_way = False  # then every trigger (a promote in the record too) makes a pass
        self._drift: list[str] = []
        self._pending_tags: list[str] = []
        self._unverified: set[str] = set()  # commits counted in reconciler_unverified_commits_total
        self._tags_checked = False  # local applied tags compared with the remote's once (after a restart)
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
        self.notifier = self._make_notifier(
            NotifyConfig(tuple(settings.notify), settings.github_api_url, settings.status_url)
        )

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        try:
            with self._daemon_lock():
                path = self.state.path
                self.state_watch = StateWatch(
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
        http = HttpApi(self.settings.listen, self, WebhookAuth(secret.encode() or None))
        self.fire(STARTUP)  # first, so the first pass is the start-up one even when it is also a leader's
        if self.elector is not None:  # the first attempt here: a lease that cannot work at all stops the start
            self.elector.start(self.elector.step())
        http.start()
        if self.remote:
            self.scheduler.add_job(self.fire, "interval", seconds=self.settings.interval, args=[FETCH], id="fetch")
        self.scheduler.add_job(self.fire, "interval", seconds=self.settings.resync_interval, args=[RESYNC], id="resync")
        if self.remote or self.config.lock:  # no watcher sees the record: look for pins made elsewhere
            self.scheduler.add_job(self._check_record, "interval", seconds=RECORD_POLL, id="record")
        self.scheduler.start()  # before the worker: a pass that fails must find the scheduler to retry with
        self.notifier.start()
        self.worker.start()
        if not self.remote:
            self._watcher = threading.Thread(target=self._watch, name="watch", daemon=True)
            self._watcher.start()
        log.info(
            "started",
            repo=redact(self.config.repo) if self.remote or self.engine is None else str(self.engine.repo.root),
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
            role=self.role(),
            pid=os.getpid(),
        )
        while not self.stopping.wait(1.0):
            pass
        log.info("stopping")
        deadline = time.monotonic() + STOP_BUDGET
        self.triggers.close()
        self.scheduler.shutdown(wait=False)
        http.stop()
        if self._fetching.is_set():  # a clone or fetch is no action in flight: nothing to finish, end it now
            _end_child_processes()
        self.worker.join(STOP_GRACE)
        if self.elector is not None:  # after the action in flight: a standby may take over at once
            left = max(0.0, min(STOP_TIMEOUT, deadline - time.monotonic()))
            self.elector.stop(release=not self.worker.is_alive(), timeout=left)
        if self._watcher is not None:
            self._watcher.join(max(0.0, min(1.0, deadline - time.monotonic())))
        self.notifier.close(max(0.0, min(NOTIFY_GRACE, deadline - time.monotonic())))
        if self.worker.is_alive():  # e.g. a git fetch stuck on a silent remote: it must not outlive us
            _end_child_processes()
        log.info("stopped", clean=not self.worker.is_alive())
        return 0

    def _run_once(self) -> int:
        self.notifier.start()
        try:
            return self._reconcile_once()
        finally:
            self.notifier.close(NOTIFY_GRACE)

    def _reconcile_once(self) -> int:
        engine = self._prepare({STARTUP})
        if engine is None:
            return 1
        if self.elector is not None:
            self.elector.step()
            if not self.elector.is_leader():
                log.info("standby", revision=engine.head(), leader=self.elector.view()["leader"], applies="nothing")
                self.elector.stop(release=False)
                return 0
        try:
            with self.state.writer_lock(f"reconciler run --once, instance {self.config.instance}"):
                previous = self._seen(engine.record()).applied_revision
                target = _target(engine)
                if target is not None and target == previous and not self._drifted(engine, target):
                    return 0  # in sync, or drift only reported (--no-self-heal)
                result = self._reconcile(engine, target)
            self._observe(engine, result, previous, {STARTUP})
            self._remember_notified(engine)
            self._push_pending_tags()
        finally:
            if self.elector is not None:
                self.elector.stop(release=True)
        return 0 if result.error is None else result.error.exit_code

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

    # ------------------------------------------------------------ leadership

    def leading(self) -> bool:
        """Whether this replica may write now: always without ``--lock``, else while it holds the lease."""
        return self.elector is None or self.elector.is_leader()

    def role(self) -> str:
        return "leader" if self.leading() else "standby"

    def _must_stop(self) -> bool:
        """Checked before every action: stopping, or the lease is lost or about to end."""
        return self.stopping.is_set() or not self.leading()

    def _on_leadership(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        if leading:
            self.fire(LEADER)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()  # only this: the main thread does the rest outside the handler

    def stop(self) -> None:
        self.stopping.set()
        self.triggers.close()

    def _close(self) -> None:
        if self.worker.is_alive():
            return  # still in an action: the process exit ends it; closing under it would be worse
        for engine in (self.engine, self._status_engine):
            if engine is not None:
                try:
                    engine.close()
                except Exception as exc:
                    log.debug("close_failed", error=str(exc))

    # -------------------------------------------------------------- triggers

    def fire(self, reason: str) -> bool:
        if self.stopping.is_set():
            return False
        self.metrics.triggers.labels(reason).inc()
        return self.triggers.fire(reason)

    def _watch(self) -> None:
        assert self.engine is not None and self.config.branch is not None
        record = self.state.path / "instances" / f"{self.config.instance}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        refs = RefFilter(self.engine.repo.git_dir, self.engine.repo.common_dir, self.config.branch, record)
        debounce_ms = max(1, round(self.settings.debounce * 1000))
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
                        self._check_record()  # fires only for a write of another process (a pin, a resume)
                    else:
                        self.fire(GIT)
            except Exception as exc:  # e.g. .git replaced under us: watch again shortly
                log.warning("watch_failed", error=str(exc))
                self.stopping.wait(1.0)

    def _state_replaced(self) -> bool:
        """True (for good: this process never writes again) once the state directory was deleted or replaced."""
        if self._broken is None and self.state_watch is not None and (problem := self.state_watch.problem()):
            self._broken = problem
            self.metrics.ready.set(0)
            log.error("state_dir_replaced", error=problem)
        return self._broken is not None

    def _record_changed(self, instance: str) -> None:
        """The record store saw a version this process did not write: a pin, a resume, a rollout command."""
        log.info("record_changed", instance=instance)
        self.fire(STATE)

    def _check_record(self) -> None:
        """Read the record so that its store reports a foreign write (``_record_changed``); never raises."""
        if self.engine is None:
            return
        try:
            self.engine.records.load(self.config.instance)
        except Exception as exc:  # a half-written or damaged record: the next pass says so
            log.debug("record_check_failed", error=str(exc))

    def _count_failure(self) -> None:
        self._failures += 1
        self.metrics.consecutive_failures.set(self._failures)

    def _retry_later(self, error: BaseException) -> None:
        if not self._ready.is_set():
            self._not_ready = str(error)
        if self.stopping.is_set() or self.settings.once:
            return  # e.g. stopped mid-plan, or --once: the next start re-plans from live state
        self._count_failure()
        delay = round(jittered(backoff_delay(self._failures)), 3)
        log.warning("retry_scheduled", error=str(error), failures=self._failures, retry_in_s=delay)
        if self.scheduler.running and not self.stopping.is_set():
            self.scheduler.add_job(
                self.fire,
                "date",
                run_date=datetime.now(UTC) + timedelta(seconds=delay),
                args=[RETRY],
                id="retry",
                replace_existing=True,
                misfire_grace_time=None,
            )

    def _succeeded(self) -> None:
        self._failures = 0
        self.metrics.consecutive_failures.set(0)
        if self.scheduler.running:
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job("retry")

    # ---------------------------------------------------------------- worker

    def _work(self) -> None:
        frozen = False
        while (reasons := self.triggers.take()) is not None:
            structlog.contextvars.bind_contextvars(trigger=",".join(sorted(reasons)))
            self._busy, self._beat = True, time.monotonic()
            try:
                self._pass(reasons)
            except Exception as exc:  # the daemon outlives any bug in a pass; retry it later
                try:
                    log.exception("pass_crashed", error=str(exc))
                    self._last_target = None
                    self._retry_later(exc)
                except Exception as worse:  # not even the retry could be scheduled: the resync still comes
                    log.error("retry_failed", error=str(worse))
            finally:
                self._busy = False
                structlog.contextvars.clear_contextvars()
            if not frozen:  # start-up is over (modules, caches, the first desired state): keep them out of gc
                gc.collect()
                gc.freeze()
                frozen = True

    def _pass(self, reasons: set[str]) -> None:
        engine = self._prepare(reasons)
        if engine is None:
            return
        if not self.leading():
            self._follow(engine)
            return
        if self._state_replaced():
            return
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.state.writer_lock(f"reconciler run, instance {self.config.instance}"))
            except StateError as exc:  # a rollback/resume/apply is writing right now: after it
                log.info("state_busy", error=str(exc))
                self._last_target = None
                self._retry_later(exc)
                return
            self._locked_pass(engine, reasons)
            self._remember_notified(engine)
        if self.state_watch is not None:
            self.state_watch.note()  # files the pass made (the local backend's database)
        self._status_cache = None  # whatever the pass did, /status reads afresh

    def _locked_pass(self, engine: Engine, reasons: set[str]) -> None:
        target = _target(engine)
        record = self._seen(engine.record())
        self.metrics.pinned.set(1 if record.pinned else 0)
        previous = record.applied_revision
        if reasons <= NEWS and target is not None and target == self._last_target and not self._rollouts_under_way:
            log.debug("no_new_revision", revision=target)  # a retry, if one is due, is already scheduled
            return
        if target is not None and target == previous and not self._drifted(engine, target):
            return
        if not self.leading():  # lost the lease while planning for drift
            return
        result = self._reconcile(engine, target)
        self._observe(engine, result, previous, reasons)
        self._push_pending_tags()

    def _follow(self, engine: Engine) -> None:
        """A standby's pass: the branch is fetched (for a URL) and nothing is applied; ready to take over."""
        self._last_target = None  # whatever this replica applied before, the leader may have moved on since
        self._probe_backend(engine)  # ready to take over only if it could reach the backend itself
        try:
            head: str | None = engine.head()
        except ReconcilerError:
            head = None
        leader = self.elector.view()["leader"] if self.elector is not None else None
        log.debug("standby", revision=head, leader=leader)

    def _drifted(self, engine: Engine, revision: str) -> bool:
        """At the applied revision, any planned action is drift: report it; True if it should be corrected."""
        started = time.monotonic()
        try:
            plan, _, _ = engine.make_plan(revision, prune=self.settings.prune)
        except ReconcilerError:
            return True  # let the reconcile report it
        duration = time.monotonic() - started
        self.metrics.drifted_resources.set(len(plan.actions))
        self._drift = [a.resource for a in plan.actions]
        if not plan.actions:
            self.metrics.reconciles.labels("noop").inc()
            self.metrics.reconcile_duration.labels("noop").observe(duration)
            log.info("in_sync", revision=revision, actions=0, duration_ms=round(duration * 1000, 1), result="noop")
            self.notifier.observe(Outcome(revision, "noop", previous=revision))
            self._in_sync(revision)
            return False
        self.metrics.drift.inc(len(plan.actions))
        heal = not self.settings.no_self_heal
        log.warning(
            "drift",
            revision=revision,
            resources=self._drift,
            actions=[a.action for a in plan.actions],
            self_heal=heal,
        )
        if not heal:
            self._settle(revision)
        return heal

    def _in_sync(self, revision: str) -> None:
        """Live state matches ``revision``: a success, whether this pass changed anything or not."""
        self.metrics.last_success.set(time.time())
        self.metrics.drifted_resources.set(0)
        self._drift = []
        self.metrics.applied_revision.info(
            {"revision": revision, "instance": self.config.instance, "branch": self.config.branch or ""}
        )
        self._settle(revision)

    def _settle(self, revision: str) -> None:
        """A pass that reached the backend and settled on ``revision``: success, and ready."""
        self._last_target = revision
        self._succeeded()
        self._mark_ready()

    def _mark_ready(self) -> None:
        self._not_ready = None
        self._ready.set()
        self.metrics.ready.set(1)

    def _probe_backend(self, engine: Engine) -> None:
        """Ready once the backend answers a read (for a pass that did not read it: an invalid commit, a standby)."""
        if self._ready.is_set():
            return
        try:
            engine.probe_backend()
        except ReconcilerError as exc:
            self._not_ready = str(exc)
            log.warning("backend_unreachable", error=str(exc))
            return
        self._mark_ready()

    def _prepare(self, reasons: set[str]) -> Engine | None:
        """The engine, after a fetch when the repository is remote; None (retry scheduled) if git failed."""
        if not self.remote:
            return self.engine
        if self.engine is not None and not reasons & FETCHING:
            return self.engine
        self._fetching.set()
        try:
            if self.engine is None:
                self.engine = Engine(self.config)  # clones (or opens) the work dir and fetches
                self.engine.on_event = self._engine_event
                self.engine.records.watch(self._record_changed)
                head = self.engine.head()
            else:
                head = self.engine.repo.fetch(self.engine.branch)
        except ReconcilerError as exc:
            self.metrics.fetches.labels("failed").inc()
            log.warning("fetch_failed", repo=redact(self.config.repo), error=str(exc))
            self._last_target = None
            self._retry_later(exc)
            return None
        finally:
            self._fetching.clear()
        self.metrics.fetches.labels("success").inc()
        self._beat = time.monotonic()
        log.debug("fetched", branch=self.config.branch, head=head)
        self._follow_remote_tags(self.engine)
        self._push_pending_tags()
        return self.engine

    # ------------------------------------------------------- notifications

    def _make_notifier(self, notify: NotifyConfig) -> Notifier:
        """The ``--notify`` sinks (a ``UsageError`` naming ``--notify`` if one cannot work), not started yet."""
        remote = self.config.repo if self.remote else self.engine.repo.remote_url() if self.engine else None
        try:
            if self.engine is not None:
                record = self.engine.record()  # with --lock: the record in DynamoDB, which outlives pods
            else:
                records = make_record_store(self.config.lock, self.state, self.config.region, self.config.endpoint_url)
                record = records.load(self.config.instance)
                records.close()
            state = initial_state(record.applied_revision, record.extra.get(NOTIFIED))
        except StateError:
            state = None
        counter = self.metrics.notifications

        def count(kind: str, result: str) -> None:
            counter.labels(kind, result).inc()

        notifier = make_notifier(notify, self.config.instance, remote, os.environ, count, state)
        self._notified = state_json(notifier.state)
        for kind in {name.partition(":")[0] for name in notifier.sinks}:
            for result in NOTIFY_RESULTS:
                counter.labels(kind, result)
        if self.engine is not None:
            self.engine.on_event = self._engine_event
        return notifier

    def _engine_event(self, name: str, fields: dict[str, Any]) -> None:
        """``Engine.on_event``: the events only the engine sees (a rollout's steps), told as they are."""
        self.notifier.publish(notice_of(name, fields))

    def _remember_notified(self, engine: Engine) -> None:
        """Keep what the notifier has said in the instance record when it changed, so a restart does not repeat it."""
        said = state_json(self.notifier.state)
        if said == self._notified:
            return
        try:
            if engine.record().extra.get(NOTIFIED) != said:

                def remember(record: InstanceRecord) -> None:
                    record.extra[NOTIFIED] = said

                engine.records.update(engine.instance, remember)  # versioned: never loses a pin made meanwhile
        except (StateError, OSError) as exc:  # only costs a repeated notice after a restart
            log.warning("notify_state_not_saved", error=str(exc))
            return
        self._notified = said

    def _seen(self, record: InstanceRecord) -> InstanceRecord:
        """Tell the notifier the record's pin (a rollback or resume shows here); returns ``record``."""
        pin = record.pinned
        self.notifier.observe(PinSeen(None if pin is None else (pin.revision, pin.tag)))
        return record

    def _reconcile(self, engine: Engine, target: str | None) -> ReconcileResult:
        if target is not None:
            self.notifier.observe(Applying(target))  # github: `pending`, once per revision
        return engine.reconcile(prune=self.settings.prune, on_action=self._count_action, stop=self._must_stop)

    def _schedule_rollout(self, result: ReconcileResult) -> None:
        """Wake at the next step's due time (not by polling); an indefinite pause waits for a promote."""
        self._rollouts_under_way = result.progressing
        if not self.scheduler.running or self.stopping.is_set():
            return
        if result.progressing and result.wake_at is not None:
            run_date = datetime.fromtimestamp(result.wake_at, UTC)
            self.scheduler.add_job(
                self.fire,
                "date",
                run_date=run_date,
                args=[ROLLOUT],
                id=ROLLOUT,
                replace_existing=True,
                misfire_grace_time=None,
            )
            log.debug("rollout_wake_scheduled", at=run_date.isoformat())
        else:
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(ROLLOUT)

    def _show_rollouts(self, engine: Engine) -> None:
        try:
            states = engine.rollouts()
        except ReconcilerError:
            return
        self.metrics.show_rollouts({r: (s.phase, s.weight) for r, s in states.items()})

    def _count_action(self, done: ActionDone) -> None:
        self._beat = time.monotonic()
        self.metrics.actions.labels(done.action.action, "failed" if done.error else "success").inc()

    def _observe(self, engine: Engine, result: ReconcileResult, previous: str | None, reasons: set[str]) -> None:
        if not result.progressing:  # a rollout's passes are told by its rollout_* events; `applied` comes at its end
            self.notifier.observe(
                Outcome(
                    result.revision,
                    result.result,
                    previous=previous,
                    tag=result.tag,
                    actions=action_pairs(result.applied),
                    message=str(result.error) if result.error else "",
                )
            )
        m = self.metrics
        m.reconciles.labels(result.result).inc()
        m.reconcile_duration.labels(result.result).observe(result.duration)
        self._schedule_rollout(result)
        self._show_rollouts(engine)
        error = result.error
        if result.progressing:  # applied as far as the rollouts allow; the commit is applied when they succeed
            self._last_target = None
            self._succeeded()
            self._ready.set()
            m.ready.set(1)
            log.info("rollouts_under_way", revision=result.revision, resources=[s.resource for s in result.rollouts])
        elif error is None:
            self._in_sync(result.revision)
            if result.applied and result.revision != previous and STARTUP not in reasons:  # no-op takeover: not
                lag = None
                if LEADER not in reasons:  # after a failover the lag would measure the downtime
                    try:
                        lag = max(0.0, time.time() - engine.repo.commit_time(result.revision))
                    except (ValueError, GitError):
                        lag = None
                if lag is not None:
                    m.commit_to_applied.observe(lag)
                log.info("applied", revision=result.revision, tag=result.tag, commit_to_applied_s=lag)
            if result.tag and self.settings.push_tags and self.remote:
                self._pending_tags.append(result.tag)
        elif error.temporary:
            self._last_target = result.revision
            self._retry_later(error)
        else:
            if isinstance(error, UnverifiedCommitError) and error.revision not in self._unverified:
                self._unverified.add(error.revision)
                m.unverified_commits.inc()
            log.warning(
                "not_applied",
                revision=result.revision,
                result=result.result,
                error=str(error),
                keeps=previous,
                waits_for="the next commit",
            )
            self._last_target = result.revision
            self._count_failure()  # a failure all the same, only not retried
            self._probe_backend(engine)

    def _pushing(self) -> bool:
        return bool(self.settings.push_tags and self.remote and self.engine is not None)

    def _follow_remote_tags(self, engine: Engine) -> None:
        """With --push-tags: fetch the remote's applied tags, so the next number follows them.

        The first time, also queue this clone's applied tags that the remote lacks
        (pushes that failed before a restart).
        """
        if not (self._pushing() and self.leading()):
            return
        instance = self.config.instance
        try:
            engine.repo.fetch_applied_tags(instance)
            if not self._tags_checked:
                unpushed = engine.repo.unpushed_applied_tags(instance)
                self._pending_tags += [name for name in unpushed if name not in self._pending_tags]
                self._tags_checked = True
        except GitError as exc:
            log.warning("tag_fetch_failed", error=str(exc), retried="at the next fetch")

    def _push_pending_tags(self) -> None:
        """Push queued applied tags in order; a number the remote already has is renumbered; never raises."""
        if not self._pushing() or self.engine is None:
            return
        repo, rounds = self.engine.repo, 0
        while self._pending_tags:
            tag = self._pending_tags[0]
            try:
                repo.push_tag(tag)
            except TagTakenError as exc:
                rounds += 1
                if rounds > RENUMBER_ROUNDS:
                    self.metrics.tag_push_failures.inc()
                    log.warning("tag_push_failed", tag=tag, error=str(exc), retried="at the next fetch")
                    return
                try:
                    renumbered = repo.renumber_applied_tags(self.config.instance, self._pending_tags)
                except GitError as renumber_error:
                    self.metrics.tag_push_failures.inc()
                    log.warning("tag_push_failed", tag=tag, error=str(renumber_error), retried="at the next fetch")
                    return
                log.warning("tags_renumbered", old=list(self._pending_tags), new=renumbered, reason=str(exc))
                self._pending_tags = renumbered
                continue
            except GitError as exc:
                self.metrics.tag_push_failures.inc()
                log.warning("tag_push_failed", tag=tag, error=str(exc), retried="at the next fetch")
                return
            self._pending_tags.pop(0)
            log.info("tag_pushed", tag=tag)

    # ------------------------------------------------------ what HTTP reads

    def healthy(self) -> bool:
        return self.health_problem() is None

    def health_problem(self) -> str | None:
        """Why the process should be restarted (the worker died, or is stuck in one pass), else None."""
        if self._state_replaced():
            return self._broken
        if not self.worker.is_alive():
            return "the worker thread is not running"
        deadline = self.settings.worker_deadline
        stuck = time.monotonic() - self._beat
        if self._busy and stuck > deadline:
            return f"the worker has made no progress for {stuck:.0f} s (deadline {deadline:g} s)"
        return None

    def not_ready_reason(self) -> str | None:
        """Why ``/readyz`` is 503 (no pass reached the backend yet, and what the last attempt said), else None."""
        if self.ready():
            return None
        return self._not_ready or "no pass has reached the backend yet"

    def ready(self) -> bool:
        return self._ready.is_set() and self._broken is None  # a daemon that stopped writing cannot apply

    def metrics_text(self) -> tuple[bytes, str]:
        return self.metrics.render()

    def webhook(self) -> bool:
        self.metrics.webhooks.labels("accepted").inc()
        return self.fire(WEBHOOK)

    def webhook_rejected(self) -> None:
        self.metrics.webhooks.labels("rejected").inc()

    def status(self) -> dict[str, Any]:
        with self._status_lock:
            if self._status_engine is None:
                if self.engine is None:
                    raise GitError("the repository has not been cloned yet")
                repo = GitRepo(self.engine.repo.git_dir if self.remote else self.config.repo)
                self._status_engine = Engine(self.config, repo=repo)
            now = time.monotonic()
            if self._status_cache is not None and now - self._status_cache[0] < STATUS_TTL.get(self.config.backend, 0):
                data = dict(self._status_cache[1])
            else:
                known = self.engine.last_desired if self.engine is not None else None
                data = self._status_engine.status(known)  # the worker's specs: /status validates none itself
                self._status_cache = (now, dict(data))
        data["role"] = self.role()
        data["daemon"] = {
            "ready": self.ready(),
            "not_ready_reason": None if self.ready() else self._not_ready,
            "health": self.health_problem() or "ok",
            "self_heal": not self.settings.no_self_heal,
            "drift": list(self._drift),
            "consecutive_failures": self._failures,
            "unpushed_tags": list(self._pending_tags),
            "pid": os.getpid(),
        }
        if self.elector is not None:
            data["lease"] = self.elector.view()
        return data


def _check_intervals(settings: DaemonConfig) -> None:
    """Scheduling flags must be positive (a zero or negative interval would spin APScheduler's thread)."""
    for flag, value, zero_ok in (
        ("--interval", settings.interval, False),
        ("--resync-interval", settings.resync_interval, False),
        ("--debounce", settings.debounce, True),
        ("--worker-deadline", settings.worker_deadline, False),
    ):
        if not (value >= 0 if zero_ok else value > 0):  # NaN fails both
            env = "RECONCILER_" + flag.removeprefix("--").replace("-", "_").upper()
            expected = "zero or more" if zero_ok else "more than zero"
            raise UsageError(f"{flag} {value:g} (or ${env}): expected {expected} seconds")


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


def _target(engine: Engine) -> str | None:
    """The revision a pass aims at (branch head or pin); None if it cannot be resolved (the reconcile says why)."""
    try:
        return engine.resolve_target(None)
    except ReconcilerError:
        return None


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
    """An event that SIGTERM/SIGINT set; the daemon installs its own handlers (setting it too) later."""
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
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
