"""Mutation testing of the code whose mistakes matter most, with cosmic-ray; prints every surviving mutant.

Not part of CI (slow: one test run per mutant).  Targets: ``plan.py`` and
``engine.py`` whole, the routing conversions of ``model.py``, the applied-tag code of ``gitsource.py`` and the webhook
verification of ``httpapi.py`` (function line ranges found with ``ast``, so
edits elsewhere in those modules do not move them).  Each target runs in a
fresh copy of the working tree under ``bench/out/mutation/`` (cosmic-ray
rewrites the module on disk; the copy is what the tests and the daemon
processes they start import, through ``PYTHONPATH``), with the tests that
exercise it, stopping at the first failure (``-x``): a killed mutant costs
seconds, a survivor a whole run.

    .venv/bin/pip install cosmic-ray     # once; not a test dependency
    .venv/bin/python bench/mutation.py                    # every target, every mutant
    .venv/bin/python bench/mutation.py --target tags webhook
    .venv/bin/python bench/mutation.py --sample 40        # at most 40 mutants per target (seeded)
    .venv/bin/python bench/mutation.py --only gitsource.py:395  # the mutants of one line again
    .venv/bin/python bench/mutation.py --audit            # the audit's hand-made mutants (issue 14), minutes
    .venv/bin/python bench/mutation.py --audit --audit-only "plan memo"   # those whose name has a word

Exit status 0 when no mutant survived, 1 otherwise.  Each survivor either
gets a test or a line in bench/README.md saying why it is equivalent.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "mutation"
PYTEST = "python -m pytest -x -q -p no:cacheprovider -p no:randomly"


@dataclass(frozen=True)
class Target:
    module: str
    functions: tuple[str, ...]  # "Class.method" or "function"; empty: the whole module
    tests: tuple[str, ...]


TARGETS = {
    "plan": Target(
        "reconciler/plan.py",
        (),
        ("tests/test_plan.py", "tests/test_local_backend.py", "tests/test_local_read.py", "tests/test_cli.py"),
    ),
    "model": Target(
        "reconciler/model.py",
        ("owner_of", "percent_json", "version_key", "primary_version", "routing_to_lambda", "routing_from_lambda"),
        ("tests/test_plan.py", "tests/test_local_backend.py", "tests/aws/test_model.py"),
    ),
    "engine": Target(
        "reconciler/engine.py",
        (),
        ("tests/test_cli.py", "tests/test_tags.py", "tests/test_error_paths.py", "tests/test_parse_cache.py"),
    ),
    "tags": Target(
        "reconciler/gitsource.py",
        (
            "GitRepo.applied_tags",
            "GitRepo.find_tag",
            "GitRepo.create_applied_tag",
            "GitRepo.renumber_applied_tags",
            "GitRepo.unpushed_applied_tags",
        ),
        ("tests/test_tags.py", "tests/test_cli.py", "tests/daemon/test_cluster_git.py"),
    ),
    "webhook": Target(
        "reconciler/httpapi.py",
        ("WebhookAuth.verify", "_Handler.do_POST"),
        ("tests/daemon/test_parts.py", "tests/daemon/test_webhook_http.py", "tests/daemon/test_daemon.py"),
    ),
}


def function_lines(path: Path, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """(first, last) line of each named function or method of the module at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, tuple[int, int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    found[f"{node.name}.{item.name}"] = (item.lineno, item.end_lineno or item.lineno)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.setdefault(node.name, (node.lineno, node.end_lineno or node.lineno))
    missing = [name for name in names if name not in found]
    if missing:
        raise SystemExit(f"{path}: no function {', '.join(missing)} (renamed? update TARGETS in bench/mutation.py)")
    return [found[name] for name in names]


Span = tuple[tuple[int, int], tuple[int, int]]


def annotation_spans(path: Path) -> list[Span]:
    """Where the module's type annotations are: never evaluated (``from __future__ import annotations``),
    so a mutant inside one is equivalent and is not run."""
    spans: list[Span] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for expr in found:
            if expr is not None and expr.end_lineno is not None and expr.end_col_offset is not None:
                spans.append(((expr.lineno, expr.col_offset), (expr.end_lineno, expr.end_col_offset)))
    return spans


def copy_tree(dest: Path) -> None:
    """The working tree's tracked (and new, unignored) files, copied to ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = Path(os.fsdecode(raw))
        source = ROOT / rel
        if not source.is_file() or rel.parts[0] == "bench":
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / rel)


@dataclass(frozen=True)
class HandMutant:
    """A mutant of the test-suite audit (issue 14), applied by a regular expression; the tests must kill it."""

    name: str
    module: str
    pattern: str
    replacement: str
    tests: tuple[str, ...]


AUDIT = (
    HandMutant(
        "the daemon always prunes",
        "reconciler/worker.py",
        r"prune=self\.\w+\.prune\b",
        "prune=True",
        ("tests/daemon/test_prune.py",),
    ),
    HandMutant(
        "next tag number = number of tags + 1",
        "reconciler/gitsource.py",
        r"max\(self\._applied_tag_numbers\(instance\), default=0\)",  # tags are written in-process now
        "len(self._applied_tag_numbers(instance))",
        ("tests/test_tags.py", "tests/test_applied_tags.py"),
    ),
    HandMutant(
        "tags sorted by name as strings",
        "reconciler/gitsource.py",
        r"tags\.sort\(key=lambda t: t\.number, reverse=True\)",
        "tags.sort(key=lambda t: t.name, reverse=True)",
        ("tests/test_tags.py",),
    ),
    HandMutant(
        "a rejected webhook credential written to the log",
        "reconciler/httpapi.py",
        r'log\.warning\(\s*"webhook_rejected",',
        'log.warning("webhook_rejected", sent=str(vars(getattr(self, "headers", None) or headers)),',
        ("tests/daemon/test_webhook_http.py",),
    ),
    HandMutant(
        "the webhook size limit removed",
        "reconciler/httpapi.py",
        r"[\w.()]+ > MAX_WEBHOOK_BYTES\b",
        "False",
        ("tests/daemon/test_webhook_http.py",),
    ),
    HandMutant(
        "no limit on webhook bodies read at once",
        "reconciler/httpapi.py",
        r"self\.reading >= MAX_BODIES_READ",
        "False",
        ("tests/daemon/test_webhook_http.py::test_a_fifth_delivery_while_four_bodies_are_read_gets_503",),
    ),
    HandMutant(
        "no signal handler during start-up",
        "reconciler/daemon.py",
        r"stopping = _stop_on_signals\(\)",
        "stopping = threading.Event()",
        ("tests/daemon/test_startup_signals.py",),
    ),
    HandMutant(
        "no signal held before the imports (SIGTERM while Python imports: exit 143)",
        "reconciler/__main__.py",
        r"signals\.hold\(\)",
        "None",
        ("tests/daemon/test_startup_signals.py",),
    ),
    HandMutant(
        "the parse cache never read",
        "reconciler/specs.py",
        r"\b(?:self\.)?cache\.get\(key\)",
        "None",
        ("tests/test_parse_cache.py",),
    ),
    HandMutant(
        "the local backend read outside one transaction (the /status 500 flake)",
        "reconciler/backends/local.py",
        r'self\.db\.execute\("BEGIN"\)',  # snapshot() without its transaction: separate SELECTs again
        "None",
        ("tests/test_local_read.py",),
    ),
    HandMutant(
        "SIGTERM mid-apply: no stop check between actions",
        "reconciler/engine.py",
        r"if stop is not None and stop\(\):",
        "if False:",
        (
            "tests/daemon/test_daemon.py::test_sigterm_mid_plan_finishes_the_action_in_flight_and_the_next_start_converges",
        ),
    ),
    HandMutant(
        "SIGTERM during a fetch waits out the action grace",
        "reconciler/daemon.py",
        r"if worker\.fetching\.is_set\(\):",
        "if False:",
        ("tests/daemon/test_audit.py::test_sigterm_during_a_hung_fetch_leaves_no_git_process_behind",),
    ),
    HandMutant(
        "incremental load: an API's new definition leaves its stages as they were",
        "reconciler/specs.py",
        r"touched\.update\(index\.stages_of\.get\(name, \(\)\)\)",
        "pass",
        ("tests/test_incremental_index.py",),
    ),
    HandMutant(
        "plan memo: a resource whose live object changed keeps its last actions",
        "reconciler/plan.py",
        r" and planned\.current is current",
        "",
        ("tests/test_plan_memo.py",),
    ),
    HandMutant(
        "/status pairs a pass's fresh record with the previous pass's live state",
        "reconciler/httpview.py",
        r"if not idle and snapshot is not None and snapshot\.record is not None:",
        "if False:",
        ("tests/daemon/test_status_snapshot.py",),
    ),
    HandMutant(
        "/status reads the backend on every request",
        "reconciler/httpview.py",
        r"snapshot = self\.worker\.snapshot\n        data = self\._status\(snapshot, None\)",
        "snapshot = self.worker.snapshot\n        self.worker.engine.backend.read(self.worker.engine.last_desired)\n"
        "        data = self._status(snapshot, None)",
        ("tests/daemon/test_status_snapshot.py",),
    ),
    HandMutant(
        "a key beside a YAML merge is a duplicate",
        "reconciler/yamlsafe.py",
        r"if key in result and key not in merged_keys:",
        "if key in result:",
        ("tests/test_error_paths.py",),
    ),
)


def run_audit(only: list[str] | None = None) -> int:
    """Apply each hand-made mutant to a copy of the tree and run its tests; every one must be killed."""
    src = OUT / "audit" / "src"
    copy_tree(src)
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    failures = 0
    for mutant in AUDIT:
        if only and not any(word in mutant.name for word in only):
            continue
        path = src / mutant.module
        original = path.read_text(encoding="utf-8")
        mutated, count = re.subn(mutant.pattern, mutant.replacement, original)
        if not count:
            print(f"NOT APPLIED {mutant.name}: {mutant.module} no longer has {mutant.pattern!r}", flush=True)
            failures += 1
            continue
        path.write_text(mutated, encoding="utf-8")
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, *PYTEST.split()[1:], *mutant.tests], cwd=src, env=env, capture_output=True, text=True
            )
        finally:
            path.write_text(original, encoding="utf-8")
        verdict = "killed  " if done.returncode == 1 else "SURVIVED" if done.returncode == 0 else "ERROR   "
        failures += verdict != "killed  "
        last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"{verdict} {mutant.name} ({count}x in {mutant.module}): {last} [{time.monotonic() - started:.0f} s]")
    return 1 if failures else 0


def config_text(target: Target, timeout: float) -> str:
    command = f"{PYTEST} {' '.join(target.tests)}"
    return (
        "[cosmic-ray]\n"
        f'module-path = "{target.module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )


def select(
    session: Path,
    ranges: list[tuple[int, int]] | None,
    annotations: list[Span],
    sample: int | None,
    seed: int,
    only: int | None,
) -> int:
    """Mark mutants outside ``ranges``, inside annotations (or beyond the sample) as skipped; return how many
    are left to run."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        keep: list[str] = []
        for item in db.pending_work_items:
            lines = [(m.start_pos[0], m.end_pos[0]) for m in item.mutations]
            inside = ranges is None or any(a <= end and start <= b for a, b in lines for start, end in ranges)
            if only is not None:
                inside = any(a <= only <= b for a, b in lines)
            in_annotation = all(
                any(start <= tuple(m.start_pos) and tuple(m.end_pos) <= end for start, end in annotations)
                for m in item.mutations
            )
            if inside and not in_annotation:
                keep.append(item.job_id)
        chosen = set(keep)
        if sample is not None and len(keep) > sample:
            chosen = set(random.Random(seed).sample(keep, sample))
        skipped = [item.job_id for item in db.pending_work_items if item.job_id not in chosen]
        if skipped:
            db.set_multiple_results(skipped, WorkResult(output="not selected", worker_outcome=WorkerOutcome.SKIPPED))
        return len(chosen)


@dataclass
class Outcome:
    target: str
    ran: int
    killed: int
    survivors: list[str]
    incompetent: int
    seconds: float


def survivors_of(session: Path, target: str) -> tuple[int, int, int, list[str]]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    ran = killed = incompetent = 0
    survivors: list[str] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            ran += 1
            if result.test_outcome == TestOutcome.KILLED:
                killed += 1
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                incompetent += 1
            else:
                mutation = item.mutations[0]
                where = f"{mutation.module_path}:{mutation.start_pos[0]}"
                diff = "\n".join(
                    "      " + line
                    for line in (result.diff or "").splitlines()
                    if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
                )
                survivors.append(f"  {where} {mutation.operator_name} #{mutation.occurrence}\n{diff}")
    return ran, killed, incompetent, survivors


def run_target(name: str, args: argparse.Namespace) -> Outcome:
    target = TARGETS[name]
    work = OUT / name
    src = work / "src"
    copy_tree(src)
    ranges = function_lines(src / target.module, target.functions) if target.functions else None
    config, session = work / "config.toml", work / "session.sqlite"
    config.write_text(config_text(target, args.timeout), encoding="utf-8")
    session.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # "python" is this venv's
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    subprocess.run([*cosmic, "init", str(config), str(session)], cwd=src, env=env, check=True)
    count = select(session, ranges, annotation_spans(src / target.module), args.sample, args.seed, args.only_line)
    print(f"{name}: {target.module} — {count} mutants to run", flush=True)
    started = time.monotonic()
    subprocess.run([*cosmic, "exec", str(config), str(session)], cwd=src, env=env, check=True)
    ran, killed, incompetent, survivors = survivors_of(session, name)
    return Outcome(name, ran, killed, survivors, incompetent, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--target", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--sample", type=int, help="at most this many mutants per target, chosen at random")
    parser.add_argument("--seed", type=int, default=14, help="seed of the sample (default 14)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one mutant's test run may take")
    parser.add_argument("--only", help="MODULE.py:LINE: only the mutants on that line")
    parser.add_argument("--audit", action="store_true", help="only the hand-made mutants of the issue-14 audit")
    parser.add_argument("--audit-only", nargs="+", metavar="WORD", help="with --audit: the mutants naming a WORD")
    args = parser.parse_args()
    if args.audit:
        return run_audit(args.audit_only)
    args.only_module = args.only_line = None
    if args.only:
        module, _, line = args.only.rpartition(":")
        args.only_module, args.only_line = f"reconciler/{Path(module).name}", int(line)
        args.target = [n for n in args.target if TARGETS[n].module == args.only_module]
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        print("cosmic-ray is not installed: .venv/bin/pip install cosmic-ray", file=sys.stderr)
        return 2
    outcomes = [run_target(name, args) for name in args.target]
    print()
    total_survivors = 0
    for o in outcomes:
        score = 100.0 * o.killed / max(1, o.ran - o.incompetent)
        print(
            f"{o.target:8} ran {o.ran:4}  killed {o.killed:4}  survived {len(o.survivors):3}"
            f"  incompetent {o.incompetent:3}  score {score:5.1f} %  {o.seconds / 60:.1f} min"
        )
        total_survivors += len(o.survivors)
    for o in outcomes:
        if o.survivors:
            print(f"\nsurvivors of {o.target}:")
            print("\n".join(o.survivors))
    return 1 if total_survivors else 0


if __name__ == "__main__":
    sys.exit(main())
