"""The desired state a long-lived engine builds incrementally equals a cold load, commit after commit.

A daemon's engine validates only the spec files that changed since its last
load (documents memoised by path and blob id) and lists only the trees that
changed; a cold load reads and validates everything.  Over random sequences
of commits (valid and invalid edits, duplicates, moves, deletions, YAML
errors) both give the same desired state, or the same errors in the same order.
"""

from __future__ import annotations

import random

import pytest

from reconciler.engine import Config, Engine
from reconciler.errors import SpecError
from reconciler.gitsource import GitRepo
from reconciler.specs import DesiredState, load_desired
from tests.support import SpecRepo


def alias(name: str, routing: str, function: str = "orders-handler") -> str:
    head = f"apiVersion: reconciler/v1\nkind: Alias\nmetadata: {{name: {name}}}\n"
    return f"{head}spec:\n  function: {function}\n  routing: {routing}\n"


def stage(name: str, alias_name: str, extra: str = "") -> str:
    return (
        f"apiVersion: reconciler/v1\nkind: Stage\nmetadata: {{name: {name}}}\n"
        f"spec:\n  api: orders\n  variables: {{lambdaAlias: {alias_name}}}\n{extra}"
    )


def random_file(rng: random.Random) -> str:
    choice = rng.choice([0, 0, 1, 1, 2, 2, 6, 6] * 4 + [3, 4, 5, 7, 8])  # mostly valid
    n = rng.randrange(4)
    if choice == 0:
        weight = rng.randrange(1, 100)
        return alias(f"a{n}", f'{{"1": {weight}, "2": {100 - weight}}}')
    if choice == 1:
        return alias(f"a{n}", '{"1": 50, "2": 50}') + "---\n" + stage(f"s{n}", f"a{n}")
    if choice == 2:
        return stage(f"s{n}", "prod", "  description: stage " + str(rng.random()) + "\n")
    if choice == 3:
        return stage(f"s{n}", "prod", "  colour: red\n")  # an unknown field
    if choice == 4:
        return alias("prod", '{"1": 100}')  # a duplicate of the example's prod alias
    if choice == 5:
        return "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: [broken\n"  # YAML error
    if choice == 6:
        return stage(f"s{n}", "prod", "  definition: openapi-v1.yaml\n")  # pinned to the older definition
    if choice == 7:
        return stage(f"s{n}", "prod", "  api: ghost\n").replace("  api: orders\n", "")  # unknown API
    return alias(f"Bad Name {n}", '{"1": 100}')


def cold(repo: SpecRepo, revision: str) -> DesiredState | list[object]:
    git = GitRepo(repo.path)
    try:
        return load_desired(git.spec_source(revision, "deploy_specs"))
    except SpecError as exc:
        return list(exc.issues)
    finally:
        git.close()


def warm(engine: Engine, revision: str) -> DesiredState | list[object]:
    try:
        return engine.desired(revision)
    except SpecError as exc:
        return list(exc.issues)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_incremental_desired_state_equals_a_cold_load(example_repo: SpecRepo, seed: int) -> None:
    rng = random.Random(seed)
    engine = Engine(Config(repo=str(example_repo.path), state_dir=str(example_repo.state_dir)))
    files: set[str] = set()
    outcomes = {"valid": 0, "invalid": 0}
    try:
        for step in range(30):
            for _ in range(rng.randint(1, 3)):
                action = rng.randrange(6)
                if action == 0 and files:  # delete
                    path = rng.choice(sorted(files))
                    example_repo.remove(path)
                    files.discard(path)
                elif action == 1 and files:  # move
                    path = rng.choice(sorted(files))
                    target = f"deploy_specs/moved/{step}-{path.rsplit('/', 1)[1]}"
                    example_repo.write(target, (example_repo.path / path).read_text())
                    example_repo.remove(path)
                    files.discard(path)
                    files.add(target)
                elif action == 2:  # the example's prod alias edited
                    text = (example_repo.path / "deploy_specs/aliases.yaml").read_text()
                    head, _, _ = text.rpartition("routing: ")
                    weight = rng.randrange(1, 100)
                    example_repo.write(
                        "deploy_specs/aliases.yaml", f'{head}routing: {{"1": {weight}, "2": {100 - weight}}}\n'
                    )
                elif action == 3:  # the API's definition changed: every stage of it resolves against the new one
                    text = (example_repo.path / "deploy_specs/openapi.yaml").read_text()
                    head, _, tail = text.partition("  version: ")
                    example_repo.write(
                        "deploy_specs/openapi.yaml",
                        f'{head}  version: "{step}.{rng.randrange(9)}"\n{tail.partition(chr(10))[2]}',
                    )
                else:  # a file added or rewritten
                    path = f"deploy_specs/{rng.choice(['', 'sub/'])}f{rng.randrange(6)}.yaml"
                    example_repo.write(path, random_file(rng))
                    files.add(path)
            revision = example_repo.commit(f"step {step}")
            expected = cold(example_repo, revision)
            assert warm(engine, revision) == expected, step
            outcomes["valid" if isinstance(expected, DesiredState) else "invalid"] += 1
    finally:
        engine.close()
    assert outcomes["valid"] and outcomes["invalid"], outcomes  # both paths were exercised
