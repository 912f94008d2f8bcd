"""AWS pacing benchmark (a benchmark, not a test): wall clock of a quota-bound apply against moto.

Starts its own ``moto_server``, creates 10 REST APIs with 10 stages each and
two Lambda aliases (set up with the limiter's rates scaled up, so quickly),
then, ``--runs`` times, changes every API's definition in one commit and
reconciles it in-process through the real engine with the *real* quotas
(``Rates()``: CreateDeployment 1 per 5 s, PutRestApi 1/s, 10 rps overall) on
the wall clock: 10 imports, 10 new deployments, 100 stage updates.

Printed beside it, from the same run: the quota floor, (deployments - 1) x 5 s
(the CreateDeployment bucket starts full, so the first one is free), and the
shortest gap seen between two CreateDeployment requests (never under 5 s:
never faster than the quota).  Target: wall ≤ 1.1 x the quota floor.

Usage: python bench/aws_pacing.py [--apis 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.aws_calls import FUNCTION, REGION, STAGES_PER_API, git, make_function, start_moto, write_specs  # noqa: E402
from reconciler.backends.aws import AwsBackend  # noqa: E402
from reconciler.backends.aws_calls import Rates  # noqa: E402
from reconciler.engine import Config, Engine  # noqa: E402


def change_definitions(repo: Path, stages: int, version: int) -> None:
    """Every API's definition changed (its info.version), everything else as it was."""
    write_specs(repo, stages, '{"1": 95, "2": 5}', "standard")
    for path in sorted((repo / "deploy_specs").glob("*.openapi.yaml")):
        path.write_text(path.read_text().replace('version: "1.0"', f'version: "{version}.0"'))
    git(repo, "commit", "-q", "-am", f"definitions v{version}")


def reconcile(repo: Path, state: Path, url: str, rates: Rates) -> tuple[float, int, list[float], int]:
    """Wall seconds, CreateDeployment count, their request times, actions applied."""
    backend = AwsBackend(region=REGION, endpoint_url=url, rates=rates)
    stamps: list[float] = []

    def stamp(model: Any, **_: Any) -> None:
        if model.name == "CreateDeployment":
            stamps.append(time.monotonic())

    # registered after the limiter's own before-call handler: the moment the request leaves
    for client in {backend.calls.apigateway, getattr(backend.calls, "apigateway_once", backend.calls.apigateway)}:
        client.meta.events.register("before-call", stamp)
    engine = Engine(Config(repo=str(repo), backend="aws", state_dir=str(state)), backend=backend)
    try:
        start = time.monotonic()
        result = engine.reconcile()
        wall = time.monotonic() - start
    finally:
        engine.close()
    if not result.ok:
        raise SystemExit(f"reconcile failed: {result.error}")
    return wall, len(stamps), stamps, len(result.applied)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--apis", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    stages = args.apis * STAGES_PER_API
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION})
    process, url = start_moto()
    rows = []
    try:
        make_function(url, FUNCTION, versions=2)
        with tempfile.TemporaryDirectory(prefix="aws-pacing-") as tmp:
            repo, state = Path(tmp) / "repo", Path(tmp) / "state"
            repo.mkdir()
            git(repo, "init", "-q", "-b", "main")
            identity = (("user.email", "bench@example.com"), ("user.name", "bench"), ("commit.gpgsign", "false"))
            for key, value in identity:
                git(repo, "config", key, value)
            write_specs(repo, stages, '{"1": 95, "2": 5}', "standard")
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", "specs")
            reconcile(repo, state, url, Rates().scaled(1000))  # set-up: everything created, unpaced
            for run in range(args.runs):
                change_definitions(repo, stages, 2 + 2 * run)
                unpaced, *_ = reconcile(repo, state, url, Rates().scaled(1000))
                change_definitions(repo, stages, 3 + 2 * run)
                wall, deployments, stamps, actions = reconcile(repo, state, url, Rates())
                floor = (deployments - 1) / Rates().create_deployment
                gap = min((b - a for a, b in itertools.pairwise(stamps)), default=float("nan"))
                rows.append((wall, floor, unpaced, gap, deployments, actions))
                print(
                    f"run {run + 1}: {actions} actions, {deployments} deployments: {wall:.1f} s, "
                    f"quota floor {floor:.1f} s ({wall / floor:.2f}x), unpaced {unpaced:.1f} s, "
                    f"shortest CreateDeployment gap {gap:.2f} s",
                    flush=True,
                )
    finally:
        process.terminate()
        process.wait(timeout=10)
    wall = statistics.median(r[0] for r in rows)
    floor = statistics.median(r[1] for r in rows)
    unpaced = statistics.median(r[2] for r in rows)
    gap = min(r[3] for r in rows)
    print(
        f"\n{args.apis} APIs, all definitions changed ({rows[0][5]} actions, {rows[0][4]} deployments), "
        f"median of {args.runs} runs"
    )
    print(f"{'':40} {'wall s':>8} {'x floor':>8}")
    print(f"{'quota floor: (deployments - 1) x 5 s':40} {floor:8.1f} {1.0:8.2f}")
    print(f"{'same change, quotas scaled x1000':40} {unpaced:8.1f} {unpaced / floor:8.2f}")
    print(f"{'paced at the real quotas':40} {wall:8.1f} {wall / floor:8.2f}")
    print(f"shortest gap between two CreateDeployment requests: {gap:.2f} s (quota: 5 s)")
    print("target: paced <= 1.1x the quota floor, never faster than the quota")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
