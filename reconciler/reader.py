"""Reading an instance's specs: its repository, state directory, records and parse cache, and which revision.

``SpecReader`` is what ``validate`` needs and nothing more (no backend, plan,
rollouts or logging), so that command imports only this module's few
dependencies; ``engine.Engine`` is a ``SpecReader`` that also reconciles.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import GitError, UsageError
from reconciler.gitsource import (
    WORKTREE,
    GitRepo,
    SshIdentity,
    WorktreeSpecSource,
    check_branch_name,
    clone_or_open,
    is_remote,
)
from reconciler.parsecache import ParseCache
from reconciler.records import RecordStore
from reconciler.specs import DesiredState, SpecMemo, load_desired
from reconciler.state import InstanceRecord, StateDir
from reconciler.statepath import state_path, url_state_path
from reconciler.stores import make_record_store

CACHE_SAVE_INTERVAL = 30.0  # seconds between parse cache writes of a long-lived engine (and at close)


@dataclass(frozen=True)
class Config:
    """Everything a reconcile needs to know; built by the CLI from flags/env."""

    repo: str = "."
    branch: str | None = None
    path: str = "deploy_specs"
    backend: str = "local"
    state_dir: str | None = None
    instance: str = "default"
    region: str | None = None
    endpoint_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    lock: str | None = None  # --lock dynamodb://TABLE: the instance record lives in that table too (DESIGN §13)
    allow_empty: bool = False  # let prune empty the backend when the specs declare nothing (Argo CD's allowEmpty)
    allowed_signers: str | None = None  # git's SSH allowed-signers file: applied commits must be signed by one
    trusted_gpg_keys: str | None = None  # armored OpenPGP public keys: the same, for GPG signatures


_gc_lock = threading.Lock()
_gc_pause = [0, False]  # threads inside ``gc_paused``; whether the collector was enabled when the first entered


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a pass builds its (acyclic) desired and live state.

    Loading 10,000 documents allocates a few hundred thousand containers; the
    collector, triggered every 700 allocations, would walk the growing heap
    over and over (about a fifth of a cold load).  What is built is freed by
    reference counting; the collector runs again once the last thread leaves.
    """
    with _gc_lock:
        if _gc_pause[0] == 0:
            _gc_pause[1] = gc.isenabled()
            gc.disable()
        _gc_pause[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause[0] -= 1
            if _gc_pause[0] == 0 and _gc_pause[1]:
                gc.enable()


def default_state_path(config: Config, repo: GitRepo) -> Path:
    """``--state-dir``, else ``<git-dir>/reconciler/`` (for a URL: see ``statepath.url_state_path``)."""
    if is_remote(config.repo):
        return url_state_path(config.state_dir)
    return state_path(config.state_dir, repo)


def open_repo(config: Config) -> GitRepo:
    """The repository ``--repo`` names; a URL is cloned into (or fetched in) ``--workdir``."""
    if not is_remote(config.repo):
        return GitRepo(config.repo)
    state = url_state_path(config.state_dir)
    workdir = Path(config.extra.get("workdir") or state / "repo")
    ssh = SshIdentity(config.extra.get("ssh_key"), config.extra.get("known_hosts"))
    return clone_or_open(config.repo, workdir, config.branch or "main", ssh=ssh)


class SpecReader:
    """The specs of one instance of one repository/branch/specs root: which revision to read, and reading it."""

    def __init__(
        self, config: Config, repo: GitRepo | None = None, records: RecordStore | None = None, memo: bool = True
    ) -> None:
        """``memo``: keep what a load validated and resolved (and its indexes) for the next load to start from;
        a reader that loads once (``validate``) would only pay for building it."""
        if config.branch is not None:
            check_branch_name(config.branch)
        self.config = config
        self.repo = repo or open_repo(config)
        self.state = StateDir(default_state_path(config, self.repo))
        self.records: RecordStore = records or make_record_store(
            config.lock, self.state, region=config.region, endpoint_url=config.endpoint_url
        )
        self._branch = config.branch
        self._cache: ParseCache | None = None  # loaded once: a long-lived engine (the daemon) keeps it in memory
        self._cache_saved = float("-inf")  # when the parse cache file was last written
        self._memo = SpecMemo() if memo else None  # the last load's: the next validates only changed files
        self.last_desired: DesiredState | None = None  # the last desired state loaded (replaced, never changed)

    @property
    def branch(self) -> str:
        """The followed branch: ``--branch``, else the one the first apply recorded, else the current branch."""
        if self._branch is None:
            self._branch = self.record().branch or self.repo.current_branch()
        return self._branch

    def preview_target(self, rev: str | None, pinned: bool = True) -> str:
        """What ``plan``/``validate`` read: ``rev``; else, on the followed branch, the pin (if ``pinned``) or the
        head; else the checked-out commit, even a detached HEAD (a PR preview: what merging it would change)."""
        if rev is not None or self.config.branch is not None or is_remote(self.config.repo):
            return self.resolve_target(rev) if pinned or rev is not None else self.head()
        current = self.repo.checked_out_branch()
        followed = self.record().branch or current
        if current is not None and current == followed:
            return self.resolve_target(None) if pinned else self.head()
        return self.repo.resolve_head()

    @property
    def spec_root(self) -> str:
        """``--path`` relative to the repository root; an absolute one must lie inside the checkout."""
        path = self.config.path
        if not os.path.isabs(path):
            return path
        if is_remote(self.config.repo) or self.repo.repo.working_tree_dir is None:
            raise UsageError(f"--path {path}: expected a folder relative to the repository root")
        root = self.repo.root.resolve()
        target = Path(path).resolve()
        if not target.is_relative_to(root):
            raise UsageError(
                f"--path {path}: outside the repository {root}; expected a folder inside it "
                "(or a path relative to its root)"
            )
        return target.relative_to(root).as_posix() or "."

    @property
    def instance(self) -> str:
        return self.config.instance

    def close(self) -> None:
        self.save_cache()
        self.records.close()
        self.repo.close()

    def record(self) -> InstanceRecord:
        return self.records.load(self.instance)

    def head(self) -> str:
        return self.repo.branch_head(self.branch)

    def resolve_target(self, rev: str | None, record: InstanceRecord | None = None) -> str:
        """An explicit revision, else the pin, else the branch head (``record``: the record just read, if any)."""
        if rev is not None:
            tag = self.repo.find_tag(rev)
            return tag.revision if tag else self.repo.resolve(rev)
        pinned = (record or self.record()).pinned
        if pinned is None:
            return self.head()
        try:
            return self.repo.resolve(pinned.revision)
        except GitError:  # e.g. the pinned commit was on a branch since deleted and garbage-collected
            raise GitError(
                f"the instance is pinned to {pinned.revision[:12]}, which is no longer in the repository; "
                "`reconciler resume` to follow the branch, or roll back to another revision"
            ) from None

    def desired(self, revision: str) -> DesiredState:
        if self._cache is None:
            self._cache = self.state.load_cache()
        cache = self._cache
        with gc_paused():
            if revision == WORKTREE:  # validate/plan --worktree: uncommitted edits (never applied)
                return load_desired(WorktreeSpecSource(self.repo, self.spec_root), cache)
            state = load_desired(self.repo.spec_source(revision, self.spec_root), cache, self._memo)
        self.last_desired = state
        return state

    def save_cache(self, force: bool = True) -> None:
        """Persist newly parsed specs: at ``close``, and after a pass at most every ``CACHE_SAVE_INTERVAL`` s.

        The file only spares the next process the parsing; a long-lived engine
        keeps the cache in memory, so rewriting it after every pass would only
        delay the next one (a crash loses at most the last interval's entries).
        """
        if self._cache is None:
            return
        now = time.monotonic()
        if force or now - self._cache_saved >= CACHE_SAVE_INTERVAL:
            self._cache.save()
            self._cache_saved = now
