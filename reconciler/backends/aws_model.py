"""What AWS objects mean to the ``aws`` backend: markers, stage patches, alias grants, parsing.

Pure functions and data, no boto3 and no I/O: how the tool marks what it owns
(tags, description markers, deployment descriptions) and reads those marks
back into ``LiveState`` objects, which ``UpdateStage`` patch operations turn a
live stage into the desired one, and which Lambda aliases a stage's
integrations reach through stage variables.  Used by ``aws.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.model import (
    DEFAULT_INSTANCE,
    LiveAlias,
    LiveApi,
    LiveBasePathMapping,
    LiveCanary,
    LiveStage,
    percent_json,
    routing_from_lambda,
)
from reconciler.openapi import lambda_targets
from reconciler.settings import (
    ApiSettings,
    StageSettings,
    method_key_from_aws,
    method_key_to_aws,
    method_setting_from_aws,
)
from reconciler.specs import NONE_BASE_PATH, Definition, DesiredCanary, normalize_percent

MANAGED_TAG = "reconciler:managed"
INSTANCE_TAG = "reconciler:instance"
ALIAS_MARKER = "[reconciler]"
ALIAS_OWNED = re.compile(r"\[reconciler(?::([^\]\s]+))?\](?: (.*))?\Z", re.DOTALL)
ALIAS_DESCRIPTION_MAX = 256
API_MARKER = re.compile(r"\s*\[reconciler:(?:owner=([^\]\s]+))?\s*(?:definition-sha256=([0-9a-f]{64}))?\]\Z")
MAPPING_TAG = "reconciler:mapping:"  # + base path: a tag of the custom domain naming the mapping's instance
_TAG_SAFE = re.compile(r"[A-Za-z0-9_.+=@-]{1,100}")  # base path characters a tag key may hold as they are
STATEMENT_PREFIX = "reconciler-"
INVOKE_PRINCIPAL = "apigateway.amazonaws.com"
PatchOp = dict[str, str]
VPC_PATH = "/endpointConfiguration/vpcEndpointIds"


# ------------------------------------------------------------------ markers


def api_description(description: str | None, sha256: str | None, owner: str | None = None) -> str:
    """The RestApi description as stored: the spec's text, then the marker (owner, definition hash).

    ``default``'s marker names only the hash, as before instances had names; with no hash yet (an
    adopted API) the owner is always named, so that the marker alone says the API is managed.
    """
    text = description or ""
    parts = []
    if owner is not None and (owner != DEFAULT_INSTANCE or sha256 is None):
        parts.append(f"owner={owner}")
    if sha256 is not None:
        parts.append(f"definition-sha256={sha256}")
    if not parts:
        return text
    marker = f"[reconciler:{' '.join(parts)}]"
    return f"{text} {marker}" if text else marker


@dataclass(frozen=True)
class ApiMarker:
    """What a stored RestApi description says: the spec's text, the hash, whether marked, by whom."""

    description: str | None
    sha256: str | None
    marked: bool
    owner: str | None


def parse_api_description(stored: str | None) -> ApiMarker:
    text = stored or ""
    found = API_MARKER.search(text)
    if found is None or not (found.group(1) or found.group(2)):
        return ApiMarker(text or None, None, False, None)
    return ApiMarker(text[: found.start()] or None, found.group(2), True, found.group(1))


def alias_description(description: str | None, owner: str | None = None) -> str:
    """``[reconciler] text`` for ``default`` (as before instances had names), ``[reconciler:NAME] text`` else."""
    marker = ALIAS_MARKER if owner in (None, DEFAULT_INSTANCE) else f"[reconciler:{owner}]"
    return f"{marker} {description}" if description else marker


def parse_alias_description(stored: str | None) -> tuple[bool, str | None, str | None]:
    """(managed, owner, the spec's description) from a stored alias description."""
    text = stored or ""
    found = ALIAS_OWNED.match(text)
    if found is None:
        return False, None, text or None
    return True, found.group(1), found.group(2) or None


def deployment_description(sha256: str, revision: str | None) -> str:
    return json.dumps({"revision": revision, "sha256": sha256}, sort_keys=True)


def parse_deployment_description(stored: str | None) -> tuple[str | None, str | None]:
    """(definition hash, git revision) of a deployment this tool created, else (None, None)."""
    try:
        data = json.loads(stored or "")
    except ValueError:
        return None, None
    if not isinstance(data, dict) or not isinstance(data.get("sha256"), str):
        return None, None
    revision = data.get("revision")
    return data["sha256"], revision if isinstance(revision, str) else None


