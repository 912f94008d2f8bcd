"""What API Gateway accepts in an OpenAPI/Swagger definition, and what a definition asks of a stage.

Pure functions over a parsed definition (no I/O), shared by ``specs.py``
(``validate``) and the local backend (which refuses what AWS refuses):
* ``definition_problems``: the import rules API Gateway enforces (Swagger 2.0
  or OpenAPI 3.0.x, never 3.1; no CloudFormation intrinsics; every method has an
  ``x-amazon-apigateway-integration``, since REST APIs have no API-level default);
* ``integration_variables``: the ``${stageVariables.X}`` a stage must set, i.e.
  those in an integration's ``uri``, ``credentials`` or ``connectionId`` (API
  Gateway resolves mapping templates and the rest at request time, unset is empty);
* ``lambda_targets`` / ``lambda_integrations``: the Lambda aliases a stage's
  integrations invoke (for invoke permissions, and the plan's warnings).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

INTEGRATION = "x-amazon-apigateway-integration"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "x-amazon-apigateway-any-method")
VARIABLE_FIELDS = ("uri", "credentials", "connectionId")
STAGE_VARIABLE_REF = re.compile(r"\$\{stageVariables\.([A-Za-z0-9_]+)\}")
MAX_PROBLEMS = 20  # a definition with hundreds of bare methods gets a readable list, not a wall


def _walk(data: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) for every value of ``data``, depth first."""
    yield path, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _walk(value, f"{path}.{index}" if path else str(index))


def version_problem(data: Any) -> str | None:
    """Why API Gateway would not import ``data`` as a definition at all, else None."""
    if not isinstance(data, dict):
        return "expected an OpenAPI 3.0 ('openapi: 3.0.x') or Swagger 2 ('swagger: \"2.0\"') document"
    openapi = str(data.get("openapi", ""))
    if openapi.startswith("3.") and not openapi.startswith("3.0"):
        return f"openapi: {openapi}; API Gateway imports Swagger 2.0 and OpenAPI 3.0.x only, expected 'openapi: 3.0.x'"
    if not (openapi.startswith("3.0") or str(data.get("swagger", "")) == "2.0"):
        return "expected an OpenAPI 3.0 ('openapi: 3.0.x') or Swagger 2 ('swagger: \"2.0\"') document"
    return None


def _intrinsics(data: Any) -> Iterator[str]:
    for path, value in _walk(data):
        if isinstance(value, dict):
            for key in value:
                if key.startswith("Fn::") or (key in ("Ref", "Condition") and len(value) == 1):
                    where = f"{path}.{key}" if path else key
                    yield (
                        f"{where}: CloudFormation intrinsic function {key}; API Gateway imports plain OpenAPI and "
                        "never resolves it: expected the literal value"
                    )


def _methods_without_integration(data: dict[str, Any]) -> Iterator[str]:
    paths = data.get("paths")
    if not isinstance(paths, dict):
        return
    for resource, item in paths.items():
        if not isinstance(item, dict):
            continue
        for method in HTTP_METHODS:
            operation = item.get(method)
            if isinstance(operation, dict) and INTEGRATION not in operation:
                name = "ANY" if method == "x-amazon-apigateway-any-method" else method.upper()
                yield (
                    f"paths.{resource}.{method}: method {name} {resource} has no {INTEGRATION}; expected one "
                    "(API Gateway refuses to deploy a method without an integration)"
                )


def definition_problems(data: Any) -> list[str]:
    """Everything API Gateway would refuse in this parsed definition (empty: it imports and deploys)."""
    problem = version_problem(data)
    if problem is not None:
        return [problem]
    problems = [*_intrinsics(data), *_methods_without_integration(data)]
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more of the same kind"]
    return problems


def integrations(data: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, integration object) for every ``x-amazon-apigateway-integration`` in ``data``."""
    for path, value in _walk(data):
        if isinstance(value, dict):
            found = value.get(INTEGRATION)
            if isinstance(found, dict):
                yield (f"{path}.{INTEGRATION}" if path else INTEGRATION), found


def integration_variables(data: Any) -> set[str]:
    """The stage variables an integration needs a value for (``uri``, ``credentials``, ``connectionId``)."""
    names: set[str] = set()
    for _, integration in integrations(data):
        for name in VARIABLE_FIELDS:
            value = integration.get(name)
            if isinstance(value, str):
                names.update(STAGE_VARIABLE_REF.findall(value))
    return names


AWS_VARIABLES = re.compile(r"\$\{AWS::(Region|AccountId|Partition)\}")
LAMBDA_FUNCTION_ARN = re.compile(r"arn:([a-z-]+):lambda:([a-z0-9-]*):([0-9]*|\{account\}):function:([^/\"'\s]+)")
UNKNOWN_ACCOUNT = "{account}"


def lambda_targets(text: str, variables: dict[str, str]) -> tuple[set[tuple[str, str, str, str]], list[str]]:
    """The Lambda aliases a definition's integrations invoke with these stage variables, and what cannot be told.

    Returns ({(function, qualifier, partition, account)}, [problems]). Every form API Gateway accepts:
    ``function:NAME:${stageVariables.alias}``, ``function:${stageVariables.fn}`` with ``fn: name:alias``,
    ``${AWS::Region}``/``${AWS::AccountId}``/``${AWS::Partition}`` in the ARN (account: ``{account}``, to be
    filled by the caller), and literal qualifiers. An unqualified function or an unset variable is a problem.
    """
    aws = {"Region": "", "AccountId": UNKNOWN_ACCOUNT, "Partition": "aws"}
    resolved = AWS_VARIABLES.sub(lambda m: aws[m.group(1)], text)
    missing: set[str] = set()

    def stage_variable(match: re.Match[str]) -> str:
        value = variables.get(match.group(1))
        if value is None:
            missing.add(match.group(1))
            return match.group(0)
        return value

    resolved = STAGE_VARIABLE_REF.sub(stage_variable, resolved)
    targets: set[tuple[str, str, str, str]] = set()
    problems: list[str] = []
    for partition, _region, account, function in LAMBDA_FUNCTION_ARN.findall(resolved):
        if "${" in function:
            names = ", ".join(sorted(STAGE_VARIABLE_REF.findall(function))) or function
            problems.append(f"Lambda function {function}: stage variable {names} is not set")
            continue
        name, _, qualifier = function.partition(":")
        if not qualifier:
            problems.append(f"Lambda function {name} is invoked without an alias; grant its invoke permission yourself")
            continue
        targets.add((name, qualifier, partition, account))
    return targets, sorted(set(problems))


def _method_name(path: str) -> str:
    """``paths./orders.get.x-amazon-apigateway-integration`` -> ``GET /orders`` (else the dotted path)."""
    parts = path.split(".")
    if len(parts) >= 4 and parts[0] == "paths" and parts[-1] == INTEGRATION and parts[-2] in HTTP_METHODS:
        method = "ANY" if parts[-2] == "x-amazon-apigateway-any-method" else parts[-2].upper()
        return f"{method} {'.'.join(parts[1:-2])}"
    return path


def lambda_integrations(data: Any) -> list[tuple[str, str]]:
    """(method such as ``GET /orders``, uri) for every integration whose ``uri`` names a Lambda function."""
    found: list[tuple[str, str]] = []
    for path, integration in integrations(data):
        uri = integration.get("uri")
        if isinstance(uri, str) and ":lambda:" in uri and ":function:" in uri:
            found.append((_method_name(path), uri))
    return found
