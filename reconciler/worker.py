"""The daemon's worker: one thread that takes the pending reasons and runs a pass; used by ``daemon.py``.

A pass: prepare (clone or fetch a remote repository), decide whether anything
is to be done (a new target revision, drift at the applied one, a rollout
under way), reconcile through the engine (``engine.py`` runs the pass itself),
then observe the result: metrics, notifications, readiness, a retry with
backoff for a temporary error, the wake-up for a rollout's next step, and the
applied tags to push (``TagPusher``, with ``--push-tags``).  Passes never
overlap: every git and engine call of the daemon happens on this thread.
After each pass it publishes what ``/status`` shows of live state
(``statusview.StatusSnapshot``), so that answering reads no backend and no specs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from reconciler.backends.base import KeptState
from reconciler.daemonconfig import DaemonConfig
from reconciler.engine import ActionDone, Config, Engine, ReconcileResult
from reconciler.errors import BackendError, GitError, ReconcilerError, StateError, UnverifiedCommitError
from reconciler.events import Applying, Outcome, PinSeen, action_pairs, initial_state, notice_of, state_json
from reconciler.gitsource import GitRepo, TagTakenError, redact
from reconciler.lease import Elector
from reconciler.metrics import Metrics
from reconciler.model import LiveState
from reconciler.notify import RESULTS as NOTIFY_RESULTS
from reconciler.notify import Notifier, NotifyConfig, make_notifier
from reconciler.plan import Plan
from reconciler.specs import DesiredState
from reconciler.state import InstanceRecord, StateDir
from reconciler.statewatch import StateWatch
from reconciler.statusview import LiveView, StatusSnapshot
from reconciler.stores import make_record_store
from reconciler.triggers import FETCHING, LEADER, NEWS, RETRY, ROLLOUT, STARTUP, TriggerSources

log = structlog.get_logger("reconciler.daemon")

RENUMBER_ROUNDS = 3  # times in a row pending tags are renumbered before the push waits for the next fetch
BACKOFF_BASE, BACKOFF_CAP = 1.0, 300.0
NOTIFIED = "notified"  # instance record key: what the notifier has said (events.state_json), kept across restarts


def backoff_delay(failures: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after ``failures`` consecutive failures: 1, 2, 4 … capped (the exponent too: no overflow)."""
    exponent = min(max(0, failures - 1), 64)
    return float(min(cap, base * 2.0**exponent))


def jittered(delay: float) -> float:
    """``delay`` spread over its upper half ("equal jitter"), so replicas that failed together retry apart."""
    return delay / 2 + random.uniform(0, delay / 2)


