"""Stage settings (DESIGN §10): validated with file, line, field and what was expected; reconciled declaratively.

Driven through the real CLI on a real git repository and the local backend.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import SpecRepo

SETTINGS = """\
  tracingEnabled: true
  cacheCluster: {enabled: true, size: 6.1}
  clientCertificateId: abc123
  accessLog:
    destinationArn: arn:aws:logs:us-east-1:123456789012:log-group:orders-access
    format: '$context.requestId $context.status'
  tags: {team: payments, cost-center: "42"}
  methodSettings:
    "*/*": {metricsEnabled: true, loggingLevel: ERROR, throttlingRateLimit: 100, throttlingBurstLimit: 50}
    /orders/GET: {cachingEnabled: true, cacheTtlInSeconds: 60}
"""


def _prod_with(repo: SpecRepo, extra: str, canary: str = "") -> None:
    path = repo.path / "deploy_specs/stages.yaml"
    text = path.read_text(encoding="utf-8")
    head, _, tail = text.partition("metadata: {name: prod}\n")
    body, sep, rest = tail.partition("---")
    body = "\nspec:\n  api: orders\n  description: Production\n  variables: {lambdaAlias: prod}\n" + extra + canary
    repo.write("deploy_specs/stages.yaml", head + "metadata: {name: prod}\n" + body + sep + rest)


def test_settings_are_applied_shown_in_status_and_then_in_sync(example_repo: SpecRepo) -> None:
    """Every stage setting reaches the stage, shows under it in status, and the next plan is empty."""
    _prod_with(example_repo, SETTINGS)
    example_repo.commit("prod settings")
    assert example_repo.cli("apply").code == 0
    prod = example_repo.cli_json("status")["stages"]["orders/prod"]
    assert prod["tracingEnabled"] is True
    assert prod["cacheCluster"] == {"enabled": True, "size": "6.1"}
    assert prod["clientCertificateId"] == "abc123"
    assert prod["accessLog"]["destinationArn"].endswith("log-group:orders-access")
    assert prod["tags"] == {"cost-center": "42", "team": "payments"}
    assert prod["methodSettings"]["*/*"]["loggingLevel"] == "ERROR"
    assert prod["methodSettings"]["/orders/GET"]["cacheTtlInSeconds"] == 60
    assert prod["methodSettings"]["/orders/GET"]["throttlingBurstLimit"] == 5000  # a field left out: the default
    assert example_repo.cli_json("plan")["in_sync"] is True


def test_a_setting_removed_from_the_spec_goes_back_to_the_default(example_repo: SpecRepo) -> None:
    """Declarative: deleting the settings plans one change per setting back to API Gateway's default."""
    _prod_with(example_repo, SETTINGS)
    example_repo.commit("prod settings")
    assert example_repo.cli("apply").code == 0
    _prod_with(example_repo, "")
    example_repo.commit("no settings")
    plan = example_repo.cli_json("plan")
    (action,) = [a for a in plan["actions"] if a["resource"] == "Stage/orders/prod"]
    changes = action["changes"]
    assert changes["tracingEnabled"] == [True, False]
    assert changes["cacheCluster"] == [{"enabled": True, "size": "6.1"}, {"enabled": False, "size": None}]
    assert changes["accessLog"][1] is None and changes["tags"][1] == {} and changes["methodSettings"][1] == {}
    assert example_repo.cli("apply").code == 0
    assert example_repo.cli_json("plan")["in_sync"] is True


def test_canary_with_zero_percent_and_stage_cache(example_repo: SpecRepo) -> None:
    """A canary may take 0 % (set up, no traffic yet) and use the stage cache."""
    canary = "  canary:\n    percentTraffic: 0\n    useStageCache: true\n    variables: {lambdaAlias: test}\n"
    _prod_with(example_repo, "", canary)
    example_repo.commit("canary at 0")
    assert example_repo.cli("apply").code == 0
    prod = example_repo.cli_json("status")["stages"]["orders/prod"]
    assert prod["canary"]["percentTraffic"] == 0 and prod["canary"]["useStageCache"] is True
    assert example_repo.cli_json("plan")["in_sync"] is True


BAD_SETTINGS: list[Any] = [
    pytest.param(
        "  cacheCluster: {enabled: true, size: 2}\n",
        "spec.cacheCluster.size",
        "expected one of 0.5, 1.6, 6.1, 13.5, 28.4, 58.2, 118, 237",
        id="cache-size",
    ),
    pytest.param(
        "  methodSettings:\n    '*/*': {loggingLevel: DEBUG}\n",
        "spec.methodSettings.*/*.loggingLevel",
        "expected one of OFF, ERROR, INFO",
        id="logging-level",
    ),
    pytest.param(
        "  methodSettings:\n    '*/*': {throttlingBurstLimit: 6000}\n",
        "spec.methodSettings.*/*.throttlingBurstLimit",
        "expected requests from 0 to 5000",
        id="burst-limit",
    ),
    pytest.param(
        "  methodSettings:\n    '*/*': {throttlingRateLimit: -1}\n",
        "spec.methodSettings.*/*.throttlingRateLimit",
        "expected requests per second from 0 to 10000",
        id="rate-limit",
    ),
    pytest.param(
        "  methodSettings:\n    orders-GET: {metricsEnabled: true}\n",
        "spec.methodSettings.orders-GET",
        "'/orders/GET'",
        id="method-key",
    ),
    pytest.param("  tags: {'aws:cloudformation:stack-name': x}\n", "spec.tags", "aws: or reconciler:", id="aws-tag"),
    pytest.param(
        "  accessLog: {destinationArn: my-log-group, format: x}\n",
        "spec.accessLog.destinationArn",
        "CloudWatch Logs log group or Kinesis Data Firehose ARN",
        id="access-log-arn",
    ),
    pytest.param("  tracingEnabled: yes please\n", "spec.tracingEnabled", "expected true or false", id="tracing"),
]


@pytest.mark.parametrize(("extra", "field", "fragment"), BAD_SETTINGS)
def test_bad_settings_are_reported_with_file_line_field_and_expected(
    example_repo: SpecRepo, extra: str, field: str, fragment: str
) -> None:
    """Each setting's AWS rule is checked at validate time, naming file, line, field and what was expected."""
    _prod_with(example_repo, extra)
    example_repo.commit("a bad setting")
    error = example_repo.validate_error(field)
    assert error["file"] == "deploy_specs/stages.yaml" and error["line"] is not None
    assert fragment in error["message"], error
