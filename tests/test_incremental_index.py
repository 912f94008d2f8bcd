"""A long-lived ``SpecMemo`` updates the desired state by the changed files only, and it equals a cold load.

After a clean load the memo keeps the resolved desired state and its
indexes (names in use, stages by API, definition files by reader, mappings by
stage, domains); the next load re-resolves only the documents of changed
files and those that read something that changed.  Over seeded random
sequences of commits (RestApis, definitions shared or copied, stages pinning
definitions and canary definitions, aliases, base path mappings, moves,
duplicates, broken YAML, an API that disappears under its stages, a
definition outside the specs root) every load equals a cold one (fresh memo,
fresh cache): the same desired state with the same locations and the same
order, or the same errors in the same order.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from reconciler.errors import SpecError
from reconciler.gitsource import GitRepo
from reconciler.specs import DesiredState, SpecMemo, load_desired
from tests.support import SpecRepo

ROOT = "specs"
DOMAINS = ("a.example.com", "b.example.com")


def definition(title: str, version: str, variables: tuple[str, ...]) -> str:
    function = "arn:aws:lambda:us-east-1:123456789012:function:fn" + "".join(
        f"-${{stageVariables.{v}}}" for v in variables
    )
    uri = f"arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/{function}/invocations"
    return (
        f"openapi: 3.0.1\ninfo: {{title: {title}, version: '{version}'}}\npaths:\n  /items:\n    get:\n"
        "      responses: {'200': {description: OK}}\n"
        f"      x-amazon-apigateway-integration: {{type: aws_proxy, httpMethod: POST, uri: '{uri}'}}\n"
    )


def doc(kind: str, name: str, spec: str) -> str:
    return f"apiVersion: reconciler/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{spec}"


@dataclass
class Model:
    """What the random history has written: slot -> path, so files can move."""

    rng: random.Random
    repo: SpecRepo
    paths: dict[str, str] = field(default_factory=dict)  # slot -> current path
    stages: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # slot -> (API, stage) it declares
    step: int = 0

    def put(self, slot: str, text: str, default: str) -> None:
        path = self.paths.setdefault(slot, default)
        self.repo.write(path, text)

    def drop(self, slot: str) -> None:
        self.stages.pop(slot, None)
        path = self.paths.pop(slot, None)
        if path is not None and (self.repo.path / path).exists():
            self.repo.remove(path)

    def move(self, slot: str) -> None:
        path = self.paths.get(slot)
        if path is None:
            return
        name = path.rsplit("/", 1)[1]
        target = f"{ROOT}/{self.rng.choice(['moved', 'a', 'z'])}/{self.step}-{name}"
        self.repo.write(target, (self.repo.path / path).read_text())
        self.repo.remove(path)
        self.paths[slot] = target

    def defref(self, slot: str) -> str:
        """A reference to definition ``slot`` from a spec file (specs are two levels below the repository)."""
        if slot == "outside":
            return "../../shared/outside.yaml"
        return f"../defs/{slot}.yaml"


DEFS = ("d0", "d1", "d2", "d3")


def write_definition(m: Model, slot: str, valid: bool = False) -> None:
    rng = m.rng
    roll = 1.0 if valid else rng.random()
    if roll < 0.06:
        text = "openapi: 3.0.1\ninfo: {title: broken\n"  # a YAML error
    elif roll < 0.1:
        text = "openapi: 3.1.0\ninfo: {title: new, version: '1'}\npaths: {}\n"  # refused by API Gateway
    elif roll < 0.16 and slot != "d0":  # the same content as d0 at another path (one Definition, the first's source)
        text = definition("d0", "1", ("lambdaAlias",))
    else:
        variables = rng.choice([("lambdaAlias",)] * 4 + [(), ("lambdaAlias", "tier")])  # some stages lack tier
        text = definition(slot, f"{m.step}.{rng.randrange(3)}", variables)
    if slot == "outside":
        m.repo.write("shared/outside.yaml", text)
    else:
        m.put(f"def:{slot}", text, f"{ROOT}/defs/{slot}.yaml")


def write_api(m: Model, k: int) -> None:
    rng = m.rng
    ref = m.defref(rng.choice([*DEFS, "d0", "outside"]))
    text = doc("RestApi", f"api{k}", f"  description: api {k} {rng.randrange(3)}\n  definition: {ref}\n")
    if rng.random() < 0.15:  # a second RestApi in the same file
        text += "---\n" + doc("RestApi", f"api{k}b", f"  definition: {m.defref('d1')}\n")
    m.put(f"api:{k}", text, f"{ROOT}/apis/api{k}.yaml")


def stage_doc(m: Model, name: str) -> tuple[str, str]:
    rng = m.rng
    api = rng.choice(["api0", "api0", "api1", "api2", "api3"] * 8 + ["api0b", "ghost"])
    lines = [f"  api: {api}", f"  description: {name} {rng.randrange(4)}"]
    variables = "{lambdaAlias: live, tier: t1}" if rng.random() < 0.9 else "{lambdaAlias: live}"
    lines.append(f"  variables: {variables}")
    if rng.random() < 0.25:
        lines.append(f"  definition: {m.defref(rng.choice(DEFS))}")
    if rng.random() < 0.25:
        lines.append(f"  canary:\n    percentTraffic: {rng.randrange(0, 50)}")
        if rng.random() < 0.5:
            lines.append(f"    definition: {m.defref(rng.choice([*DEFS, 'outside']))}")
        if rng.random() < 0.03:
            lines.append("  rollout: {steps: [{setWeight: 10}]}")  # with canary: an error
    return api, doc("Stage", name, "\n".join(lines) + "\n")


def write_stages(m: Model, k: int) -> None:
    names = [f"s{k}x{j}" for j in m.rng.sample(range(4), m.rng.randint(1, 3))]
    made = [stage_doc(m, name) for name in names]
    m.stages[f"stages:{k}"] = [(api, name) for (api, _), name in zip(made, names, strict=True)]
    docs = [text for _, text in made]
    if m.rng.random() < 0.2:  # an alias in the same file
        docs.append(doc("Alias", f"inline{k}", "  function: fn-b\n  routing: {'1': 100}\n"))
    m.put(f"stages:{k}", "---\n".join(docs), f"{ROOT}/stages/s{k}.yaml")


def write_aliases(m: Model, k: int) -> None:
    rng = m.rng
    docs = []
    for j in rng.sample(range(4), rng.randint(1, 3)):
        weight = rng.randrange(1, 100)
        routing = f"{{'1': {weight}, '2': {100 - weight}}}"
        docs.append(doc("Alias", f"a{k}x{j}", f"  function: fn-{k % 2}\n  routing: {routing}\n"))
    m.put(f"aliases:{k}", "---\n".join(docs), f"{ROOT}/aliases/a{k}.yaml")


def write_mapping(m: Model, k: int) -> None:
    rng = m.rng
    base = rng.choice([f"p{k}"] * 6 + ["(none)", "p0"])  # the root or another's path: errors at times
    declared = sorted(pair for slot, pairs in m.stages.items() if slot in m.paths for pair in pairs)
    api, stage = rng.choice(declared) if declared and rng.random() < 0.9 else ("api1", "s9x9")
    spec = f"  domain: {rng.choice(DOMAINS)}\n  basePath: '{base}'\n  api: {api}\n  stage: {stage}\n"
    m.put(f"map:{k}", doc("BasePathMapping", f"m{k}", spec), f"{ROOT}/mappings/m{k}.yaml")


def write_trouble(m: Model) -> None:
    rng = m.rng
    kind = rng.randrange(3)
    if kind == 0:
        text = "apiVersion: reconciler/v1\nkind: Alias\nmetadata: {name: [broken\n"
    elif kind == 1:  # a duplicate of an alias some alias file may declare
        text = doc("Alias", "a0x1", "  function: fn-0\n  routing: {'1': 100}\n")
    else:
        text = doc("Alias", "odd", "  function: fn-0\n  routing: {'1': 100}\n  colour: red\n")
    m.put("trouble", text, f"{ROOT}/trouble.yaml")


def mutate(m: Model) -> None:
    rng = m.rng
    op = rng.choice(["api"] * 3 + ["def"] * 3 + ["stages"] * 4 + ["aliases"] * 4 + ["map"] * 2 + ["move"] * 2
                    + ["drop"] * 2 + ["trouble", "heal", "heal", "heal", "noise"])  # fmt: skip
    if op == "api":
        k = rng.randrange(4)
        if f"api:{k}" in m.paths and rng.random() < 0.15:
            m.drop(f"api:{k}")  # its stages now name an API that is not there
        else:
            write_api(m, k)
    elif op == "def":
        write_definition(m, rng.choice([*DEFS, "outside"]))
    elif op == "stages":
        write_stages(m, rng.randrange(4))
    elif op == "aliases":
        write_aliases(m, rng.randrange(4))
    elif op == "map":
        write_mapping(m, rng.randrange(3))
    elif op == "move" and m.paths:
        m.move(rng.choice(sorted(s for s in m.paths if not s.startswith("def:"))))  # definitions stay put
    elif op == "drop" and m.paths:
        slot = rng.choice(sorted(s for s in m.paths if not s.startswith(("def:", "api:"))) or ["none"])
        m.drop(slot)
    elif op == "trouble":
        write_trouble(m)
    elif op == "heal":  # undo what most often makes a commit invalid
        m.drop("trouble")
        for k in range(4):
            if f"api:{k}" not in m.paths:
                write_api(m, k)
        for slot in DEFS:
            write_definition(m, slot, valid=True)
        for slot in [s for s in m.paths if s.startswith("map:")]:
            m.drop(slot)
    elif op == "noise":  # a file no spec reads
        m.repo.write(f"{ROOT}/README.md", f"notes {m.step}\n")


def seed_repo(m: Model) -> None:
    m.repo.write("shared/outside.yaml", definition("outside", "1", ("lambdaAlias",)))
    for slot in DEFS:
        m.put(f"def:{slot}", definition(slot, "1", ("lambdaAlias",)), f"{ROOT}/defs/{slot}.yaml")
    for k in range(4):
        m.put(f"api:{k}", doc("RestApi", f"api{k}", f"  definition: {m.defref(DEFS[k])}\n"), f"{ROOT}/apis/api{k}.yaml")
    m.put("aliases:0", doc("Alias", "a0x0", "  function: fn-0\n  routing: {'1': 100}\n"), f"{ROOT}/aliases/a0.yaml")


def outcome(load: Any) -> Any:
    """A desired state with the order of its dicts, or the errors (text and items) of a failed load."""
    try:
        state = load()
    except SpecError as exc:
        return ("error", str(exc), list(exc.issues))
    assert isinstance(state, DesiredState)
    return ("state", state, [list(state.apis), list(state.stages), list(state.aliases), list(state.mappings)])


def warm(git: GitRepo, revision: str, cache: dict[str, Any], memo: SpecMemo) -> Any:
    return outcome(lambda: load_desired(git.spec_source(revision, ROOT), cache, memo))


def cold(repo: SpecRepo, revision: str) -> Any:
    git = GitRepo(repo.path)
    try:
        return outcome(lambda: load_desired(git.spec_source(revision, ROOT), {}))
    finally:
        git.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_incremental_loads_equal_cold_loads_over_random_commits(repo: SpecRepo, seed: int) -> None:
    m = Model(random.Random(seed), repo)
    seed_repo(m)
    git = GitRepo(repo.path)  # long-lived, as the daemon's engine keeps it
    memo, cache = SpecMemo(), dict[str, Any]()
    counts = {"state": 0, "error": 0, "incremental": 0}
    kept: list[tuple[DesiredState, DesiredState]] = []  # states handed out, and a deep copy of each
    try:
        for step in range(60):
            m.step = step
            for _ in range(m.rng.randint(1, 4)):
                mutate(m)
            revision = repo.commit(f"step {step}")
            got = warm(git, revision, cache, memo)
            assert got == cold(repo, revision), step
            counts[got[0]] += 1
            counts["incremental"] += memo.incremental
            if got[0] == "state":
                kept.append((got[1], copy.deepcopy(got[1])))
            for handed, snapshot in kept:  # a later load never changes a state handed out
                assert handed == snapshot, step
    finally:
        git.close()
    # both outcomes happened, and most clean loads after a clean load took the incremental path
    assert counts["state"] >= 15 and counts["error"] >= 5, counts
    assert counts["incremental"] >= counts["state"] // 2, counts


def test_a_one_alias_commit_resolves_one_document(repo: SpecRepo) -> None:
    """500 resources: an alias edit resolves that alias, a definition edit its API and the API's 50 stages."""
    for a in range(5):
        repo.write(f"{ROOT}/defs/api{a}.yaml", definition(f"api{a}", "1", ("lambdaAlias",)))
        repo.write(f"{ROOT}/api{a}.yaml", doc("RestApi", f"api{a}", f"  definition: defs/api{a}.yaml\n"))
        for part in range(5):  # 10 stages per file
            stages = [
                doc("Stage", f"s{a}x{s}", f"  api: api{a}\n  variables: {{lambdaAlias: live}}\n")
                for s in range(part * 10, part * 10 + 10)
            ]
            repo.write(f"{ROOT}/stages-{a}-{part}.yaml", "---\n".join(stages))
    for i in range(250):
        repo.write(f"{ROOT}/aliases/a{i:03d}.yaml", doc("Alias", f"a{i}", "  function: fn\n  routing: {'1': 100}\n"))
    git, memo, cache = GitRepo(repo.path), SpecMemo(), dict[str, Any]()
    try:
        first = load_desired(git.spec_source(repo.commit("500 resources"), ROOT), cache, memo)
        assert (memo.incremental, memo.resolved) == (False, 505)
        assert len(first.stages) == len(first.aliases) == 250

        repo.write(f"{ROOT}/aliases/a007.yaml", doc("Alias", "a7", "  function: fn\n  routing: {'1': 60, '2': 40}\n"))
        second = load_desired(git.spec_source(repo.commit("one alias"), ROOT), cache, memo)
        assert (memo.incremental, memo.resolved) == (True, 1)
        assert second.aliases[("fn", "a7")].routing == {"1": 60.0, "2": 40.0}
        assert first.aliases[("fn", "a7")].routing == {"1": 100.0}  # the state handed out before is unchanged

        repo.write(f"{ROOT}/defs/api3.yaml", definition("api3", "2", ("lambdaAlias",)))
        third = load_desired(git.spec_source(repo.commit("one definition"), ROOT), cache, memo)
        assert (memo.incremental, memo.resolved) == (True, 51)
        assert third.stages[("api3", "s3x0")].definition == third.apis["api3"].definition
        assert third.stages[("api3", "s3x0")].definition != second.stages[("api3", "s3x0")].definition
        assert third.stages[("api2", "s2x0")] is second.stages[("api2", "s2x0")]

        repo.write(f"{ROOT}/dup.yaml", doc("Alias", "a9", "  function: fn\n  routing: {'1': 100}\n"))
        with pytest.raises(SpecError, match="duplicate alias 'a9'"):  # anything unusual: the full path
            load_desired(git.spec_source(repo.commit("a duplicate"), ROOT), cache, memo)
        assert memo.incremental is False
        repo.remove(f"{ROOT}/dup.yaml")
        load_desired(git.spec_source(repo.commit("fixed"), ROOT), cache, memo)
        assert (memo.incremental, memo.resolved) == (False, 505)  # after an error: a full resolution
        load_desired(git.spec_source(repo.commit("empty commit"), ROOT), cache, memo)
        assert (memo.incremental, memo.resolved) == (True, 0)
    finally:
        git.close()