class Worker:
    """Runs the passes (on its own thread, or once for ``--once``) and keeps what they found: readiness, drift."""

    def __init__(
        self,
        config: Config,
        settings: DaemonConfig,
        state: StateDir,
        engine: Engine | None,
        remote: bool,
        metrics: Metrics,
        sources: TriggerSources,
        elector: Elector | None,
        stopping: threading.Event,
    ) -> None:
        self.config = config
        self.settings = settings
        self.state = state
        self.engine = engine  # None until a remote repository is cloned (by the first pass)
        self.remote = remote
        self.metrics = metrics
        self.sources = sources
        self.elector = elector
        self.stopping = stopping
        self.thread = threading.Thread(target=self._work, name="worker", daemon=True)
        self.state_watch: StateWatch | None = None  # set once the daemon holds its lock
        self._broken: str | None = None  # why this daemon stopped writing (its state directory was replaced)
        self.fetching = threading.Event()  # the worker waits on a clone or fetch (no action in flight)
        self._ready = threading.Event()
        self._failures = 0
        self._beat = time.monotonic()  # the worker's last sign of progress (a pass started, an action done, a fetch)
        self._busy = False  # the worker is in a pass
        self.passes_started = self.passes_ended = 0  # equal while no pass runs (/status: a seqlock on the record)
        self._not_ready: str | None = "no pass has reached the backend yet"
        self._last_target: str | None = None  # what the last pass settled on or is retrying
        self._rollouts_under_way = False  # then every trigger (a promote in the record too) makes a pass
        self._drift: list[str] = []
        self._unverified: set[str] = set()  # commits counted in reconciler_unverified_commits_total
        self.snapshot: StatusSnapshot | None = None  # what /status shows of live state (None: no pass yet)
        self._tag_names = TagNames(config.instance)
        self._made: str | None = None  # the applied tag this pass made
        self._checked: tuple[str, LiveState, int] | None = None  # this pass's drift check: revision, live, actions
        self._standby_checked: str | None = None  # the revision a standby's snapshot compared live state with
        self.tags = TagPusher(config.instance, metrics, settings.push_tags and self.remote, self.leading)
        self.notifier = self._make_notifier(
            NotifyConfig(tuple(settings.notify), settings.github_api_url, settings.status_url)
        )

    # ------------------------------------------------------------ leadership

    def leading(self) -> bool:
        """Whether this replica may write now: always without ``--lock``, else while it holds the lease."""
        return self.elector is None or self.elector.is_leader()

    def role(self) -> str:
        return "leader" if self.leading() else "standby"

    def _must_stop(self) -> bool:
        """Checked before every action: stopping, or the lease is lost or about to end."""
        return self.stopping.is_set() or not self.leading()

    # -------------------------------------------------------------- the loop

    def start(self) -> None:
        self.thread.start()

    def _work(self) -> None:
        frozen = False
        while (reasons := self.sources.triggers.take()) is not None:
            structlog.contextvars.bind_contextvars(trigger=",".join(sorted(reasons)))
            self._busy, self._beat = True, time.monotonic()
            self.passes_started += 1
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
                self.passes_ended += 1
                structlog.contextvars.clear_contextvars()
            if not frozen:  # start-up is over (modules, caches, the first desired state): keep them out of gc
                gc.collect()
                gc.freeze()
                frozen = True

    def run_once(self) -> int:
        """``--once``: one pass on the calling thread (a standby applies nothing); the exit code."""
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
            self.tags.push(self.engine)
        finally:
            if self.elector is not None:
                self.elector.stop(release=True)
        return 0 if result.error is None else result.error.exit_code

    def _pass(self, reasons: set[str]) -> None:
        if self.engine is not None:
            self._tag_names.before_pass(self.engine.repo)
        engine = self._prepare(reasons)
        if engine is None:
            return
        if not self.leading():
            self._follow(engine, reasons)
            self._publish_tags(engine)
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
            self._publish_tags(engine)
        if self.state_watch is not None:
            self.state_watch.note()  # files the pass made (the local backend's database)

    def _locked_pass(self, engine: Engine, reasons: set[str]) -> None:
        target = _target(engine)
        record = self._seen(engine.record())
        self.metrics.pinned.set(1 if record.pinned else 0)
        previous = record.applied_revision
        if reasons <= NEWS and target is not None and target == self._last_target and not self._rollouts_under_way:
            log.debug("no_new_revision", revision=target)  # a retry, if one is due, is already scheduled
            return
        self._checked = None
        if target is not None and target == previous and not self._drifted(engine, target):
            self._publish_checked(engine)  # in sync (or drift only reported): what the drift check saw
            return
        if not self.leading():  # lost the lease while planning for drift
            return
        result = self._reconcile(engine, target, touched_only=reasons <= NEWS)  # resync, retry: a whole read
        self._publish_result(engine, result)
        self._observe(engine, result, previous, reasons)
        self.tags.push(self.engine)

    def _follow(self, engine: Engine, reasons: set[str]) -> None:
        """A standby's pass: the branch is fetched (for a URL) and nothing is applied; ready to take over."""
        self._last_target = None  # whatever this replica applied before, the leader may have moved on since
        self._probe_backend(engine)  # ready to take over only if it could reach the backend itself
        try:
            head: str | None = engine.head()
        except ReconcilerError:
            head = None
        leader = self.elector.view()["leader"] if self.elector is not None else None
        log.debug("standby", revision=head, leader=leader)
        target = _target(engine)
        if target is not None and (target != self._standby_checked or not reasons <= NEWS):
            self._checked = None
            self._drift_plan(engine, target)  # what its /status shows: live state against the target
            self._publish_checked(engine)
            self._standby_checked = target

    def _prepare(self, reasons: set[str]) -> Engine | None:
        """The engine, after a fetch when the repository is remote; None (retry scheduled) if git failed."""
        if not self.remote:
            return self.engine
        if self.engine is not None and not reasons & FETCHING:
            return self.engine
        self.fetching.set()
        try:
            if self.engine is None:
                self.engine = Engine(self.config)  # clones (or opens) the work dir and fetches
                self.engine.on_event = self._engine_event
                self.engine.records.watch(self.sources.record_changed)
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
            self.fetching.clear()
        self.metrics.fetches.labels("success").inc()
        self._beat = time.monotonic()
        log.debug("fetched", branch=self.config.branch, head=head)
        self.tags.follow_remote(self.engine)
        self.tags.push(self.engine)
        return self.engine

    def check_record(self) -> None:
        """Read the record so that its store reports a foreign write (``record_changed``); never raises."""
        if self.engine is None:
            return
        try:
            self.engine.records.load(self.config.instance)
        except Exception as exc:  # a half-written or damaged record: the next pass says so
            log.debug("record_check_failed", error=str(exc))

    # ------------------------------------------------------ drift and sync

    def _drift_plan(self, engine: Engine, revision: str) -> Plan | None:
        """The plan that would bring live state to ``revision`` (None: it cannot be planned); what it saw is
        kept for the snapshot ``/status`` reads (``_publish_checked``)."""
        try:
            plan, _, live = engine.make_plan(revision, prune=self.settings.prune)
        except ReconcilerError:
            return None
        self._checked = (revision, live, len(plan.actions))
        return plan

    def _drifted(self, engine: Engine, revision: str) -> bool:
        """At the applied revision, any planned action is drift: report it; True if it should be corrected."""
        started = time.monotonic()
        plan = self._drift_plan(engine, revision)
        if plan is None:
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

    # --------------------------------------------------- failures and retry

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
        if self.sources.running and not self.stopping.is_set():
            self.sources.fire_at(RETRY, datetime.now(UTC) + timedelta(seconds=delay))

    def _succeeded(self) -> None:
        self._failures = 0
        self.metrics.consecutive_failures.set(0)
        if self.sources.running:
            self.sources.cancel(RETRY)

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
        if said == self._notified or not self.notifier.sinks:  # no sink: nothing was said, nothing to repeat
            return
        try:
            if engine.record().extra.get(NOTIFIED) != said:

                def remember(record: InstanceRecord) -> None:
                    record.extra[NOTIFIED] = said

                # versioned: never loses a pin made meanwhile; not fsynced: a lost write repeats one notice
                engine.records.update(engine.instance, remember, durable=False)
        except (StateError, OSError) as exc:  # only costs a repeated notice after a restart
            log.warning("notify_state_not_saved", error=str(exc))
            return
        self._notified = said

    def _seen(self, record: InstanceRecord) -> InstanceRecord:
        """Tell the notifier the record's pin (a rollback or resume shows here); returns ``record``."""
        pin = record.pinned
        self.notifier.observe(PinSeen(None if pin is None else (pin.revision, pin.tag)))
        return record

    # ------------------------------------------------- reconcile and observe

    def _reconcile(self, engine: Engine, target: str | None, touched_only: bool = False) -> ReconcileResult:
        if target is not None:
            self.notifier.observe(Applying(target))  # github: `pending`, once per revision
        return engine.reconcile(
            prune=self.settings.prune, on_action=self._count_action, stop=self._must_stop, touched_only=touched_only
        )

    def _schedule_rollout(self, result: ReconcileResult) -> None:
        """Wake at the next step's due time (not by polling); an indefinite pause waits for a promote."""
        self._rollouts_under_way = result.progressing
        if not self.sources.running or self.stopping.is_set():
            return
        if result.progressing and result.wake_at is not None:
            run_date = datetime.fromtimestamp(result.wake_at, UTC)
            self.sources.fire_at(ROLLOUT, run_date)
            log.debug("rollout_wake_scheduled", at=run_date.isoformat())
        else:
            self.sources.cancel(ROLLOUT)

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
                self.tags.pending.append(result.tag)
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

    # ------------------------------------------------- what /status shows

    def _publish(
        self, engine: Engine, revision: str | None, live: LiveState, changes: int | None, error: str | None
    ) -> None:
        """Replace the snapshot ``/status`` reads (one reference assignment: a request sees the old or the new)."""
        names = self._tag_names.refresh(engine.repo, self._made)
        checked_at = datetime.now(UTC).isoformat(timespec="seconds")
        record = engine.records.latest(self.config.instance)  # as this pass left it (no second read)
        if record is None:
            try:
                record = engine.record()
            except ReconcilerError:
                record = None
        self.snapshot = StatusSnapshot(revision, LiveView(live), changes, error, names, checked_at, record)

    def _publish_checked(self, engine: Engine) -> None:
        """After a drift check that applied nothing: the live state it read and the actions it found."""
        if self._checked is not None:
            revision, live, actions = self._checked
            self._publish(engine, revision, live, actions, None)

    def _publish_result(self, engine: Engine, result: ReconcileResult) -> None:
        """After a reconcile: live state as the backend keeps it after the pass's actions (local: in memory;
        aws: the last read plus its own writes, no API call), read again only if the backend has none.
        Converged: nothing left to do at its revision; otherwise not known (the record says why)."""
        desired = engine.last_desired
        converged = result.error is None and not result.progressing
        backend, error = engine.backend, None
        live = backend.kept_state() if isinstance(backend, KeptState) else None
        if live is None and isinstance(result.error, BackendError):
            live, error = LiveState(), str(result.error)  # what the pass met; not asked again (AWS: quotas, waits)
        elif live is None:
            try:
                live = backend.read(desired or DesiredState())
            except BackendError as exc:
                live, error = LiveState(), str(exc)
        self._made = result.tag
        revision = result.revision if converged else desired.revision if desired is not None else None
        self._publish(engine, revision or None, live, 0 if converged else None, error)

    def _publish_tags(self, engine: Engine) -> None:
        """At the end of a pass: the tag names the verdict uses, if they changed since it was published (tags
        pushed and renumbered, or made by another process while no pass published)."""
        names = self._tag_names.refresh(engine.repo, self._made)
        self._made = None
        snapshot = self.snapshot
        if snapshot is not None and snapshot.tags is not names:
            self.snapshot = dataclasses.replace(snapshot, tags=names)

    # ------------------------------------------------------- what it shows

    def _state_replaced(self) -> bool:
        """True (for good: this process never writes again) once the state directory was deleted or replaced."""
        if self._broken is None and self.state_watch is not None and (problem := self.state_watch.problem()):
            self._broken = problem
            self.metrics.ready.set(0)
            log.error("state_dir_replaced", error=problem)
        return self._broken is not None

    def health_problem(self) -> str | None:
        """Why the process should be restarted (the worker died, or is stuck in one pass), else None."""
        if self._state_replaced():
            return self._broken
        if not self.thread.is_alive():
            return "the worker thread is not running"
        deadline = self.settings.worker_deadline
        stuck = time.monotonic() - self._beat
        if self._busy and stuck > deadline:
            return f"the worker has made no progress for {stuck:.0f} s (deadline {deadline:g} s)"
        return None

    def ready(self) -> bool:
        return self._ready.is_set() and self._broken is None  # a daemon that stopped writing cannot apply

    def not_ready_reason(self) -> str | None:
        """Why ``/readyz`` is 503 (no pass reached the backend yet, and what the last attempt said), else None."""
        if self.ready():
            return None
        return self._not_ready or "no pass has reached the backend yet"

    def view(self) -> dict[str, Any]:
        """The ``daemon`` part of ``/status``."""
        return {
            "ready": self.ready(),
            "not_ready_reason": None if self.ready() else self._not_ready,
            "health": self.health_problem() or "ok",
            "self_heal": not self.settings.no_self_heal,
            "drift": list(self._drift),
            "consecutive_failures": self._failures,
            "unpushed_tags": list(self.tags.pending),
            "pid": os.getpid(),
        }


