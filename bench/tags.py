"""Tag-count sweep (a benchmark, not a test): applied-tag creation time against the number of tags.

Makes a git repository with one commit, gives it 10, then 300, then 3,000
applied tags of the instance ``default`` (annotated, JSON messages, written
in bulk by ``git fast-import``), and at each level times ``--tags`` calls of
``GitRepo.create_applied_tag`` on one long-lived ``GitRepo`` (as the daemon
keeps one).  The floor, measured in the same run at each level: writing the
same tag object as a loose object (zlib, one file) and its ref file (one file
and a rename) in-process, which any tag writer has to do.

Target: creation time independent of the number of tags (≈ the 10-tag figure at
3,000 tags).  Three runs on fresh repositories; medians.

Usage: python bench/tags.py [--levels 10 300 3000] [--tags 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import percentile  # noqa: E402
from reconciler.gitsource import GitRepo  # noqa: E402

INSTANCE = "default"


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, input=stdin
    ).stdout.strip()


def make_repo(base: Path) -> tuple[Path, str]:
    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for key, value in (("user.email", "bench@localhost"), ("user.name", "bench"), ("commit.gpgsign", "false")):
        git(repo, "config", key, value)
    (repo / "README").write_text("tags\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one commit")
    return repo, git(repo, "rev-parse", "HEAD")


def message(number: int, revision: str) -> dict[str, object]:
    return {
        "time": "2026-12-01T00:00:00+00:00",
        "revision": revision,
        "instance": INSTANCE,
        "backend": "local",
        "rollback": False,
        "action_count": 1,
        "actions": [{"action": "update_alias", "resource": f"fn/alias-{number}"}],
    }


def add_tags(repo: Path, revision: str, first: int, last: int) -> None:
    """Applied tags ``first``..``last`` (inclusive) in one ``git fast-import``."""
    chunks = []
    for n in range(first, last + 1):
        name = f"applied/{INSTANCE}/{n}"
        body = json.dumps({**message(n, revision), "tag": name}, sort_keys=True) + "\n"
        data = body.encode()
        chunks.append(
            f"tag {name}\nfrom {revision}\ntagger bench <bench@localhost> 1764547200 +0000\ndata {len(data)}\n{body}\n"
        )
    git(repo, "fast-import", "--quiet", stdin="".join(chunks))


def floor_write(repo: Path, revision: str, number: int) -> float:
    """Seconds to write one tag object (loose) and its ref file in-process: the least a tag writer does."""
    git_dir = repo / ".git"
    start = time.perf_counter()
    name = f"floor/{number}"
    body = json.dumps({**message(number, revision), "tag": name}, sort_keys=True) + "\n"
    content = f"object {revision}\ntype commit\ntag {name}\ntagger bench <bench@localhost> 1764547200 +0000\n\n{body}"
    raw = content.encode()
    store = b"tag %d\0" % len(raw) + raw
    sha = hashlib.sha1(store).hexdigest()
    folder = git_dir / "objects" / sha[:2]
    folder.mkdir(exist_ok=True)
    tmp = folder / f"tmp_{sha[2:]}"
    tmp.write_bytes(zlib.compress(store, 1))
    os.replace(tmp, folder / sha[2:])
    ref = git_dir / "refs" / "tags" / "floor" / str(number)
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref_tmp = ref.with_name(f"{number}.lock")
    ref_tmp.write_text(sha + "\n")
    os.replace(ref_tmp, ref)
    return time.perf_counter() - start


def one_run(levels: list[int], count: int) -> dict[int, tuple[list[float], list[float]]]:
    base = Path(tempfile.mkdtemp(prefix="reconciler-tags-"))
    out: dict[int, tuple[list[float], list[float]]] = {}
    try:
        repo, revision = make_repo(base)
        gitrepo = GitRepo(repo)
        have = 0
        floor_n = 0
        for level in levels:
            if level > have:
                add_tags(repo, revision, have + 1, level)
            created: list[float] = []
            floor: list[float] = []
            for k in range(count):
                start = time.perf_counter()
                gitrepo.create_applied_tag(INSTANCE, revision, message(level + k + 1, revision))
                created.append(time.perf_counter() - start)
                floor_n += 1
                floor.append(floor_write(repo, revision, floor_n))
            have = level + count
            out[level] = (created, floor)
        gitrepo.close()
        names = git(repo, "tag", "-l", f"applied/{INSTANCE}/*").split()
        if len(names) != have:
            raise SystemExit(f"expected {have} applied tags, found {len(names)}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 300, 3000])
    parser.add_argument("--tags", type=int, default=200, help="tags created (and timed) at each level")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(sorted(args.levels), args.tags) for _ in range(args.runs)]
    print(f"applied tag creation, {args.tags} tags per level, median of {args.runs} runs")
    print(f"{'existing tags':>14} {'p50 ms':>8} {'p95 ms':>8} {'floor p50 ms':>13} {'x floor':>8}")
    for level in sorted(args.levels):
        p50 = statistics.median(percentile(r[level][0], 50) * 1000 for r in runs)
        p95 = statistics.median(percentile(r[level][0], 95) * 1000 for r in runs)
        floor = statistics.median(percentile(r[level][1], 50) * 1000 for r in runs)
        print(f"{level:>14} {p50:8.1f} {p95:8.1f} {floor:13.2f} {p50 / floor:8.1f}")
    low, high = min(args.levels), max(args.levels)
    ratio = statistics.median(percentile(r[high][0], 50) / percentile(r[low][0], 50) for r in runs)
    print(f"p50 at {high} tags / p50 at {low} tags: {ratio:.2f}  (target: independent of the number of tags)")


if __name__ == "__main__":
    main()
