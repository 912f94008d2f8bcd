"""DESIGN §11 bounded work: 64 MiB of specs and definitions per commit; a bounded, lazy, authenticated parse cache."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.parsecache import CACHE_DB, KEEP_GENERATIONS, ParseCache
from tests.support import SpecRepo

TEN_MB = 10_000_000  # under the 10 MiB a definition may have
ALIASES = "deploy_specs/aliases.yaml"


def add_big_apis(repo: SpecRepo, count: int, size: int = TEN_MB) -> None:
    """``count`` RestApis, each with a JSON definition of about ``size`` bytes."""
    docs = []
    for n in range(count):
        definition = {"openapi": "3.0.1", "info": {"title": f"big{n}", "version": "1", "description": ""}, "paths": {}}
        padding = size - len(json.dumps(definition))
        definition["info"]["description"] = f"{n}" * padding
        repo.write(f"deploy_specs/big/big{n}.json", json.dumps(definition))
        docs.append(
            f"apiVersion: reconciler/v1\nkind: RestApi\nmetadata: {{name: big{n}}}\nspec: {{definition: big{n}.json}}\n"
        )
    repo.write("deploy_specs/big/apis.yaml", "---\n".join(docs))


def run_measured(repo: SpecRepo, *args: str) -> tuple[int, str, int, float]:
    """``reconciler <args>`` in a process of its own: exit code, stderr, peak RSS (bytes), seconds."""
    code = (  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (here: pytest)
        "import sys\n"
        "from reconciler.cli import main\n"
        "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
        "print('MAXRSS', hwm, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    argv = [sys.executable, "-c", code, *args, "--repo", str(repo.path), "--state-dir", str(repo.state_dir)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    line = next(line for line in done.stderr.splitlines() if line.startswith("MAXRSS"))
    stderr = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("MAXRSS"))
    return done.returncode, stderr, int(line.split()[1]) * 1024, seconds


def test_a_commit_over_64_mib_of_definitions_is_refused(example_repo: SpecRepo) -> None:
    """Seven 10 MB definitions: refused at once, one error naming the total and the largest files."""
    add_big_apis(example_repo, 7)
    example_repo.commit("70 MB of definitions")
    code, stderr, rss, seconds = run_measured(example_repo, "validate")
    print(f"validate of a 70 MB commit: exit {code}, {rss / 2**20:.0f} MiB peak RSS, {seconds:.2f} s")
    assert code == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert "expected at most 67108864" in stderr and "deploy_specs/big/big0.json (10000000 bytes)" in stderr
    assert rss < 150 * 2**20  # nothing of it was read
    assert example_repo.cli("apply").code == 1
    assert example_repo.cli_json("status")["applied_revision"] is None


def test_a_reverted_hostile_commit_costs_nothing_afterwards(example_repo: SpecRepo) -> None:
    """After a 60 MB commit was planned and reverted, a one-change plan stays small (the cache is read lazily)."""
    assert example_repo.cli("apply").code == 0
    add_big_apis(example_repo, 6)
    example_repo.commit("60 MB of definitions")
    code, stderr, rss_big, seconds_big = run_measured(example_repo, "plan")
    assert code == 2, stderr
    example_repo.git("revert", "--no-edit", "HEAD")
    text = (example_repo.path / ALIASES).read_text(encoding="utf-8")
    example_repo.write(ALIASES, text.replace('{"1": 95, "2": 5}', '{"1": 90, "2": 10}'))
    example_repo.commit("one change")
    code, stderr, rss, seconds = run_measured(example_repo, "plan")
    print(
        f"plan of the 60 MB commit: {rss_big / 2**20:.0f} MiB, {seconds_big:.2f} s; "
        f"one-change plan after its revert: {rss / 2**20:.0f} MiB, {seconds:.2f} s"
    )
    assert code == 2, stderr
    assert rss < 150 * 2**20


def test_the_cache_forgets_what_no_recent_load_used_and_stays_under_its_bound(tmp_path: Path) -> None:
    """Entries unused for KEEP_GENERATIONS saves are dropped; past the byte bound the least recently used go."""
    cache = ParseCache(tmp_path, max_bytes=10_000)
    cache["old"] = "x" * 1000
    cache.save()
    for n in range(KEEP_GENERATIONS):
        cache[f"k{n}"] = "y" * 100
        cache.save()
    assert cache.get("old") is None and cache.get(f"k{KEEP_GENERATIONS - 1}") == "y" * 100
    (tmp_path / "b").mkdir()
    big = ParseCache(tmp_path / "b", max_bytes=10_000)
    for n in range(30):
        big[f"e{n}"] = "z" * 1000
        big.save()
    assert big.total_bytes() <= 10_000 and big.get("e29") == "z" * 1000 and big.get("e0") is None


def test_a_cache_entry_this_state_dir_did_not_write_is_ignored(tmp_path: Path) -> None:
    """An entry planted in the cache database (its MAC made without this state dir's key) is never used."""
    cache = ParseCache(tmp_path)
    cache["spec:1:abc"] = [["genuine"]]
    cache.save()
    cache.close()
    with sqlite3.connect(tmp_path / CACHE_DB) as db:
        db.execute("UPDATE entries SET value = ? WHERE key = ?", (json.dumps([["forged"]]), "spec:1:abc"))
        db.execute(
            "INSERT INTO entries (key, value, mac, size, used) VALUES ('spec:1:def', '[[\"planted\"]]', ?, 10, 1)",
            ("0" * 64,),
        )
    again = ParseCache(tmp_path)
    assert again.get("spec:1:abc") is None and again.get("spec:1:def") is None


@pytest.mark.parametrize("name", ["spec-cache.json"])
def test_the_earlier_json_cache_is_removed_unread(tmp_path: Path, name: str) -> None:
    """The whole-file JSON cache of earlier versions is deleted, never loaded."""
    (tmp_path / name).write_text(json.dumps({"spec:1:abc": [["planted"]]}), encoding="utf-8")
    cache = ParseCache(tmp_path)
    assert cache.get("spec:1:abc") is None and not (tmp_path / name).exists()