def same_as_cold(repo: SpecRepo, git: GitRepo, memo: SpecMemo, cache: dict[str, Any], message: str) -> bool:
    """Commit, load with the long-lived memo, compare with a cold load; whether the incremental path was taken."""
    revision = repo.commit(message)
    assert warm(git, revision, cache, memo) == cold(repo, revision)
    return memo.incremental


def test_unusual_changes_take_the_full_path_and_equal_a_cold_load(repo: SpecRepo) -> None:
    for slot in ("d0", "d1"):
        repo.write(f"{ROOT}/defs/{slot}.yaml", definition(slot, "1", ("lambdaAlias",)))
    for k in range(2):
        repo.write(f"{ROOT}/apis/api{k}.yaml", doc("RestApi", f"api{k}", f"  definition: ../defs/d{k}.yaml\n"))
        stage = doc("Stage", f"s{k}", f"  api: api{k}\n  variables: {{lambdaAlias: live}}\n")
        repo.write(f"{ROOT}/stages/s{k}.yaml", stage)
    mapping = "  domain: a.example.com\n  basePath: {}\n  api: api0\n  stage: s0\n"
    repo.write(f"{ROOT}/mappings/m0.yaml", doc("BasePathMapping", "m0", mapping.format("v1")))
    git, memo, cache = GitRepo(repo.path), SpecMemo(), dict[str, Any]()
    try:
        assert not same_as_cold(repo, git, memo, cache, "first load: full")
        assert same_as_cold(repo, git, memo, cache, "nothing changed")
        # the domain's root mapped beside v1: API Gateway refuses it, the full path says so
        repo.write(f"{ROOT}/mappings/m1.yaml", doc("BasePathMapping", "m1", mapping.format("'(none)'")))
        assert not same_as_cold(repo, git, memo, cache, "root beside v1")
        repo.remove(f"{ROOT}/mappings/m1.yaml")
        assert not same_as_cold(repo, git, memo, cache, "root gone: full after an error")
        # d1 now has d0's content: one Definition, whose source is the path resolved first (d0, by api0)
        repo.write(f"{ROOT}/defs/d1.yaml", definition("d0", "1", ("lambdaAlias",)))
        assert not same_as_cold(repo, git, memo, cache, "d1 = d0")
        assert memo.fallback.startswith("a definition file no longer read, or one content at two paths")
        assert not same_as_cold(repo, git, memo, cache, "still shared: no index is kept")
        repo.write(f"{ROOT}/defs/d1.yaml", definition("d1", "2", ("lambdaAlias",)))
        assert not same_as_cold(repo, git, memo, cache, "d1 its own again")
        assert same_as_cold(repo, git, memo, cache, "and the index is back")
        # the stage's API moved to another file and the stage with it: keys move, the dicts keep cold order
        repo.remove(f"{ROOT}/apis/api0.yaml")
        repo.write(f"{ROOT}/zz/api0.yaml", doc("RestApi", "api0", "  definition: ../defs/d0.yaml\n"))
        repo.remove(f"{ROOT}/stages/s0.yaml")
        repo.write(f"{ROOT}/zz/s0.yaml", doc("Stage", "s0", "  api: api0\n  variables: {lambdaAlias: live}\n"))
        assert same_as_cold(repo, git, memo, cache, "moved")
        # the stage's API disappears: the stage and the mapping on it are errors
        repo.remove(f"{ROOT}/zz/api0.yaml")
        assert not same_as_cold(repo, git, memo, cache, "API gone")
        assert "does not resolve" in memo.fallback
    finally:
        git.close()
