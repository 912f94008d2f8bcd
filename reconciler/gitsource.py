"""Git access (GitPython): revisions, the spec files of a commit, applied tags.

The only module that runs git.  Specs are always read from commit objects
(``git ls-tree`` + blob streams), never from the working tree, so an
uncommitted edit or a symlink in the checkout can never leak into a plan.
Used by the engine.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
from git.exc import BadName, GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from reconciler.errors import GitError
from reconciler.specs import SourceFile

TAG_PREFIX = "applied"
_TAG_RE = re.compile(r"applied/(?P<instance>[^/]+)/(?P<n>[0-9]+)")
_RS = "\x1e"


def _quiet_git_env() -> None:
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")


@dataclass(frozen=True)
class AppliedTag:
    name: str
    instance: str
    number: int
    revision: str
    message: dict[str, Any]
    tagged_at: str | None

    def as_json(self) -> dict[str, Any]:
        actions = self.message.get("actions", [])
        count = self.message.get("action_count", len(actions) if isinstance(actions, list) else 0)
        return {
            "tag": self.name,
            "revision": self.revision,
            "applied_at": self.message.get("time") or self.tagged_at,
            "actions": count,
            "rollback": bool(self.message.get("rollback", False)),
        }


class GitRepo:
    """One local repository (a checkout or a clone in the work dir)."""

    def __init__(self, path: str | Path) -> None:
        _quiet_git_env()
        try:
            self.repo = git.Repo(path, search_parent_directories=True)
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise GitError(f"{path} is not inside a git repository; expected --repo to name one") from None
        if self.repo.working_tree_dir is None:
            self.root = Path(self.repo.git_dir)
        else:
            self.root = Path(self.repo.working_tree_dir)

    @property
    def git_dir(self) -> Path:
        return Path(self.repo.git_dir)

    @property
    def common_dir(self) -> Path:
        return Path(self.repo.common_dir)

    def close(self) -> None:
        self.repo.close()

    # ------------------------------------------------------------- revisions

    def current_branch(self) -> str:
        try:
            return self.repo.active_branch.name
        except TypeError:
            raise GitError("HEAD is detached; pass --branch to say which branch to follow") from None

    def resolve(self, rev: str) -> str:
        """The full commit sha that ``rev`` (branch, tag, sha) names."""
        try:
            return self.repo.commit(rev).hexsha
        except (BadName, ValueError, GitCommandError):
            raise GitError(f"unknown revision {rev!r}; expected a branch, tag or commit of {self.root}") from None

    def branch_head(self, branch: str) -> str:
        try:
            return self.repo.commit(f"refs/heads/{branch}").hexsha
        except (BadName, ValueError, GitCommandError):
            pass
        try:
            return self.repo.commit(f"refs/remotes/origin/{branch}").hexsha
        except (BadName, ValueError, GitCommandError):
            raise GitError(f"branch {branch!r} does not exist in {self.root}; expected --branch to name one") from None

    def commit_time(self, revision: str) -> float:
        return float(self.repo.commit(revision).committed_date)

    # ----------------------------------------------------------------- specs

    def spec_source(self, revision: str, root: str) -> GitSpecSource:
        return GitSpecSource(self, revision, root)

    def list_tree(self, revision: str, root: str) -> list[SourceFile]:
        root = root.strip("/") or "."
        try:
            out = self.repo.git.ls_tree("-r", "-l", "-z", "--full-tree", revision, "--", root)
        except GitCommandError as exc:
            raise GitError(f"cannot list {root}/ at {revision[:12]}: {exc.stderr.strip()}") from None
        files: list[SourceFile] = []
        for record in out.split("\x00"):
            if not record:
                continue
            meta, _, path = record.partition("\t")
            mode, kind, sha, size = meta.split(None, 3)
            if kind == "commit":  # submodule
                continue
            files.append(
                SourceFile(path=path, sha=sha, size=int(size) if size.strip() != "-" else 0, mode=int(mode, 8))
            )
        if not files and root != ".":
            raise GitError(
                f"the specs root {root}/ does not exist at {revision[:12]}; expected --path to name a folder"
            )
        return files

    def read_blob(self, sha: str) -> bytes:
        data: bytes = self.repo.odb.stream(bytes.fromhex(sha)).read()
        return data

    # ------------------------------------------------------------------ tags

    def applied_tags(self, instance: str) -> list[AppliedTag]:
        """This instance's applied tags, newest (highest number) first."""
        fmt = f"%(refname:strip=2)%00%(*objectname)%00%(objectname)%00%(taggerdate:iso-strict)%00%(contents){_RS}"
        try:
            out = self.repo.git.for_each_ref(f"--format={fmt}", f"refs/tags/{TAG_PREFIX}/{instance}/")
        except GitCommandError as exc:
            raise GitError(f"cannot list tags: {exc.stderr.strip()}") from None
        tags: list[AppliedTag] = []
        for record in out.split(_RS):
            record = record.lstrip("\n")
            if not record:
                continue
            name, peeled, obj, date, contents = (record.split("\x00", 4) + [""] * 5)[:5]
            match = _TAG_RE.fullmatch(name)
            if not match:
                continue
            try:
                message = json.loads(contents.strip() or "{}")
            except json.JSONDecodeError:
                message = {}
            if not isinstance(message, dict):
                message = {}
            tags.append(AppliedTag(name, instance, int(match["n"]), peeled or obj, message, date or None))
        tags.sort(key=lambda t: t.number, reverse=True)
        return tags

    def find_tag(self, name: str) -> AppliedTag | None:
        match = _TAG_RE.fullmatch(name)
        if not match:
            return None
        return next((t for t in self.applied_tags(match["instance"]) if t.name == name), None)

    def create_applied_tag(self, instance: str, revision: str, message: dict[str, Any]) -> str:
        """Tag ``revision`` as ``applied/<instance>/<n+1>`` with a JSON message."""
        for _ in range(5):
            tags = self.applied_tags(instance)
            number = (tags[0].number if tags else 0) + 1
            name = f"{TAG_PREFIX}/{instance}/{number}"
            body = json.dumps({**message, "tag": name}, sort_keys=True)
            try:
                with (
                    tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".json") as handle,
                    self.repo.git.custom_environment(**self._identity()),
                ):
                    handle.write(body)
                    handle.flush()
                    self.repo.git.tag("-a", name, revision, "-F", handle.name)
                return name
            except OSError as exc:
                raise GitError(f"cannot create tag {name}: {exc}") from None
            except GitCommandError as exc:
                if "already exists" in (exc.stderr or ""):
                    continue
                raise GitError(f"cannot create tag {name}: {exc.stderr.strip()}") from None
        raise GitError(f"cannot create an applied tag for {instance}: the numbers keep being taken")

    def _identity(self) -> dict[str, str]:
        reader = self.repo.config_reader()
        env: dict[str, str] = {}
        if not reader.has_option("user", "name") and "GIT_COMMITTER_NAME" not in os.environ:
            env["GIT_COMMITTER_NAME"] = "reconciler"
        if not reader.has_option("user", "email") and "GIT_COMMITTER_EMAIL" not in os.environ:
            env["GIT_COMMITTER_EMAIL"] = "reconciler@localhost"
        return env


class GitSpecSource:
    """The files below the specs root at one commit (implements ``specs.SpecSource``)."""

    def __init__(self, repo: GitRepo, revision: str, root: str) -> None:
        self.repo = repo
        self.revision = revision
        self.root = root.strip("/") or "."
        self._files: list[SourceFile] | None = None

    def files(self) -> Iterator[SourceFile]:
        if self._files is None:
            self._files = self.repo.list_tree(self.revision, self.root)
        return iter(self._files)

    def read(self, file: SourceFile) -> bytes:
        return self.repo.read_blob(file.sha)
