"""One reconcile: git source -> specs -> backend.read -> plan -> apply -> tag.

Also the operations built on it that the CLI and the daemon share: status,
history, rollback (pin) and resume.  Records last attempted and last applied
revision apart, and sets "applied" (and tags the commit) only after every
action succeeded.  Called by ``cli.py`` and ``daemon.py``.  ``Engine`` is a
``reader.SpecReader`` (which revision to read, and its specs through the
parse cache), the part ``validate`` uses alone.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from reconciler import failpoints
from reconciler.backends.base import Backend, WarningSource
from reconciler.errors import (
    BackendError,
    GitError,
    ReconcilerError,
    RolloutError,
    SpecError,
    SpecIssue,
    StateError,
    UnverifiedCommitError,
    UsageError,
)
from reconciler.gitsource import (
    WORKTREE as WORKTREE,  # re-exported: the CLI names the working tree with it
)
from reconciler.gitsource import (
    AppliedTag,
    GitRepo,
    SignaturePolicy,
    is_remote,
)
from reconciler.model import (
    Action,
    AdoptApi,
    AdoptStage,
    CreateApi,
    CreateDeployment,
    CreateStage,
    DeleteAlias,
    DeleteBasePathMapping,
    DeleteStage,
    LiveState,
    PlanWarning,
    UpdateApi,
    UpdateStage,
)
from reconciler.plan import Plan, PlanMemo, make_plan
from reconciler.reader import Config as Config  # re-exported: the engine's callers name it here
from reconciler.reader import SpecReader, gc_paused
from reconciler.records import RecordStore
from reconciler.rollout import COMMANDS, Event, RolloutState
from reconciler.rollouts import analyses, load_states, save_states, shape
from reconciler.specs import DesiredState
from reconciler.state import InstanceRecord, Pin
from reconciler.statusview import resources_json, status_json

log = structlog.get_logger("reconciler.engine")
TAG_ACTIONS_LISTED = 1000  # a tag message lists at most this many actions (and always the count)
UNTAGGED = "untagged"  # instance record key: the message of an applied tag not made yet
OWED = "rollout_actions"  # instance record key: actions applied by passes of a rollout not finished yet
MAX_ROUNDS = 64  # decide -> apply rounds in one pass (each round moves at least one rollout one step)
TAG_KEY = "tag_key"  # instance record key: the secret whose MAC in a tag's message proves this instance made it
EventHook = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ActionDone:
    """One action of a pass, done or failed: what ``reconcile``'s ``on_action`` hears (progress, metrics)."""

    action: Action
    index: int  # 1-based, in plan order
    total: int  # actions in the plan
    seconds: float
    error: BaseException | None = None


WaitHook = Callable[[float, str], None]  # (seconds, what for): a backend is about to wait, e.g. for an AWS quota


@dataclass
class ReconcileResult:
    revision: str
    plan: Plan | None = None
    applied: list[Action] = field(default_factory=list)
    tag: str | None = None
    error: ReconcilerError | None = None
    duration: float = 0.0
    rollouts: list[RolloutState] = field(default_factory=list)  # under way after this pass
    warnings: list[PlanWarning] = field(default_factory=list)  # the backend's, of the actions applied

    @property
    def all_warnings(self) -> list[PlanWarning]:
        """The plan's warnings, then the applied actions' (shown by ``apply``)."""
        return [*(self.plan.warnings if self.plan else ()), *self.warnings]

    wake_at: float | None = None  # Unix time a rollout wants the next pass at

    @property
    def progressing(self) -> bool:
        return bool(self.rollouts) and self.error is None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def result(self) -> str:
        if self.error is None:
            return "success" if self.applied else "noop"
        return "invalid" if isinstance(self.error, SpecError) else "failed"


API_CHAIN = (CreateApi, AdoptApi, UpdateApi, CreateDeployment, CreateStage, AdoptStage, UpdateStage)


