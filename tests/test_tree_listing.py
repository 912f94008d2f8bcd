"""The in-process spec listing equals `git ls-tree -r -l` at every commit of a random history."""

from __future__ import annotations

import os
import random

import pytest

from reconciler.errors import GitError
from reconciler.gitsource import GitRepo
from reconciler.specs import SourceFile
from tests.support import SpecRepo


def ls_tree(repo: SpecRepo, revision: str, root: str) -> list[SourceFile]:
    out = repo.git("ls-tree", "-r", "-l", "-z", "--full-tree", revision, "--", root)
    files = []
    for record in out.split("\x00"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        mode, kind, sha, size = meta.split(None, 3)
        if kind != "commit":
            files.append(SourceFile(path, sha, int(size) if size.strip() != "-" else 0, int(mode, 8)))
    return sorted(files, key=lambda f: f.path)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_listing_matches_ls_tree_over_random_commits(repo: SpecRepo, seed: int) -> None:
    rng = random.Random(seed)
    gitrepo = GitRepo(repo.path)  # long-lived, as the daemon's: it reuses the trees it listed before
    dirs = ["deploy_specs", "deploy_specs/a", "deploy_specs/a/b", "deploy_specs/c", "other"]
    present: set[str] = set()
    for step in range(40):
        for _ in range(rng.randint(1, 4)):
            action = rng.choice(["add", "add", "edit", "delete", "symlink"])
            if action in ("edit", "delete") and present:
                path = rng.choice(sorted(present))
                if action == "delete":
                    repo.remove(path)
                    present.discard(path)
                else:
                    (repo.path / path).unlink()
                    repo.write(path, f"edited {step} {rng.random()}\n")
            else:
                path = f"{rng.choice(dirs)}/f{rng.randint(0, 12)}.yaml"
                if path in present:
                    continue
                if action == "symlink":
                    (repo.path / path).parent.mkdir(parents=True, exist_ok=True)
                    os.symlink("../elsewhere.yaml", repo.path / path)
                else:
                    repo.write(path, "x" * rng.randint(0, 300) + "\n")
                present.add(path)
        revision = repo.commit(f"step {step}")
        for root in ("deploy_specs", "deploy_specs/a", "."):
            try:
                expected = ls_tree(repo, revision, root)
            except Exception:
                raise
            if not expected and root != ".":
                with pytest.raises(GitError, match="does not exist"):
                    gitrepo.list_tree(revision, root)
                continue
            assert sorted(gitrepo.list_tree(revision, root), key=lambda f: f.path) == expected, (step, root)


def test_a_specs_root_that_is_a_file_or_symlink_or_missing_is_refused(repo: SpecRepo) -> None:
    repo.write("specs.yaml", "a: 1\n")
    os.symlink("specs.yaml", repo.path / "linked")
    revision = repo.commit("files")
    gitrepo = GitRepo(repo.path)
    with pytest.raises(GitError, match="is a file at"):
        gitrepo.list_tree(revision, "specs.yaml")
    with pytest.raises(GitError, match="is a symbolic link"):
        gitrepo.list_tree(revision, "linked")
    with pytest.raises(GitError, match="does not exist"):
        gitrepo.list_tree(revision, "deploy_specs")
    with pytest.raises(GitError, match="does not exist"):
        gitrepo.list_tree(revision, "specs.yaml/inner")
    with pytest.raises(GitError, match="cannot list"):
        gitrepo.list_tree("0" * 40, "deploy_specs")
