"""The daemon's settings (``reconciler run``'s own flags) as a frozen dataclass; built by ``cli.py``.

A module of its own, without the daemon's imports (watchfiles, APScheduler,
uvicorn), so that the CLI can build and check it cheaply, and the daemon's
parts (``daemon.py``, ``worker.py``) can all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import UsageError
from reconciler.sinks import GITHUB_API


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon's own settings (``reconciler run``'s flags, by the same names); the CLI builds it."""

    listen: str = "127.0.0.1:8080"
    interval: float = 30.0  # seconds between fetches of a remote repository
    resync_interval: float = 300.0  # seconds between drift checks
    debounce: float = 0.02  # seconds for git ref changes to settle
    no_self_heal: bool = False
    prune: bool = False
    once: bool = False
    log_format: str = "auto"
    workdir: str | None = None
    push_tags: bool = False
    lock: str | None = None  # dynamodb://TABLE
    lease_duration: float = 15.0
    lease_renew_interval: float = 5.0
    verbose: bool = False
    notify: tuple[str, ...] = ()  # --notify sinks (each value may list several, comma-separated)
    github_api_url: str = GITHUB_API
    status_url: str | None = None  # target_url of GitHub commit statuses
    worker_deadline: float = 900.0  # seconds a pass may go without progress before /healthz fails


def check_intervals(settings: DaemonConfig) -> None:
    """Scheduling flags must be positive (a zero or negative interval would spin APScheduler's thread)."""
    for flag, value, zero_ok in (
        ("--interval", settings.interval, False),
        ("--resync-interval", settings.resync_interval, False),
        ("--debounce", settings.debounce, True),
        ("--worker-deadline", settings.worker_deadline, False),
    ):
        if not (value >= 0 if zero_ok else value > 0):  # NaN fails both
            env = "RECONCILER_" + flag.removeprefix("--").replace("-", "_").upper()
            expected = "zero or more" if zero_ok else "more than zero"
            raise UsageError(f"{flag} {value:g} (or ${env}): expected {expected} seconds")
