"""The data the plan works on: the ``LiveState`` a backend reads and the actions a backend applies.

Pure data (frozen dataclasses) and the value conversions both sides need, no
I/O.  ``plan.py`` diffs a ``DesiredState`` against a ``LiveState`` into these
actions; ``backends/`` read the one and apply the other; the engine passes
them between.  Nothing here imports ``plan`` or ``backends``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from reconciler.settings import ApiSettings, StageSettings
from reconciler.specs import LATEST, Definition, DesiredCanary, normalize_percent

Change = tuple[Any, Any]

Routing = dict[str, float]
DEFAULT_INSTANCE = "default"  # the owner of resources marked before marks named their instance


@dataclass(frozen=True)
class LiveCanary:
    percent_traffic: float
    definition_sha256: str | None
    deployment_id: str
    variables: dict[str, str] = field(default_factory=dict)
    use_stage_cache: bool = False


@dataclass(frozen=True)
class LiveApi:
    name: str
    id: str
    description: str | None
    definition_sha256: str | None
    managed: bool
    owner: str | None = None  # the instance that manages it (managed with no owner: DEFAULT_INSTANCE)
    endpoint_type: str | None = None  # EDGE | REGIONAL | PRIVATE
    vpc_endpoint_ids: tuple[str, ...] = ()  # a PRIVATE API's VPC endpoints, sorted
    tags: dict[str, str] = field(default_factory=dict)  # the API's own tags (marks and aws: tags left out)
    url: str | None = None  # the invoke URL without a stage


@dataclass(frozen=True)
class LiveDeployment:
    id: str
    definition_sha256: str | None
    revision: str | None


@dataclass(frozen=True)
class LiveStage:
    api: str
    name: str
    deployment_id: str
    definition_sha256: str | None
    description: str | None
    variables: dict[str, str]
    canary: LiveCanary | None
    url: str
    managed: bool
    owner: str | None = None
    settings: StageSettings | None = None  # None: the backend does not report settings


@dataclass(frozen=True)
class LiveAlias:
    function: str
    name: str
    description: str | None
    routing: Routing
    managed: bool
    revision_id: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class LiveBasePathMapping:
    """A custom domain's base path (``(none)``: the root) and the stage it maps to."""

    domain: str
    base_path: str
    rest_api_id: str
    api: str | None  # the API's name, None if the read did not see the API of ``rest_api_id``
    stage: str | None  # None: callers name the stage in the URL (AWS's "(none)" stage)
    managed: bool
    owner: str | None = None


@dataclass
class LiveState:
    """What the backend holds now, keyed the way the plan looks things up.

    ``deployments[api]`` maps definition sha256 -> deployment; ``versions``
    maps a function name to its published versions (``$LATEST`` included); a
    function that does not exist is absent; ``domains`` holds the custom domain
    names that exist, ``mappings`` their base path mappings.
    """

    apis: dict[str, LiveApi] = field(default_factory=dict)
    deployments: dict[str, dict[str, LiveDeployment]] = field(default_factory=dict)
    stages: dict[tuple[str, str], LiveStage] = field(default_factory=dict)
    aliases: dict[tuple[str, str], LiveAlias] = field(default_factory=dict)
    versions: dict[str, set[str]] = field(default_factory=dict)
    domains: set[str] = field(default_factory=set)  # the custom domain names that exist (those the read looked at)
    mappings: dict[tuple[str, str], LiveBasePathMapping] = field(default_factory=dict)  # (domain, base path) ->
    instance: str = DEFAULT_INSTANCE  # the instance this state was read for: it owns what ``owner_of`` names it


def copy_live(live: LiveState) -> LiveState:
    """A copy of ``live`` whose containers the caller may change (the entries are frozen: shared)."""
    return LiveState(
        apis=dict(live.apis),
        deployments={api: dict(by_sha) for api, by_sha in live.deployments.items()},
        stages=dict(live.stages),
        aliases=dict(live.aliases),
        versions={function: set(versions) for function, versions in live.versions.items()},
        domains=set(live.domains),
        mappings=dict(live.mappings),
        instance=live.instance,
    )


