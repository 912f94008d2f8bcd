"""Spec models and validation: the files of one commit -> ``DesiredState``.

The pydantic models describe the YAML kinds (``RestApi``, ``Stage``,
``Alias``, ``BasePathMapping``); ``load_desired`` reads every ``*.yaml``/``*.yml`` below the specs
root through a ``SpecSource`` (git blobs at one commit, see ``gitsource.py``),
checks schema, references, routing and stage variables, and collects every
problem into one ``SpecError``.  No I/O of its own: the caller passes the
source and an optional parse cache keyed by blob sha.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, Protocol, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reconciler.errors import SpecError, SpecIssue
from reconciler.openapi import definition_problems, integration_variables
from reconciler.settings import (
    AccessLogSpec,
    ApiSettings,
    CacheClusterSpec,
    MethodKey,
    MethodSettingSpec,
    StageSettings,
    Tags,
    VpcEndpointId,
    settings_from_spec,
)
from reconciler.yamlsafe import Lines, YamlProblem, load_definition, load_documents

API_VERSION = "reconciler/v1"
KINDS = ("RestApi", "Stage", "Alias", "BasePathMapping")
ENVELOPE = ("apiVersion", "kind", "metadata", "spec")
MAX_SPEC_BYTES = 1 << 20  # 1 MiB per spec file
MAX_DEFINITION_BYTES = 10 << 20  # 10 MiB per OpenAPI definition
MAX_COMMIT_BYTES = 64 << 20  # 64 MiB of spec files and definitions per commit (DESIGN §11: bounded work)
LATEST = "$LATEST"
MODE_SYMLINK = 0o120000
MODE_SUBMODULE = 0o160000
CACHE_FORMAT = 2
SPEC_SUFFIXES = (".yaml", ".yml", ".json")  # read as spec files (JSON is YAML)


# ---------------------------------------------------------------- field rules


def _rule(pattern: str, expected: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    return check


def _matching(pattern: str, expected: str) -> AfterValidator:
    return AfterValidator(_rule(pattern, expected))


def check_api_name(value: str) -> str:
    """API Gateway's rule for a REST API name: 1-1024 printable characters."""
    if not 1 <= len(value) <= 1024 or not value.isprintable():
        raise ValueError(f"expected 1-1024 printable characters, got {value[:80]!r}")
    return value


check_stage_name = _rule(r"[A-Za-z0-9_-]{1,128}", "1-128 characters of [A-Za-z0-9_-]")
check_alias_name = _rule(r"(?!^[0-9]+$)[a-zA-Z0-9_-]{1,128}", "1-128 characters of [a-zA-Z0-9_-], not all digits")
NONE_BASE_PATH = "(none)"  # API Gateway's name for the domain's root mapping
# API Gateway's (v1) base path: one path segment of these characters (CDK checks the same); "(none)" is the root
check_base_path = _rule(r"[A-Za-z0-9$_.+!*'()-]+", "a base path of letters, digits and $-_.+!*'() (one segment, no /)")
# a custom domain name: lowercase DNS labels (1-63 characters each, 253 in all), optionally a wildcard *.
DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?:\*\.)?(?:{DOMAIN_LABEL}\.)+{DOMAIN_LABEL}")


def check_domain_name(value: str) -> str:
    """A custom domain name as API Gateway takes it: ``api.example.com`` (``*.example.com`` for a wildcard)."""
    if len(value) > 253 or not _DOMAIN.fullmatch(value):
        raise ValueError(
            f"expected a lowercase domain name like api.example.com (at most 253 characters), got {value!r}"
        )
    return value


def check_mapping_name(value: str) -> str:
    """A BasePathMapping's ``metadata.name``: a label for people (the mapping is keyed by domain and base path)."""
    if not 1 <= len(value) <= 128 or not value.isprintable():
        raise ValueError(f"expected 1-128 printable characters, got {value[:80]!r}")
    return value


NAME_RULES = {
    "RestApi": check_api_name,
    "Stage": check_stage_name,
    "Alias": check_alias_name,
    "BasePathMapping": check_mapping_name,
}
ApiName = Annotated[str, AfterValidator(check_api_name)]
FunctionName = Annotated[
    str, _matching(r"[a-zA-Z0-9_-]{1,64}", "a Lambda function name: 1-64 characters of [a-zA-Z0-9_-]")
]
VariableName = Annotated[str, _matching(r"[A-Za-z0-9_]{1,64}", "1-64 characters of [A-Za-z0-9_]")]
VariableValue = Annotated[
    str,
    _matching(r"[A-Za-z0-9\-._~:/?#&=,]{1,512}", "1-512 characters of [A-Za-z0-9-._~:/?#&=,]"),
]
Version = Annotated[str, _matching(r"\$LATEST|[1-9][0-9]{0,9}", "a published version number or $LATEST")]
Description = Annotated[str, Field(max_length=1024)]


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


# `variables:` left empty (YAML null) is no variables, as Kubernetes reads an empty optional field
Variables = Annotated[dict[VariableName, VariableValue], BeforeValidator(_none_is_empty)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Metadata(_Model):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    adopt: bool = False  # take over an existing resource that no instance manages (DESIGN §10)


class RestApiSpec(_Model):
    description: Description | None = None
    definition: str
    endpointType: Literal["EDGE", "REGIONAL", "PRIVATE"] | None = None
    vpcEndpointIds: list[VpcEndpointId] = []
    tags: Tags = {}
    failOnWarnings: bool = True

    @field_validator("vpcEndpointIds")
    @classmethod
    def _private_only(cls, value: list[str], info: ValidationInfo) -> list[str]:
        kind = info.data.get("endpointType")
        if value and kind != "PRIVATE":
            raise ValueError(
                "expected endpointType: PRIVATE with vpcEndpointIds (API Gateway attaches VPC endpoints to private "
                f"APIs only), got endpointType {kind or 'unset'}"
            )
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"expected each VPC endpoint once, got {', '.join(repeated)} more than once")
        return value

    def settings(self) -> ApiSettings:
        return ApiSettings(self.endpointType, tuple(sorted(self.vpcEndpointIds)), dict(self.tags), self.failOnWarnings)


class CanarySpec(_Model):
    percentTraffic: float
    definition: str | None = None
    variables: Variables = Field(default_factory=dict)
    useStageCache: bool = False

    @field_validator("percentTraffic")
    @classmethod
    def _percent_in_range(cls, value: float) -> float:
        if not 0 <= value <= 100:  # 0: the canary is set up but takes no traffic yet (API Gateway allows it)
            raise ValueError(f"expected a number in [0, 100], got {value:g}")
        return value


DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)?")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}


