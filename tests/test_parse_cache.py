"""The parse cache is read: a spec file or definition parsed once is not read from git again.

Observed without timing: after a first ``validate``, the object store is made
to answer invalid content for the blob of a spec file (or of a definition);
only a cache keyed by blob ids lets the second ``validate`` still pass.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from tests.support import SpecRepo, with_state_dir


def swap_blob(repo: SpecRepo, relpath: str, text: str) -> None:
    """Make the object store answer ``text`` for ``relpath``'s blob at HEAD (git does not re-hash what it reads)."""
    sha = repo.git("rev-parse", f"HEAD:{relpath}")
    obj = repo.path / ".git" / "objects" / sha[:2] / sha[2:]
    assert obj.exists(), f"{relpath} is not a loose object"
    data = text.encode()
    obj.unlink()
    obj.write_bytes(zlib.compress(b"blob %d\0" % len(data) + data))
    assert repo.git("cat-file", "blob", sha) == text.strip()


BROKEN = {
    "deploy_specs/aliases.yaml": "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: prod}\nspec: [a, list]\n",
    "deploy_specs/openapi.yaml": "openapi: 3.0.1\npaths: [unclosed\n",
}


@pytest.mark.parametrize("relpath", sorted(BROKEN), ids=["spec-file", "definition"])
def test_a_second_validate_takes_what_the_first_parsed_from_the_cache(example_repo: SpecRepo, relpath: str) -> None:
    """Once a commit was validated, its parsed files come from the cache: git is not asked for those blobs again."""
    first = example_repo.cli("validate", output="json")
    assert first.code == 0, first.stderr
    swap_blob(example_repo, relpath, BROKEN[relpath])
    second = example_repo.cli("validate", output="json")
    assert second.code == 0, second.stderr
    assert second.json == first.json


@pytest.mark.parametrize("relpath", sorted(BROKEN), ids=["spec-file", "definition"])
def test_without_a_cache_the_swapped_blob_is_read(example_repo: SpecRepo, tmp_path: Path, relpath: str) -> None:
    """The control: a reconciler with an empty cache reads the swapped blob and finds it invalid."""
    swap_blob(example_repo, relpath, BROKEN[relpath])
    fresh = with_state_dir(example_repo, tmp_path / "fresh-state")
    result = fresh.cli("validate", output="json")
    assert result.code == 1 and result.json["valid"] is False
    assert result.json["errors"]