def owner_of(resource: LiveApi | LiveStage | LiveAlias | LiveBasePathMapping) -> str | None:
    """The instance managing ``resource``, None if no instance does (old marks: ``default``'s)."""
    if not resource.managed:
        return None
    return resource.owner or DEFAULT_INSTANCE


# ------------------------------------------------------------------ values


def percent_json(value: float) -> float | int:
    """A percentage as shown to people and in JSON: 95 rather than 95.0."""
    return int(value) if float(value).is_integer() else value


def version_key(version: str) -> tuple[int, int]:
    return (1, 0) if version == LATEST else (0, int(version))


def primary_version(routing: dict[str, float]) -> str:
    """The version an alias points at; any other version takes a weight."""
    return max(routing, key=lambda v: (routing[v], -version_key(v)[1]))


def routing_to_lambda(routing: dict[str, float]) -> tuple[str, dict[str, float]]:
    """version -> percent as Lambda's (FunctionVersion, AdditionalVersionWeights 0.0-1.0)."""
    primary = primary_version(routing)
    return primary, {v: round(p / 100, 8) for v, p in routing.items() if v != primary}


def routing_from_lambda(version: str, weights: dict[str, float]) -> dict[str, float]:
    """Lambda's (FunctionVersion, AdditionalVersionWeights) as version -> percent."""
    routing = {v: normalize_percent(w * 100) for v, w in weights.items()}
    routing[version] = normalize_percent(100 - sum(routing.values()))
    return routing


# ----------------------------------------------------------------- actions


@dataclass(frozen=True)
class _Action:
    action: ClassVar[str]
    changes: dict[str, Change] = field(default_factory=dict, kw_only=True)

    @property
    def resource(self) -> str:  # pragma: no cover - every action overrides it
        raise NotImplementedError

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "resource": self.resource,
            "changes": {name: [old, new] for name, (old, new) in self.changes.items()},
        }


@dataclass(frozen=True)
class _ApiAction(_Action):
    api: str

    @property
    def resource(self) -> str:
        return f"RestApi/{self.api}"


@dataclass(frozen=True)
class _StageAction(_Action):
    api: str
    stage: str

    @property
    def resource(self) -> str:
        return f"Stage/{self.api}/{self.stage}"


@dataclass(frozen=True)
class _AliasAction(_Action):
    function: str
    alias: str

    @property
    def resource(self) -> str:
        return f"Alias/{self.function}/{self.alias}"


@dataclass(frozen=True)
class _MappingAction(_Action):
    domain: str
    base_path: str  # "(none)": the domain's root

    @property
    def resource(self) -> str:
        return f"BasePathMapping/{self.domain}/{self.base_path}"


@dataclass(frozen=True)
class CreateApi(_ApiAction):
    action: ClassVar[str] = "create_api"
    description: str | None
    definition: Definition
    settings: ApiSettings = field(default_factory=ApiSettings)


@dataclass(frozen=True)
class UpdateApi(_ApiAction):
    """Import the API's definition, set its description, endpoint type, VPC endpoints, tags (what ``changes`` names)."""

    action: ClassVar[str] = "update_api"
    description: str | None
    definition: Definition
    settings: ApiSettings = field(default_factory=ApiSettings)


@dataclass(frozen=True)
class CreateDeployment(_ApiAction):
    """Snapshot ``definition``; ``api_definition`` is what the API keeps as current."""

    action: ClassVar[str] = "create_deployment"
    definition: Definition
    api_definition: Definition
    revision: str | None
    fail_on_warnings: bool = True  # the API's failOnWarnings, for the imports around the snapshot


@dataclass(frozen=True)
class CreateStage(_StageAction):
    action: ClassVar[str] = "create_stage"
    description: str | None
    definition: Definition
    variables: dict[str, str]
    canary: DesiredCanary | None
    settings: StageSettings | None = None  # None: leave the stage's settings as they are


@dataclass(frozen=True)
class UpdateStage(_StageAction):
    action: ClassVar[str] = "update_stage"
    description: str | None
    definition: Definition
    variables: dict[str, str]
    canary: DesiredCanary | None
    settings: StageSettings | None = None  # None: leave the stage's settings as they are