def execution_order(actions: Sequence[Action]) -> list[Action]:
    """The plan's actions in the order they run: within each run of API and stage actions, API by API
    (that API's import, deployment and stages together); every other action keeps its place.

    The plan lists actions by kind (DESIGN §3), and within one API that order
    holds.  Across APIs, running one API's stages while the next API's
    ``CreateDeployment`` waits for its quota (1 per 5 s per account) keeps the
    deployment chain, the critical path, the only thing waited for.
    """
    ordered: list[Action] = []
    chains: dict[str, list[Action]] = {}
    for action in [*actions, None]:
        if isinstance(action, API_CHAIN):
            chains.setdefault(action.api, []).append(action)
            continue
        ordered += [chained for chain in chains.values() for chained in chain]
        chains = {}
        if action is not None:
            ordered.append(action)
    return ordered


def log_warnings(plan: Plan) -> None:
    """Log the plan's warnings about the stages it changes (each deploy of such a stage says it again)."""
    changed = {a.resource for a in plan.actions if isinstance(a, CreateStage | UpdateStage)}
    for warning in plan.warnings:
        if warning.resource in changed:
            log.warning(
                warning.code,
                stage=warning.resource,
                integration=warning.integration,
                alias=warning.alias,
                reason=warning.message,
            )


def make_backend(config: Config, state_dir: Path, on_wait: WaitHook | None = None) -> Backend:
    """The backend named by ``config.backend`` (boto3 is imported only for ``aws``); ``on_wait`` hears its
    pacing waits (the local backend never waits)."""
    if config.backend == "local":
        from reconciler.backends.local import LocalBackend

        return LocalBackend(state_dir, instance=config.instance)
    if config.backend == "aws":
        from reconciler.backends.aws import AwsBackend

        backend: Backend = AwsBackend(
            region=config.region, endpoint_url=config.endpoint_url, instance=config.instance, on_wait=on_wait
        )
        return backend
    raise StateError(f"unknown backend {config.backend!r}; expected local or aws")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def signature_policy(config: Config, state_dir: Path) -> SignaturePolicy:
    """Who may sign applied commits; UsageError (naming the flag) if a file is missing or holds no key."""
    return SignaturePolicy(config.allowed_signers, config.trusted_gpg_keys, state_dir / "gnupg")