def api_url(api_id: str, region: str) -> str:
    """The invoke URL of an API, without a stage."""
    return f"https://{api_id}.execute-api.{region}.amazonaws.com"


def stage_url(api_id: str, region: str, stage: str) -> str:
    return f"{api_url(api_id, region)}/{stage}"


# --------------------------------------------------------------- permissions


@dataclass(frozen=True)
class AliasRef:
    """A Lambda alias that a stage's integration names through a stage variable."""

    function: str
    alias: str
    partition: str
    account: str


def alias_refs(definition: Definition, variables: Mapping[str, str]) -> set[AliasRef]:
    """Every alias that ``definition``'s Lambda integrations reach with these stage variables (every URI form).

    ``account`` is ``{account}`` where the ARN says ``${AWS::AccountId}``: the caller fills it in.
    """
    targets, _ = lambda_targets(definition.payload, dict(variables))
    return {AliasRef(function, alias, partition, account) for function, alias, partition, account in targets}


def desired_refs(definition: Definition, variables: Mapping[str, str], canary: DesiredCanary | None) -> set[AliasRef]:
    refs = alias_refs(definition, variables)
    if canary is not None:
        refs |= alias_refs(canary.definition, {**variables, **canary.variables})
    return refs


# -------------------------------------------------------------- stage patches


@dataclass(frozen=True)
class CanaryTarget:
    percent_traffic: float
    deployment_id: str
    variables: dict[str, str] = field(default_factory=dict)
    use_stage_cache: bool = False


def patch_replace(path: str, value: str) -> PatchOp:
    return {"op": "replace", "path": path, "value": value}


def patch_remove(path: str) -> PatchOp:
    return {"op": "remove", "path": path}


def _variable_ops(prefix: str, old: Mapping[str, str], new: Mapping[str, str]) -> list[PatchOp]:
    ops = [patch_replace(f"{prefix}/{name}", value) for name, value in sorted(new.items()) if old.get(name) != value]
    return ops + [patch_remove(f"{prefix}/{name}") for name in sorted(set(old) - set(new))]


def _flag(value: bool) -> str:
    return "true" if value else "false"


METHOD_PATHS = {
    "throttlingRateLimit": "throttling/rateLimit",
    "throttlingBurstLimit": "throttling/burstLimit",
    "loggingLevel": "logging/loglevel",
    "metricsEnabled": "metrics/enabled",
    "dataTraceEnabled": "logging/dataTrace",
    "cachingEnabled": "caching/enabled",
    "cacheTtlInSeconds": "caching/ttlInSeconds",
}


