"""A cold load reads blobs and cache entries in bulk, and gets exactly what reading them one by one gets.

``GitRepo.read_blobs`` hands one ``git cat-file --batch`` every id at once;
``ParseCache.prefetch`` reads many entries per query (still checking each
one's MAC); ``load_desired`` asks for both before checking the files.  The
one-by-one paths stay for a source or cache without ``prefetch``.  Also the
entry point: ``python -m reconciler`` and the console script leave without
tearing the heap down, so their output and exit code must still be whole.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pytest

from reconciler.errors import GitError, SpecError
from reconciler.gitsource import BATCH_BLOBS, GitRepo, GitSpecSource
from reconciler.parsecache import CACHE_DB, ParseCache
from reconciler.specs import CACHE_FORMAT, DesiredState, SourceFile, load_desired
from tests.support import SpecRepo, run_reconciler


def many_aliases(repo: SpecRepo, count: int) -> None:
    for n in range(count):
        repo.write(
            f"deploy_specs/more/a{n:03d}.yaml",
            f"apiVersion: reconciler/v1\nkind: Alias\nmetadata: {{name: extra-{n}}}\n"
            f"spec:\n  function: fn-{n % 3}\n  routing: {{'1': 100}}\n",
        )


class OneByOne:
    """A spec source without ``prefetch``: every blob through ``read``, as before bulk reads."""

    def __init__(self, source: GitSpecSource) -> None:
        self.source = source
        self.root = source.root
        self.revision = source.revision

    def files(self) -> Iterable[SourceFile]:
        return self.source.files()

    def read(self, file: SourceFile) -> bytes:
        return self.source.repo.read_blob(file.sha)


def outcome(load: object) -> DesiredState | list[object]:
    assert callable(load)
    try:
        result = load()
        assert isinstance(result, DesiredState)
        return result
    except SpecError as exc:
        return list(exc.issues)


def test_a_batch_read_returns_every_blob_as_a_single_read_does(repo: SpecRepo) -> None:
    contents = [b"", b"\n", b"same\n", b"same\n", bytes(range(256)) * 3, b"no newline at the end"]
    contents += [f"line {n}\n".encode() * n for n in range(2 * BATCH_BLOBS)]
    for n, data in enumerate(contents):
        (repo.path / f"f{n:03d}").write_bytes(data)
    repo.commit("blobs")
    git = GitRepo(repo.path)
    try:
        shas = [repo.git("rev-parse", f"HEAD:f{n:03d}") for n in range(len(contents))]
        batch = git.read_blobs(shas)
        assert len(shas) > BATCH_BLOBS
        assert batch == {sha: git.read_blob(sha) for sha in shas}
        assert [batch[sha] for sha in shas] == contents
        with pytest.raises(GitError, match="cannot read blob"):
            git.read_blobs([*shas, "0" * 40])
    finally:
        git.close()


def test_a_cold_load_with_bulk_reads_equals_one_by_one_and_so_does_the_warm_one(
    example_repo: SpecRepo, tmp_path: Path
) -> None:
    many_aliases(example_repo, 3 * BATCH_BLOBS)
    example_repo.write("deploy_specs/more/broken.yaml", "kind: Alias\nmetadata: {name: [unclosed\n")
    revision = example_repo.commit("many files, one broken")
    git = GitRepo(example_repo.path)
    try:
        expected = outcome(lambda: load_desired(OneByOne(git.spec_source(revision, "deploy_specs"))))
        assert isinstance(expected, list) and any("broken.yaml" in str(issue) for issue in expected)
        cache = ParseCache(tmp_path)
        assert outcome(lambda: load_desired(git.spec_source(revision, "deploy_specs"), cache)) == expected
        cache.save()
        warm = ParseCache(tmp_path)
        assert outcome(lambda: load_desired(git.spec_source(revision, "deploy_specs"), warm)) == expected
        example_repo.remove("deploy_specs/more/broken.yaml")
        fixed = example_repo.commit("fixed")
        valid = outcome(lambda: load_desired(OneByOne(git.spec_source(fixed, "deploy_specs"))))
        assert isinstance(valid, DesiredState) and len(valid.aliases) > 3 * BATCH_BLOBS
        assert outcome(lambda: load_desired(git.spec_source(fixed, "deploy_specs"), warm)) == valid
    finally:
        git.close()


def test_prefetch_takes_no_entry_this_state_directory_did_not_write(example_repo: SpecRepo, tmp_path: Path) -> None:
    """A planted entry (wrong MAC) for a spec file's blob: prefetch skips it, and the blob is parsed."""
    revision = example_repo.commit("specs")
    sha = example_repo.git("rev-parse", f"{revision}:deploy_specs/aliases.yaml")
    key = f"spec:{CACHE_FORMAT}:{sha}"
    ParseCache(tmp_path).save()  # makes the database and the key
    planted = json.dumps([[{"apiVersion": "reconciler/v1", "kind": "Alias"}, {}, 1]])
    db = sqlite3.connect(tmp_path / CACHE_DB)
    mac = hmac.new(b"not this directory's key", f"{key}\x00{planted}".encode(), hashlib.sha256).hexdigest()
    db.execute("INSERT INTO entries (key, value, mac, size, used) VALUES (?, ?, ?, ?, 1)", (key, planted, mac, 9))
    db.commit()
    db.close()
    cache = ParseCache(tmp_path)
    cache.prefetch([key])
    assert key not in cache
    git = GitRepo(example_repo.path)
    try:
        state = load_desired(git.spec_source(revision, "deploy_specs"), cache)
    finally:
        git.close()
    assert ("orders-handler", "prod") in state.aliases
    assert key in cache  # parsed from the blob, and kept


@pytest.mark.parametrize("module", [True, False], ids=["python-m", "console-script"])
def test_the_entry_point_exits_with_the_commands_code_and_its_whole_output(
    example_repo: SpecRepo, module: bool
) -> None:
    many_aliases(example_repo, 40)
    example_repo.commit("valid")
    valid = run_reconciler(example_repo.path, "validate", "--output", "json", module=module)
    assert valid.code == 0, valid.stderr
    assert valid.json["valid"] is True and valid.json["aliases"] == 43  # the example's 3 and these 40
    example_repo.write("deploy_specs/more/bad.yaml", "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {}\n")
    example_repo.commit("invalid")
    invalid = run_reconciler(example_repo.path, "validate", "--output", "json", module=module)
    assert invalid.code == 1
    assert invalid.json["valid"] is False and invalid.json["errors"]
    usage = run_reconciler(example_repo.path, "validate", "--no-such-flag", module=module)
    assert usage.code == 1 and "--no-such-flag" in usage.stderr
