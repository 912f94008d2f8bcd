"""After a commit the daemon's pass reads only what the commit touched; a resync reads (and heals) everything.

``Engine.reconcile(touched_only=True)`` (a pass woken by git) lets the aws
backend read again only the APIs and functions whose specs changed since its
last read, or that it wrote since; a pass without it (the resync, a retry, a
CLI run) reads every API and function, so drift anywhere is seen.  Requests
are counted with botocore's ``before-parameter-build`` event (once per request, with its parameters) on the
real moto_server.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import pytest

from reconciler.backends.aws import AwsBackend
from reconciler.engine import Config, Engine
from tests.aws.conftest import REGION, SPECS, Aws, AwsRepo

MORE = """\
---
apiVersion: reconciler/v1
kind: RestApi
metadata: {name: billing}
spec:
  definition: openapi.yaml
---
apiVersion: reconciler/v1
kind: Stage
metadata: {name: live}
spec:
  api: billing
  variables: {lambdaAlias: blue}
---
apiVersion: reconciler/v1
kind: Alias
metadata: {name: blue}
spec:
  function: payments-handler
  routing: {"1": 100}
"""


class Requests:
    """Every request a backend's clients send: (operation, the function or API it names)."""

    def __init__(self, backend: AwsBackend) -> None:
        self.seen: list[tuple[str, str]] = []
        for client in (backend.calls.apigateway, backend.calls.apigateway_once, backend.calls.lambda_):
            client.meta.events.register("before-parameter-build", self._count)  # once per request, API params

    def _count(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.seen.append((model.name, str(params.get("FunctionName") or params.get("restApiId") or "")))

    def take(self) -> Counter[tuple[str, str]]:
        taken, self.seen = Counter(self.seen), []
        return taken

    @staticmethod
    def reads(counted: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
        return Counter({k: n for k, n in counted.items() if k[0].startswith(("Get", "List"))})


@pytest.fixture
def two_of_each(aws_repo: AwsRepo, aws: Aws) -> AwsRepo:
    """Two APIs (orders, billing) and two functions (orders-handler, payments-handler)."""
    aws_repo.write("deploy_specs/specs.yaml", SPECS + MORE)
    aws_repo.commit("billing and payments")
    aws.make_function("payments-handler", versions=1)
    return aws_repo


def engine_of(repo: AwsRepo) -> tuple[Engine, Requests]:
    backend = AwsBackend(region=REGION, endpoint_url=repo.url)
    engine = Engine(Config(repo=str(repo.path), backend="aws", state_dir=str(repo.state_dir)), backend=backend)
    return engine, Requests(backend)


def settled(repo: AwsRepo) -> tuple[Engine, Requests]:
    """An engine whose first pass applied the specs (nothing read before: a whole read), then read them back
    whole (as a resync does): nothing is left to do, and nothing it wrote is still to be read again."""
    engine, requests = engine_of(repo)
    first = engine.reconcile(touched_only=True)
    assert first.ok, first.error
    assert engine.make_plan(engine.head())[0].actions == ()
    return engine, requests


def edit(repo: AwsRepo, old: str, new: str) -> str:
    path = repo.path / "deploy_specs/specs.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return repo.commit(f"{old} -> {new}")


def test_a_one_alias_commit_reads_only_that_functions_aliases(two_of_each: AwsRepo, aws: Aws) -> None:
    """Not the APIs, not the other function: the aliases and versions of the function the commit touched."""
    engine, requests = settled(two_of_each)
    try:
        assert {op for op, _ in Requests.reads(requests.take())} >= {"GetRestApis", "GetStages", "ListAliases"}
        edit(two_of_each, '{"1": 95, "2": 5}', '{"1": 80, "2": 20}')
        result = engine.reconcile(touched_only=True)
        assert result.ok, result.error
        assert [a.action for a in result.applied] == ["update_alias"]
        reads = Requests.reads(requests.take())
        assert {op for op, _ in reads} <= {"ListAliases", "ListVersionsByFunction", "GetPolicy", "GetAlias"}
        assert reads[("ListAliases", "orders-handler")] == 1, reads
        assert all(target == "orders-handler" for _, target in reads), reads
        assert aws.alias("orders-handler", "prod")["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.2}
        assert engine.make_plan(engine.head())[0].actions == ()  # a whole read agrees: in sync
    finally:
        engine.close()


def test_a_stage_commit_reads_only_that_api(two_of_each: AwsRepo, aws: Aws) -> None:
    """The listing of APIs (to find it), its deployments and stages; no other API, no function."""
    engine, requests = settled(two_of_each)
    try:
        requests.take()
        edit(two_of_each, "variables: {lambdaAlias: blue}", "variables: {lambdaAlias: blue, tier: gold}")
        result = engine.reconcile(touched_only=True)
        assert result.ok, result.error
        assert [a.resource for a in result.applied] == ["Stage/billing/live"]
        reads = Requests.reads(requests.take())
        billing = {api for (op, api) in reads if op in ("GetStages", "GetDeployments")}
        assert billing == {aws.api("billing")["id"]}, reads
        assert not any(op.startswith("List") for op, _ in reads), reads  # no function read
    finally:
        engine.close()


def test_a_resync_still_sees_and_heals_drift_anywhere(two_of_each: AwsRepo, aws: Aws) -> None:
    """Drift outside what a commit touched waits for the resync (a whole read), which undoes it."""
    engine, _ = settled(two_of_each)
    try:
        orders = aws.api("orders")["id"]
        aws.apigateway.update_stage(
            restApiId=orders,
            stageName="dev",
            patchOperations=[{"op": "replace", "path": "/variables/lambdaAlias", "value": "hacked"}],
        )
        aws.lambda_.update_alias(FunctionName="payments-handler", Name="blue", FunctionVersion="$LATEST")
        edit(two_of_each, '{"1": 95, "2": 5}', '{"1": 90, "2": 10}')  # touches orders-handler only
        after_commit = engine.reconcile(touched_only=True)
        assert after_commit.ok and [a.resource for a in after_commit.applied] == ["Alias/orders-handler/prod"]
        resync = engine.reconcile()  # the resync: a whole read
        assert resync.ok, resync.error
        assert sorted(a.resource for a in resync.applied) == ["Alias/payments-handler/blue", "Stage/orders/dev"]
        assert aws.stages("orders")["dev"]["variables"] == {"lambdaAlias": "dev"}
        assert aws.alias("payments-handler", "blue")["FunctionVersion"] == "1"
    finally:
        engine.close()


@pytest.mark.parametrize("seed", [3, 4])
def test_touched_reads_equal_a_whole_read_over_random_commits(two_of_each: AwsRepo, seed: int) -> None:
    """After each pass of a random sequence of commits, the kept-and-touched live state is what a fresh whole
    read returns (nobody else writes meanwhile)."""
    rng = random.Random(seed)
    engine, _ = engine_of(two_of_each)
    edits = [  # (a line of the specs, what it becomes): each a field of one resource
        (r"description: Development.*", "description: Development {n}"),
        (r"description: Production.*", "description: Production {n}"),
        (r"description: Orders service.*", "description: Orders service {n}"),
        (r"variables: \{lambdaAlias: blue.*\}", "variables: {{lambdaAlias: blue, n: '{n}'}}"),
        (r"routing: \{\"1\": \d+, \"2\": \d+\}", 'routing: {{"1": {n}, "2": {m}}}'),
        (r"description: development.*", "description: development {n}"),
    ]
    try:
        assert engine.reconcile(touched_only=True).ok
        for step in range(6):
            pattern, replacement = rng.choice(edits)
            n = rng.randrange(1, 99)
            path = two_of_each.path / "deploy_specs/specs.yaml"
            old = path.read_text(encoding="utf-8")
            text, count = re.subn(pattern, replacement.format(n=n, m=100 - n), old, count=1)
            assert count == 1, pattern
            path.write_text(text, encoding="utf-8")
            two_of_each.commit(f"step {step}")
            result = engine.reconcile(touched_only=True)
            assert result.ok, result.error
            desired = engine.desired(engine.head())
            kept = engine.backend.read_touched(desired)  # type: ignore[attr-defined]
            fresh = AwsBackend(region=REGION, endpoint_url=two_of_each.url)
            try:
                assert kept == fresh.read(desired)
            finally:
                fresh.close()
    finally:
        engine.close()
