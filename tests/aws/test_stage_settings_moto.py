"""Stage settings on the aws backend (DESIGN §10): moto for what it keeps, Stubber for what it ignores.

moto 5.2 keeps tracing, the cache cluster, access logs, method settings and
stage tags; it ignores ``clientCertificateId``, ``canarySettings`` (so
``useStageCache``) and the removal of a method-settings entry.  Those go
through botocore's ``Stubber`` with the exact patch operations AWS takes.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.backends.aws import AwsBackend
from reconciler.engine import Config, Engine
from reconciler.model import UpdateStage
from reconciler.settings import StageSettings
from reconciler.specs import DesiredCanary
from tests.aws.conftest import REGION, Aws, AwsRepo
from tests.aws.test_requests_stubbed import (  # noqa: F401 - fixtures
    DESIRED,
    MAIN,
    OTHER,
    PROD_STAGE,
    Stubbed,
    backend,
    expect_read,
    stubs,
)

SETTINGS = """\
  tracingEnabled: true
  cacheCluster: {enabled: true, size: "0.5"}
  accessLog:
    destinationArn: arn:aws:logs:us-east-1:123456789012:log-group:orders-access
    format: '$context.requestId'
  tags: {team: payments}
  methodSettings:
    "*/*": {metricsEnabled: true, loggingLevel: INFO}
    /orders/GET: {throttlingRateLimit: 50, throttlingBurstLimit: 20}
"""


def _settings(repo: AwsRepo, text: str) -> None:
    specs = (repo.path / "deploy_specs/specs.yaml").read_text(encoding="utf-8")
    marker = "  description: Production\n  variables: {lambdaAlias: prod}\n"
    base = specs.split(marker)
    repo.write("deploy_specs/specs.yaml", base[0] + marker + text + "---" + base[1].split("---", 1)[1])


def test_settings_reach_the_stage_and_settle(aws_repo: AwsRepo, aws: Aws) -> None:
    """Tracing, cache, access log, tags and method settings are on the stage; the next plan is in sync."""
    _settings(aws_repo, SETTINGS)
    aws_repo.commit("prod settings")
    result = aws_repo.aws("apply")
    assert result.code == 0, result.stderr
    prod = aws.stages()["prod"]
    assert prod["tracingEnabled"] is True and prod["cacheClusterEnabled"] is True
    assert prod["accessLogSettings"]["destinationArn"].endswith("orders-access")
    assert prod["tags"]["team"] == "payments" and prod["tags"]["reconciler:instance"] == "default"
    assert prod["methodSettings"]["*/*"]["loggingLevel"] == "INFO"
    assert prod["methodSettings"]["~1orders/GET"]["throttlingBurstLimit"] == 20
    plan = aws_repo.aws_json("plan")
    assert plan["in_sync"] is True, plan["actions"]
    status = aws_repo.aws_json("status")
    assert status["stages"]["orders/prod"]["methodSettings"]["/orders/GET"]["throttlingRateLimit"] == 50


def test_a_stage_change_is_one_update_stage_call(aws_repo: AwsRepo, aws: Aws, tmp_path: Path) -> None:
    """Changing tracing, a method setting and a variable of one stage sends exactly one UpdateStage."""
    _settings(aws_repo, SETTINGS)
    aws_repo.commit("prod settings")
    assert aws_repo.aws("apply").code == 0
    changed = SETTINGS.replace("tracingEnabled: true", "tracingEnabled: false").replace("INFO", "ERROR")
    _settings(aws_repo, changed)
    aws_repo.commit("prod: tracing off, errors only")
    counted = AwsBackend(region=REGION, endpoint_url=aws.url)
    sent: list[str] = []
    for client in (counted.calls.apigateway, counted.calls.apigateway_once, counted.calls.lambda_):
        client.meta.events.register("before-call", lambda model, **_: sent.append(model.name))
    engine = Engine(Config(repo=str(aws_repo.path), backend="aws", state_dir=str(tmp_path / "s")), backend=counted)
    try:
        result = engine.reconcile()
    finally:
        engine.close()
    assert result.ok, result.error
    writes = [name for name in sent if not name.startswith(("Get", "List"))]
    assert writes == ["UpdateStage"]
    assert aws.stages()["prod"]["tracingEnabled"] is False


def test_client_certificate_stage_cache_and_removed_method_setting_patch_ops(
    backend: AwsBackend,  # noqa: F811 - the fixture
    stubs: Stubbed,  # noqa: F811
) -> None:
    """clientCertificateId, canary useStageCache and a dropped method setting are exact UpdateStage operations."""
    prod = {**PROD_STAGE, "methodSettings": {"~1orders/GET": {"cachingEnabled": True}}}
    expect_read(stubs.apigateway, stubs.lambda_, prod)  # the stage as GetStages returns it, with its method setting
    live = backend.read(DESIRED).stages[("orders", "prod")]
    assert live.settings is not None and live.settings.methodSettings["/orders/GET"].cachingEnabled
    stubs.apigateway.add_response(
        "update_stage",
        {"stageName": "prod", "deploymentId": "d1"},
        {
            "restApiId": "a1",
            "stageName": "prod",
            "patchOperations": [
                {"op": "replace", "path": "/clientCertificateId", "value": "cert-1"},
                {"op": "remove", "path": "/~1orders/GET"},
                {"op": "replace", "path": "/canarySettings/useStageCache", "value": "true"},
            ],
        },
    )
    backend.apply(
        UpdateStage(
            api="orders",
            stage="prod",
            description=None,
            definition=MAIN,
            variables={"lambdaAlias": "prod"},
            canary=DesiredCanary(10.0, OTHER, {"lambdaAlias": "canary"}, use_stage_cache=True),
            settings=StageSettings(clientCertificateId="cert-1"),
        )
    )