class TagNames:
    """The newest applied tag of each tagged revision, for the names in ``/status``'s verdict: listed once, then
    kept up to date with the tags the passes make (one ref and one object read each); listed again only when
    someone else added or removed one (the tags folder or packed-refs changed between passes)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.names: Mapping[str, str] = {}  # revision -> tag name; replaced, never changed (snapshots share it)
        self._stamp: tuple[int, ...] | None = None  # ``applied_tags_stamp`` when ``names`` was last made right

    def before_pass(self, repo: GitRepo) -> None:
        """Forget the stamp if the tags changed since the last pass (another process; a fetch of the remote's)."""
        if self._stamp is not None and repo.applied_tags_stamp(self.instance) != self._stamp:
            self._stamp = None

    def refresh(self, repo: GitRepo, made: str | None = None) -> Mapping[str, str]:
        """``names`` after a pass that made the tag ``made`` (if any)."""
        stamp = repo.applied_tags_stamp(self.instance)
        if self._stamp is None or (stamp != self._stamp and made is None):
            self.names = self._listed(repo)
        elif stamp != self._stamp and made is not None:
            revision = repo.tag_revision(made)
            self.names = self._listed(repo) if revision is None else {**self.names, revision: made}
        self._stamp = stamp
        return self.names

    def _listed(self, repo: GitRepo) -> dict[str, str]:
        try:
            return {tag.revision: tag.name for tag in reversed(repo.applied_tags(self.instance))}
        except GitError as exc:
            log.warning("tags_not_listed", error=str(exc))
            return dict(self.names)


class TagPusher:
    """With ``--push-tags`` (a remote repository): applied tags queued, numbered after the remote's, and pushed."""

    def __init__(self, instance: str, metrics: Metrics, enabled: bool, leading: Callable[[], bool]) -> None:
        self.instance = instance
        self.metrics = metrics
        self.enabled = enabled
        self.leading = leading
        self.pending: list[str] = []
        self._checked = False  # local applied tags compared with the remote's once (after a restart)

    def follow_remote(self, engine: Engine) -> None:
        """Fetch the remote's applied tags, so the next number follows them.

        The first time, also queue this clone's applied tags that the remote lacks
        (pushes that failed before a restart).
        """
        if not (self.enabled and self.leading()):
            return
        try:
            engine.repo.fetch_applied_tags(self.instance)
            if not self._checked:
                unpushed = engine.repo.unpushed_applied_tags(self.instance)
                self.pending += [name for name in unpushed if name not in self.pending]
                self._checked = True
        except GitError as exc:
            log.warning("tag_fetch_failed", error=str(exc), retried="at the next fetch")

    def push(self, engine: Engine | None) -> None:
        """Push queued applied tags in order; a number the remote already has is renumbered; never raises."""
        if not self.enabled or engine is None:
            return
        repo, rounds = engine.repo, 0
        while self.pending:
            tag = self.pending[0]
            try:
                repo.push_tag(tag)
            except TagTakenError as exc:
                rounds += 1
                if rounds > RENUMBER_ROUNDS:
                    self.metrics.tag_push_failures.inc()
                    log.warning("tag_push_failed", tag=tag, error=str(exc), retried="at the next fetch")
                    return
                try:
                    renumbered = repo.renumber_applied_tags(self.instance, self.pending)
                except GitError as renumber_error:
                    self.metrics.tag_push_failures.inc()
                    log.warning("tag_push_failed", tag=tag, error=str(renumber_error), retried="at the next fetch")
                    return
                log.warning("tags_renumbered", old=list(self.pending), new=renumbered, reason=str(exc))
                self.pending = renumbered
                continue
            except GitError as exc:
                self.metrics.tag_push_failures.inc()
                log.warning("tag_push_failed", tag=tag, error=str(exc), retried="at the next fetch")
                return
            self.pending.pop(0)
            log.info("tag_pushed", tag=tag)


def _target(engine: Engine) -> str | None:
    """The revision a pass aims at (branch head or pin); None if it cannot be resolved (the reconcile says why)."""
    try:
        return engine.resolve_target(None)
    except ReconcilerError:
        return None