@dataclass(frozen=True)
class CreateAlias(_AliasAction):
    action: ClassVar[str] = "create_alias"
    description: str | None
    routing: dict[str, float]


@dataclass(frozen=True)
class UpdateAlias(_AliasAction):
    action: ClassVar[str] = "update_alias"
    description: str | None
    routing: dict[str, float]
    revision_id: str | None = None


@dataclass(frozen=True)
class AdoptApi(_ApiAction):
    """Mark an existing, unmanaged API as this instance's (its id and URL stay)."""

    action: ClassVar[str] = "adopt_api"
    instance: str


@dataclass(frozen=True)
class AdoptStage(_StageAction):
    """Mark an existing, unmanaged stage as this instance's (it keeps its deployment until an update moves it)."""

    action: ClassVar[str] = "adopt_stage"
    instance: str


@dataclass(frozen=True)
class AdoptAlias(_AliasAction):
    """Mark an existing, unmanaged alias as this instance's (its routing stays until an update changes it)."""

    action: ClassVar[str] = "adopt_alias"
    instance: str
    revision_id: str | None = None


@dataclass(frozen=True)
class CreateBasePathMapping(_MappingAction):
    """Map the domain's base path to stage ``stage`` of API ``api`` (both exist by the time it runs)."""

    action: ClassVar[str] = "create_base_path_mapping"
    api: str
    stage: str


@dataclass(frozen=True)
class AdoptBasePathMapping(_MappingAction):
    """Mark an existing, unmanaged mapping as this instance's (it keeps its target until an update moves it)."""

    action: ClassVar[str] = "adopt_base_path_mapping"
    instance: str


@dataclass(frozen=True)
class UpdateBasePathMapping(_MappingAction):
    """Point the mapping at another API and/or stage."""

    action: ClassVar[str] = "update_base_path_mapping"
    api: str
    stage: str


@dataclass(frozen=True)
class DeleteBasePathMapping(_MappingAction):
    action: ClassVar[str] = "delete_base_path_mapping"


@dataclass(frozen=True)
class DeleteStage(_StageAction):
    action: ClassVar[str] = "delete_stage"


@dataclass(frozen=True)
class DeleteAlias(_AliasAction):
    action: ClassVar[str] = "delete_alias"


Action = (
    CreateApi
    | AdoptApi
    | UpdateApi
    | CreateDeployment
    | CreateStage
    | AdoptStage
    | UpdateStage
    | CreateAlias
    | AdoptAlias
    | UpdateAlias
    | CreateBasePathMapping
    | AdoptBasePathMapping
    | UpdateBasePathMapping
    | DeleteBasePathMapping
    | DeleteStage
    | DeleteAlias
)
# mappings point at stages: made or moved after every stage is in place, deleted before any stage is
ACTION_ORDER = [
    cls.action
    for cls in (
        CreateApi,
        AdoptApi,
        UpdateApi,
        CreateDeployment,
        CreateStage,
        AdoptStage,
        UpdateStage,
        CreateAlias,
        AdoptAlias,
        UpdateAlias,
        CreateBasePathMapping,
        AdoptBasePathMapping,
        UpdateBasePathMapping,
        DeleteBasePathMapping,
        DeleteStage,
        DeleteAlias,
    )
]


PERMISSION_NOT_GRANTED = "permission_not_granted"


@dataclass(frozen=True)
class PlanWarning:
    """Something a plan (``permission_not_granted``) or an apply (``import_warnings``) could not do as asked for
    a resource: shown in the output and logged, never a reason to stop."""

    resource: str  # Stage/<api>/<stage>, RestApi/<api>
    message: str
    code: str = PERMISSION_NOT_GRANTED
    integration: str | None = None  # the method, e.g. "GET /orders"
    alias: str | None = None  # function:alias, when one is named

    def __str__(self) -> str:
        where = f"{self.resource}: {self.integration}" if self.integration else self.resource
        return f"{where}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "resource": self.resource,
            "integration": self.integration,
            "alias": self.alias,
            "message": self.message,
        }