class Engine(SpecReader):
    """Reconciles one instance of one repository/branch/specs root against one backend."""

    def __init__(
        self,
        config: Config,
        repo: GitRepo | None = None,
        backend: Backend | None = None,
        records: RecordStore | None = None,
    ) -> None:
        super().__init__(config, repo, records)
        self._backend = backend
        self._signatures: SignaturePolicy | None = None  # --allowed-signers / --trusted-gpg-keys
        if config.allowed_signers is not None or config.trusted_gpg_keys is not None:  # a bad file: refused now
            self._signatures = signature_policy(config, self.state.path)
        self.on_event: EventHook | None = None  # called with rollout_* events (the daemon's metrics, notifications)
        self.clock: Callable[[], float] = time.time
        self._pending_apply: str | None = None  # apply_id of the tag this pass recorded as owed (pending)
        self._plan_memo = PlanMemo()  # the last pass's plan per resource: a daemon's pass after a commit reuses it
        self._loaded_commands: dict[str, str | None] = {}  # rollout commands in the record as this pass read it
        self.on_wait: WaitHook | None = None  # told when the backend waits (AWS pacing); set before first use

    # ----------------------------------------------------------------- parts

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.config, self.state.path, self.on_wait)
        return self._backend

    def check_checkout(self) -> None:
        """``apply``/``rollback`` without ``--branch`` refuse while another branch than the followed one is checked out.

        Otherwise unmerged work on a feature branch would go live (and be tagged).
        A detached HEAD follows the recorded branch, as the daemon does.
        """
        if self.config.branch is not None or is_remote(self.config.repo):
            return
        recorded = self.record().branch
        current = self.repo.checked_out_branch()
        if recorded is not None and current is not None and current != recorded:
            raise UsageError(
                f"instance {self.instance!r} follows branch {recorded!r} (recorded at its first apply), but "
                f"{current!r} is checked out; check out {recorded!r}, or pass --branch to say which to apply"
            )

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        super().close()

    def probe_backend(self) -> None:
        """Read the backend once (managed resources only); raises what the backend raises."""
        self.backend.read(DesiredState())

    def make_plan(self, revision: str, prune: bool = False) -> tuple[Plan, DesiredState, LiveState]:
        """The plan of the next pass: rollouts under way shape it (their next share; a failed one: stable)."""
        desired = self.desired(revision)
        live = self.backend.read(desired)
        record = self.record()
        shaped = shape(load_states(record.extra), desired, live, self.clock(), pinned=record.pinned is not None)
        plan = make_plan(shaped.desired, live, prune=prune)
        if prune and not self.config.allow_empty and not (desired.stages or desired.aliases or desired.mappings):
            self._refuse_empty_prune(plan)
        return plan, desired, live

    def _refuse_empty_prune(self, plan: Plan) -> None:
        """Pruning everything because the specs went empty is almost always a mistake: say so, apply nothing."""
        deletes = [a for a in plan.actions if isinstance(a, DeleteStage | DeleteAlias | DeleteBasePathMapping)]
        if deletes:
            message = (
                f"declares no stage, alias or base path mapping, so --prune would delete all {len(deletes)} managed "
                "stages, aliases and mappings; expected specs, or --allow-empty to empty the backend on purpose"
            )
            raise SpecError([SpecIssue(f"{self.spec_root.strip('/')}/", None, "", message)], plan.revision)

    # ------------------------------------------------------------- reconcile

    def reconcile(
        self,
        rev: str | None = None,
        prune: bool = False,
        rollback: bool = False,
        on_action: Callable[[ActionDone], None] | None = None,
        stop: Callable[[], bool] | None = None,
        touched_only: bool = False,
    ) -> ReconcileResult:
        """One pass; never raises an expected error, it is returned in the result.

        ``touched_only`` (the daemon, after a commit): a backend that can (aws: ``read_touched``) reads
        again only the resources the commit touched; drift elsewhere waits for a pass without it (resync).

        Crash safety of the applied tag: the tag this pass will owe is recorded
        (``pending``) *before* the last action that completes the commit, so a
        kill right after that action commits still leaves it owed; the next pass
        settles it (``_settle_owed_tag``): it makes the tag only if the live state
        matches that revision and no tag of this apply (same ``apply_id``) exists.
        """
        started = time.monotonic()
        self._pending_apply = None
        snapshot = self._use_tag_key(create=True)  # the record as this pass starts: read once, not per step
        revision = ""
        try:
            self.check_checkout()
            revision = self.resolve_target(rev, snapshot)
            self.check_trusted(revision)
        except ReconcilerError as exc:
            error = str(exc)
            self.records.update(self.instance, lambda r: _failed(r, error))
            if isinstance(exc, UnverifiedCommitError):
                log.info("unverified_commit", revision=revision, error=error)
            return ReconcileResult(revision=revision, error=exc, duration=time.monotonic() - started)
        result = ReconcileResult(revision=revision)
        events: list[Event] = []
        try:
            late_tag = self._settle_owed_tag(prune, snapshot)
            record = self.record() if UNTAGGED in snapshot.extra else snapshot  # settling wrote it: read it again
            self._loaded_commands = {r: s.command for r, s in load_states(record.extra).items()}
            record.attempted_revision = revision
            record.last_attempt_at = _now()
            try:
                self._apply_rounds(record, revision, prune, rollback, result, events, on_action, stop, touched_only)
            finally:
                self._emit(events)
            if result.rollouts:  # under way: applied (and tagged) only when every rollout has succeeded
                self._owe(record, revision, result.applied)
                record.last_error = None
                self._save(record)
            else:
                failpoints.hit("after_last_action")
                message = self._tag_message(record, revision, result.applied, rollback)
                if message is None:
                    _applied(record, revision, self.branch_name())
                    self._save(record)
                else:
                    if self._pending_apply is None:  # owed by a rollout's earlier passes, not recorded yet: first
                        record.extra.pop(OWED, None)  # owed for good (so that a kill after the tag makes no second)
                        record.extra[UNTAGGED] = message = {**message, "pending": False}
                        record.last_error = None
                        self._save(record)
                    failpoints.hit("after_applied_record")
                    result.tag = self._tag_and_record(record, revision, message)
                result.tag = result.tag or late_tag
        except ReconcilerError as exc:
            result.error = exc
            text, unowe = str(exc), self._pending_apply
            self.records.update(self.instance, lambda r: _failed(r, text, revision, unowe))
        finally:
            result.duration = time.monotonic() - started
        log.info(
            "reconcile",
            revision=revision,
            actions=len(result.plan.actions) if result.plan else None,
            applied=len(result.applied),
            duration_ms=round(result.duration * 1000, 1),
            result=result.result,
            tag=result.tag,
            error=str(result.error) if result.error else None,
            rollouts_under_way=len(result.rollouts),
        )
        self.save_cache(force=False)  # off the pass: after its result is recorded and logged
        return result

    def _save(self, record: InstanceRecord, durable: bool = True) -> None:
        """Write what a pass owns of ``record`` (everything but the pin, which rollback/resume own) through the
        store's conditional update, so a pin made meanwhile by another process is kept, never overwritten."""

        def change(current: InstanceRecord) -> None:
            theirs = load_states(current.extra)
            for name in PASS_FIELDS:
                setattr(current, name, copy.deepcopy(getattr(record, name)))
            ours, kept = load_states(current.extra), False
            for resource, state in theirs.items():  # a `rollout promote/abort` left since this pass read the record
                mine = ours.get(resource)
                if state.command and state.command != self._loaded_commands.get(resource) and mine and not mine.command:
                    mine.command, kept = state.command, True
            if kept:
                save_states(current.extra, ours)

        self.records.update(self.instance, change, durable)

    def _apply_rounds(
        self,
        record: InstanceRecord,
        revision: str,
        prune: bool,
        rollback: bool,
        result: ReconcileResult,
        events: list[Event],
        on_action: Callable[[ActionDone], None] | None,
        stop: Callable[[], bool] | None,
        touched_only: bool = False,
    ) -> None:
        """Plan and apply; while a rollout moved a weight and needs no wait, read live back and go on."""
        desired = self.desired(revision)
        pinned = rollback or record.pinned is not None
        states = load_states(record.extra)
        planned: list[Action] = []
        read: Callable[[DesiredState], LiveState] = self.backend.read
        if touched_only:
            read = getattr(self.backend, "read_touched", read)
        for _ in range(MAX_ROUNDS):
            with gc_paused():
                live = read(desired)
            now = self.clock()
            done = {} if pinned else analyses(states, desired, now, self.backend)
            for resource, analysis in done.items():
                if analysis.errors:  # neither pass nor failure: retried within seconds, shown in status
                    log.warning("rollout_analysis_inconclusive", resource=resource, errors=list(analysis.errors))
            shaped = shape(states, desired, live, now, done, pinned=pinned)
            memo = self._plan_memo if touched_only else PlanMemo()  # resync, start-up, CLI: every resource afresh
            plan = make_plan(shaped.desired, live, prune=prune, memo=memo)
            self._plan_memo = memo
            if prune and not self.config.allow_empty and not (desired.stages or desired.aliases or desired.mappings):
                self._refuse_empty_prune(plan)
            planned += plan.actions
            if result.plan is None:
                log_warnings(plan)
            result.plan = Plan(plan.revision, tuple(planned), plan.orphans, plan.warnings)
            states = shaped.states
            changed = load_states(record.extra) != states
            save_states(record.extra, states)
            failure = _rollouts_failed(shaped.failed)
            if failure is not None:  # written with the failed phase, so no reader sees one without the other
                record.last_error = failure
            events += shaped.events
            final = not shaped.failed and not shaped.again and not shaped.pending  # these actions finish the commit
            ordered = execution_order(plan.actions)
            if final and ordered:  # the tag they will owe goes into the pass's one durable write, before any action
                listed = [*self._owed(record, revision), *_listed([*result.applied, *ordered])]
                self._owe_tag(record, revision, listed, rollback, prune)
            elif plan.actions or changed:  # the rollout's step is recorded before its weight goes live
                self._save(record)
            number = len(planned) - len(plan.actions) + 1  # of this round's first action, counted over the pass
            for index, action in enumerate(ordered):
                if stop is not None and stop():
                    raise BackendError(
                        "stopped before all actions were applied; the next reconcile resumes", temporary=True
                    )
                failpoints.hit("before_action")
                began = time.monotonic()
                try:
                    self.backend.apply(action)
                except BackendError as exc:
                    self._take_warnings(result)
                    exc.args = (f"{action.action} {action.resource}: {exc}",)
                    if on_action:
                        on_action(ActionDone(action, number + index, len(planned), time.monotonic() - began, exc))
                    raise
                if on_action:
                    on_action(ActionDone(action, number + index, len(planned), time.monotonic() - began))
                result.applied.append(action)
                self._take_warnings(result)
            if failure is not None:
                raise RolloutError(failure)
            if not shaped.again:
                result.rollouts = shaped.pending
                result.wake_at = shaped.wake_at
                return
        raise BackendError(f"rollouts did not settle within {MAX_ROUNDS} rounds; the next reconcile goes on", True)

    def _take_warnings(self, result: ReconcileResult) -> None:
        if isinstance(self.backend, WarningSource):
            result.warnings += self.backend.take_warnings()

    def _emit(self, events: list[Event]) -> None:
        for name, fields in events:
            log.info(name, instance=self.instance, **fields)
            if self.on_event is not None:
                try:
                    self.on_event(name, fields)
                except Exception as exc:  # a listener never breaks a reconcile
                    log.warning("event_hook_failed", event=name, error=str(exc))

    def _owe(self, record: InstanceRecord, revision: str, applied: list[Action]) -> None:
        """Remember actions of an unfinished rollout's passes, for the tag made when it succeeds."""
        owed = self._owed(record, revision)
        owed += _listed(applied)
        record.extra[OWED] = {"revision": revision, "actions": owed[:TAG_ACTIONS_LISTED]}

    @staticmethod
    def _owed(record: InstanceRecord, revision: str) -> list[dict[str, str]]:
        raw = record.extra.get(OWED)
        if not isinstance(raw, dict) or raw.get("revision") != revision:
            return []
        return [a for a in raw.get("actions", []) if isinstance(a, dict)]

    def branch_name(self) -> str | None:
        """The followed branch if known without asking git to guess (None for a detached HEAD)."""
        try:
            return self.branch
        except GitError:
            return None

    def _new_tag_message(
        self, revision: str, listed: list[dict[str, str]], rollback: bool, pending: bool, prune: bool = False
    ) -> dict[str, Any]:
        return {
            "time": _now(),
            "revision": revision,
            "instance": self.instance,
            "backend": self.config.backend,
            "rollback": rollback,
            "action_count": len(listed),
            "actions": listed[:TAG_ACTIONS_LISTED],
            "apply_id": uuid.uuid4().hex,
            "pending": pending,
            "prune": prune,
        }

    def _owe_tag(
        self, record: InstanceRecord, revision: str, listed: list[dict[str, str]], rollback: bool, prune: bool
    ) -> None:
        """Record the tag this apply will owe, marked pending until its last action is known to have committed."""
        owed = self._new_tag_message(revision, listed, rollback, pending=True, prune=prune)
        failpoints.hit("before_owed_record")
        record.extra[UNTAGGED] = owed
        self._save(record)
        self._pending_apply = owed["apply_id"]
        failpoints.hit("after_owed_record")

    def _tag_message(
        self, record: InstanceRecord, revision: str, applied: list[Action], rollback: bool
    ) -> dict[str, Any] | None:
        """The tag this pass owes now that the commit is applied: the pending one recorded before its last action,
        else one for what this pass (and a finished rollout's earlier passes) applied; None if nothing was."""
        current = record.extra.get(UNTAGGED)
        if self._pending_apply is not None and isinstance(current, dict):
            return {**current, "pending": False}
        listed = [*self._owed(record, revision), *_listed(applied)]
        if not listed:
            return None
        return self._new_tag_message(revision, listed, rollback, pending=False)

    def _settle_owed_tag(self, prune: bool, record: InstanceRecord | None = None) -> str | None:
        """Make the tag an earlier pass owes; a pending one only if its apply turned out complete."""
        record = record or self.record()
        owed = record.extra.get(UNTAGGED)
        if not isinstance(owed, dict) or "revision" not in owed:
            return None
        revision = str(owed["revision"])
        apply_id = owed.get("apply_id")
        if owed.get("pending"):  # killed around its last action: did that action commit?
            try:
                plan, _, _ = self.make_plan(revision, prune=bool(owed.get("prune", prune)))
                complete = not plan.actions
            except ReconcilerError:
                complete = False
            if not complete:
                log.info("owed_tag_dropped", revision=revision, reason="its apply did not complete")
                self.records.update(self.instance, lambda r: _unowe(r, apply_id))
                return None
            owed = record.extra[UNTAGGED] = {**owed, "pending": False}
            self._save(record)
        return self._make_owed_tag(owed)

    def _make_owed_tag(self, owed: dict[str, Any]) -> str | None:
        """The tag of one apply, made once (a tag of this instance carrying its ``apply_id`` counts as made); then
        the record says the revision is applied and owes nothing, in one write.  A tag git cannot make stays owed."""
        revision, apply_id = str(owed["revision"]), owed.get("apply_id")
        message = {k: v for k, v in owed.items() if k not in ("pending", "prune")}
        name: str | None
        try:
            made = next(
                (
                    t
                    for t in self.repo.applied_tags(self.instance)
                    if apply_id is not None and t.revision == revision and t.message.get("apply_id") == apply_id
                ),
                None,
            )
            name = made.name if made is not None else self.repo.create_applied_tag(self.instance, revision, message)
        except GitError as exc:  # the apply happened; a tag failure must not undo "applied"
            log.warning("tag_failed", revision=revision, error=str(exc), retried="at the next reconcile")
            name = None
        else:
            failpoints.hit("after_tag")
        branch = self.branch_name()

        def done(record: InstanceRecord) -> None:
            _applied(record, revision, branch)
            if name is not None:
                _unowe(record, apply_id)

        self.records.update(self.instance, done)
        return name

    def _tag_and_record(self, record: InstanceRecord, revision: str, message: dict[str, Any]) -> str | None:
        """The tag of this pass's apply, then the record saying the revision is applied, in one write.

        That write need not reach the disk before the next pass: the owed tag
        (pending) was recorded durably before the first action, so if this
        write is lost the next pass finds the tag by its ``apply_id`` (or makes
        it) and records "applied" then.  The ``apply_id`` is new in this pass,
        so no tag of it can exist yet: git is not asked for the existing tags.
        A tag git cannot make stays owed, and that is written durably.
        """
        apply_id = message.get("apply_id")
        try:
            name: str | None = self.repo.create_applied_tag(
                self.instance, revision, {k: v for k, v in message.items() if k not in ("pending", "prune")}
            )
        except GitError as exc:  # the apply happened; a tag failure must not undo "applied"
            log.warning("tag_failed", revision=revision, error=str(exc), retried="at the next reconcile")
            name = None
        else:
            failpoints.hit("after_tag")
        record.extra.pop(OWED, None)
        _applied(record, revision, self.branch_name())
        if name is None:
            record.extra[UNTAGGED] = {**message, "pending": False}
        else:
            _unowe(record, apply_id)
        self._save(record, durable=name is None)
        return name

    # ------------------------------------------------------------ operations

    def check_trusted(self, revision: str) -> None:
        """What may be applied (DESIGN §11): a commit on the followed branch, signed when a policy says so."""
        self.check_reviewed(revision)
        if self.config.allowed_signers is None and self.config.trusted_gpg_keys is None:
            return
        if self._signatures is None:
            self._signatures = signature_policy(self.config, self.state.path)
        self._signatures.verify(self.repo, revision)

    def check_reviewed(self, revision: str) -> None:
        """Only what the followed branch contains is applied (DESIGN §11): anything else is refused."""
        head = self.head()
        if not self.repo.contains(head, revision):
            raise GitError(
                f"{revision[:12]} is not on branch {self.branch} (its head {head[:12]} does not contain it); "
                "only commits merged into the followed branch are applied (plan --rev previews any commit)"
            )

    def _use_tag_key(self, create: bool) -> InstanceRecord:
        """Give git the instance's tag key (kept in its record; made at the first reconcile); the record read."""
        record = self.record()
        key = record.extra.get(TAG_KEY)
        if not isinstance(key, str) and create:

            def make(record: InstanceRecord) -> None:
                if not isinstance(record.extra.get(TAG_KEY), str):
                    record.extra[TAG_KEY] = secrets.token_hex(32)

            record = self.records.update(self.instance, make)
            key = record.extra.get(TAG_KEY)
        if isinstance(key, str):
            with contextlib.suppress(ValueError):
                self.repo.tag_key = bytes.fromhex(key)
        return record

    def history(self) -> list[AppliedTag]:
        """This instance's applied tags, newest first; ``trusted``: made by this instance, on the followed branch."""
        self._use_tag_key(create=False)
        tags = self.repo.applied_tags(self.instance)
        try:
            on_branch = self.repo.tags_on(self.instance, self.head())
        except GitError:
            on_branch = set()
        return [replace(t, trusted=t.trusted and t.name in on_branch) for t in tags]

    def rollback(
        self, target: str | None, prune: bool = False, on_action: Callable[[ActionDone], None] | None = None
    ) -> ReconcileResult:
        """Apply ``target`` (default: the applied tag before the current one) and pin to it.

        The pin stays after a temporary failure (throttling, a busy backend), so
        that the next reconcile (the daemon's retry) goes on toward ``target``
        instead of re-applying the branch head; a permanent one pins nothing.
        """
        self.check_checkout()
        revision, tag = self._rollback_target(target)
        result = self.reconcile(revision, prune=prune, rollback=True, on_action=on_action)
        if result.error is None or result.error.temporary:

            def pin(record: InstanceRecord) -> None:
                record.pinned = Pin(revision=revision, tag=tag, pinned_at=_now())

            self.records.update(self.instance, pin)
        return result

    def _rollback_target(self, target: str | None) -> tuple[str, str | None]:
        if target is not None:
            tag = self.repo.find_tag(target)
            revision, name = (tag.revision, tag.name) if tag is not None else (self.repo.resolve(target), None)
            self.check_reviewed(revision)
            return revision, name
        every = [t for t in self.history() if t.trusted]  # a tag anyone pushed steers nothing
        if not every:
            raise StateError(
                f"no applied tag that instance {self.instance!r} made on branch {self.branch}; nothing to roll "
                "back to (name a revision on the branch)"
            )
        tags = [t for t in every if not t.message.get("rollback")]
        applied = self.record().applied_revision
        if applied is not None and all(t.revision != applied for t in every):
            applied = every[0].revision  # an in-sync apply tags nothing: live state is still the newest tag's
        current = next((t for t in tags if t.revision == applied), None)
        if current is None:
            raise StateError("no applied tag matches the applied revision; name the tag or revision to roll back to")
        older = next((t for t in tags if t.number < current.number and t.revision != applied), None)
        if older is None:
            raise StateError(f"there is no applied tag before {current.name} to roll back to")
        return older.revision, older.name

    def rollouts(self) -> dict[str, RolloutState]:
        """Every rollout the instance record holds (under way, or finished and still named by the specs)."""
        return load_states(self.record().extra)

    def rollout_command(self, resource: str, command: str) -> RolloutState:
        """Leave ``command`` (promote, promote_full, abort) on a rollout under way; the next pass carries it out.

        It goes through the instance record, so it works beside a running daemon
        (whose watcher wakes on the record; the caller holds the writer lock).
        """
        if command not in COMMANDS:
            raise StateError(f"unknown rollout command {command!r}; expected one of {', '.join(COMMANDS)}")
        left: list[RolloutState] = []

        def leave(record: InstanceRecord) -> None:
            states = load_states(record.extra)
            state = states.get(resource)
            if state is None:
                under_way = ", ".join(sorted(r for r, s in states.items() if s.active)) or "none"
                raise StateError(
                    f"no rollout of {resource}; expected Alias/<function>/<alias> or Stage/<api>/<stage> "
                    f"of a rollout under way (under way: {under_way})"
                )
            if not state.active:
                raise StateError(f"the rollout of {resource} is {state.phase}; expected a rollout under way")
            state.command = command
            save_states(record.extra, states)
            left.append(state)

        self.records.update(self.instance, leave)
        return left[-1]

    def resume(self) -> InstanceRecord:
        def unpin(record: InstanceRecord) -> None:
            record.pinned = None

        return self.records.update(self.instance, unpin)

    def status(self) -> dict[str, Any]:
        """Live state and the instance record (``statusview.status_json``, the document ``/status`` shows too),
        all read afresh: the CLI's ``status`` (the daemon's ``/status`` answers from its worker's snapshot)."""
        record = self.record()
        try:
            head: str | None = self.head()
        except GitError:
            head = None
        target = record.pinned.revision if record.pinned else head
        desired = self._desired_for_status(record, head)
        live_error: str | None = None
        try:
            live = self.backend.read(desired)
        except BackendError as exc:  # e.g. no credentials: the record still says what happened
            live, live_error = LiveState(), str(exc)
        return status_json(
            instance=self.instance,
            backend=self.config.backend,
            branch=self._branch,
            record=record,
            head=head,
            live_changes=None if live_error else self._live_changes(record, target, desired, live),
            live_error=live_error,
            tags={tag.revision: tag.name for tag in reversed(self.history())},
            resources=resources_json(live),
        )

    def _live_changes(
        self, record: InstanceRecord, target: str | None, desired: DesiredState, live: LiveState
    ) -> int | None:
        """How many actions would bring live state to ``target`` when it is the applied revision (0: none,
        drift otherwise); None when that cannot be told cheaply (another revision, or it does not plan)."""
        if target is None or target != record.applied_revision or desired.revision != target:
            return None
        try:
            return len(make_plan(desired, live).actions)
        except SpecError:
            return None

    def _desired_for_status(self, record: InstanceRecord, head: str | None) -> DesiredState:
        """What to ask the backend about: the applied specs, else the head's (best effort)."""
        for revision in (record.applied_revision, head):
            if revision:
                try:
                    return self.desired(revision)
                except (SpecError, GitError):
                    continue
        return DesiredState()


