"""Git access (GitPython): revisions, the spec files of a commit, applied tags.

The only module that runs git.  Specs are read from commit objects
(``git ls-tree`` + blob streams), never from the working tree, so an
uncommitted edit or a symlink in the checkout can never leak into an apply;
only ``validate``/``plan --worktree`` read the working tree on purpose
(``WorktreeSpecSource``, for pre-commit hooks and editors).
Used by the engine.  Remote access (clone, fetch, tag push) runs git with
an environment of its own: no prompts, the HTTPS token through a credential
helper, the SSH key and known_hosts through ``GIT_SSH_COMMAND`` (only for the
git processes started here).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import git
from git.exc import BadName, GitCommandError, InvalidGitRepositoryError, NoSuchPathError
from gitdb import IStream, LooseObjectDB  # type: ignore[import-untyped]  # GitPython's object store, untyped

from reconciler import failpoints
from reconciler.errors import GitError, UnverifiedCommitError, UsageError
from reconciler.specs import MODE_SUBMODULE, MODE_SYMLINK, SourceFile

TAG_PREFIX = "applied"
_TAG_RE = re.compile(r"applied/(?P<instance>[^/]+)/(?P<n>[0-9]+)")
_RS = "\x1e"
MODE_TREE = 0o040000
BATCH_BLOBS = 16  # fewer blobs are read one by one through the persistent cat-file (no process to start)


def _feed(stream: Any, data: bytes) -> None:
    """Write ``data`` to a child's stdin and close it (from a thread, so that its stdout is read meanwhile)."""
    with contextlib.suppress(OSError):
        stream.write(data)
    with contextlib.suppress(OSError):
        stream.close()


def _quiet_git_env() -> None:
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")


# ------------------------------------------------------- remote repositories

_REMOTE_RE = re.compile(r"^(?:(?:https?|ssh|git|file)://|[\w.-]+@[\w.-]+:)")
# the userinfo of a URL runs to the last "@" before the path: a password may hold "@" itself
_CREDENTIALS_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]*@")
FETCH_TIMEOUT = 120.0
# Reads the token from the environment when git asks, so it is never in a URL, argv or config file; and
# answers only a request for the remote's own host over HTTPS (git hands the helper protocol= and host=),
# besides being configured for that URL alone (``credential.https://<host>.helper``).
_TOKEN_HELPER = (
    '!f() { test "$1" = get || return 0; p=; h=; '
    'while IFS= read -r line; do case "$line" in '
    '"protocol=https") p=1 ;; "host=$RECONCILER_GIT_TOKEN_HOST") h=1 ;; esac; done; '
    'test "$p$h" = 11 || return 0; '
    'echo "username=${RECONCILER_GIT_USERNAME:-x-access-token}"; echo "password=$RECONCILER_GIT_TOKEN"; }; f'
)


def is_remote(repo: str) -> bool:
    """Whether ``--repo`` names a URL (``https://``, ``ssh://``, ``file://``, ``git@host:``) rather than a path."""
    return bool(_REMOTE_RE.match(repo))


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it masked; safe to log."""
    return _CREDENTIALS_RE.sub(r"\g<scheme>***@", text)


def check_branch_name(name: str) -> None:
    """Refuse a ``--branch`` that is no plain branch name (``main~0``, ``@{-1}``, ``main:refs/x``, ``HEAD``)."""
    try:  # run outside any repository, so that @{-N} is not expanded to a branch checked out before
        shown = str(git.Git("/").check_ref_format("--branch", name)).strip()
    except GitCommandError:
        shown = ""
    if not name or shown != name or name.startswith("-"):
        raise UsageError(
            f"--branch {name!r} (or $RECONCILER_BRANCH): not a branch name (git check-ref-format --branch); "
            "expected a branch such as main"
        )


def work_tree_of(path: Path) -> Path | None:
    """The root of the git work tree that ``path`` (or its nearest existing parent) lies in; None if none.

    A path inside a git directory (``.git/...``) is in no work tree.
    """
    anchor = path
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        anchor = anchor.parent
    try:
        runner = git.Git(str(anchor))
        if runner.rev_parse("--is-inside-work-tree").strip() != "true":
            return None
        return Path(runner.rev_parse("--show-toplevel").strip()).resolve()
    except (GitCommandError, OSError):
        return None


def git_common_dir(work_tree: Path) -> Path | None:
    """The (common) git directory of the work tree at ``work_tree``."""
    try:
        out = git.Git(str(work_tree)).rev_parse("--path-format=absolute", "--git-common-dir")
    except (GitCommandError, OSError):
        return None
    return Path(str(out).strip()).resolve()


def tracked_files(work_tree: Path, path: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` files below ``path`` that the repository of ``work_tree`` tracks (its index)."""
    try:
        out = git.Git(str(work_tree)).ls_files("-z", "--", str(path))
    except (GitCommandError, OSError):
        return []
    return [name for name in str(out).split("\x00") if name][:limit]


_VERDICT_WORDS = re.compile(r"signature|principal|public key", re.IGNORECASE)


