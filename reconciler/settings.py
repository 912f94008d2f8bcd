"""Stage and RestApi settings (DESIGN §10): the spec fields, their AWS rules, and the form both backends share.

Pure data and validation, no I/O.  ``specs.py`` puts the pydantic fields on
``StageSpec`` and builds ``StageSettings``; ``plan.py`` diffs
``StageSettings.as_json()`` per setting; the backends read a live stage into a
``StageSettings`` (the local backend enforcing the same rules, the aws
backend turning a difference into ``UpdateStage`` patch operations).

Settings are declarative, as Terraform's are: a setting absent from the spec
is API Gateway's default (tracing off, no cache, no client certificate, no
access log, no tags besides the ownership mark, no method settings), and a
method-settings entry that leaves a field out gets that field's default.
A RestApi's ``endpointType`` is the exception: unset, an existing API keeps
its type (a new one is REGIONAL); ``ApiSettings`` carries the RestApi's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

CACHE_SIZES = ("0.5", "1.6", "6.1", "13.5", "28.4", "58.2", "118", "237")
LOGGING_LEVELS = ("OFF", "ERROR", "INFO")
MAX_RATE_LIMIT = 10000.0  # the account default; higher needs a quota increase
MAX_BURST_LIMIT = 5000
MAX_CACHE_TTL = 3600
METHOD_KEY = re.compile(r"(\*|/[^\s]*)/(\*|GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|ANY)")
ACCESS_LOG_ARN = re.compile(r"arn:aws[a-z-]*:(logs|firehose):[a-z0-9-]+:[0-9]{12}:\S+")
RESERVED_TAG_PREFIXES = ("aws:", "reconciler:")
ENDPOINT_TYPES = ("EDGE", "REGIONAL", "PRIVATE")
NEW_API_ENDPOINT_TYPE = "REGIONAL"  # what a new API is created as when the spec names no type
VPC_ENDPOINT_ID = re.compile(r"vpce-[0-9a-f]{8,17}")


# ------------------------------------------------------------------ rules


def check_cache_size(value: Any) -> str:
    """A cache size as API Gateway names it ("0.5" ... "237"); numbers in YAML are taken as written."""
    text = value if isinstance(value, str) else f"{value:g}" if isinstance(value, int | float) else repr(value)
    if isinstance(value, bool) or text not in CACHE_SIZES:
        raise ValueError(f"expected one of {', '.join(CACHE_SIZES)}, got {value!r}")
    return text


def check_logging_level(value: str) -> str:
    if value not in LOGGING_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOGGING_LEVELS)}, got {value!r}")
    return value


def check_method_key(value: str) -> str:
    if not METHOD_KEY.fullmatch(value):
        raise ValueError(
            f"expected '*/*' or '<resource path>/<HTTP method>' such as '/orders/GET' or '/orders/*', got {value!r}"
        )
    return value


def check_tags(tags: dict[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        if not 1 <= len(key) <= 128:
            raise ValueError(f"tag {key!r}: expected a key of 1-128 characters")
        if key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise ValueError(f"tag {key!r}: expected a key not starting with aws: or reconciler: (reserved)")
        if len(value) > 256:
            raise ValueError(f"tag {key!r}: expected a value of at most 256 characters")
    if len(tags) > 50:
        raise ValueError(f"expected at most 50 tags, got {len(tags)}")
    return tags


def check_vpc_endpoint_id(value: str) -> str:
    if not VPC_ENDPOINT_ID.fullmatch(value):
        raise ValueError(f"expected a VPC endpoint id such as vpce-0123456789abcdef0, got {value!r}")
    return value


def endpoint_change_problem(old: str | None, new: str) -> str | None:
    """Why API Gateway refuses to change an API's endpoint type from ``old`` to ``new`` in place, else None."""
    if old == "PRIVATE" and new == "EDGE":
        return "a PRIVATE API cannot become EDGE in place (API Gateway: private to REGIONAL only); expected REGIONAL"
    return None


def check_access_log_arn(value: str) -> str:
    if not ACCESS_LOG_ARN.fullmatch(value):
        raise ValueError(f"expected a CloudWatch Logs log group or Kinesis Data Firehose ARN, got {value!r}")
    return value


def _range(low: float, high: float, what: str) -> AfterValidator:
    def check(value: float) -> float:
        if isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"expected {what} from {low:g} to {high:g}, got {value!r}")
        return value

    return AfterValidator(check)


