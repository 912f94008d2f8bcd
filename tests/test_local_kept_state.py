"""The local backend keeps its live state in memory: always what a fresh read of the database gives.

Its own applies update the resources they touched; a write by another
connection (a CLI beside the daemon, `local publish`, a hand edit) is noticed
through SQLite's ``PRAGMA data_version`` and the whole state is read again.
"""

from __future__ import annotations

import random
import sqlite3

import pytest

from reconciler.backends.local import DB_NAME, LocalBackend, LocalCloud
from reconciler.engine import Config, Engine
from reconciler.specs import DesiredState
from tests.support import SpecRepo

STAGES = "deploy_specs/more-stages.yaml"


def fresh(repo: SpecRepo) -> object:
    backend = LocalBackend(repo.state_dir)
    try:
        return backend.read(DesiredState())
    finally:
        backend.close()


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_kept_state_equals_a_fresh_read_over_random_applies(example_repo: SpecRepo, seed: int) -> None:
    rng = random.Random(seed)
    engine = Engine(Config(repo=str(example_repo.path), state_dir=str(example_repo.state_dir)))
    try:
        for step in range(15):
            weight = rng.randrange(1, 100)
            aliases = (example_repo.path / "deploy_specs/aliases.yaml").read_text()
            head, _, _ = aliases.rpartition("routing: ")
            example_repo.write("deploy_specs/aliases.yaml", f'{head}routing: {{"1": {weight}, "2": {100 - weight}}}\n')
            docs = [
                f"apiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: extra{n}}}\n"
                f"spec: {{api: orders, variables: {{lambdaAlias: {rng.choice(['dev', 'prod'])}}}}}\n"
                for n in sorted(rng.sample(range(5), rng.randrange(4)))
            ]
            if docs:
                example_repo.write(STAGES, "---\n".join(docs))
            elif (example_repo.path / STAGES).exists():
                example_repo.remove(STAGES)
            example_repo.commit(f"step {step}")
            result = engine.reconcile(prune=True)
            assert result.ok, result.error
            if step % 5 == 4:  # a write beside the engine: another connection edits an alias
                with sqlite3.connect(example_repo.state_dir / DB_NAME) as db:
                    db.execute("UPDATE aliases SET description = ? WHERE name = 'dev'", (f"by hand {step}",))
            kept = engine.backend.read(DesiredState())
            assert kept == fresh(example_repo), step
    finally:
        engine.close()


def test_another_connections_writes_are_seen(example_repo: SpecRepo) -> None:
    backend = LocalBackend(example_repo.state_dir)
    try:
        assert example_repo.cli("apply").code == 0  # another process writes everything
        first = backend.read(DesiredState())
        assert ("orders-handler", "prod") in first.aliases
        LocalCloud(example_repo.state_dir).publish_version("orders-handler")
        assert "3" in backend.read(DesiredState()).versions["orders-handler"]
        with sqlite3.connect(example_repo.state_dir / DB_NAME) as db:
            db.execute("DELETE FROM aliases WHERE name = 'prod'")
        assert ("orders-handler", "prod") not in backend.read(DesiredState()).aliases
        assert backend.read(DesiredState()) == fresh(example_repo)
    finally:
        backend.close()