class SignaturePolicy:
    """Whose signatures make a commit applicable (DESIGN §11): ``--allowed-signers`` and ``--trusted-gpg-keys``.

    ``git verify-commit`` decides, with this policy's files passed by ``-c`` and
    ``GNUPGHOME`` (never the user's own keyring or allowed-signers file): SSH
    signatures against git's allowed-signers file, OpenPGP ones against a private
    keyring into which the armored keys are imported (one per content of the
    file, under ``gnupg_root``, so a key removed from the file is no longer
    trusted).
    """

    def __init__(self, allowed_signers: str | None, trusted_gpg_keys: str | None, gnupg_root: Path) -> None:
        self.allowed_signers = _readable("--allowed-signers", allowed_signers)
        keys = _readable("--trusted-gpg-keys", trusted_gpg_keys)
        self.gnupghome = _keyring(keys, gnupg_root) if keys is not None else gnupg_root / "empty"
        if keys is None:
            self.gnupghome.mkdir(mode=0o700, parents=True, exist_ok=True)

    def verify(self, repo: GitRepo, revision: str) -> None:
        """Raise ``UnverifiedCommitError`` unless ``revision`` carries a good signature of an allowed key."""
        try:
            header = str(repo.repo.git.cat_file("commit", revision)).split("\n\n", 1)[0]
        except GitCommandError as exc:
            raise GitError(f"cannot read commit {revision[:12]}: {exc.stderr.strip()}") from None
        if not re.search(r"^gpgsig(-sha256)? ", header, re.MULTILINE):
            raise UnverifiedCommitError(revision, "not signed")
        signers = str(self.allowed_signers) if self.allowed_signers is not None else os.devnull
        argv = ["git", "-c", f"gpg.ssh.allowedSignersFile={signers}", "-c", "gpg.ssh.program=ssh-keygen"]
        argv += ["-c", "gpg.program=gpg", "-c", "gpg.minTrustLevel=undefined", "verify-commit", revision]
        env = {**os.environ, "GNUPGHOME": str(self.gnupghome), "GIT_DIR": str(repo.git_dir)}
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(f"cannot verify commit {revision[:12]}: {exc}", temporary=True) from None
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            said = next((line for line in reversed(lines) if _VERDICT_WORDS.search(line)), "")
            kind = "SSH" if "SSH SIGNATURE" in header else "OpenPGP"
            detail = f" ({said.removeprefix('gpg: ')})" if said else ""
            raise UnverifiedCommitError(revision, f"no good {kind} signature by a trusted key{detail}")


def _readable(flag: str, path: str | None) -> Path | None:
    if path is None:
        return None
    if not os.access(path, os.R_OK) or not Path(path).is_file():
        env = "RECONCILER_" + flag.removeprefix("--").replace("-", "_").upper()
        raise UsageError(f"{flag} {path} (or ${env}): no readable file there")
    return Path(path).resolve()


def _keyring(keys: Path, root: Path) -> Path:
    """A GnuPG home holding exactly the public keys of ``keys`` (armored), made once per content of that file."""
    data = keys.read_bytes()
    home = root / hashlib.sha256(data).hexdigest()[:16]
    if (home / "imported").exists():
        return home
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".import-"))
    try:
        gpg = ["gpg", "--batch", "--no-autostart", "--quiet", "--homedir", str(work)]
        # gpg exits 2 when it cannot reach an agent (a long home path), having imported the keys all the same:
        # what counts is what the keyring holds afterwards
        imported = subprocess.run([*gpg, "--import", str(keys)], capture_output=True, text=True, timeout=60)
        listed = subprocess.run([*gpg, "--list-keys", "--with-colons"], capture_output=True, text=True, timeout=60)
        if not any(line.startswith("pub:") for line in listed.stdout.splitlines()):
            detail = " ".join(imported.stderr.split())[:200]
            raise UsageError(
                f"--trusted-gpg-keys {keys}: no OpenPGP public key imported; expected armored keys ({detail})"
            )
        (work / "imported").touch()
        try:
            os.rename(work, home)
        except OSError:  # made meanwhile by another process: theirs is as good
            shutil.rmtree(work, ignore_errors=True)
    except FileNotFoundError:
        shutil.rmtree(work, ignore_errors=True)
        raise UsageError("--trusted-gpg-keys needs gpg (GnuPG) installed") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return home


@dataclass(frozen=True)
class SshIdentity:
    """A mounted SSH key and known_hosts file (``--ssh-key``, ``--known-hosts``) for SSH remotes."""

    key: str | None = None
    known_hosts: str | None = None

    def check(self) -> None:
        """Both files, when named, must be readable: a clear error at start instead of ssh's later."""
        for flag, path in (("--ssh-key", self.key), ("--known-hosts", self.known_hosts)):
            if path is not None and not os.access(path, os.R_OK):
                raise GitError(f"{flag} {path}: no readable file there; expected a mounted {flag[2:]} file")

    def command(self) -> str:
        """``GIT_SSH_COMMAND``: never prompts, only this key, only hosts in this known_hosts."""
        argv = ["ssh", "-o", "BatchMode=yes"]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            argv += ["-o", f'UserKnownHostsFile="{self.known_hosts}"', "-o", "StrictHostKeyChecking=yes"]
        return shlex.join(argv)


def token_host(url: str) -> str | None:
    """``host[:port]`` of an ``https://`` URL (the only kind the token is offered to), else None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or not parts.netloc:
        return None
    return parts.netloc.rpartition("@")[2] or None


def _remote_env(ssh: SshIdentity | None = None, url: str = "") -> dict[str, str]:
    """Environment for git commands that talk to the remote: no prompts, token via a helper, the SSH identity.

    The token helper is configured for the remote's own ``https://host[:port]`` only (every other helper
    reset), so git never offers it over plain HTTP or to another host, e.g. after a redirect.
    """
    env = {"GIT_TERMINAL_PROMPT": "0"}
    if ssh is not None and (ssh.key or ssh.known_hosts):
        env["GIT_SSH_COMMAND"] = ssh.command()
    elif "GIT_SSH_COMMAND" not in os.environ:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    host = token_host(url)
    if os.environ.get("RECONCILER_GIT_TOKEN") and host is not None:
        env.update(
            GIT_CONFIG_COUNT="2",
            GIT_CONFIG_KEY_0="credential.helper",
            GIT_CONFIG_VALUE_0="",
            GIT_CONFIG_KEY_1=f"credential.https://{host}.helper",
            GIT_CONFIG_VALUE_1=_TOKEN_HELPER,
            RECONCILER_GIT_TOKEN_HOST=host,
        )
    elif os.environ.get("RECONCILER_GIT_TOKEN"):
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="credential.helper", GIT_CONFIG_VALUE_0="")
    return env


def _stderr_line(exc: GitCommandError) -> str:
    """git's own message from a failed command, on one line, credentials masked."""
    text = str(exc.stderr or "").strip()
    if text.startswith("stderr:"):
        text = text.removeprefix("stderr:").strip().strip("'")
    return redact(" ".join(text.split())) or f"exit status {exc.status}"