def _int_from_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _float_from_int(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


# ------------------------------------------------------------ spec models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CacheClusterSpec(_Model):
    enabled: bool
    size: Annotated[str, BeforeValidator(check_cache_size)] = "0.5"


class AccessLogSpec(_Model):
    destinationArn: Annotated[str, AfterValidator(check_access_log_arn)]
    format: Annotated[str, Field(min_length=1, max_length=10000)]


class MethodSettingSpec(_Model):
    throttlingRateLimit: Annotated[
        float, BeforeValidator(_float_from_int), _range(0, MAX_RATE_LIMIT, "requests per second")
    ] = MAX_RATE_LIMIT
    throttlingBurstLimit: Annotated[int, BeforeValidator(_int_from_number), _range(0, MAX_BURST_LIMIT, "requests")] = (
        MAX_BURST_LIMIT
    )
    loggingLevel: Annotated[str, AfterValidator(check_logging_level)] = "OFF"
    metricsEnabled: bool = False
    dataTraceEnabled: bool = False
    cachingEnabled: bool = False
    cacheTtlInSeconds: Annotated[int, BeforeValidator(_int_from_number), _range(0, MAX_CACHE_TTL, "seconds")] = 300


MethodKey = Annotated[str, AfterValidator(check_method_key)]
Tags = Annotated[dict[str, str], AfterValidator(check_tags)]
VpcEndpointId = Annotated[str, AfterValidator(check_vpc_endpoint_id)]


# --------------------------------------------------------- comparable form


@dataclass(frozen=True)
class MethodSetting:
    """One ``methodSettings`` entry, every field set (defaults: API Gateway's)."""

    throttlingRateLimit: float = MAX_RATE_LIMIT
    throttlingBurstLimit: int = MAX_BURST_LIMIT
    loggingLevel: str = "OFF"
    metricsEnabled: bool = False
    dataTraceEnabled: bool = False
    cachingEnabled: bool = False
    cacheTtlInSeconds: int = 300


@dataclass(frozen=True)
class StageSettings:
    """A stage's settings, desired or live; ``as_json`` is what the plan compares and ``status`` shows."""

    tracingEnabled: bool = False
    cacheClusterEnabled: bool = False
    cacheClusterSize: str | None = None  # None while the cache is off: the size then means nothing
    clientCertificateId: str | None = None
    accessLog: tuple[str, str] | None = None  # (destinationArn, format)
    tags: dict[str, str] = field(default_factory=dict)
    methodSettings: dict[str, MethodSetting] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "tracingEnabled": self.tracingEnabled,
            "cacheCluster": {"enabled": self.cacheClusterEnabled, "size": self.cacheClusterSize},
            "clientCertificateId": self.clientCertificateId,
            "accessLog": None
            if self.accessLog is None
            else {"destinationArn": self.accessLog[0], "format": self.accessLog[1]},
            "tags": dict(sorted(self.tags.items())),
            "methodSettings": {key: asdict(value) for key, value in sorted(self.methodSettings.items())},
        }


def settings_from_spec(
    tracing: bool,
    cache: CacheClusterSpec | None,
    client_certificate: str | None,
    access_log: AccessLogSpec | None,
    tags: dict[str, str],
    method_settings: dict[str, MethodSettingSpec],
) -> StageSettings:
    enabled = cache is not None and cache.enabled
    return StageSettings(
        tracingEnabled=tracing,
        cacheClusterEnabled=enabled,
        cacheClusterSize=cache.size if cache is not None and enabled else None,
        clientCertificateId=client_certificate or None,
        accessLog=None if access_log is None else (access_log.destinationArn, access_log.format),
        tags=dict(tags),
        methodSettings={key: MethodSetting(**spec.model_dump()) for key, spec in method_settings.items()},
    )


def method_setting_from_aws(raw: dict[str, Any]) -> MethodSetting:
    """A ``methodSettings`` value as API Gateway returns it (missing fields: defaults)."""
    default = MethodSetting()
    return MethodSetting(
        throttlingRateLimit=float(raw.get("throttlingRateLimit", default.throttlingRateLimit)),
        throttlingBurstLimit=int(raw.get("throttlingBurstLimit", default.throttlingBurstLimit)),
        loggingLevel=str(raw.get("loggingLevel", default.loggingLevel)),
        metricsEnabled=bool(raw.get("metricsEnabled", default.metricsEnabled)),
        dataTraceEnabled=bool(raw.get("dataTraceEnabled", default.dataTraceEnabled)),
        cachingEnabled=bool(raw.get("cachingEnabled", default.cachingEnabled)),
        cacheTtlInSeconds=int(raw.get("cacheTtlInSeconds", default.cacheTtlInSeconds)),
    )