def parse_duration(value: Any) -> float:
    """``30s``, ``5m``, ``1h`` or a number of seconds -> seconds (more than zero)."""
    expected = "a duration like 30s, 5m, 1h or a number of seconds"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected {expected}, got {type(value).__name__} {value!r}")
    if isinstance(value, str):
        match = DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected {expected}, got {value!r}")
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    else:
        seconds = float(value)
    if not 0 < seconds < 366 * 86400:
        raise ValueError(f"expected {expected}, more than zero and under a year, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class PauseSpec(_Model):
    duration: Duration | None = None


class RolloutStepSpec(_Model):
    """One step: exactly one of ``setWeight`` and ``pause``."""

    setWeight: float | None = None
    pause: Annotated[PauseSpec, BeforeValidator(_none_is_empty)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RolloutStepSpec:
        given = self.model_fields_set & {"setWeight", "pause"}
        if len(given) != 1:
            raise ValueError(f"expected exactly one of setWeight, pause in a step, got {len(given)}")
        return self

    @field_validator("setWeight")
    @classmethod
    def _weight_in_range(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < 100:
            raise ValueError(
                f"expected a percentage in (0, 100) (after the last step the target takes 100), got {value:g}"
            )
        return value


class CheckSpec(_Model):
    url: Annotated[str, _matching(r"https?://\S{1,2000}", "an http:// or https:// URL")]
    timeout: Duration = 5.0


class AnalysisSpec(_Model):
    interval: Duration = 60.0
    alarms: list[Annotated[str, Field(min_length=1, max_length=255)]] = []
    checks: list[CheckSpec] = []
    failureLimit: int = 1

    @field_validator("failureLimit")
    @classmethod
    def _limit_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"expected a number of failed checks of 1 or more, got {value}")
        return value

    @model_validator(mode="after")
    def _something_to_check(self) -> AnalysisSpec:
        if not self.alarms and not self.checks:
            raise ValueError("expected alarms or checks to watch; an analysis with neither would pass every rollout")
        return self


class RolloutSpec(_Model):
    steps: list[RolloutStepSpec]
    analysis: AnalysisSpec | None = None
    onFailure: Literal["rollback", "halt"] = "rollback"
    progressDeadline: Duration = 1800.0

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[RolloutStepSpec]) -> list[RolloutStepSpec]:
        if not steps:
            raise ValueError("expected at least one step (setWeight or pause)")
        last: float | None = None
        for number, step in enumerate(steps, 1):
            if step.setWeight is None:
                continue
            if last is not None and step.setWeight <= last:
                raise ValueError(
                    f"step {number}: setWeight {step.setWeight:g} after setWeight {last:g}; expected increasing weights"
                )
            last = step.setWeight
        return steps


class StageSpec(_Model):
    api: ApiName
    definition: str | None = None
    description: Description | None = None
    variables: Variables = Field(default_factory=dict)
    canary: CanarySpec | None = None
    rollout: RolloutSpec | None = None
    tracingEnabled: bool = False
    cacheCluster: CacheClusterSpec | None = None
    clientCertificateId: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    accessLog: AccessLogSpec | None = None
    tags: Tags = Field(default_factory=dict)
    methodSettings: dict[MethodKey, MethodSettingSpec] = Field(default_factory=dict)


class AliasSpec(_Model):
    function: FunctionName
    description: Annotated[str, Field(max_length=256)] | None = None
    routing: dict[Version, float]
    rollout: RolloutSpec | None = None

    @field_validator("routing")
    @classmethod
    def _routing_rules(cls, routing: dict[str, float]) -> dict[str, float]:
        problems = routing_problems(routing)
        if problems:
            raise ValueError("; ".join(problems))
        return routing


def routing_problems(routing: dict[str, float]) -> list[str]:
    """What is wrong with a version -> percent map, by Lambda's rules."""
    problems: list[str] = []
    if not 1 <= len(routing) <= 2:
        problems.append(f"expected one or two versions, got {len(routing)}")
    for version, percent in routing.items():
        if not 0 < percent <= 100:
            problems.append(f"version {version}: expected a percentage in (0, 100], got {percent:g}")
    total = sum(routing.values())
    if routing and abs(total - 100) > 1e-6:
        problems.append(f"expected percentages summing to 100, got {total:g}")
    if LATEST in routing and len(routing) > 1:
        problems.append("$LATEST cannot take weighted traffic; expected it alone at 100")
    return problems


def _base_path(value: str) -> str:
    return value if value == NONE_BASE_PATH else check_base_path(value)


class BasePathMappingSpec(_Model):
    """A custom domain's path -> a stage (the domain, with its certificate, exists already)."""

    domain: Annotated[str, AfterValidator(check_domain_name)]
    basePath: Annotated[str, AfterValidator(_base_path)] = NONE_BASE_PATH  # omitted: the root, "(none)"
    api: ApiName
    stage: Annotated[str, AfterValidator(check_stage_name)]


SPEC_MODELS: dict[str, type[_Model]] = {
    "RestApi": RestApiSpec,
    "Stage": StageSpec,
    "Alias": AliasSpec,
    "BasePathMapping": BasePathMappingSpec,
}


# ------------------------------------------------------------- desired state


@dataclass(frozen=True)
class Location:
    """Where a resource is specified: its document's first line, and the line of each of its fields."""

    file: str
    line: int | None
    fields: Mapping[str, int] = field(default_factory=dict, hash=False)  # the document's own, shared, never changed

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def line_of(self, path: str) -> int | None:
        """The line of the dotted field ``path``, else of its nearest recorded parent, else the document's."""
        lines = self.fields
        while path:
            if path in lines:
                return lines[path]
            path = path.rpartition(".")[0]
        return self.line


@dataclass(frozen=True)
class Definition:
    """An OpenAPI/Swagger document: identified by the sha256 of its canonical form (``body``),
    sent to API Gateway as committed (``text``, without a byte order mark)."""

    sha256: str
    body: str = field(repr=False)
    source: str
    variables: frozenset[str] = frozenset()
    text: str = field(default="", repr=False, compare=False)

    @property
    def payload(self) -> str:
        """What an import receives: the committed text (the canonical JSON if none was kept)."""
        return self.text or self.body


@dataclass(frozen=True)
class RolloutStep:
    """``setWeight`` (``weight`` set) or ``pause`` (``duration`` None: until promoted)."""

    weight: float | None = None
    duration: float | None = None

    @property
    def is_pause(self) -> bool:
        return self.weight is None


@dataclass(frozen=True)
class DesiredCheck:
    url: str
    timeout: float


@dataclass(frozen=True)
class DesiredAnalysis:
    interval: float
    alarms: tuple[str, ...]
    checks: tuple[DesiredCheck, ...]
    failure_limit: int


@dataclass(frozen=True)
class DesiredRollout:
    """A resource's ``rollout`` block; ``fingerprint`` changes whenever any part of it does."""

    steps: tuple[RolloutStep, ...]
    analysis: DesiredAnalysis | None = None
    on_failure: str = "rollback"
    progress_deadline: float = 1800.0

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(canonical_json(asdict(self)).encode("utf-8")).hexdigest()


def desired_rollout(spec: RolloutSpec | None) -> DesiredRollout | None:
    if spec is None:
        return None
    analysis = None
    if spec.analysis is not None:
        a = spec.analysis
        checks = tuple(DesiredCheck(c.url, c.timeout) for c in a.checks)
        analysis = DesiredAnalysis(a.interval, tuple(a.alarms), checks, a.failureLimit)
    steps = tuple(
        RolloutStep(weight=normalize_percent(s.setWeight))
        if s.setWeight is not None
        else RolloutStep(duration=s.pause.duration if s.pause else None)
        for s in spec.steps
    )
    return DesiredRollout(steps, analysis, spec.onFailure, spec.progressDeadline)


@dataclass(frozen=True)
class DesiredApi:
    name: str
    description: str | None
    definition: Definition
    location: Location
    adopt: bool = False
    settings: ApiSettings = field(default_factory=ApiSettings)


@dataclass(frozen=True)
class DesiredCanary:
    percent_traffic: float
    definition: Definition
    variables: dict[str, str]
    use_stage_cache: bool = False


@dataclass(frozen=True)
class DesiredStage:
    api: str
    name: str
    description: str | None
    definition: Definition
    variables: dict[str, str]
    canary: DesiredCanary | None
    location: Location
    rollout: DesiredRollout | None = None
    adopt: bool = False
    settings: StageSettings = field(default_factory=StageSettings)


@dataclass(frozen=True)
class DesiredAlias:
    function: str
    name: str
    description: str | None
    routing: dict[str, float]
    location: Location
    rollout: DesiredRollout | None = None
    adopt: bool = False


@dataclass(frozen=True)
class DesiredBasePathMapping:
    """``domain``/``base_path`` (``(none)``: the root) -> stage ``stage`` of API ``api``."""

    domain: str
    base_path: str
    api: str
    stage: str
    location: Location
    adopt: bool = False


@dataclass
class DesiredState:
    revision: str | None = None
    apis: dict[str, DesiredApi] = field(default_factory=dict)
    stages: dict[tuple[str, str], DesiredStage] = field(default_factory=dict)
    aliases: dict[tuple[str, str], DesiredAlias] = field(default_factory=dict)
    # (domain, base path) -> mapping
    mappings: dict[tuple[str, str], DesiredBasePathMapping] = field(default_factory=dict)

    @property
    def functions(self) -> set[str]:
        return {function for function, _ in self.aliases}

    def copy(self, revision: str | None) -> DesiredState:
        """A copy whose dicts the holder may change (the resources are frozen: shared), at ``revision``."""
        return DesiredState(revision, dict(self.apis), dict(self.stages), dict(self.aliases), dict(self.mappings))


def canonical_json(data: Any) -> str:
    """Compact JSON with sorted keys: the form a definition is hashed in."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def normalize_percent(value: float) -> float:
    """Percent as stored and compared: rounded to 1e-6, so 5 == 5.0 == 0.05*100."""
    return round(float(value), 6)


# ------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the repository root, POSIX separators
    sha: str  # git blob sha: the cache key
    size: int
    mode: int


class SpecSource(Protocol):
    """The files of one commit below the specs root (see ``gitsource.py``)."""

    root: str
    revision: str

    def files(self) -> Iterable[SourceFile]: ...

    def read(self, file: SourceFile) -> bytes: ...


@dataclass
class _Doc:
    kind: str
    name: str
    spec: Any
    file: str
    lines: Lines
    line: int
    adopt: bool = False
    # what _resolve made of it last time, and the API definition that was against (memoised documents only)
    resolved: tuple[Any, Any] | None = field(default=None, compare=False, repr=False)

    def line_of(self, path: str) -> int:
        """The line of ``path`` (dotted), else of its nearest recorded parent."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return self.line

    def at(self, path: str) -> Location:
        return Location(self.file, self.line_of(path), self.lines)  # the lines themselves: no copy per resource


class _Issues:
    def __init__(self) -> None:
        self.items: list[SpecIssue] = []

    def add(self, file: str, line: int | None, fieldname: str, message: str) -> None:
        self.items.append(SpecIssue(file, line, fieldname, message))

    def doc(self, doc: _Doc, path: str, message: str) -> None:
        self.add(doc.file, doc.line_of(path), path, f"{doc.kind} {doc.name!r}: {message}")


# ------------------------------------------------------------------- loading


@dataclass
class _FileResult:
    """One spec file read and checked on its own: its documents, their types, and its issues."""

    docs: list[_Doc]  # documents with a valid envelope
    typed: list[tuple[_Doc, Any]]  # those whose name and spec validated
    read_issues: list[SpecIssue]  # reading, YAML and envelope
    schema_issues: list[SpecIssue]  # names and spec fields
    apis: frozenset[str]  # the RestApi names it declares (valid or not)
    stages: frozenset[tuple[str, str]] = frozenset()  # the (API, stage) names it declares (valid or not)


class SpecMemo:
    """What a long-lived engine keeps between loads, so that a load costs what changed.

    * Validated documents by (path, blob id, mode): a file's documents and
      issues depend only on its path and content, so a load validates only
      the files new since the previous one (after a commit: the changed files).
    * After a clean load (no issue), the resolved desired state and its
      indexes (``_Index``): the next load re-resolves only the documents of
      the changed files and those that read what changed (an API's stages when
      its definition changed, the readers of a changed definition file).
      Anything unusual (any issue, a duplicate, an unreadable file, a
      definition the index cannot attribute to one path) sends the load down
      the full path, which words the errors exactly as a cold load does.
    """

    def __init__(self) -> None:
        self.files: dict[tuple[str, str, int], _FileResult] = {}
        self.definitions: dict[str, list[Any]] = {}  # parsed definitions in use, by cache key
        self.index: _Index | None = None  # the last load's, when it was clean
        self.pending: Callable[[], _Index | None] | None = None  # builds it: a one-shot command never asks
        self.incremental = False  # whether the last load took the incremental path
        self.resolved = 0  # documents the last load resolved (the full path: every valid one)
        self.fallback = ""  # why the last load left the incremental path, if it did


Key = tuple[str, ...]  # ``_key``: (kind, *the resource's key in ``DesiredState``)


@dataclass
class _Index:
    """A clean load's desired state and what it was resolved from, for the next load to update."""

    files: dict[str, SourceFile]  # the listing below the specs root
    results: dict[str, _FileResult]  # spec files by path
    state: DesiredState  # the index's own copy: loads hand out copies of its dicts
    owners: dict[Key, tuple[_Doc, Any]]  # every document (all valid, all unique) by key
    reads: dict[Key, tuple[str, ...]]  # RestApi and Stage keys -> the definition files they read
    readers: dict[str, set[Key]]  # definition file -> the keys reading it
    stages_of: dict[str, set[Key]]  # API name -> its stages' keys
    mapped: dict[tuple[str, str], int]  # (API, stage) -> mappings naming it
    domains: dict[str, set[str]]  # domain -> its mapped base paths
    outside: dict[str, SourceFile]  # definitions outside the specs root (looked up again every load)
    definition_of: dict[str, str]  # definition file -> sha256 of its canonical form
    path_of: dict[str, str]  # that sha256 -> the one file giving it
    unreadable: set[str]  # files that are no spec file (fine: each is a definition)


class _Fallback(Exception):
    """The incremental load met something it leaves to the full path."""


def _reads(doc: _Doc, spec: Any) -> tuple[str, ...]:
    """The definition files a RestApi or Stage document names (repository paths)."""
    if doc.kind == "RestApi":
        return (_join(doc.file, spec.definition),)
    if doc.kind != "Stage":
        return ()
    named = [spec.definition, spec.canary.definition if spec.canary is not None else None]
    return tuple(_join(doc.file, reference) for reference in named if reference is not None)


def _build_index(
    files: dict[str, SourceFile],
    results: dict[str, _FileResult],
    state: DesiredState,
    definitions: _Definitions,
    unreadable: set[str],
) -> _Index | None:
    """The index of a clean full load (``state``: a copy of its dicts, not the one handed out); None when a
    definition's content is at two paths (its ``source`` is the first path in load order, which only a full load
    tells)."""
    index = _Index(
        files,
        results,
        state,  # the index's own copy
        {},
        {},
        {},
        {},
        {},
        {},
        {f.path: f for f in definitions.outside},
        {},
        {},
        unreadable,
    )
    for result in results.values():
        for doc, spec in result.typed:
            _add_doc(index, _key(doc, spec), doc, spec)
    if set(index.readers) != definitions.used or not _attribute(index, definitions.read):
        return None
    return index


def _add_doc(index: _Index, key: Key, doc: _Doc, spec: Any) -> None:
    index.owners[key] = (doc, spec)
    if doc.kind in ("RestApi", "Stage"):
        _set_reads(index, key, _reads(doc, spec))
    if doc.kind == "Stage":
        index.stages_of.setdefault(spec.api, set()).add(key)
    elif doc.kind == "BasePathMapping":
        index.mapped[(spec.api, spec.stage)] = index.mapped.get((spec.api, spec.stage), 0) + 1
        index.domains.setdefault(spec.domain, set()).add(spec.basePath)


def _remove_doc(index: _Index, key: Key) -> None:
    doc, spec = index.owners.pop(key)
    _set_reads(index, key, ())
    if doc.kind == "Stage":
        _discard(index.stages_of, spec.api, key)
    elif doc.kind == "BasePathMapping":
        count = index.mapped.pop((spec.api, spec.stage)) - 1
        if count:
            index.mapped[(spec.api, spec.stage)] = count
        _discard(index.domains, spec.domain, spec.basePath)


def _discard(sets: dict[str, set[Any]], name: str, item: Any) -> None:
    members = sets[name]
    members.discard(item)
    if not members:
        del sets[name]


def _set_reads(index: _Index, key: Key, paths: tuple[str, ...]) -> None:
    for path in index.reads.pop(key, ()):
        _discard(index.readers, path, key)
    if paths:
        index.reads[key] = paths
        for path in paths:
            index.readers.setdefault(path, set()).add(key)


def _attribute(index: _Index, read: dict[str, Definition]) -> bool:
    """Record which file gives which definition; False when one content is at two files in use."""
    for path in [p for p in index.definition_of if p not in index.readers]:  # no longer read
        sha = index.definition_of.pop(path)
        if index.path_of.get(sha) == path:
            del index.path_of[sha]
    for path, definition in read.items():
        other = index.path_of.get(definition.sha256)
        if definition.source != path or (other is not None and other != path and other in index.readers):
            return False
        old = index.definition_of.get(path)
        if old is not None and index.path_of.get(old) == path:
            del index.path_of[old]
        index.definition_of[path] = definition.sha256
        index.path_of[definition.sha256] = path
    return True


def _check_file(source: SpecSource, entry: SourceFile, cache: MutableMapping[str, Any]) -> _FileResult:
    read = _Issues()
    docs = _read_spec_file(source, entry, cache, read)
    schema = _Issues()
    typed = _validate_schema(docs, schema)
    apis = frozenset(doc.name for doc in docs if doc.kind == "RestApi")
    stages = frozenset(
        (doc.spec["api"], doc.name)
        for doc in docs
        if doc.kind == "Stage" and isinstance(doc.spec, dict) and isinstance(doc.spec.get("api"), str)
    )
    return _FileResult(docs, typed, read.items, schema.items, apis, stages)


def load_desired(
    source: SpecSource, cache: MutableMapping[str, Any] | None = None, memo: SpecMemo | None = None
) -> DesiredState:
    """Parse and validate every spec of ``source``; raise ``SpecError`` listing all issues.

    With a ``memo`` that holds a clean previous load, only what changed since
    is validated and resolved (``_incremental``); the result is the same.
    """
    files = {f.path: f for f in source.files()}
    read = _spec_files(files.values())
    _check_budget(source, read, [])
    if cache is None:
        cache = {}
    if memo is not None and memo.pending is not None:  # the last load was a clean full one: index it now
        memo.index, memo.pending = memo.pending(), None
    if memo is not None and memo.index is not None:
        index, memo.index = memo.index, None  # taken: a load that fails half way leaves none behind
        try:
            state = _incremental(source, files, read, cache, memo, index)
        except (_Fallback, SpecError) as exc:
            memo.fallback = str(exc)
        else:
            memo.index, memo.incremental, memo.fallback = index, True, ""
            return state
    return _load_full(source, files, read, cache, memo)


def _load_full(
    source: SpecSource,
    files: dict[str, SourceFile],
    read: list[SourceFile],
    cache: MutableMapping[str, Any],
    memo: SpecMemo | None,
) -> DesiredState:
    issues = _Issues()
    checked: dict[tuple[str, str, int], _FileResult] = {}
    unreadable: dict[str, list[SpecIssue]] = {}  # files that are no spec file; fine if they are definitions
    known = memo.files if memo is not None else {}
    _prefetch(source, cache, [f for f in read if (f.path, f.sha, f.mode) not in known])
    for path in sorted(files):
        entry = files[path]
        if not path.endswith(SPEC_SUFFIXES):  # JSON is YAML: read the same way
            continue
        key = (path, entry.sha, entry.mode)
        result = known.get(key)
        if result is None:
            result = _check_file(source, entry, cache)
        checked[key] = result
        if result.read_issues and not result.docs:
            unreadable[path] = result.read_issues
        else:
            issues.items.extend(result.read_issues)
    if memo is not None:
        memo.files, memo.index, memo.pending = checked, None, None
        memo.incremental = False
    typed: list[tuple[_Doc, Any]] = []
    for result in checked.values():  # in file order, as one pass over every document would report them
        issues.items.extend(result.schema_issues)
        typed.extend(result.typed)
    declared_apis: set[str] = set().union(*(result.apis for result in checked.values()))
    listing = dict(files)  # the definitions add what they find outside the specs root
    known_definitions = memo.definitions if memo is not None else None
    definitions = _Definitions(source, listing, cache, issues, known_definitions, inside=read)
    declared_stages: set[tuple[str, str]] = set().union(*(result.stages for result in checked.values()))
    state = _resolve(typed, declared_apis, definitions, issues, declared_stages)
    if memo is not None:
        memo.definitions = definitions.seen
        memo.resolved = len(typed)
    for path, items in unreadable.items():
        if path not in definitions.used:  # a definition is checked as one (10 MiB, any YAML), not as a spec file
            issues.items.extend(items)
    if issues.items:
        raise SpecError(issues.items, source.revision)
    state.revision = source.revision
    if memo is not None:
        kept = state.copy(None)
        results = {key[0]: result for key, result in checked.items()}
        memo.pending = lambda: _build_index(files, results, kept, definitions, set(unreadable))
    return state


def _incremental(
    source: SpecSource,
    files: dict[str, SourceFile],
    read: list[SourceFile],
    cache: MutableMapping[str, Any],
    memo: SpecMemo,
    index: _Index,
) -> DesiredState:
    """The desired state of ``source`` from ``index`` (a clean load's) and the files changed since.

    Updates ``index`` in place; raises ``_Fallback`` (the caller drops the
    index and loads in full) at anything that could make an issue, so that
    errors are always worded, and ordered, by the full path.
    """
    changed = _changed_paths(index.files, files)
    outside = _look_outside(source, index, files, changed)
    spec_paths = sorted(p for p in changed if p.endswith(SPEC_SUFFIXES))
    fresh = [files[p] for p in spec_paths if p in files]
    _prefetch(source, cache, [f for f in fresh if f.mode != MODE_SYMLINK and (f.path, f.sha, f.mode) not in memo.files])
    results: dict[str, _FileResult | None] = {}
    for path in spec_paths:
        entry = files.get(path)
        if entry is None:
            results[path] = None
            continue
        memo_key = (path, entry.sha, entry.mode)
        result = memo.files.get(memo_key)
        if result is None:
            result = memo.files[memo_key] = _check_file(source, entry, cache)  # kept for the full path too
        if result.read_issues or result.schema_issues:
            raise _Fallback(f"{path} has issues")
        results[path] = result
    # uniqueness: a key added that another document still holds, or added twice, is a duplicate
    removed: set[Key] = set()
    for path in spec_paths:
        old = index.results.get(path)
        removed.update(_key(doc, spec) for doc, spec in (old.typed if old is not None else ()))
    added: dict[Key, tuple[_Doc, Any]] = {}
    for result in results.values():
        for doc, spec in result.typed if result is not None else ():
            key = _key(doc, spec)
            if key in added or (key in index.owners and key not in removed):
                raise _Fallback(f"duplicate {key}")
            added[key] = (doc, spec)
    for key in removed:
        _remove_doc(index, key)
    for key, (doc, spec) in added.items():
        _add_doc(index, key, doc, spec)
    touched = removed | added.keys()
    for path in changed:  # a changed definition file: every document reading it resolves again
        touched.update(index.readers.get(path, ()))
    issues = _Issues()
    definitions = _Definitions(source, {**files, **outside}, cache, issues, memo.definitions, inside=read)
    state, count = index.state, 0
    moved_apis: set[str] = set()
    for key in [k for k in touched if k[0] == "RestApi"]:
        before = state.apis.pop(key[1], None) if key not in index.owners else state.apis.get(key[1])
        after = None
        if key in index.owners:
            doc, spec = index.owners[key]
            after, count = _api(doc, spec, definitions), count + 1
            if after is None:
                raise _Fallback(f"{key} does not resolve")
            state.apis[key[1]] = after
        if before is None or after is None or before.definition != after.definition:
            moved_apis.add(key[1])
    for name in moved_apis:  # their stages resolve against the new definition (or fail without their API)
        touched.update(index.stages_of.get(name, ()))
    for key in [k for k in touched if k[0] == "Stage"]:
        if key not in index.owners:
            state.stages.pop((key[1], key[2]), None)
            if (key[1], key[2]) in index.mapped:
                raise _Fallback(f"{key} is mapped")
            continue
        doc, spec = index.owners[key]
        stage, count = _stage(doc, spec, state, set(), definitions, issues), count + 1
        if stage is None:
            raise _Fallback(f"{key} does not resolve")
        state.stages[(key[1], key[2])] = stage
    for key in [k for k in touched if k[0] in ("Alias", "BasePathMapping")]:
        found = index.owners.get(key)
        target: dict[Any, Any] = state.aliases if key[0] == "Alias" else state.mappings
        if found is None:
            target.pop(key[1:], None)
            continue
        doc, spec = found
        count += 1
        if doc.kind == "Alias":
            target[key[1:]] = _alias(doc, spec)
            continue
        if (spec.api, spec.stage) not in state.stages:
            raise _Fallback(f"{key} names a stage not in the specs")
        bases = index.domains[spec.domain]
        if NONE_BASE_PATH in bases and len(bases) > 1:
            raise _Fallback(f"{spec.domain} maps its root and other paths")
        target[key[1:]] = _mapping(doc, spec)
    if issues.items:
        raise _Fallback("issues")
    index.unreadable = {path for path in index.unreadable if path not in changed}
    if any(path not in index.readers for path in index.unreadable) or not _attribute(index, definitions.read):
        raise _Fallback("a definition file no longer read, or one content at two paths")
    index.outside = {
        path: entry
        for path, entry in {**outside, **{f.path: f for f in definitions.outside}}.items()
        if path in index.readers
    }
    if sum(f.size for f in read) + sum(f.size for f in index.outside.values()) > MAX_COMMIT_BYTES:
        raise _Fallback("over the commit budget")
    _keep_order(index, spec_paths, results)
    for path in spec_paths:
        old_entry, result = index.files.get(path), results[path]
        if old_entry is not None:
            memo.files.pop((path, old_entry.sha, old_entry.mode), None)
        if result is None:
            index.results.pop(path, None)
        else:
            index.results[path] = result
    index.files = files
    _keep_definitions(memo, index, definitions)
    memo.resolved = count
    return state.copy(source.revision)


def _changed_paths(before: dict[str, SourceFile], after: dict[str, SourceFile]) -> set[str]:
    """Paths added, removed or changed (content or mode) between two listings: O(files) comparisons, no reads."""
    changed: set[str] = set()
    new = 0
    for path, entry in after.items():
        old = before.get(path)
        if old is not entry and old != entry:
            changed.add(path)
            new += old is None
    if len(after) - new != len(before):
        changed.update(before.keys() - after.keys())
    return changed


def _look_outside(
    source: SpecSource, index: _Index, files: dict[str, SourceFile], changed: set[str]
) -> dict[str, SourceFile]:
    """The definitions outside the specs root, looked up again (a commit can change them without a listed file
    changing); one that changed counts as a changed path."""
    lookup = getattr(source, "lookup", None)
    found: dict[str, SourceFile] = {}
    for path, old in index.outside.items():
        if path in files or lookup is None:
            raise _Fallback(f"{path} moved inside the specs root")
        entry = lookup(path)
        if entry != old:
            changed.add(path)
        if entry is not None:
            found[path] = entry
    return found


def _keep_order(index: _Index, paths: list[str], results: dict[str, _FileResult | None]) -> None:
    """Put the state's dicts in the order a cold load gives (file order, then document order), where the
    changed files could have moved a key: a key new to its file, or keys of a file reordered."""
    state = index.state
    targets: tuple[tuple[str, dict[Any, Any]], ...] = (
        ("RestApi", state.apis),
        ("Stage", state.stages),
        ("Alias", state.aliases),
        ("BasePathMapping", state.mappings),
    )
    for kind, target in targets:
        for path in paths:
            old, new = index.results.get(path), results[path]
            before = [_key(d, s) for d, s in old.typed if d.kind == kind] if old is not None else []
            after = [_key(d, s) for d, s in new.typed if d.kind == kind] if new is not None else []
            if after and [key for key in before if key in set(after)] != after:
                break
        else:
            continue
        merged = {**index.results, **{p: r for p, r in results.items() if r is not None}}
        ordered: dict[Any, Any] = {}
        for path in sorted(p for p in merged if results.get(p, merged[p]) is not None):
            for doc, spec in merged[path].typed:
                if doc.kind == kind:
                    key = _key(doc, spec)
                    name = key[1] if kind == "RestApi" else key[1:]
                    ordered[name] = target[name]
        target.clear()
        target.update(ordered)


def _keep_definitions(memo: SpecMemo, index: _Index, definitions: _Definitions) -> None:
    """The parsed definitions the next load may need: those in use (dropped ones pruned now and then)."""
    memo.definitions.update(definitions.seen)
    if len(memo.definitions) > 2 * len(index.readers) + 32:
        keys = set()
        for path in index.readers:
            entry = index.files.get(path) or index.outside.get(path)
            if entry is not None:
                keys.add(f"def:{CACHE_FORMAT}:{entry.sha}")
        memo.definitions = {key: value for key, value in memo.definitions.items() if key in keys}


def _spec_files(files: Iterable[SourceFile]) -> list[SourceFile]:
    """The files a load reads as spec files (JSON is YAML), symlinks left out: what the commit budget counts."""
    return [f for f in files if f.path.endswith(SPEC_SUFFIXES) and f.mode != MODE_SYMLINK]


def _join(spec_file: str, reference: str) -> str:
    """The repository path a reference in ``spec_file`` names (relative to the spec file's folder)."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(spec_file), reference))


def _prefetch(source: SpecSource, cache: MutableMapping[str, Any], entries: list[SourceFile]) -> None:
    """Ask the cache for every spec file about to be checked at once, and the source for the blobs it lacks
    (a cache or source without ``prefetch`` is asked one file at a time, as before)."""
    readable = [e for e in entries if e.mode not in (MODE_SYMLINK, MODE_SUBMODULE) and e.size <= MAX_SPEC_BYTES]
    warm = getattr(cache, "prefetch", None)
    if warm is not None:
        warm([f"spec:{CACHE_FORMAT}:{e.sha}" for e in readable])
    fetch = getattr(source, "prefetch", None)
    if fetch is not None:
        fetch([e for e in readable if f"spec:{CACHE_FORMAT}:{e.sha}" not in cache])


def _check_budget(source: SpecSource, read: list[SourceFile], outside: list[SourceFile]) -> None:
    """Refuse, before reading any of it, a commit whose specs and definitions pass ``MAX_COMMIT_BYTES`` together."""
    every = read + outside
    total = sum(f.size for f in every)
    if total <= MAX_COMMIT_BYTES:
        return
    largest = ", ".join(f"{f.path} ({f.size} bytes)" for f in sorted(every, key=lambda f: (-f.size, f.path))[:3])
    root = source.root.strip("/") or "."
    message = (
        f"the spec files and definitions of this commit total {total} bytes; expected at most {MAX_COMMIT_BYTES} "
        f"(64 MiB) per commit; largest: {largest}"
    )
    raise SpecError([SpecIssue(f"{root}/", None, "", message)], source.revision)


def _decode(data: bytes, path: str, issues: _Issues) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        issues.add(path, line, "", f"not valid UTF-8 (byte {exc.start}); expected a UTF-8 text file")
        return None


def _read_spec_file(
    source: SpecSource, entry: SourceFile, cache: MutableMapping[str, Any], issues: _Issues
) -> list[_Doc]:
    if entry.mode == MODE_SYMLINK:
        issues.add(entry.path, None, "", "is a symbolic link; expected a regular file (symlinks are never followed)")
        return []
    if entry.mode == MODE_SUBMODULE:
        return []
    if entry.size > MAX_SPEC_BYTES:
        issues.add(
            entry.path, None, "", f"is {entry.size} bytes; expected at most {MAX_SPEC_BYTES} bytes per spec file"
        )
        return []
    key = f"spec:{CACHE_FORMAT}:{entry.sha}"
    parsed = cache.get(key)
    if parsed is None:
        text = _decode(source.read(entry), entry.path, issues)
        if text is None:
            return []
        try:
            parsed = [[data, lines, line] for data, lines, line in load_documents(text)]
        except YamlProblem as exc:
            issues.add(entry.path, exc.line, exc.field, exc.message)
            return []
        cache[key] = parsed
    docs: list[_Doc] = []
    for data, lines, line in parsed:
        doc = _envelope(data, lines, line, entry.path, issues)
        if doc is not None:
            docs.append(doc)
    return docs


def _envelope(data: Any, lines: Lines, line: int, path: str, issues: _Issues) -> _Doc | None:
    """Check apiVersion/kind/metadata; return the document or record why not."""
    if not isinstance(data, dict):
        issues.add(
            path, line, "", f"expected a mapping with apiVersion, kind, metadata and spec, got {type(data).__name__}"
        )
        return None
    if "apiVersion" not in data and "kind" not in data and ("openapi" in data or "swagger" in data):
        return None  # an OpenAPI/Swagger document, checked where a spec references it
    doc = _Doc(kind=str(data.get("kind", "?")), name="?", spec=None, file=path, lines=lines, line=line)
    ok = True
    for required in ("apiVersion", "kind", "metadata", "spec"):
        if required not in data:
            issues.add(path, line, required, f"required field is missing; expected {', '.join(ENVELOPE)}")
            ok = False
    if not ok:
        return None
    for unknown in sorted(set(data) - set(ENVELOPE)):
        issues.add(path, doc.line_of(unknown), unknown, f"unknown field; expected {', '.join(ENVELOPE)}")
        ok = False
    if data.get("apiVersion") != API_VERSION:
        issues.add(
            path, doc.line_of("apiVersion"), "apiVersion", f"expected {API_VERSION!r}, got {data.get('apiVersion')!r}"
        )
        ok = False
    if data.get("kind") not in KINDS:
        issues.add(path, doc.line_of("kind"), "kind", f"expected one of {', '.join(KINDS)}, got {data.get('kind')!r}")
        ok = False
    try:
        metadata = Metadata.model_validate(data.get("metadata"))
        doc.name = metadata.name
        doc.adopt = metadata.adopt
    except ValidationError as exc:
        _pydantic_issues(doc, "metadata", Metadata, exc, issues)
        ok = False
    if not isinstance(data.get("spec"), dict):
        issues.add(path, doc.line_of("spec"), "spec", f"expected a mapping, got {type(data.get('spec')).__name__}")
        ok = False
    doc.spec = data.get("spec")
    return doc if ok else None


TYPE_NOUNS = {
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "string_type": "a string",
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
}


def _fields_at(model: type[BaseModel], parts: list[str]) -> list[str]:
    """The field names of the (nested) model that the field path ``parts`` lands in."""
    for part in parts:
        if part.isdigit():  # a list index: the list's item model is the one already found
            continue
        info = model.model_fields.get(part)
        if info is None:
            return []
        nested = [a for a in (*get_args(info.annotation), info.annotation) if isinstance(a, type)]
        models = [a for a in nested if issubclass(a, BaseModel)]
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def _pydantic_issues(doc: _Doc, prefix: str, model: type[BaseModel], exc: ValidationError, issues: _Issues) -> None:
    for error in exc.errors(include_url=False):
        parts = [str(p) for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-after"))]
        parts = [p for p in parts if p != "[key]"]
        path = ".".join([prefix, *parts]) if parts else prefix
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        kind = error["type"]
        if kind == "extra_forbidden":
            message = f"unknown field; expected one of {', '.join(_fields_at(model, parts[:-1]))}"
        elif kind == "missing":
            message = f"required field is missing; expected {parts[-1] if parts else prefix} to be set"
        elif kind == "literal_error":
            expected = str(error.get("ctx", {}).get("expected", "")).replace("'", "")
            message = f"expected {expected}, got {error.get('input')!r}"
        elif kind in TYPE_NOUNS:
            found = error.get("input")
            message = f"expected {TYPE_NOUNS[kind]}, got {type(found).__name__} {found!r}"[:300]
        issues.doc(doc, path, message)


def _validate_schema(docs: list[_Doc], issues: _Issues) -> list[tuple[_Doc, Any]]:
    typed: list[tuple[_Doc, Any]] = []
    for doc in docs:
        named = True
        try:
            NAME_RULES[doc.kind](doc.name)
        except ValueError as exc:
            issues.doc(doc, "metadata.name", str(exc))
            named = False
        try:  # checked even under a bad name, so that validate lists every error
            spec = SPEC_MODELS[doc.kind].model_validate(doc.spec)
        except ValidationError as exc:
            _pydantic_issues(doc, "spec", SPEC_MODELS[doc.kind], exc, issues)
            continue
        if named:
            typed.append((doc, spec))
    return typed


def _key(doc: _Doc, spec: Any) -> tuple[str, ...]:
    """What must be unique among a kind's documents: (kind, *its key in ``DesiredState``)."""
    if doc.kind == "RestApi":
        return ("RestApi", doc.name)
    if doc.kind == "Stage":
        return ("Stage", spec.api, doc.name)
    if doc.kind == "Alias":
        return ("Alias", spec.function, doc.name)
    return ("BasePathMapping", spec.domain, spec.basePath)


def _api(doc: _Doc, spec: RestApiSpec, definitions: _Definitions) -> DesiredApi | None:
    definition = definitions.get(doc, "spec.definition", spec.definition)
    if definition is None:
        return None
    return DesiredApi(doc.name, spec.description, definition, doc.at(""), doc.adopt, spec.settings())


def _alias(doc: _Doc, spec: AliasSpec) -> DesiredAlias:
    if doc.resolved is None:  # an alias depends on its own document only
        routing = {version: normalize_percent(p) for version, p in spec.routing.items()}
        alias = DesiredAlias(
            spec.function,
            doc.name,
            spec.description,
            routing,
            doc.at(""),
            desired_rollout(spec.rollout),
            adopt=doc.adopt,
        )
        doc.resolved = (None, alias)
    resolved: DesiredAlias = doc.resolved[1]
    return resolved


def _mapping(doc: _Doc, spec: BasePathMappingSpec) -> DesiredBasePathMapping:
    return DesiredBasePathMapping(spec.domain, spec.basePath, spec.api, spec.stage, doc.at(""), doc.adopt)


def _resolve(
    typed: list[tuple[_Doc, Any]],
    declared_apis: set[str],
    definitions: _Definitions,
    issues: _Issues,
    declared_stages: set[tuple[str, str]] | None = None,
) -> DesiredState:
    state = DesiredState()
    seen: dict[tuple[str, ...], _Doc] = {}

    def unique(doc: _Doc, key: tuple[str, ...], what: str) -> bool:
        first = seen.get(key)
        if first is not None:
            issues.doc(
                doc, "metadata.name", f"duplicate {what}; first defined at {first.file}:{first.line}, expected once"
            )
            return False
        seen[key] = doc
        return True

    for doc, spec in typed:
        if doc.kind == "RestApi" and unique(doc, ("RestApi", doc.name), f"RestApi {doc.name!r}"):
            api = _api(doc, spec, definitions)
            if api is not None:
                state.apis[doc.name] = api
    for doc, spec in typed:
        if doc.kind == "Stage" and unique(
            doc, ("Stage", spec.api, doc.name), f"stage {doc.name!r} of API {spec.api!r}"
        ):
            stage = _stage(doc, spec, state, declared_apis, definitions, issues)
            if stage is not None:
                state.stages[(stage.api, stage.name)] = stage
        elif doc.kind == "Alias" and unique(
            doc, ("Alias", spec.function, doc.name), f"alias {doc.name!r} of function {spec.function!r}"
        ):
            state.aliases[(spec.function, doc.name)] = _alias(doc, spec)
    _mappings(typed, state, declared_apis, declared_stages or set(), unique, issues)
    return state


def _mappings(
    typed: list[tuple[_Doc, Any]],
    state: DesiredState,
    declared_apis: set[str],
    declared_stages: set[tuple[str, str]],
    unique: Callable[[_Doc, tuple[str, ...], str], bool],
    issues: _Issues,
) -> None:
    """BasePathMappings: one per (domain, base path), each naming a RestApi and a Stage of the specs (one
    declared but invalid has its own error: the mapping adds none)."""
    for doc, spec in typed:
        if doc.kind != "BasePathMapping":
            continue
        key = (spec.domain, spec.basePath)
        if not unique(doc, ("BasePathMapping", *key), f"mapping of {spec.domain}/{spec.basePath}"):
            continue
        if spec.api not in state.apis:
            if spec.api not in declared_apis:
                known = ", ".join(sorted(state.apis)) or "none"
                issues.doc(
                    doc, "spec.api", f"expected the name of a RestApi in the specs, got {spec.api!r} (known: {known})"
                )
            continue  # else the RestApi is in the specs but invalid: its own error says why
        if (spec.api, spec.stage) not in state.stages:
            if (spec.api, spec.stage) not in declared_stages:
                known = ", ".join(sorted(s for a, s in state.stages if a == spec.api)) or "none"
                issues.doc(
                    doc,
                    "spec.stage",
                    f"expected the name of a Stage of API {spec.api!r} in the specs, got {spec.stage!r} "
                    f"(known: {known})",
                )
            continue
        state.mappings[key] = _mapping(doc, spec)
    _check_root_mappings(state, issues)


def _check_root_mappings(state: DesiredState, issues: _Issues) -> None:
    """API Gateway refuses other mappings on a domain whose root is mapped ("(none)"), and the reverse."""
    for (domain, base_path), mapping in sorted(state.mappings.items()):
        if base_path == NONE_BASE_PATH:
            continue
        root = state.mappings.get((domain, NONE_BASE_PATH))
        if root is not None:
            issues.add(
                mapping.location.file,
                mapping.location.line_of("spec.basePath"),
                "spec.basePath",
                f"BasePathMapping of {domain}/{base_path}: {domain} maps its root ((none)) at "
                f"{root.location}; expected the root mapping alone on a domain, or only named base paths "
                "(API Gateway allows one mapping on a domain whose base path is empty)",
            )


def _stage(
    doc: _Doc,
    spec: StageSpec,
    state: DesiredState,
    declared_apis: set[str],
    definitions: _Definitions,
    issues: _Issues,
) -> DesiredStage | None:
    """The stage of ``doc``; a memoised document's from last time when it reads no definition file of its own
    and its API's definition is the one it was resolved against (it depends on nothing else)."""
    api = state.apis.get(spec.api)
    if api is None:
        if spec.api in declared_apis:
            return None  # the RestApi is in the specs but invalid: its own error says why, once
        known = ", ".join(sorted(state.apis)) or "none"
        issues.doc(doc, "spec.api", f"expected the name of a RestApi in the specs, got {spec.api!r} (known: {known})")
        return None
    reusable = spec.definition is None and (spec.canary is None or spec.canary.definition is None)
    if reusable and doc.resolved is not None and doc.resolved[0] == api.definition:
        kept: DesiredStage = doc.resolved[1]
        return kept
    before = len(issues.items)
    stage = _resolve_stage(doc, spec, api.definition, definitions, issues)
    ok = reusable and stage is not None and len(issues.items) == before
    doc.resolved = (api.definition, stage) if ok else None
    return stage


def _resolve_stage(
    doc: _Doc, spec: StageSpec, definition: Definition, definitions: _Definitions, issues: _Issues
) -> DesiredStage | None:
    """A stage of an API whose definition is ``definition`` (the stage's unless it names its own)."""
    if spec.definition is not None:
        pinned = definitions.get(doc, "spec.definition", spec.definition)
        if pinned is None:
            return None
        definition = pinned
    _check_variables(doc, "spec.variables", definition, spec.variables, issues)
    canary = None
    if spec.canary is not None:
        canary_definition = definition
        if spec.canary.definition is not None:
            found = definitions.get(doc, "spec.canary.definition", spec.canary.definition)
            if found is None:
                return None
            canary_definition = found
        _check_variables(
            doc, "spec.canary.variables", canary_definition, {**spec.variables, **spec.canary.variables}, issues
        )
        canary = DesiredCanary(
            normalize_percent(spec.canary.percentTraffic),
            canary_definition,
            dict(spec.canary.variables),
            spec.canary.useStageCache,
        )
    if spec.rollout is not None and spec.canary is not None:
        issues.doc(
            doc,
            "spec.rollout",
            "a stage with rollout may not also declare canary (the rollout drives the canary); expected one of them",
        )
        return None
    return DesiredStage(
        spec.api,
        doc.name,
        spec.description,
        definition,
        dict(spec.variables),
        canary,
        doc.at(""),
        desired_rollout(spec.rollout),
        adopt=doc.adopt,
        settings=settings_from_spec(
            spec.tracingEnabled,
            spec.cacheCluster,
            spec.clientCertificateId,
            spec.accessLog,
            spec.tags,
            spec.methodSettings,
        ),
    )


def _check_variables(doc: _Doc, path: str, definition: Definition, variables: dict[str, str], issues: _Issues) -> None:
    if definition.variables.issubset(variables):
        return
    missing = sorted(definition.variables - set(variables))
    if missing:
        used = ", ".join(f"${{stageVariables.{name}}}" for name in missing)
        issues.doc(
            doc,
            path,
            f"{definition.source} uses {used}; expected the stage to set {', '.join(missing)}",
        )


class _Definitions:
    """Resolves, reads, parses and hashes definition files once per blob."""

    def __init__(
        self,
        source: SpecSource,
        files: dict[str, SourceFile],
        cache: MutableMapping[str, Any],
        issues: _Issues,
        known: dict[str, list[Any]] | None = None,
        inside: list[SourceFile] | None = None,
    ) -> None:
        self.source = source
        self.files = files
        self.cache = cache
        self.issues = issues
        self.known = known or {}  # parsed by the previous load (SpecMemo): not asked of the cache again
        self.seen: dict[str, list[Any]] = {}  # parsed or found by this load, for the next one
        self.by_sha: dict[str, Definition] = {}
        self.used: set[str] = set()  # paths that specs name as definitions
        self.read: dict[str, Definition] = {}  # path -> what it gave (a path shared by content: the first's)
        self.inside = inside if inside is not None else _spec_files(files.values())
        self.outside: list[SourceFile] = []

    def get(self, doc: _Doc, path: str, reference: str) -> Definition | None:
        resolved = self._resolve_path(doc, path, reference)
        if resolved is None:
            return None
        self.used.add(resolved)
        entry = self.files[resolved]
        if entry.mode == MODE_SYMLINK:
            self.issues.doc(
                doc, path, f"{resolved} is a symbolic link; expected a regular file (symlinks are never followed)"
            )
            return None
        if entry.size > MAX_DEFINITION_BYTES:
            self.issues.doc(doc, path, f"{resolved} is {entry.size} bytes; expected at most {MAX_DEFINITION_BYTES}")
            return None
        key = f"def:{CACHE_FORMAT}:{entry.sha}"
        hit = self.seen.get(key) or self.known.get(key) or self.cache.get(key)
        if hit is None:
            hit = self._parse(doc, path, entry)
            if hit is None:
                return None
            self.cache[key] = hit
        self.seen[key] = hit
        sha, body, variables, text = hit
        known = self.by_sha.get(sha)
        if known is None:
            known = self.by_sha[sha] = Definition(sha, body, resolved, frozenset(variables), text)
        self.read[resolved] = known
        return known

    def _resolve_path(self, doc: _Doc, path: str, reference: str) -> str | None:
        """The repository path ``reference`` names (relative to the spec file; anywhere inside the repository)."""
        if not reference or reference.startswith("/") or "\\" in reference or "\x00" in reference:
            self.issues.doc(doc, path, f"expected a relative path inside the repository, got {reference!r}")
            return None
        resolved = _join(doc.file, reference)
        if resolved.startswith("../") or resolved in ("..", "."):
            self.issues.doc(doc, path, f"{reference!r} leaves the repository; expected a path inside it")
            return None
        if resolved not in self.files:
            lookup = getattr(self.source, "lookup", None)  # a file outside the specs root, if the source can say
            found = lookup(resolved) if lookup is not None else None
            if found is None:
                self.issues.doc(doc, path, f"{resolved} does not exist in this commit; expected an OpenAPI file")
                return None
            self.files[resolved] = found
            self.outside.append(found)  # a definition outside the specs root counts toward the commit's bytes too
            _check_budget(self.source, self.inside, self.outside)
        return resolved

    def _parse(self, doc: _Doc, path: str, entry: SourceFile) -> list[Any] | None:
        try:
            text = self.source.read(entry).decode("utf-8")
        except UnicodeDecodeError:
            self.issues.doc(doc, path, f"{entry.path} is not valid UTF-8; expected a UTF-8 OpenAPI file")
            return None
        text = text.removeprefix("\ufeff")  # a byte order mark is no part of the document
        try:
            data = load_definition(text, is_json=entry.path.endswith(".json"))
        except YamlProblem as exc:
            where = f"{entry.path}:{exc.line}" if exc.line else entry.path
            self.issues.doc(doc, path, f"{where}: {exc.message}")
            return None
        problems = definition_problems(data)
        for problem in problems:
            self.issues.doc(doc, path, f"{entry.path}: {problem}")
        if problems:
            return None
        body = canonical_json(data)
        sha = hashlib.sha256(body.encode("utf-8")).hexdigest()
        return [sha, body, sorted(integration_variables(data)), text]


__all__ = [
    "AliasSpec",
    "BasePathMappingSpec",
    "CanarySpec",
    "Definition",
    "DesiredAlias",
    "DesiredAnalysis",
    "DesiredApi",
    "DesiredBasePathMapping",
    "DesiredCanary",
    "DesiredCheck",
    "DesiredRollout",
    "DesiredStage",
    "DesiredState",
    "Location",
    "RestApiSpec",
    "RolloutSpec",
    "RolloutStep",
    "SourceFile",
    "SpecMemo",
    "SpecSource",
    "StageSpec",
    "load_desired",
]
