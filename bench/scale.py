"""Scale benchmark (not a test): N stages + N aliases through the real CLI on the local backend.

Generates a git repository with N stages (over N/50 APIs) and N aliases (over
N/10 functions), then measures, each as wall time of a real ``reconciler``
process (Python start-up included) with its peak RSS:

* the floor: one process that reads the same spec files from disk and parses
  them with PyYAML's libyaml loader, and nothing else;
* ``validate`` with a cold parse cache, and again warm;
* ``apply`` cold (everything created), a no-op ``plan``, and a one-alias-change
  ``apply`` (commit, then plan + apply + tag in one command).

Each size is measured ``--runs`` times (default 3) on a fresh repository and
the median of each line is printed: wall time, and CPU time (user + sys of the
process and the git processes it waited for, from ``wait4``), which the load of
a shared machine distorts less, each beside the floor's.

The package's bytecode is compiled first, as ``pip install`` and the container
image have it: with ``PYTHONDONTWRITEBYTECODE`` set and no ``__pycache__``
(a development checkout), every measured process would compile reconciler's
modules from source (≈0.1 s of a cold ``validate``), which no installed copy does.

``--daemon`` measures the daemon instead: the real ``reconciler run`` on the
N-resource repository (default N = 5000) and, in the same run, the floor of
bench/latency.py (a bare watchfiles watcher reading the branch head); then
``--commits`` one-alias commits, each timed from ``git commit`` returning to
the daemon's ``reconcile`` log line for it (applied, recorded, tagged) and to
the floor's line.  p50/p95 per run, median over the runs.

Usage: python bench/scale.py [N ...] [--runs 3]   (default N: 500 5000)
       python bench/scale.py --daemon [N] [--runs 3] [--commits 20]
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import FLOOR as WATCH_FLOOR
from bench.latency import Arrivals, percentile
from bench.specgen import openapi_definition
from reconciler.backends.local import LocalCloud

STAGES_PER_API = 50
ALIASES_PER_FUNCTION = 10

FLOOR = """
import sys, time, pathlib, yaml
start, cpu = time.perf_counter(), time.process_time()
docs = 0
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.yaml")):
    docs += sum(1 for _ in yaml.load_all(path.read_text("utf-8"), Loader=yaml.CSafeLoader))
print(docs, time.perf_counter() - start, time.process_time() - cpu)
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def alias_file(f: int, n: int, first_routing: str = '{"1": 90, "2": 10}') -> str:
    """The spec file of function ``fn-<f>``: its aliases; the first one routed by ``first_routing``."""
    docs = []
    for i in range(f * ALIASES_PER_FUNCTION, min(n, (f + 1) * ALIASES_PER_FUNCTION)):
        routing = first_routing if i == f * ALIASES_PER_FUNCTION else '{"1": 90, "2": 10}'
        docs.append(
            f"apiVersion: reconciler/v1\nkind: Alias\nmetadata: {{name: alias-{i:05d}}}\n"
            f"spec:\n  function: fn-{f:04d}\n  routing: {routing}\n"
        )
    return "---\n".join(docs)


