"""The parse cache is read: a spec file or definition parsed once is not read from git again.

Observed without timing: after a first ``validate``, the object store is made
to answer invalid content for the blob of a spec file (or of a definition);
only a cache keyed by blob ids lets the second ``validate`` still pass.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import zlib
from pathlib import Path

import pytest

from reconciler.parsecache import CACHE_DB, KEY_FILE, ParseCache
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


def test_an_entry_in_an_earlier_format_is_parsed_afresh_and_a_new_one_round_trips(tmp_path: Path) -> None:
    """A JSON entry an earlier version wrote (its MAC good for that format) is never decoded; a value written now
    reads back equal, types kept (ints, floats, infinity, booleans, null, nesting)."""
    ParseCache(tmp_path).save()  # the database and this state directory's key
    secret = bytes.fromhex((tmp_path / KEY_FILE).read_text(encoding="ascii"))
    old = json.dumps([[{"kind": "Alias"}, {"kind": 2}, 1]], separators=(",", ":"))
    mac = hmac.new(secret, f"spec:2:old\x00{old}".encode(), hashlib.sha256).hexdigest()
    with sqlite3.connect(tmp_path / CACHE_DB) as db:
        db.execute("INSERT INTO entries (key, value, mac, size, used) VALUES ('spec:2:old', ?, ?, 9, 1)", (old, mac))
    cache = ParseCache(tmp_path)
    cache.prefetch(["spec:2:old"])
    assert "spec:2:old" not in cache and cache.get("spec:2:old") is None
    value = [[{"a": 1, "b": 1.0, "c": [True, None, float("inf")], "d": {"e": "f"}}, {"a": 1, "d.e": 2}, 3]]
    cache["spec:2:new"] = value
    cache.save()
    again = ParseCache(tmp_path)
    again.prefetch(["spec:2:new"])
    read = again["spec:2:new"]
    assert read == value and type(read[0][0]["b"]) is float and type(read[0][0]["a"]) is int
    assert ParseCache(tmp_path)["spec:2:new"] == value  # read one by one, without prefetch
