"""The backend plug point: the ``Backend`` protocol (and the alarm reader rollouts use).

Protocols and alarm data, no I/O.  What a backend reads (``LiveState``) and
applies (the actions) is plain data in ``reconciler/model.py``; the engine
hands each planned action to ``Backend.apply``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from reconciler.model import Action, LiveState, PlanWarning

if TYPE_CHECKING:
    from reconciler.specs import DesiredState


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


@runtime_checkable
class WarningSource(Protocol):
    """A backend whose applies can end in warnings (aws: import warnings kept with ``failOnWarnings: false``)."""

    def take_warnings(self) -> list[PlanWarning]: ...


@runtime_checkable
class KeptState(Protocol):
    """A backend that keeps the live state of its last read, updated by its own applies since (no I/O to get)."""

    def kept_state(self) -> LiveState | None:
        """A copy of that state (the caller may keep it); None when there is none or it is unsure."""
        ...