def clone_or_open(url: str, workdir: Path, branch: str, ssh: SshIdentity | None = None) -> GitRepo:
    """A bare clone of ``url`` in ``workdir`` (created on first use), with ``branch`` fetched now.

    The clone keeps ``refs/heads/<branch>`` equal to the remote's (forced), fetches
    no tags with the branch (applied tags are fetched apart, by ``fetch_applied_tags``,
    when they are pushed), and points HEAD at the branch.
    """
    _quiet_git_env()
    if ssh is not None:
        ssh.check()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "HEAD").exists():
            if any(workdir.iterdir()):
                raise GitError(f"the work dir {workdir} is not empty and not a git repository; expected --workdir")
            git.Repo.init(workdir, bare=True)
    except OSError as exc:
        raise GitError(f"cannot create the work dir {workdir}: {exc.strerror}") from None
    repo = GitRepo(workdir, ssh=ssh)
    try:
        if "origin" in [r.name for r in repo.repo.remotes]:
            repo.repo.git.remote("set-url", "origin", url)
        else:
            repo.repo.git.remote("add", "origin", url)
        repo.repo.git.symbolic_ref("HEAD", f"refs/heads/{branch}")
    except GitCommandError as exc:
        raise GitError(f"cannot configure the work dir {workdir}: {redact(exc.stderr.strip())}") from None
    repo.fetch(branch)
    return repo


@dataclass(frozen=True)
class AppliedTag:
    name: str
    instance: str
    number: int
    revision: str
    message: dict[str, Any]
    tagged_at: str | None
    trusted: bool = False  # made by this instance (its MAC checks out) and, once the engine says so, on the branch

    def as_json(self) -> dict[str, Any]:
        actions = self.message.get("actions", [])
        count = self.message.get("action_count", len(actions) if isinstance(actions, list) else 0)
        return {
            "tag": self.name,
            "revision": self.revision,
            "applied_at": self.message.get("time") or self.tagged_at,
            "actions": count,
            "rollback": bool(self.message.get("rollback", False)),
            "trusted": self.trusted,
        }


def tag_mac(key: bytes, instance: str, name: str, revision: str) -> str:
    """The proof an applied tag carries that this instance made it, for this commit, under this name."""
    return hmac.new(key, f"{instance}\x00{name}\x00{revision}".encode(), hashlib.sha256).hexdigest()


class TagTakenError(GitError):
    """The remote already has a different tag of the name being pushed (another replica took the number)."""


