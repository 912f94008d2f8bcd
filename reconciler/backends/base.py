"""The backend plug point: the ``Backend`` protocol and the ``LiveState`` it reads.

Pure data and protocols, no I/O.  ``plan.py`` diffs a ``DesiredState`` against a
``LiveState``; the engine hands each planned action to ``Backend.apply``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from reconciler.settings import StageSettings

if TYPE_CHECKING:
    from reconciler.plan import Action
    from reconciler.specs import DesiredState

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


@dataclass
class LiveState:
    """What the backend holds now, keyed the way the plan looks things up.

    ``deployments[api]`` maps definition sha256 -> deployment; ``versions``
    maps a function name to its published versions (``$LATEST`` included); a
    function that does not exist is absent.
    """

    apis: dict[str, LiveApi] = field(default_factory=dict)
    deployments: dict[str, dict[str, LiveDeployment]] = field(default_factory=dict)
    stages: dict[tuple[str, str], LiveStage] = field(default_factory=dict)
    aliases: dict[tuple[str, str], LiveAlias] = field(default_factory=dict)
    versions: dict[str, set[str]] = field(default_factory=dict)
    instance: str = DEFAULT_INSTANCE  # the instance this state was read for: it owns what ``owner_of`` names it


def owner_of(resource: LiveApi | LiveStage | LiveAlias) -> str | None:
    """The instance managing ``resource``, None if no instance does (old marks: ``default``'s)."""
    if not resource.managed:
        return None
    return resource.owner or DEFAULT_INSTANCE


class Backend(Protocol):
    """Reads live state and applies one action at a time (each idempotent)."""

    name: str

    def read(self, desired: DesiredState) -> LiveState: ...

    def apply(self, action: Action) -> None: ...

    def close(self) -> None: ...


ALARM_STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")


@dataclass(frozen=True)
class AlarmState:
    name: str
    state: str  # OK | ALARM | INSUFFICIENT_DATA
    updated_at: float  # Unix seconds of the last state change


@runtime_checkable
class AlarmReader(Protocol):
    """A backend that can read alarms for rollout analysis (local: simulated; aws: CloudWatch ``DescribeAlarms``)."""

    def read_alarms(self, names: Sequence[str]) -> dict[str, AlarmState]: ...