def _failed(record: InstanceRecord, error: str, attempted: str | None = None, unowe: str | None = None) -> None:
    """A pass that failed: its error, and (if it wrote anything) the revision it attempted; an owed tag withdrawn."""
    record.last_error = error
    record.last_attempt_at = _now()
    if attempted is not None:
        record.attempted_revision = attempted
    if unowe is not None:
        _unowe(record, unowe)


def _rollouts_failed(failed: list[RolloutState]) -> str | None:
    """The pass's error when rollouts of its targets failed or halted, else None."""
    if not failed:
        return None
    listed = "; ".join(f"rollout of {s.resource} {s.phase}: {s.message}" for s in failed)
    return listed + " (the commit stays failed until git changes)"


def _applied(record: InstanceRecord, revision: str, branch: str | None) -> None:
    """Every action of ``revision`` succeeded: applied (the first apply records the branch followed)."""
    record.attempted_revision = revision
    record.applied_revision = revision
    record.applied_at = _now()
    record.last_attempt_at = record.applied_at
    record.last_error = None
    if record.branch is None and branch is not None:
        record.branch = branch


def _listed(actions: Iterable[Action]) -> list[dict[str, str]]:
    return [{"action": a.action, "resource": a.resource} for a in actions]


# what a pass writes of the instance record: everything but the pin (rollback/resume) and the store's own fields
PASS_FIELDS = tuple(
    f.name for f in dataclasses.fields(InstanceRecord) if f.name not in ("instance", "pinned", "version")
)


def _unowe(record: InstanceRecord, apply_id: Any) -> None:
    """Forget the owed tag of the apply ``apply_id`` (a newer one owed meanwhile stays)."""
    current = record.extra.get(UNTAGGED)
    if isinstance(current, dict) and current.get("apply_id") == apply_id:
        del record.extra[UNTAGGED]