class GitRepo:
    """One local repository (a checkout or a clone in the work dir)."""

    def __init__(self, path: str | Path, ssh: SshIdentity | None = None) -> None:
        _quiet_git_env()
        self.ssh = ssh
        self.tag_key: bytes | None = None  # the instance's secret: applied tags made here carry its MAC
        try:
            self.repo = git.Repo(path, search_parent_directories=True)
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise GitError(f"{path} is not inside a git repository; expected --repo to name one") from None
        self._tag_numbers: dict[str, int] = {}  # instance -> highest applied tag number seen or made
        self._packed_stamp: tuple[int, int] | None = None  # packed-refs (mtime, size) when the numbers were read
        self._tagger_identity: tuple[str, str] | None = None
        self._loose: Any = None  # gitdb LooseObjectDB, made on the first tag
        self._trees: dict[tuple[bytes, str], list[SourceFile]] = {}  # the last listing, by (tree id, path prefix)
        self._sizes: dict[str, int] = {}  # blob id -> size (a blob never changes)
        self._commits: set[str] = set()  # ids checked to be commits (an object never changes)
        self._objects = str(Path(self.repo.common_dir) / "objects")
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
        branch = self.checked_out_branch()
        if branch is None:
            raise GitError("HEAD is detached; pass --branch to say which branch to follow")
        return branch

    def checked_out_branch(self) -> str | None:
        """The branch HEAD names (even one with no commit yet), None for a detached HEAD."""
        try:
            return self.repo.active_branch.name
        except TypeError:
            return None

    def has_commits(self) -> bool:
        try:
            return bool(self.repo.git.rev_list("-n", "1", "--all").strip())
        except GitCommandError:
            return False

    def _no_commits(self) -> GitError:
        return GitError(f"the repository {self.root} has no commits yet; commit the specs first")

    def resolve_head(self) -> str:
        """The commit checked out (a branch's head or a detached HEAD)."""
        if not self.has_commits():
            raise self._no_commits()
        return self.resolve("HEAD")

    def resolve(self, rev: str) -> str:
        """The full commit sha that ``rev`` (branch, tag, sha) names."""
        try:  # rev-parse --verify checks that the commit exists (GitPython takes a full sha on trust)
            sha: str = self.repo.git.rev_parse("--verify", "--end-of-options", f"{rev}^{{commit}}")
        except GitCommandError:
            raise GitError(f"unknown revision {rev!r}; expected a branch, tag or commit of {self.root}") from None
        return sha.strip()

    def branch_head(self, branch: str) -> str:
        for ref in (f"refs/heads/{branch}", f"refs/remotes/origin/{branch}"):
            try:  # the ref file (or packed-refs) read in-process; a commit id seen before is not looked up again
                sha = str(git.SymbolicReference.dereference_recursive(self.repo, ref))
            except (ValueError, TypeError, OSError):
                continue
            if sha in self._commits:
                return sha
            with contextlib.suppress(ValueError, GitCommandError, BadName):
                if self._object(bytes.fromhex(sha))[0] == b"commit":
                    self._commits.add(sha)
                    return sha
            break
        try:
            return self._commit_id(f"refs/heads/{branch}")
        except (BadName, ValueError, GitCommandError):
            pass
        try:
            return self._commit_id(f"refs/remotes/origin/{branch}")
        except (BadName, ValueError, GitCommandError):
            if not self.has_commits():
                raise self._no_commits() from None
            raise GitError(f"branch {branch!r} does not exist in {self.root}; expected --branch to name one") from None

    def branch_ref(self, branch: str) -> str | None:
        """The commit id the branch's ref names (``refs/heads/``, else ``origin``'s), None if neither exists.

        Read from the ref files alone (no object read, no git process), so another thread may call it beside
        the one using this repository (the daemon's ``/status`` beside its worker).
        """
        for ref in (f"refs/heads/{branch}", f"refs/remotes/origin/{branch}"):
            try:
                return str(git.SymbolicReference.dereference_recursive(self.repo, ref))
            except (ValueError, TypeError, OSError):
                continue
        return None

    def _commit_id(self, rev: str) -> str:
        """The id of the commit ``rev`` names (checked to be one, once per id)."""
        sha = str(self.repo.commit(rev).hexsha)
        if len(self._commits) > 10_000:
            self._commits.clear()
        self._commits.add(sha)
        return sha

    def _root_tree(self, revision: str) -> bytes:
        """The id of ``revision``'s root tree; a full commit id is read with one object request."""
        if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
            kind, data = self._object(bytes.fromhex(revision))
            if kind == b"commit" and data.startswith(b"tree ") and data[45:46] == b"\n":
                return bytes.fromhex(data[5:45].decode("ascii"))
        return bytes(self.repo.commit(revision).tree.binsha)

    def commit_time(self, revision: str) -> float:
        """When ``revision`` was committed (Unix seconds); a full commit id is read without git."""
        if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
            kind, data = self._object(bytes.fromhex(revision))
            for line in data.split(b"\n") if kind == b"commit" else ():
                if not line:
                    break  # the headers end here: no committer line (git always writes one)
                if line.startswith(b"committer "):
                    stamp = line.rsplit(b" ", 2)
                    if len(stamp) == 3 and stamp[1].isdigit():
                        return float(stamp[1])
        return float(self.repo.commit(revision).committed_date)

    # ---------------------------------------------------------------- remote

    def _origin_url(self) -> str:
        """The ``origin`` URL as configured (credentials included: never log it; see ``remote_url``)."""
        try:
            return str(self.repo.git.config("--get", "remote.origin.url")).strip()
        except GitCommandError:
            return ""

    def remote_url(self) -> str:
        """The ``origin`` URL with credentials masked (for logs and messages)."""
        try:
            return redact(self.repo.remotes.origin.url)
        except (AttributeError, IndexError, ValueError):
            return "(no origin)"

    def fetch(self, branch: str) -> str:
        """Force ``refs/heads/<branch>`` to the remote's; return its sha.  Failures are temporary."""
        try:
            with self.repo.git.custom_environment(**_remote_env(self.ssh, self._origin_url())):
                self.repo.git.fetch(
                    "--no-tags",
                    "--quiet",
                    "origin",
                    f"+refs/heads/{branch}:refs/heads/{branch}",
                    kill_after_timeout=FETCH_TIMEOUT,
                )
        except GitCommandError as exc:
            detail = _stderr_line(exc)
            raise GitError(f"cannot fetch {branch} from {self.remote_url()}: {detail}", temporary=True) from None
        return self.branch_head(branch)

    def push_tag(self, name: str) -> None:
        """Push one tag to ``origin`` (never forced); failures are temporary (the caller retries later).

        Raises ``TagTakenError`` when the remote already has a different tag of that name.
        """
        try:
            with self.repo.git.custom_environment(**_remote_env(self.ssh, self._origin_url())):
                self.repo.git.push("--quiet", "origin", f"refs/tags/{name}", kill_after_timeout=FETCH_TIMEOUT)
        except GitCommandError as exc:
            detail = _stderr_line(exc)
            error = TagTakenError if "(already exists)" in str(exc.stderr or "") else GitError
            raise error(f"cannot push tag {name} to {self.remote_url()}: {detail}", temporary=True) from None

    def fetch_applied_tags(self, instance: str) -> None:
        """Fetch ``origin``'s ``applied/<instance>/*`` tags, so the next number follows the remote's.

        Never forced: a local tag the remote has under the same name with other
        content (ours, not pushed yet) is kept, and renumbered when its push is
        refused.  Failures are temporary.
        """
        pattern = f"refs/tags/{TAG_PREFIX}/{instance}/*"
        self._tag_numbers.pop(instance, None)  # the next number follows the fetched tags
        try:
            with self.repo.git.custom_environment(**_remote_env(self.ssh, self._origin_url())):
                self.repo.git.fetch("--no-tags", "origin", f"{pattern}:{pattern}", kill_after_timeout=FETCH_TIMEOUT)
        except GitCommandError as exc:
            lines = [line for line in str(exc.stderr or "").splitlines() if line.strip().startswith("!")]
            if lines and all("would clobber existing tag" in line for line in lines):
                return  # every other tag was fetched
            detail = _stderr_line(exc)
            raise GitError(f"cannot fetch applied tags from {self.remote_url()}: {detail}", temporary=True) from None

    def unpushed_applied_tags(self, instance: str) -> list[str]:
        """This instance's local applied tags that ``origin`` lacks or has with other content, oldest first."""
        try:
            with self.repo.git.custom_environment(**_remote_env(self.ssh, self._origin_url())):
                out = str(
                    self.repo.git.ls_remote(
                        "origin", f"refs/tags/{TAG_PREFIX}/{instance}/*", kill_after_timeout=FETCH_TIMEOUT
                    )
                )
        except GitCommandError as exc:
            detail = _stderr_line(exc)
            raise GitError(f"cannot list tags of {self.remote_url()}: {detail}", temporary=True) from None
        remote = {ref: sha for sha, _, ref in (line.partition("\t") for line in out.splitlines()) if ref}
        local = self.repo.git.for_each_ref("--format=%(refname) %(objectname)", f"refs/tags/{TAG_PREFIX}/{instance}/")
        objects = {ref: sha for ref, _, sha in (line.partition(" ") for line in local.splitlines()) if sha}
        return [
            tag.name
            for tag in reversed(self.applied_tags(instance))
            if remote.get(f"refs/tags/{tag.name}") != objects.get(f"refs/tags/{tag.name}")
        ]

    def renumber_applied_tags(self, instance: str, names: Sequence[str]) -> list[str]:
        """Give local tags whose numbers the remote took the next free numbers, in order; returns the new names.

        Each is deleted here, the remote's tags are fetched (taking the freed
        names), and the same revision and message are tagged again after them.
        """
        tags = [tag for name in names if (tag := self.find_tag(name)) is not None]
        for tag in tags:
            try:
                self.repo.git.tag("-d", tag.name)
            except GitCommandError as exc:
                raise GitError(f"cannot delete tag {tag.name}: {exc.stderr.strip()}") from None
        self.fetch_applied_tags(instance)
        return [
            self.create_applied_tag(instance, tag.revision, {**tag.message, "renumbered_from": tag.name})
            for tag in tags
        ]

    # ----------------------------------------------------------------- specs

    def spec_source(self, revision: str, root: str) -> GitSpecSource:
        return GitSpecSource(self, revision, root)

    def list_tree(self, revision: str, root: str) -> list[SourceFile]:
        """Every file below ``root`` at ``revision`` (submodules left out), read in-process.

        Trees are read from the object database (no ``git ls-tree``); a subtree
        whose id the previous listing saw is not read again, and blob sizes are
        remembered by blob id, so after a commit only the trees on the changed
        paths are parsed.
        """
        root = root.strip("/") or "."
        try:
            target: tuple[bytes, int] = (self._root_tree(revision), MODE_TREE)
            if root != ".":
                parts = root.split("/")
                for depth, part in enumerate(parts):
                    entry = next((e for e in self._tree_entries(target[0]) if e[2] == part), None)
                    if (
                        entry is None
                        or entry[1] == MODE_SUBMODULE
                        or (entry[1] != MODE_TREE and depth < len(parts) - 1)
                    ):
                        missing = f"the specs root {root}/ does not exist at {revision[:12]}"
                        raise GitError(f"{missing}; expected --path to name a folder")
                    if entry[1] != MODE_TREE:
                        what = "a symbolic link (never followed)" if entry[1] == MODE_SYMLINK else "a file"
                        raise GitError(
                            f"the specs root {root} is {what} at {revision[:12]}; expected --path to name a folder"
                        )
                    target = (entry[0], entry[1])
            if not self._sizes:  # a first listing: every size in one `git ls-tree -l`, not one request per blob
                self._prefill_sizes(revision, root)
            trees: dict[tuple[bytes, str], list[SourceFile]] = {}
            files = self._walk(target[0], "" if root == "." else root + "/", trees)
        except (BadName, ValueError, GitCommandError, KeyError) as exc:
            raise GitError(f"cannot list {root}/ at {revision[:12]}: {exc}") from None
        self._trees = trees  # the next listing reuses this one's unchanged subtrees
        return files

    def tree_entry(self, revision: str, path: str) -> SourceFile | None:
        """The file at ``path`` (from the repository root) at ``revision``, None if there is none."""
        try:
            out = self.repo.git.ls_tree("-l", "-z", "--full-tree", revision, "--", path)
        except GitCommandError as exc:
            raise GitError(f"cannot look up {path} at {revision[:12]}: {exc.stderr.strip()}") from None
        for record in out.split("\x00"):
            meta, _, found = record.partition("\t")
            if found != path:
                continue
            mode, kind, sha, size = meta.split(None, 3)
            if kind != "blob":
                return None
            return SourceFile(path=path, sha=sha, size=int(size) if size.strip() != "-" else 0, mode=int(mode, 8))
        return None

    def _prefill_sizes(self, revision: str, root: str) -> None:
        out = self.repo.git.ls_tree("-r", "-l", "-z", "--full-tree", revision, "--", root)
        for record in out.split("\x00"):
            meta = record.partition("\t")[0].split()
            if len(meta) == 4 and meta[1] == "blob" and meta[3].isdigit():
                self._sizes[meta[2]] = int(meta[3])

    def _tree_entries(self, binsha: bytes) -> list[tuple[bytes, int, str]]:
        return parse_tree(self._object(binsha)[1])

    def _walk(self, binsha: bytes, prefix: str, trees: dict[tuple[bytes, str], list[SourceFile]]) -> list[SourceFile]:
        key = (binsha, prefix)
        known = self._trees.get(key)
        if known is None:
            known = []
            for sha, mode, name in sorted(self._tree_entries(binsha), key=lambda e: e[2]):
                if mode == MODE_TREE:
                    known += self._walk(sha, f"{prefix}{name}/", trees)
                elif mode != MODE_SUBMODULE:
                    hexsha = sha.hex()
                    size = self._sizes.get(hexsha)
                    if size is None:
                        if len(self._sizes) > 100_000:
                            self._sizes.clear()
                        size = self._sizes[hexsha] = self._object_size(sha)
                    known.append(SourceFile(path=f"{prefix}{name}", sha=hexsha, size=size, mode=mode))
        else:  # an unchanged subtree: keep its own subtrees for the next listing too
            for (sub, sub_prefix), listed in self._trees.items():
                if sub_prefix.startswith(prefix) and sub_prefix != prefix:
                    trees[(sub, sub_prefix)] = listed
        trees[key] = known
        return known

    def read_blob(self, sha: str) -> bytes:
        return self._object(bytes.fromhex(sha))[1]

    def _loose_path(self, binsha: bytes) -> str | None:
        """Where git keeps ``binsha`` as a loose object (None when git is told to look elsewhere)."""
        if "GIT_OBJECT_DIRECTORY" in os.environ:
            return None
        hexsha = binsha.hex()
        return os.path.join(self._objects, hexsha[:2], hexsha[2:])

    def _object(self, binsha: bytes) -> tuple[bytes, bytes]:
        """(type, content) of an object: a loose one (what a new commit writes) inflated in-process, anything
        else (packed, alternates) through the persistent ``git cat-file``."""
        path = self._loose_path(binsha)
        if path is not None:
            try:
                with open(path, "rb") as handle:
                    raw = zlib.decompress(handle.read())
            except (OSError, zlib.error):
                raw = b""
            header, nul, data = raw.partition(b"\0")
            kind, _, size = header.partition(b" ")
            if nul and size.isdigit() and int(size) == len(data):
                return kind, data
        stream = self.repo.odb.stream(binsha)
        return bytes(stream.type), bytes(stream.read())

    def _object_size(self, binsha: bytes) -> int:
        """An object's size from its loose header (only the first bytes inflated), else from ``git cat-file``."""
        path = self._loose_path(binsha)
        if path is not None:
            try:
                with open(path, "rb") as handle:
                    header = zlib.decompressobj().decompress(handle.read(512), 64).partition(b"\0")[0]
                size = header.partition(b" ")[2]
                if size.isdigit():
                    return int(size)
            except (OSError, zlib.error):
                pass
        return int(self.repo.odb.info(binsha).size)

    def read_blobs(self, shas: Sequence[str]) -> dict[str, bytes]:
        """Many blobs at once: one ``git cat-file --batch`` handed every id up front, its answers read as they
        stream back, instead of one round trip to the persistent ``cat-file`` per blob (a cold load of
        thousands of spec files)."""
        wanted = list(dict.fromkeys(shas))
        if len(wanted) < BATCH_BLOBS:
            return {sha: self.read_blob(sha) for sha in wanted}
        executable = git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"
        argv = [executable, f"--git-dir={self.git_dir}", "cat-file", "--batch"]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as exc:
            raise GitError(f"cannot run git cat-file: {exc.strerror or exc}") from None
        assert proc.stdin is not None and proc.stdout is not None
        request = "".join(f"{sha}\n" for sha in wanted).encode("ascii")
        feeder = threading.Thread(target=_feed, args=(proc.stdin, request), daemon=True, name="cat-file-feed")
        feeder.start()
        blobs: dict[str, bytes] = {}
        try:
            for sha in wanted:
                header = proc.stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    raise GitError(f"cannot read blob {sha[:12]} of {self.root}: {b' '.join(header).decode()!r}")
                size = int(header[2])
                data = proc.stdout.read(size + 1)  # the blob and its trailing newline
                if len(data) != size + 1:
                    raise GitError(f"cannot read blob {sha[:12]} of {self.root}: git cat-file stopped early")
                blobs[sha] = data[:-1]
        finally:
            proc.stdout.close()
            proc.kill()
            proc.wait()
            feeder.join()
        return blobs

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
            revision = peeled or obj
            mac = message.get("mac")
            made_here = (
                self.tag_key is not None
                and isinstance(mac, str)
                and hmac.compare_digest(mac, tag_mac(self.tag_key, instance, name, revision))
            )
            tags.append(AppliedTag(name, instance, int(match["n"]), revision, message, date or None, made_here))
        tags.sort(key=lambda t: t.number, reverse=True)
        return tags

    def tag_revision(self, name: str) -> str | None:
        """The commit the tag ``name`` points at, read in-process (no git process); None if there is no such tag."""
        try:
            sha = str(git.SymbolicReference.dereference_recursive(self.repo, f"refs/tags/{name}"))
            kind, data = self._object(bytes.fromhex(sha))
        except (ValueError, TypeError, OSError, BadName, GitCommandError):
            return None
        if kind == b"tag" and data.startswith(b"object "):
            return data[7:47].decode("ascii", "replace")
        return sha if kind == b"commit" else None

    def applied_tags_stamp(self, instance: str) -> tuple[int, ...]:
        """Changes whenever an ``applied/<instance>/*`` ref is added or removed (its folder's and packed-refs'
        modification times): one ``stat`` each, so a caller can tell cheaply that its list is out of date."""
        stamps: list[int] = []
        for path in (self.common_dir / "refs" / "tags" / TAG_PREFIX / instance, self.common_dir / "packed-refs"):
            try:
                info = os.stat(path)
            except OSError:
                stamps += [0, 0]
                continue
            stamps += [info.st_mtime_ns, info.st_ino]
        return tuple(stamps)

    def tags_on(self, instance: str, head: str) -> set[str]:
        """Names of ``instance``'s applied tags whose commit ``head`` contains (one ``for-each-ref --merged``)."""
        try:
            out = self.repo.git.for_each_ref(
                "--format=%(refname:strip=2)", f"--merged={head}", f"refs/tags/{TAG_PREFIX}/{instance}/"
            )
        except GitCommandError as exc:
            raise GitError(f"cannot list tags: {exc.stderr.strip()}") from None
        return set(str(out).split())

    def contains(self, head: str, revision: str) -> bool:
        """Whether ``revision`` is ``head`` or one of its ancestors."""
        if revision == head:  # a pass following the branch applies its head: no git process for that
            return True
        try:
            self.repo.git.merge_base("--is-ancestor", revision, head)
        except GitCommandError as exc:
            if exc.status == 1:
                return False
            raise GitError(f"cannot compare {revision[:12]} with {head[:12]}: {exc.stderr.strip()}") from None
        return True

    def find_tag(self, name: str) -> AppliedTag | None:
        match = _TAG_RE.fullmatch(name)
        if not match:
            return None
        return next((t for t in self.applied_tags(match["instance"]) if t.name == name), None)

    def create_applied_tag(self, instance: str, revision: str, message: dict[str, Any]) -> str:
        """Tag ``revision`` as ``applied/<instance>/<n+1>`` with a JSON message.

        No git process: the annotated tag object is written to the object
        database and the ref by git's lock-file protocol (``<ref>.lock`` created
        exclusively, then renamed).  The next number is kept in memory, read from
        the refs on first use and again whenever a name turns out taken or
        packed-refs changed (another writer, ``git pack-refs``).
        """
        for _ in range(5):
            number = self._next_tag_number(instance)
            name = f"{TAG_PREFIX}/{instance}/{number}"
            signed = {**message, "tag": name}
            signed.pop("mac", None)
            if self.tag_key is not None:
                signed["mac"] = tag_mac(self.tag_key, instance, name, revision)
            body = json.dumps(signed, sort_keys=True)
            try:
                created = self._write_tag(name, revision, body)
            except OSError as exc:
                raise GitError(f"cannot create tag {name}: {exc}") from None
            self._tag_numbers[instance] = number
            if created:
                failpoints.hit("tag_created")  # a kill here: the tag exists, its maker never learnt it
                return name
            # someone else has it (or is writing it right now: its lock is held): read the refs again, go past it
            self._tag_numbers[instance] = max([number, *self._applied_tag_numbers(instance)])
        raise GitError(f"cannot create an applied tag for {instance}: the numbers keep being taken")

    def _next_tag_number(self, instance: str) -> int:
        packed = self._packed_refs_stamp()
        if instance not in self._tag_numbers or packed != self._packed_stamp:
            self._packed_stamp = packed
            self._tag_numbers[instance] = max(self._applied_tag_numbers(instance), default=0)
        return self._tag_numbers[instance] + 1

    def _packed_refs_stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.common_dir / "packed-refs")
        except FileNotFoundError:
            return None
        return info.st_mtime_ns, info.st_size

    def _applied_tag_numbers(self, instance: str) -> list[int]:
        """The numbers of ``applied/<instance>/*`` refs, loose and packed, read from the files."""
        prefix = f"refs/tags/{TAG_PREFIX}/{instance}/"
        numbers: list[int] = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            numbers += [int(e.name) for e in os.scandir(self.common_dir / prefix) if e.name.isdigit() and e.is_file()]
        try:
            with open(self.common_dir / "packed-refs", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    ref = line.rstrip("\n").partition(" ")[2]
                    if ref.startswith(prefix) and ref[len(prefix) :].isdigit():
                        numbers.append(int(ref[len(prefix) :]))
        except FileNotFoundError:
            pass
        return numbers

    def _write_tag(self, name: str, revision: str, body: str) -> bool:
        """Write the annotated tag ``name`` -> ``revision``; False if the name is taken (nothing written)."""
        ref = self.common_dir / "refs" / "tags" / name
        ref.parent.mkdir(parents=True, exist_ok=True)
        lock = ref.with_name(ref.name + ".lock")
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False  # another writer holds this very name right now
        try:
            if ref.exists():
                return False
            tagger_name, tagger_email = self._tagger()
            offset = time.localtime().tm_gmtoff
            zone = f"{'-' if offset < 0 else '+'}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
            data = (
                f"object {revision}\ntype commit\ntag {name}\n"
                f"tagger {tagger_name} <{tagger_email}> {int(time.time())} {zone}\n\n{body}\n"
            ).encode()
            if self._loose is None:  # gitdb's writer: GitPython's own odb.store runs `git hash-object`
                self._loose = LooseObjectDB(str(self.common_dir / "objects"))
            stored = self._loose.store(IStream(b"tag", len(data), io.BytesIO(data)))
            os.write(fd, f"{stored.binsha.hex()}\n".encode())
            os.close(fd)
            fd = -1
            os.replace(lock, ref)
            return True
        finally:
            if fd != -1:
                os.close(fd)
            if lock.exists():
                lock.unlink()

    def _tagger(self) -> tuple[str, str]:
        """The tagger git would use (GIT_COMMITTER_* over user.*), else ``reconciler <reconciler@localhost>``."""
        if self._tagger_identity is None:
            reader = self.repo.config_reader()

            def pick(env: str, key: str, default: str) -> str:
                value = os.environ.get(env) or ""
                if not value and reader.has_option("user", key):
                    value = str(reader.get_value("user", key))
                value = "".join(c for c in value if c not in "<>\n").strip()
                return value or default

            self._tagger_identity = (
                pick("GIT_COMMITTER_NAME", "name", "reconciler"),
                pick("GIT_COMMITTER_EMAIL", "email", "reconciler@localhost"),
            )
        return self._tagger_identity


def parse_tree(data: bytes) -> list[tuple[bytes, int, str]]:
    """A tree object's entries as (binary id, mode, name): records of ``<octal mode> <name>\\0<20-byte id>``.

    Hand-written: GitPython's parser also vets every name against NTFS/HFS
    aliases for checkouts (about 0.1 ms an entry); names here only label specs.
    """
    entries: list[tuple[bytes, int, str]] = []
    at, end = 0, len(data)
    while at < end:
        space = data.index(b" ", at)
        nul = data.index(b"\0", space)
        if nul + 21 > end:
            raise ValueError("truncated tree object")
        entries.append(
            (data[nul + 1 : nul + 21], int(data[at:space], 8), data[space + 1 : nul].decode("utf-8", "surrogateescape"))
        )
        at = nul + 21
    return entries


WORKTREE = "worktree"  # the "revision" of specs read from the working tree (``--worktree``)


def _blob_sha(data: bytes) -> str:
    """The id git would give ``data`` as a blob (so the parse cache serves working-tree files too)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


class WorktreeSpecSource:
    """The files below the specs root in the working tree, as ``git add -A`` would see them (``--worktree``).

    Tracked and untracked files that ``.gitignore`` does not exclude, read from
    disk; a symlink is reported as one (and refused by the loader, as in a commit).
    For pre-commit hooks and editors: what would the specs be if this were committed.
    """

    revision = WORKTREE

    def __init__(self, repo: GitRepo, root: str) -> None:
        if repo.repo.working_tree_dir is None:
            raise GitError(f"{repo.root} has no working tree (a bare clone); --worktree needs a checkout")
        self.repo = repo
        self.root = posixpath.normpath(root.strip("/") or ".")
        self._files: dict[str, SourceFile] | None = None
        self._data: dict[str, bytes] = {}

    def _list(self, pathspec: str) -> list[str]:
        try:
            out = self.repo.repo.git.ls_files("-z", "--cached", "--others", "--exclude-standard", "--", pathspec)
        except GitCommandError as exc:
            raise GitError(f"cannot list {pathspec} in the working tree: {exc.stderr.strip()}") from None
        return sorted({path for path in out.split("\x00") if path})

    def _entry(self, path: str) -> SourceFile | None:
        full = self.repo.root / path
        try:
            if full.is_symlink():
                target = os.readlink(full).encode()
                return SourceFile(path=path, sha=_blob_sha(target), size=len(target), mode=MODE_SYMLINK)
            if not full.is_file():
                return None  # deleted in the working tree, or a submodule's folder
            data = full.read_bytes()
        except OSError as exc:
            raise GitError(f"cannot read {path} in the working tree: {exc.strerror}") from None
        sha = _blob_sha(data)
        self._data[sha] = data
        return SourceFile(path=path, sha=sha, size=len(data), mode=0o100755 if os.access(full, os.X_OK) else 0o100644)

    def files(self) -> Iterator[SourceFile]:
        if self._files is None:
            found = {path: entry for path in self._list(self.root) if (entry := self._entry(path)) is not None}
            if not found and self.root != ".":
                raise GitError(
                    f"the specs root {self.root}/ does not exist in the working tree; expected --path to name a folder"
                )
            self._files = found
        return iter(self._files.values())

    def read(self, file: SourceFile) -> bytes:
        data = self._data.get(file.sha)
        if data is None:
            raise GitError(f"{file.path} changed while it was being read; run again")
        return data

    def lookup(self, path: str) -> SourceFile | None:
        """A file anywhere in the working tree (a definition outside the specs root)."""
        if self._files is not None and path in self._files:
            return self._files[path]
        return self._entry(path) if path in self._list(path) else None


class GitSpecSource:
    """The files below the specs root at one commit (implements ``specs.SpecSource``)."""

    def __init__(self, repo: GitRepo, revision: str, root: str) -> None:
        self.repo = repo
        self.revision = revision
        self.root = posixpath.normpath(root.strip("/") or ".")  # ./deploy_specs and deploy_specs/ name deploy_specs
        self._files: list[SourceFile] | None = None
        self._blobs: dict[str, bytes] = {}  # prefetched, not read yet

    def files(self) -> Iterator[SourceFile]:
        if self._files is None:
            self._files = self.repo.list_tree(self.revision, self.root)
        return iter(self._files)

    def read(self, file: SourceFile) -> bytes:
        data = self._blobs.pop(file.sha, None)
        return data if data is not None else self.repo.read_blob(file.sha)

    def prefetch(self, files: Sequence[SourceFile]) -> None:
        """Read these files' blobs in one batch; ``read`` hands each out once."""
        self._blobs.update(self.repo.read_blobs([f.sha for f in files]))

    def lookup(self, path: str) -> SourceFile | None:
        """A file anywhere in the repository at this commit (a definition outside the specs root)."""
        return self.repo.tree_entry(self.revision, path)