def _method_value(value: Any) -> str:
    if isinstance(value, bool):
        return _flag(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings_patch(current: StageSettings, target: StageSettings) -> list[PatchOp]:
    """The ``UpdateStage`` operations for the stage settings that differ (tags are TagResource's, not these)."""
    ops: list[PatchOp] = []
    if current.tracingEnabled != target.tracingEnabled:
        ops.append(patch_replace("/tracingEnabled", _flag(target.tracingEnabled)))
    if current.cacheClusterEnabled != target.cacheClusterEnabled:
        ops.append(patch_replace("/cacheClusterEnabled", _flag(target.cacheClusterEnabled)))
    if target.cacheClusterEnabled and target.cacheClusterSize != current.cacheClusterSize:
        ops.append(patch_replace("/cacheClusterSize", target.cacheClusterSize or "0.5"))
    if (current.clientCertificateId or "") != (target.clientCertificateId or ""):
        ops.append(patch_replace("/clientCertificateId", target.clientCertificateId or ""))
    if current.accessLog != target.accessLog:
        if target.accessLog is None:
            ops.append(patch_remove("/accessLogSettings"))
        else:
            old = current.accessLog or ("", "")
            if old[0] != target.accessLog[0]:
                ops.append(patch_replace("/accessLogSettings/destinationArn", target.accessLog[0]))
            if old[1] != target.accessLog[1]:
                ops.append(patch_replace("/accessLogSettings/format", target.accessLog[1]))
    for key in sorted(set(current.methodSettings) - set(target.methodSettings)):
        ops.append(patch_remove(f"/{method_key_to_aws(key)}"))
    for key, wanted in sorted(target.methodSettings.items()):
        had = current.methodSettings.get(key)
        for name, path in METHOD_PATHS.items():
            value = getattr(wanted, name)
            # a new entry gets every field written (moto's defaults differ from API Gateway's)
            if had is None or getattr(had, name) != value:
                ops.append(patch_replace(f"/{method_key_to_aws(key)}/{path}", _method_value(value)))
    return ops


def endpoint_patch(endpoint_type: str | None, vpc_endpoint_ids: tuple[str, ...], target: ApiSettings) -> list[PatchOp]:
    """The ``UpdateRestApi`` operations that move an API to the spec's endpoint type and VPC endpoints (in place;
    none when the spec names no type: the API keeps its own)."""
    if target.endpointType is None:
        return []
    ops: list[PatchOp] = []
    if endpoint_type != target.endpointType:
        ops.append(patch_replace(f"/endpointConfiguration/types/{endpoint_type or 'EDGE'}", target.endpointType))
    wanted = set(target.vpcEndpointIds) if target.endpointType == "PRIVATE" else set()
    ops += [{"op": "add", "path": VPC_PATH, "value": v} for v in sorted(wanted - set(vpc_endpoint_ids))]
    ops += [{"op": "remove", "path": VPC_PATH, "value": v} for v in sorted(set(vpc_endpoint_ids) - wanted)]
    return ops


def tag_changes(live_tags: Mapping[str, str], wanted: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(tags to set, tag keys to remove) so that the user tags equal ``wanted``; marks and aws: tags stay."""
    own = {k: v for k, v in live_tags.items() if not _kept_tag(k)}
    to_set = {k: v for k, v in wanted.items() if own.get(k) != v}
    return to_set, sorted(set(own) - set(wanted))


def _kept_tag(key: str) -> bool:
    return key.startswith("aws:") or key in (MANAGED_TAG, INSTANCE_TAG)


def live_settings(item: Mapping[str, Any]) -> StageSettings:
    """The settings of a stage as ``GetStages`` returns it."""
    enabled = bool(item.get("cacheClusterEnabled"))
    log = item.get("accessLogSettings") or {}
    return StageSettings(
        tracingEnabled=bool(item.get("tracingEnabled")),
        cacheClusterEnabled=enabled,
        cacheClusterSize=str(item.get("cacheClusterSize") or "0.5") if enabled else None,
        clientCertificateId=item.get("clientCertificateId") or None,
        accessLog=(str(log.get("destinationArn") or ""), str(log.get("format") or "")) if log else None,
        tags={k: v for k, v in (item.get("tags") or {}).items() if not _kept_tag(k)},
        methodSettings={
            method_key_from_aws(key): method_setting_from_aws(value)
            for key, value in (item.get("methodSettings") or {}).items()
        },
    )


def stage_patch(
    current: LiveStage,
    deployment_id: str,
    description: str | None,
    variables: Mapping[str, str],
    canary: CanaryTarget | None,
    settings: StageSettings | None = None,
) -> list[PatchOp]:
    """The ``UpdateStage`` patch operations that turn ``current`` into the target (empty: nothing to do).

    Variables are set with ``replace`` (AWS creates missing ones that way; moto rejects ``add``).
    ``settings`` None leaves the stage's settings as they are.
    """
    ops: list[PatchOp] = []
    if settings is not None:
        ops += settings_patch(current.settings or StageSettings(), settings)
    if current.deployment_id != deployment_id:
        ops.append(patch_replace("/deploymentId", deployment_id))
    if (current.description or "") != (description or ""):
        ops.append(patch_replace("/description", description or ""))
    ops += _variable_ops("/variables", current.variables, variables)
    old = current.canary
    if canary is None:
        if old is not None:
            ops.append(patch_remove("/canarySettings"))
        return ops
    if old is None or normalize_percent(old.percent_traffic) != normalize_percent(canary.percent_traffic):
        ops.append(patch_replace("/canarySettings/percentTraffic", str(percent_json(canary.percent_traffic))))
    if old is None or old.deployment_id != canary.deployment_id:
        ops.append(patch_replace("/canarySettings/deploymentId", canary.deployment_id))
    if (old.use_stage_cache if old else False) != canary.use_stage_cache:
        ops.append(patch_replace("/canarySettings/useStageCache", _flag(canary.use_stage_cache)))
    ops += _variable_ops("/canarySettings/stageVariableOverrides", old.variables if old else {}, canary.variables)
    return ops


# ------------------------------------------------------------------ parsing


def mapping_tag(base_path: str) -> str:
    """The custom domain's tag key that names the instance owning its mapping ``base_path``.

    Base path mappings have no tags of their own; the domain's tags are shared by every instance
    mapping paths on it, so each mapping gets its own key: ``reconciler:mapping:v1`` for ``v1``,
    ``reconciler:mapping:/`` for the root ``(none)``, and ``reconciler:mapping:sha256:<hex>`` for a
    base path with characters a tag key cannot hold (``$!*'()``).  No base path is ``/`` or holds ``:``.
    """
    if base_path == NONE_BASE_PATH:
        return f"{MAPPING_TAG}/"
    if _TAG_SAFE.fullmatch(base_path):
        return f"{MAPPING_TAG}{base_path}"
    return f"{MAPPING_TAG}sha256:{hashlib.sha256(base_path.encode('utf-8')).hexdigest()[:32]}"


def live_mapping(
    domain: str, item: Mapping[str, Any], domain_tags: Mapping[str, str], api_names: Mapping[str, str]
) -> LiveBasePathMapping:
    """A ``GetBasePathMappings`` item, owned by the instance the domain's tag for its base path names."""
    base_path = str(item.get("basePath") or NONE_BASE_PATH)
    rest_api_id = str(item.get("restApiId") or "")
    owner = domain_tags.get(mapping_tag(base_path)) or None
    stage = item.get("stage")
    return LiveBasePathMapping(
        domain,
        base_path,
        rest_api_id,
        api_names.get(rest_api_id),
        None if stage in (None, NONE_BASE_PATH) else str(stage),
        owner is not None,
        owner,
    )


def _tag_owner(tags: Mapping[str, str]) -> tuple[bool, str | None]:
    """(managed, owner) from a resource's tags."""
    owner = tags.get(INSTANCE_TAG) or None
    return tags.get(MANAGED_TAG) == "true" or owner is not None, owner


def live_api(item: Mapping[str, Any], region: str = "us-east-1") -> LiveApi:
    marker = parse_api_description(item.get("description"))
    managed, owner = _tag_owner(item.get("tags") or {})
    endpoint = item.get("endpointConfiguration") or {}
    types = endpoint.get("types") or ["EDGE"]
    return LiveApi(
        str(item["name"]),
        str(item["id"]),
        marker.description,
        marker.sha256,
        managed or marker.marked,
        owner or marker.owner,
        endpoint_type=str(types[0]),
        vpc_endpoint_ids=tuple(sorted(str(v) for v in endpoint.get("vpcEndpointIds") or [])),
        tags={k: v for k, v in (item.get("tags") or {}).items() if not _kept_tag(k)},
        url=api_url(str(item["id"]), region),
    )


def live_stage(api: LiveApi, item: Mapping[str, Any], hashes: Mapping[str, str], region: str) -> LiveStage:
    canary = None
    settings = item.get("canarySettings")
    if settings:
        canary_id = str(settings.get("deploymentId") or "")
        canary = LiveCanary(
            percent_traffic=normalize_percent(float(settings.get("percentTraffic") or 0.0)),
            definition_sha256=hashes.get(canary_id),
            deployment_id=canary_id,
            variables=dict(settings.get("stageVariableOverrides") or {}),
            use_stage_cache=bool(settings.get("useStageCache")),
        )
    deployment_id = str(item.get("deploymentId") or "")
    managed, owner = _tag_owner(item.get("tags") or {})
    return LiveStage(
        api=api.name,
        name=str(item["stageName"]),
        deployment_id=deployment_id,
        definition_sha256=hashes.get(deployment_id),
        description=item.get("description") or None,
        variables=dict(item.get("variables") or {}),
        canary=canary,
        url=stage_url(api.id, region, str(item["stageName"])),
        managed=managed,
        owner=owner,
        settings=live_settings(item),
    )


def live_alias(function: str, item: Mapping[str, Any]) -> LiveAlias:
    managed, owner, description = parse_alias_description(item.get("Description"))
    weights = (item.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return LiveAlias(
        function=function,
        name=str(item["Name"]),
        description=description,
        routing=routing_from_lambda(str(item["FunctionVersion"]), {str(v): float(w) for v, w in weights.items()}),
        managed=managed,
        revision_id=item.get("RevisionId"),
        owner=owner,
    )
