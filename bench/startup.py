"""Start-up benchmark (not a test): what each command imports, and its wall time beside the interpreter's floor.

Runs real ``python -m reconciler`` processes on a copy of ``deploy_specs`` (a
fresh git repository, the local backend with the example's function
versions published):

* the floor: ``python -c pass`` (the interpreter starting and stopping);
* ``--help``, ``validate``, ``apply`` (a no-op after a first apply) and
  ``run --help``.

For each, the wall time (median of ``--runs``, each run of a command right
after a run of the floor, so both see the same load), the modules imported,
their summed import time (``-X importtime``, self times), and which of the
heavy packages (boto3, uvicorn, watchfiles, APScheduler, GitPython, pydantic
...) were among them.

``--before DIR`` measures a second copy of the package too (``DIR/reconciler``,
e.g. ``git archive <commit> reconciler | tar -x -C DIR``), interleaved with the
first, so both see the same load.

Usage: python bench/startup.py [--runs 15] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    *("boto3", "botocore", "uvicorn", "watchfiles", "apscheduler", "git", "pydantic", "yaml"),
    *("prometheus_client", "urllib3", "sqlite3", "structlog", "click"),
)
COMMANDS = {
    "--help": ["--help"],
    "validate": ["validate"],
    "apply": ["apply"],
    "run --help": ["run", "--help"],
}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=repo, check=True)


def prepare(root: Path) -> tuple[Path, dict[str, str]]:
    """A repository with the example specs and a state dir where its functions exist; the environment to use."""
    repo = root / "repo"
    shutil.copytree(ROOT / "deploy_specs", repo / "deploy_specs")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "example specs")
    env = {**os.environ, "RECONCILER_STATE_DIR": str(root / "state")}
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-m", "reconciler", "local", "publish-version", "orders-handler"],
            cwd=repo, env=env, check=True, capture_output=True,
        )  # fmt: skip
    subprocess.run([sys.executable, "-m", "reconciler", "apply"], cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def wall(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one run of ``argv``."""
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def imports(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, float, list[str]]:
    """Modules imported, their summed self import time (ms), and the heavy packages among them."""
    argv = [sys.executable, "-X", "importtime", "-m", "reconciler", *args]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    modules, total, tops = 0, 0, set()
    for line in proc.stderr.splitlines():
        if m := re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line):
            modules += 1
            total += int(m[1])
            tops.add(m[2].split(".")[0])
    return modules, total / 1000, [name for name in HEAVY if name in tops]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--before", type=Path, help="a directory holding another copy of the reconciler package")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="reconciler-startup-"))
    try:
        repo, env = prepare(root)
        versions = {"": env}
        if args.before is not None:
            versions[" (before)"] = {**env, "PYTHONPATH": str(args.before.resolve())}
        floor_argv = [sys.executable, "-c", "pass"]
        print(f"{'command':<21} {'wall ms':>8} {'floor ms':>9} {'- floor':>8} {'modules':>8} {'import ms':>10}  heavy")
        for name, command in COMMANDS.items():
            argv = [sys.executable, "-m", "reconciler", *command]
            floors: list[float] = []
            walls: dict[str, list[float]] = {label: [] for label in versions}
            for _ in range(args.runs):
                floors.append(wall(floor_argv, repo, env))
                for label, version_env in versions.items():
                    walls[label].append(wall(argv, repo, version_env))
            floor = statistics.median(floors) * 1000
            for label, version_env in versions.items():
                took = statistics.median(walls[label]) * 1000
                modules, import_ms, heavy = imports(command, repo, version_env)
                print(
                    f"{name + label:<21} {took:>8.0f} {floor:>9.0f} {took - floor:>8.0f} {modules:>8} "
                    f"{import_ms:>10.0f}  " + (", ".join(heavy) or "-")
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