def method_key_from_aws(key: str) -> str:
    """API Gateway writes ``/orders/GET`` as ``~1orders/GET``; ``*/*`` stays as it is."""
    return key.replace("~1", "/")


def method_key_to_aws(key: str) -> str:
    """``/orders/GET`` as an UpdateStage path segment pair: ``~1orders/GET``."""
    resource, _, method = key.rpartition("/")
    return f"{resource.replace('~', '~0').replace('/', '~1')}/{method}"


def problems_of(settings: StageSettings) -> list[str]:
    """What API Gateway would refuse in ``settings`` (the local backend's check of its own writes)."""
    problems: list[str] = []
    if settings.cacheClusterEnabled and settings.cacheClusterSize not in CACHE_SIZES:
        problems.append(f"cacheClusterSize: expected one of {', '.join(CACHE_SIZES)}")
    for key, method in settings.methodSettings.items():
        if not METHOD_KEY.fullmatch(key):
            problems.append(f"methodSettings key {key!r}: expected '*/*' or '/path/METHOD'")
        if method.loggingLevel not in LOGGING_LEVELS:
            problems.append(f"{key} loggingLevel: expected one of {', '.join(LOGGING_LEVELS)}")
        if not 0 <= method.throttlingRateLimit <= MAX_RATE_LIMIT:
            problems.append(f"{key} throttlingRateLimit: expected 0-{MAX_RATE_LIMIT:g}")
        if not 0 <= method.throttlingBurstLimit <= MAX_BURST_LIMIT:
            problems.append(f"{key} throttlingBurstLimit: expected 0-{MAX_BURST_LIMIT}")
        if not 0 <= method.cacheTtlInSeconds <= MAX_CACHE_TTL:
            problems.append(f"{key} cacheTtlInSeconds: expected 0-{MAX_CACHE_TTL}")
    return problems


def settings_from_json(data: dict[str, Any] | None) -> StageSettings:
    """``StageSettings.as_json()`` read back (None: a stage with every setting at its default)."""
    if not data:
        return StageSettings()
    cache = data.get("cacheCluster") or {}
    log = data.get("accessLog")
    return StageSettings(
        tracingEnabled=bool(data.get("tracingEnabled")),
        cacheClusterEnabled=bool(cache.get("enabled")),
        cacheClusterSize=cache.get("size"),
        clientCertificateId=data.get("clientCertificateId"),
        accessLog=None if not log else (str(log["destinationArn"]), str(log["format"])),
        tags=dict(data.get("tags") or {}),
        methodSettings={k: MethodSetting(**v) for k, v in (data.get("methodSettings") or {}).items()},
    )


# ----------------------------------------------------------- RestApi settings


@dataclass(frozen=True)
class ApiSettings:
    """A RestApi's settings as the spec asks for them (``endpointType`` None: whatever the API has)."""

    endpointType: str | None = None
    vpcEndpointIds: tuple[str, ...] = ()  # sorted; PRIVATE only
    tags: dict[str, str] = field(default_factory=dict)
    failOnWarnings: bool = True

    def changes(
        self, endpoint_type: str | None, vpc_endpoint_ids: tuple[str, ...], tags: dict[str, str]
    ) -> dict[str, tuple[Any, Any]]:
        """(old, new) per setting that differs from a live API's (the type only when the spec names one)."""
        found: dict[str, tuple[Any, Any]] = {}
        if self.endpointType is not None and self.endpointType != endpoint_type:
            found["endpointType"] = (endpoint_type, self.endpointType)
        if self.endpointType == "PRIVATE" and tuple(sorted(vpc_endpoint_ids)) != self.vpcEndpointIds:
            found["vpcEndpointIds"] = (sorted(vpc_endpoint_ids), list(self.vpcEndpointIds))
        if dict(sorted(tags.items())) != dict(sorted(self.tags.items())):
            found["tags"] = (dict(sorted(tags.items())), dict(sorted(self.tags.items())))
        return found

    def created(self) -> dict[str, Any]:
        """What a new API gets, as plan changes show it (defaults left out, but the endpoint type always)."""
        shown: dict[str, Any] = {"endpointType": self.endpointType or NEW_API_ENDPOINT_TYPE}
        if self.vpcEndpointIds:
            shown["vpcEndpointIds"] = list(self.vpcEndpointIds)
        if self.tags:
            shown["tags"] = dict(sorted(self.tags.items()))
        return shown