def generate(repo: Path, n: int) -> None:
    specs = repo / "deploy_specs"
    specs.mkdir(parents=True)
    apis = max(1, n // STAGES_PER_API)
    for a in range(apis):
        api = f"api-{a:04d}"
        # the integration invokes fn-<a>'s first alias, which the specs manage: no permission warnings
        (specs / f"{api}-openapi.yaml").write_text(openapi_definition(api, f"fn-{a:04d}"))
        docs = [
            f"apiVersion: reconciler/v1\nkind: RestApi\nmetadata: {{name: {api}}}\n"
            f"spec: {{description: API {a}, definition: {api}-openapi.yaml}}\n"
        ]
        for s in range(a * STAGES_PER_API, min(n, (a + 1) * STAGES_PER_API)):
            docs.append(
                f"apiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: stage-{s:05d}}}\n"
                f"spec:\n  api: {api}\n  description: stage {s}\n"
                f"  variables: {{lambdaAlias: alias-{a * ALIASES_PER_FUNCTION:05d}, tier: t{s % 7}}}\n"
            )
        (specs / f"{api}.yaml").write_text("---\n".join(docs))
    functions = max(1, n // ALIASES_PER_FUNCTION)
    for f in range(functions):
        (specs / f"fn-{f:04d}.yaml").write_text(alias_file(f, n))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "add", "-A")
    git(repo, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "generated specs")


def measured(argv: list[str], cwd: Path) -> tuple[float, float, float, int, str]:
    """Wall seconds, CPU seconds (user + sys, with its waited-for children), the child's own peak RSS in MB
    (via wait4), exit code, output."""
    start = time.perf_counter()
    # one pipe for both: reading stdout to its end while the child blocks on a full stderr pipe would hang
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    err = b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, proc.returncode, (out + err).decode()


def prepare(root: Path, n: int) -> tuple[Path, Path]:
    """The generated repository and a local cloud with two published versions per function."""
    repo, state = root / "repo", root / "state"
    generate(repo, n)
    cloud = LocalCloud(state)
    for f in range(max(1, n // ALIASES_PER_FUNCTION)):
        cloud.publish_version(f"fn-{f:04d}")
        cloud.publish_version(f"fn-{f:04d}")
    cloud.close()
    return repo, state


def commit_alias_change(repo: Path, n: int, k: int) -> tuple[str, float]:
    """Change the routing of alias-00000 (one document of one file), commit; the sha and when commit returned."""
    weight = 50 + k % 40
    (repo / "deploy_specs" / "fn-0000.yaml").write_text(alias_file(0, n, f'{{"1": {weight}, "2": {100 - weight}}}'))
    subprocess.run(["git", "commit", "-qam", f"alias-00000 {weight}%"], cwd=repo, check=True)
    done = time.monotonic()
    return git(repo, "rev-parse", "HEAD"), done


def bench(n: int) -> dict[str, tuple[float, float, float]]:
    root = Path(tempfile.mkdtemp(prefix=f"reconciler-bench-{n}-"))
    results: dict[str, tuple[float, float, float]] = {}
    try:
        repo, state = prepare(root, n)
        cli = [sys.executable, "-m", "reconciler"]
        common = ["--repo", str(repo), "--state-dir", str(state)]

        wall, cpu, rss, _code, out = measured([sys.executable, "-c", FLOOR, str(repo / "deploy_specs")], repo)
        floor_inner, floor_inner_cpu = (float(word) for word in out.split()[1:3])
        results["floor: read + parse YAML (process)"] = (wall, cpu, rss)
        results["floor: read + parse YAML (in-process)"] = (floor_inner, floor_inner_cpu, rss)

        def step(name: str, *args: str, expect: tuple[int, ...] = (0,)) -> None:
            wall, cpu, rss, code, out = measured([*cli, *args, *common], repo)
            if code not in expect:
                raise SystemExit(f"{name} failed ({code}):\n{out[-2000:]}")
            results[name] = (wall, cpu, rss)

        step("validate (cold cache)", "validate")
        step("validate (warm cache)", "validate")
        step("apply (cold: create all)", "apply")
        step("plan (no-op)", "plan")
        for name in ("bench", "bench@localhost"):
            git(repo, "config", "user.name" if "@" not in name else "user.email", name)
        commit_alias_change(repo, n, 0)
        step("plan (one alias changed)", "plan", expect=(2,))
        step("apply (one alias changed)", "apply")
        step("plan (no-op after change)", "plan")
        commit_alias_change(repo, n, 1)
        step("apply (one alias, one command)", "apply")
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cli_mode(sizes: list[int], runs: int) -> None:
    for n in sizes:
        every = [bench(n) for _ in range(runs)]
        print(f"\nN = {n} ({n} stages + {n} aliases = {2 * n} resources), median of {runs} runs")
        print(f"{'step':<40} {'wall s':>8} {'x floor':>8} {'CPU s':>8} {'x floor':>8} {'peak RSS MB':>12}")
        floor = statistics.median(r["floor: read + parse YAML (process)"][0] for r in every)
        floor_cpu = statistics.median(r["floor: read + parse YAML (process)"][1] for r in every)
        for name in every[0]:
            wall, cpu, rss = (statistics.median(r[name][i] for r in every) for i in range(3))
            print(f"{name:<40} {wall:>8.3f} {wall / floor:>8.2f} {cpu:>8.3f} {cpu / floor_cpu:>8.2f} {rss:>12.1f}")


def daemon_run(n: int, commits: int) -> dict[str, list[float]]:
    """One daemon and one floor watcher on a fresh N-resource repository; per-commit milliseconds."""
    root = Path(tempfile.mkdtemp(prefix=f"reconciler-daemon-{n}-"))
    daemon = floor = None
    try:
        repo, state = prepare(root, n)
        for key, value in (("user.email", "bench@localhost"), ("user.name", "bench"), ("commit.gpgsign", "false")):
            git(repo, "config", key, value)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "reconciler", "run", "--repo", str(repo), "--state-dir", str(state)]
        argv += ["--listen", "127.0.0.1:0", "--log-format", "json", "--resync-interval", "3600"]
        daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
        debounce_ms, step_ms = 20, 5  # the daemon's defaults (bench/latency.py)
        floor = subprocess.Popen(
            [sys.executable, "-c", WATCH_FLOOR, str(repo / ".git"), "main", str(debounce_ms), str(step_ms)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert daemon.stdout is not None and floor.stdout is not None
        applied, seen = Arrivals(daemon.stdout, "daemon"), Arrivals(floor.stdout, "floor")
        applied.wait(git(repo, "rev-parse", "HEAD"), timeout=300)  # the first pass creates all 2N resources
        for warmup in range(3):
            sha, _ = commit_alias_change(repo, n, 1000 + warmup)
            applied.wait(sha, timeout=60)
            seen.wait(sha)
        times: dict[str, list[float]] = {"daemon": [], "floor": [], "reconcile": []}
        for k in range(commits):
            time.sleep(random.uniform(0.05, 0.15))
            sha, t0 = commit_alias_change(repo, n, k)
            times["daemon"].append((applied.wait(sha, timeout=60) - t0) * 1000)
            times["floor"].append((seen.wait(sha) - t0) * 1000)
            times["reconcile"].append(applied.durations[sha])
        return times
    finally:
        for proc in (daemon, floor):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def daemon_mode(n: int, runs: int, commits: int) -> None:
    rows = {"floor: bare watchfiles + read head": "floor", "daemon: commit -> applied + tagged": "daemon"}
    rows["  of which the reconcile itself"] = "reconcile"
    every = [daemon_run(n, commits) for _ in range(runs)]
    print(f"\nN = {n} ({2 * n} resources), daemon, {commits} one-alias commits per run, median of {runs} runs")
    print(f"{'':38} {'p50 ms':>8} {'p95 ms':>8}   per run p50")
    for name, key in rows.items():
        p50s = [percentile(t[key], 50) for t in every]
        p95s = [percentile(t[key], 95) for t in every]
        runs_text = " ".join(f"{v:.1f}" for v in p50s)
        print(f"{name:38} {statistics.median(p50s):8.1f} {statistics.median(p95s):8.1f}   {runs_text}")
    ratio = statistics.median(percentile(t["daemon"], 50) / percentile(t["floor"], 50) for t in every)
    print(f"ratio p50 daemon / p50 floor: {ratio:.1f}  (targets: p50 <= 300 ms, p95 <= 500 ms)")


def compile_package() -> None:
    """Write the bytecode of the package the measured processes import (see the module's docstring)."""
    where = "import os, reconciler; print(os.path.dirname(reconciler.__file__))"
    found = subprocess.run(
        [sys.executable, "-c", where], cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True
    )
    compileall.compile_dir(found.stdout.strip(), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, help="N (stages, and as many aliases)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size; the median is printed")
    parser.add_argument("--daemon", action="store_true", help="measure the daemon: one-alias commit -> applied")
    parser.add_argument("--commits", type=int, default=20, help="--daemon: commits per run")
    args = parser.parse_args()
    compile_package()
    if args.daemon:
        for n in args.sizes or [5000]:
            daemon_mode(n, args.runs, args.commits)
    else:
        cli_mode(args.sizes or [500, 5000], args.runs)


if __name__ == "__main__":
    main()
