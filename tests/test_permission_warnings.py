"""Invoke permissions that cannot be worked out are warnings in ``plan`` and ``apply`` output (DESIGN §10).

Driven through the real CLI on a real git repository and the local backend; the same plan is made for the aws
backend (tests/aws/test_permissions_moto.py).
"""

from __future__ import annotations

from tests.support import SpecRepo

FUNCTION = "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:"
UNQUALIFIED = f"{FUNCTION}function:orders-handler/invocations"
NOT_MANAGED = (
    "Stage/orders/dev: GET /orders: alias orders-handler:manual is not managed by reconciler (no Alias spec of this "
    "instance); grant API Gateway lambda:InvokeFunction on it yourself"
)


def _dev_alias(repo: SpecRepo, alias: str) -> None:
    text = (repo.path / "deploy_specs/stages.yaml").read_text(encoding="utf-8")
    repo.write("deploy_specs/stages.yaml", text.replace("{lambdaAlias: dev}", f"{{lambdaAlias: {alias}}}"))


def _warnings(stderr: str) -> list[str]:
    return [line.removeprefix("warning: ") for line in stderr.splitlines() if line.startswith("warning: ")]


def test_the_example_plans_without_warnings(example_repo: SpecRepo) -> None:
    """Every alias the example's stages name has a spec: no warning, an empty list in the JSON."""
    result = example_repo.cli("plan")
    assert result.code == 2 and _warnings(result.stderr) == []
    assert example_repo.cli_json("plan")["warnings"] == []


def test_an_alias_without_a_spec_is_a_warning_in_plan_and_apply(example_repo: SpecRepo) -> None:
    """A stage naming an alias no spec manages: plan and apply print a warning line per integration, JSON carries it."""
    _dev_alias(example_repo, "manual")
    example_repo.commit("dev names an alias made by hand")
    plan = example_repo.cli("plan")
    assert plan.code == 2
    assert _warnings(plan.stderr) == [
        NOT_MANAGED,
        NOT_MANAGED.replace("GET /orders", "POST /orders"),
        NOT_MANAGED.replace("GET /orders", "GET /orders/{id}"),
    ]
    (first, *_) = example_repo.cli_json("plan")["warnings"]
    assert first == {
        "code": "permission_not_granted",
        "resource": "Stage/orders/dev",
        "integration": "GET /orders",
        "alias": "orders-handler:manual",
        "message": NOT_MANAGED.split("GET /orders: ", 1)[1],
    }
    applied = example_repo.cli("apply")
    assert applied.code == 0, applied.stderr
    assert NOT_MANAGED in _warnings(applied.stderr)
    assert "permission_not_granted" in applied.stderr  # the log event, beside the output line
    again = example_repo.cli("apply", output="json")
    assert again.code == 0 and again.json["applied"] == []
    assert [w["resource"] for w in again.json["warnings"]] == ["Stage/orders/dev"] * 3
    assert NOT_MANAGED in _warnings(again.stderr)


def test_an_unqualified_function_is_a_warning_naming_the_integration(example_repo: SpecRepo) -> None:
    """An integration invoking a function without an alias gets no grant: the warning says which method and why."""
    path = example_repo.path / "deploy_specs/openapi.yaml"
    text = path.read_text(encoding="utf-8")
    head, post, tail = text.partition("    post:\n")
    example_repo.write("deploy_specs/openapi.yaml", head + post + tail.replace(
        f"{FUNCTION}function:orders-handler:${{stageVariables.lambdaAlias}}/invocations", UNQUALIFIED, 1
    ))  # fmt: skip
    example_repo.commit("POST /orders invokes the function itself")
    warnings = example_repo.cli_json("plan")["warnings"]
    assert {(w["resource"], w["integration"], w["alias"]) for w in warnings} == {
        (f"Stage/orders/{stage}", "POST /orders", None) for stage in ("dev", "test", "prod", "v2")
    }
    assert warnings[0]["message"] == (
        "Lambda function orders-handler is invoked without an alias; grant its invoke permission yourself"
    )


def test_an_alias_this_instance_owns_without_a_spec_is_granted(example_repo: SpecRepo) -> None:
    """An alias still managed here (an orphan until pruned) is granted by the backend: no warning for it."""
    assert example_repo.cli("apply").code == 0
    aliases = (example_repo.path / "deploy_specs/aliases.yaml").read_text(encoding="utf-8")
    example_repo.write(
        "deploy_specs/aliases.yaml", aliases.split("---")[1].lstrip("\n") + "---" + aliases.split("---")[2]
    )
    example_repo.commit("the dev alias's spec is gone; the alias stays until --prune")
    plan = example_repo.cli_json("plan")
    assert plan["orphans"] == ["Alias/orders-handler/dev"] and plan["warnings"] == []
    assert [w["alias"] for w in example_repo.cli_json("plan", "--prune")["warnings"]] == ["orders-handler:dev"] * 3
