"""Validation of ``rollout`` blocks (DESIGN §9) through ``reconciler validate`` on real temporary git repositories.

Each bad block is committed beside a valid base set of specs; the error names
the file, the line (the ``# <-`` marker), the field and what was expected, and
nothing of that commit applies.
"""

from __future__ import annotations

import pytest

from reconciler.specs import DesiredRollout, RolloutStep, parse_duration
from tests import test_specs
from tests.support import SpecRepo
from tests.test_specs import (
    BAD,
    alias,
    spec_repo,
    stage,
    validate,
)

__all__ = ["spec_repo"]  # the fixture, shared with test_specs

ALIAS = '  function: orders-handler\n  routing: {"2": 100}\n  rollout:\n'
STAGE = "  api: orders\n  variables: {lambdaAlias: prod}\n  rollout:\n"

BAD_ROLLOUTS = [
    pytest.param(
        alias(ALIAS + "    steps:\n      - setWeight: 0  # <-\n"),
        "spec.rollout.steps.0.setWeight",
        "expected a percentage in (0, 100)",
        id="weight-zero",
    ),
    pytest.param(
        alias(ALIAS + "    steps:\n      - setWeight: 100  # <-\n"),
        "spec.rollout.steps.0.setWeight",
        "expected a percentage in (0, 100)",
        id="weight-100",
    ),
    pytest.param(
        alias(ALIAS + "    steps:  # <-\n      - setWeight: 50\n      - setWeight: 10\n"),
        "spec.rollout.steps",
        "step 2: setWeight 10 after setWeight 50; expected increasing weights",
        id="weights-not-increasing",
    ),
    pytest.param(
        alias(ALIAS + "    steps:  # <-\n      - setWeight: 10\n      - pause: {}\n      - setWeight: 10\n"),
        "spec.rollout.steps",
        "expected increasing weights",
        id="weights-repeated",
    ),
    pytest.param(
        alias(ALIAS + "    steps:\n      - setWeight: 10\n      - pause: {duration: 5x}  # <-\n"),
        "spec.rollout.steps.1.pause.duration",
        "expected a duration like 30s, 5m, 1h or a number of seconds, got '5x'",
        id="duration-unit",
    ),
    pytest.param(
        alias(ALIAS + "    steps:\n      - pause: {duration: 0}  # <-\n"),
        "spec.rollout.steps.0.pause.duration",
        "more than zero",
        id="duration-zero",
    ),
    pytest.param(
        alias(ALIAS + "    steps:\n      - wait: 5m  # <-\n"),
        "spec.rollout.steps.0.wait",
        "unknown field; expected one of setWeight, pause",
        id="unknown-step-kind",
    ),
    pytest.param(
        alias(ALIAS + "    steps:  # <-\n      - {setWeight: 10, pause: {}}\n"),
        "spec.rollout.steps.0",
        "expected exactly one of setWeight, pause",
        id="two-kinds-in-one-step",
    ),
    pytest.param(
        alias(ALIAS + "    steps: []  # <-\n"),
        "spec.rollout.steps",
        "expected at least one step",
        id="no-steps",
    ),
    pytest.param(
        alias(ALIAS + "    steps: [{setWeight: 10}]\n    analysis: {interval: 1m}  # <-\n"),
        "spec.rollout.analysis",
        "expected alarms or checks to watch",
        id="analysis-without-anything-to-check",
    ),
    pytest.param(
        alias(ALIAS + "    steps: [{setWeight: 10}]\n    analysis:\n      checks:\n        - {url: ftp://x}  # <-\n"),
        "spec.rollout.analysis.checks.0.url",
        "expected an http:// or https:// URL",
        id="check-url-not-http",
    ),
    pytest.param(
        alias(ALIAS + "    steps: [{setWeight: 10}]\n    analysis:\n      alarms: [a]\n      failureLimit: 0  # <-\n"),
        "spec.rollout.analysis.failureLimit",
        "expected a number of failed checks of 1 or more",
        id="failure-limit-zero",
    ),
    pytest.param(
        alias(ALIAS + "    steps: [{setWeight: 10}]\n    onFailure: explode  # <-\n"),
        "spec.rollout.onFailure",
        "expected rollback or halt, got 'explode'",
        id="on-failure-unknown",
    ),
    pytest.param(
        stage(STAGE + "    steps: [{setWeight: 10}]\n  canary: {percentTraffic: 5}\n").replace(
            "  rollout:\n", "  rollout:  # <-\n"
        ),
        "spec.rollout",
        "may not also declare canary",
        id="stage-rollout-and-canary",
    ),
]


@pytest.mark.parametrize(("text", "field", "fragment"), BAD_ROLLOUTS)
def test_bad_rollout_is_reported_at_file_line_and_field(
    spec_repo: SpecRepo, text: str, field: str, fragment: str
) -> None:
    """A bad rollout block fails validate with file, line, field and what was expected."""
    test_specs.test_bad_input_is_reported_at_file_line_and_field(spec_repo, text, field, fragment)


def test_invalid_rollout_applies_nothing_of_the_commit(spec_repo: SpecRepo) -> None:
    """One invalid rollout block keeps every other change of its commit from applying."""
    assert spec_repo.cli("apply").code == 1  # the function does not exist yet
    spec_repo.publish("orders-handler")
    assert spec_repo.cli("apply").code == 0
    spec_repo.write("deploy_specs/stages.yaml", stage("  api: orders\n  variables: {lambdaAlias: next}\n", "prod"))
    spec_repo.write(BAD, alias(ALIAS + "    steps: [{setWeight: 50}, {setWeight: 10}]\n"))
    spec_repo.commit("a variables change and a bad rollout")
    assert spec_repo.cli("apply").code == 1
    assert spec_repo.cli_json("status")["stages"]["orders/prod"]["variables"] == {"lambdaAlias": "prod"}


def test_valid_rollout_becomes_the_desired_rollout(spec_repo: SpecRepo) -> None:
    """A valid block validates and keeps its steps, analysis and failure policy."""
    spec_repo.write(
        BAD,
        alias(
            ALIAS
            + "    steps: [{setWeight: 10}, {pause: {duration: 90}}, {setWeight: 50}, {pause: {}}]\n"
            + "    analysis: {interval: 30s, alarms: [orders-5xx], failureLimit: 2}\n    onFailure: halt\n",
            "prod2",
        ),
    )
    spec_repo.commit("a rollout")
    code, report = validate(spec_repo)
    assert code == 0, report


def test_desired_rollout_fingerprint_follows_every_field() -> None:
    """Any change of the block changes its fingerprint (the rollout restarts)."""
    one = DesiredRollout((RolloutStep(weight=10), RolloutStep(duration=60)))
    assert one.fingerprint == DesiredRollout((RolloutStep(weight=10), RolloutStep(duration=60))).fingerprint
    assert one.fingerprint != DesiredRollout((RolloutStep(weight=10), RolloutStep(duration=61))).fingerprint
    assert one.fingerprint != DesiredRollout(one.steps, on_failure="halt").fingerprint


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), (45, 45), ("2.5", 2.5), (0.5, 0.5)],
)
def test_durations(text: str | int | float, seconds: float) -> None:
    """Durations are 30s, 5m, 1h or a number of seconds."""
    assert parse_duration(text) == seconds
