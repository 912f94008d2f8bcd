"""Where the state directory is (DESIGN §11): outside every work tree a commit can write to.

The default for a local checkout is ``reconciler/`` in the repository's git
directory (``.git/reconciler/``): ``git pull`` writes files of the work tree
only, so no commit can plant a record, a pin or a parse-cache entry there.  A
``--state-dir`` inside the reconciled work tree, or one holding files git
tracks, is refused.  A ``.reconciler/`` left by an earlier version (state in
the work tree, git-ignored) is moved once to the new place, with a log line,
so no pin or record is lost; one holding tracked files came from a commit and
is refused, never adopted.  Called by the engine and the daemon.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from reconciler.errors import StateError
from reconciler.gitsource import GitRepo, git_common_dir, tracked_files, work_tree_of

LEGACY_STATE_DIR = ".reconciler"  # the default before DESIGN §11: in the work tree, git-ignored
STATE_SUBDIR = "reconciler"  # the default since: <git-dir>/reconciler/


def state_path(state_dir: str | None, repo: GitRepo) -> Path:
    """The state directory of a local repository: ``--state-dir`` (checked), else ``<git-dir>/reconciler/``."""
    work_tree = None if repo.repo.working_tree_dir is None else repo.root.resolve()
    if state_dir:
        return checked_state_dir(Path(state_dir), work_tree)
    path = repo.common_dir.resolve() / STATE_SUBDIR
    if work_tree is not None:
        _migrate(work_tree / LEGACY_STATE_DIR, path, work_tree)
    return path


def url_state_path(state_dir: str | None, cwd: Path | None = None) -> Path:
    """The state directory for a URL ``--repo`` (cloned into ``<state-dir>/repo``).

    ``--state-dir`` (checked), else ``.reconciler/`` in the current directory as
    before, unless that lies in a git work tree: then ``reconciler/`` in that
    work tree's git directory (where a pull of that checkout cannot write).
    """
    if state_dir:
        return checked_state_dir(Path(state_dir), None)
    here = (cwd or Path.cwd()).resolve()
    legacy = here / LEGACY_STATE_DIR
    work_tree = work_tree_of(here)
    if work_tree is None:
        return legacy
    common = git_common_dir(work_tree)
    if common is None:
        return legacy
    path = common / STATE_SUBDIR
    _migrate(legacy, path, work_tree)
    return path


def checked_state_dir(path: Path, reconciled_work_tree: Path | None) -> Path:
    """``--state-dir`` resolved; refused inside the reconciled work tree or when git tracks files in it."""
    resolved = path.resolve()
    shown = f"--state-dir {path}"
    if reconciled_work_tree is not None and resolved.is_relative_to(reconciled_work_tree):
        common = git_common_dir(reconciled_work_tree)
        if common is None or not resolved.is_relative_to(common):
            raise StateError(
                f"{shown} is inside the work tree of {reconciled_work_tree}, where a pulled commit can write "
                "records and cache entries; expected a directory outside it (the default is .git/reconciler/)"
            )
    work_tree = work_tree_of(resolved)
    if work_tree is not None:
        tracked = tracked_files(work_tree, resolved)
        if tracked:
            raise StateError(
                f"{shown} holds files tracked by git ({', '.join(tracked)}), so a commit can change them; "
                "expected a directory git does not track"
            )
    return resolved


def _migrate(legacy: Path, path: Path, work_tree: Path) -> None:
    """Move an earlier version's ``.reconciler/`` to ``path`` once (only while ``path`` does not exist)."""
    if path.exists() or not legacy.is_dir() or legacy.is_symlink():
        return
    tracked = tracked_files(work_tree, legacy)
    if tracked:
        raise StateError(
            f"{legacy} holds files tracked by git ({', '.join(tracked)}): reconciler never commits its state, "
            f"so they came from a commit and are not used; remove them from git, or pass --state-dir"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(legacy, path)
        except OSError:  # another file system
            shutil.move(str(legacy), str(path))
    except OSError as exc:
        raise StateError(f"cannot move the state directory {legacy} to {path}: {exc.strerror or exc}") from None
    import structlog  # here, the once it is needed: `validate` loads no logging otherwise

    structlog.get_logger("reconciler.state").warning(
        "state_dir_migrated", old=str(legacy), new=str(path), reason="state now lives outside the work tree"
    )
