"""Logging of the daemon: structlog, one event per line, secrets masked; set up by ``daemon.py``.

JSON lines when the stream is not a terminal (or with ``--log-format json``),
readable console lines on a terminal.  Every event passes ``redact_secrets``:
values of secret-looking keys are masked, credentials in URLs are masked, and
the values of the secret environment variables never appear anywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from reconciler.gitsource import redact

SECRET_ENV = ("RECONCILER_WEBHOOK_SECRET", "RECONCILER_GIT_TOKEN")
_SECRET_KEYS = ("secret", "token", "password", "authorization", "signature")
MASK = "***"


def _secret_values() -> list[str]:
    return [v for v in (os.environ.get(name, "").strip() for name in SECRET_ENV) if len(v) >= 4]


def _mask(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        text = redact(value)
        for secret in secrets:
            text = text.replace(secret, MASK)
        return text
    if isinstance(value, dict):
        return {k: _mask(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v, secrets) for v in value]
    return value


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no secret leaves the process through a log line."""
    secrets = _secret_values()
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_KEYS):
            event[key] = MASK
        else:
            event[key] = _mask(event[key], secrets)
    return event


class _ToStructlog(logging.Handler):
    """Sends stdlib records (APScheduler, …) through structlog, so every line has one format."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), logger=record.name)


def configure_logging(fmt: str = "auto", verbose: bool = False, stream: TextIO | None = None) -> None:
    """Set up structlog (and route stdlib logging into it) for the daemon."""
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty() and "NO_COLOR" not in os.environ)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(logging.WARNING)
