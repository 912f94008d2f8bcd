"""Notification sinks (``--notify``): parsing them, and rendering an event into the HTTP request each sends.

No I/O: a sink turns the event's JSON (``notify.event_json``) into a
``Request`` (or None when the event is not for it), and ``notify.py`` sends
it.  ``slack:URL`` posts an incoming-webhook message, ``webhook:URL`` the event
itself (signed with ``RECONCILER_NOTIFY_SECRET``), ``github`` a commit status.
``make_sinks`` turns the flag values into sinks and says in one line, naming
``--notify``, what is wrong with them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from reconciler import __version__
from reconciler.errors import UsageError

GITHUB_API = "https://api.github.com"
SIGNATURE_HEADER = "X-Reconciler-Signature"
SECRET_ENV, TOKEN_ENV = "RECONCILER_NOTIFY_SECRET", "RECONCILER_GITHUB_TOKEN"
USER_AGENT = f"reconciler/{__version__}"
KINDS = ("slack", "webhook", "github")
GITHUB_STATES = {  # event -> commit status state; events not listed post no status
    "applying": "pending",
    "applied": "success",
    "recovered": "success",
    "failed": "failure",
    "invalid": "error",
    "rollout_started": "pending",  # the commit is live only when its rollouts end: `applied` (or `failed`) then
    "rollout_step": "pending",
}
DESCRIPTION_MAX = 140  # GitHub refuses a longer commit status description
SLACK_ICONS = {
    "applied": ":white_check_mark:",
    "recovered": ":white_check_mark:",
    "failed": ":x:",
    "invalid": ":warning:",
    "drift_corrected": ":wrench:",
    "pinned": ":pushpin:",
    "resumed": ":arrow_forward:",
    "rollout_started": ":hourglass_flowing_sand:",
    "rollout_step": ":hourglass_flowing_sand:",
    "rollout_succeeded": ":white_check_mark:",
    "rollout_failed": ":x:",
}


@dataclass(frozen=True)
class Request:
    """One HTTP request a sink wants sent; ``headers`` may carry secrets, so it is never logged."""

    method: str
    url: str = field(repr=False)
    body: bytes
    headers: Mapping[str, str] = field(repr=False)


class Sink(Protocol):
    """Where notifications go.  ``kind`` labels metrics; ``name`` is safe to log (no secret in it)."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    def render(self, event: Mapping[str, Any], now: float) -> Request | None:
        """The request for ``event`` at unix time ``now`` (a signature's timestamp), or None: not for this sink."""
        ...


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _host_name(kind: str, url: str) -> str:
    """``kind:host``: the path of a Slack or webhook URL is often its secret, so only the host is shown."""
    return f"{kind}:{urlsplit(url).hostname or '?'}"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Reconciler-Signature`` value: ``t=<unix>,sha256=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    digest = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},sha256={digest}"


@dataclass(frozen=True)
class WebhookSink:
    """``webhook:URL``: the event JSON, signed when a secret is set."""

    url: str = field(repr=False)  # the path or query may be the secret
    secret: bytes | None = field(default=None, repr=False)
    kind: str = "webhook"

    @property
    def name(self) -> str:
        return _host_name(self.kind, self.url)

    def render(self, event: Mapping[str, Any], now: float) -> Request | None:
        if event["event"] not in SLACK_ICONS:  # only the events of §12 (not `applying`)
            return None
        body = _json(event)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Reconciler-Event": str(event["event"]),
            "X-Reconciler-Delivery": str(event.get("id") or uuid.uuid4()),
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, int(now), body)
        return Request("POST", self.url, body, headers)


@dataclass(frozen=True)
class SlackSink:
    """``slack:URL``: a Slack incoming-webhook message (``text`` for notifications, ``blocks`` for the channel)."""

    url: str = field(repr=False)  # the path is the secret
    kind: str = "slack"

    @property
    def name(self) -> str:
        return _host_name(self.kind, self.url)

    def render(self, event: Mapping[str, Any], now: float) -> Request | None:
        name = str(event["event"])
        if name not in SLACK_ICONS:
            return None
        return Request("POST", self.url, _json(slack_message(event)), {"Content-Type": "application/json"})


def slack_message(event: Mapping[str, Any]) -> dict[str, Any]:
    """The ``{"text", "blocks"}`` of an incoming-webhook message for ``event``."""
    name = str(event["event"])
    revision = str(event.get("revision") or "")[:12]
    head = f"{SLACK_ICONS.get(name, '')} *{name.replace('_', ' ')}* · reconciler/{event['instance']}".strip()
    message = str(event.get("message") or "")
    word = name.replace("_", " ")
    said = message if message.startswith((word, "rollout")) else f"{word} {revision}: {message}".strip(": ")
    text = f"reconciler/{event['instance']}: {said}"
    facts = [f"revision `{revision}`"] if revision else []
    if event.get("tag"):
        facts.append(f"tag `{event['tag']}`")
    actions = event.get("actions") or []
    listed = [f"• {a['action']} `{a['resource']}`" for a in actions[:10]]
    if len(actions) > 10:
        listed.append(f"… and {len(actions) - 10} more")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{head}\n{_slack_escape(message)}".strip()}}
    ]
    if listed:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(listed)}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join([*facts, event["time"]])}]})
    return {"text": _slack_escape(text), "blocks": blocks}


def _slack_escape(text: str) -> str:
    """Slack's three control characters (an error message may hold ``<`` or ``&``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class GitHubSink:
    """``github``: a commit status ``reconciler/<instance>`` on the event's revision."""

    owner: str
    repo: str
    token: str = field(repr=False)
    api_url: str = GITHUB_API
    target_url: str | None = None
    kind: str = "github"

    @property
    def name(self) -> str:
        return f"github:{self.owner}/{self.repo}"

    def render(self, event: Mapping[str, Any], now: float) -> Request | None:
        state = GITHUB_STATES.get(str(event["event"]))
        revision = event.get("revision")
        if state is None or not revision:
            return None
        description = str(event.get("message") or event["event"])
        if len(description) > DESCRIPTION_MAX:
            description = description[: DESCRIPTION_MAX - 1] + "…"
        status: dict[str, Any] = {
            "state": state,
            "context": f"reconciler/{event['instance']}",
            "description": description,
        }
        if self.target_url:
            status["target_url"] = self.target_url
        path = f"/repos/{quote(self.owner)}/{quote(self.repo)}/statuses/{quote(str(revision))}"
        headers = {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-GitHub-Api-Version": "2022-11-28",
        }
        return Request("POST", self.api_url.rstrip("/") + path, _json(status), headers)


# ------------------------------------------------------------------ configuration

_SCP_RE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>[^/].*)$")  # git@github.com:o/r.git


def github_repository(remote_url: str, api_url: str = GITHUB_API) -> tuple[str, str] | None:
    """``(owner, repo)`` of a GitHub remote URL, or None when the URL is not GitHub's.

    Forms: ``https://github.com/o/r(.git)``, ``git@github.com:o/r.git``,
    ``ssh://git@github.com/o/r.git``; with ``--github-api-url`` of a GitHub
    Enterprise server, the same forms on that server's host.
    """
    url = remote_url.strip()
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http", "ssh", "git"):
            return None
        host, path = (parts.hostname or "").lower(), parts.path
    else:
        match = _SCP_RE.match(url)
        if match is None:
            return None
        host, path = match["host"].lower(), match["path"]
    hosts = {"github.com", "www.github.com"}
    api_host = (urlsplit(api_url).hostname or "").lower()
    if api_url.rstrip("/") != GITHUB_API and api_host:
        hosts |= {api_host, api_host.removeprefix("api.")}
    segments = [s for s in path.strip("/").split("/") if s]
    if host not in hosts or len(segments) != 2:
        return None
    owner, repo = segments[0], segments[1].removesuffix(".git")
    if not owner or not repo:
        return None
    return owner, repo


def split_values(values: Sequence[str]) -> list[str]:
    """``--notify`` values: each flag once, or several comma-separated (``RECONCILER_NOTIFY``)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def make_sinks(
    values: Sequence[str],
    env: Mapping[str, str],
    remote_url: str | None,
    github_api_url: str = GITHUB_API,
    status_url: str | None = None,
) -> list[Sink]:
    """The sinks ``--notify`` names; a ``UsageError`` naming ``--notify`` for the first one that cannot work.

    ``remote_url`` is the repository's remote (``--repo`` when it is a URL, else
    the checkout's ``origin``), used by ``github`` for owner and repo.
    """
    sinks: list[Sink] = []
    secret = env.get(SECRET_ENV, "").strip()  # a mounted secret file ends in a newline
    for value in split_values(values):
        kind, _, url = value.partition(":")
        kind = kind.strip().lower()
        if kind in ("slack", "webhook"):
            _check_url(url.strip(), f"--notify {kind}: expected {kind}:URL with an http(s) URL")
            if kind == "slack":
                sinks.append(SlackSink(url.strip()))
            else:
                sinks.append(WebhookSink(url.strip(), secret.encode() or None))
        elif kind == "github":
            if url.strip():
                raise UsageError("--notify github takes no URL (the repository comes from its remote)")
            sinks.append(_github_sink(env, remote_url, github_api_url, status_url))
        else:
            shown = kind if re.fullmatch(r"[A-Za-z0-9_-]{1,20}", kind) else "?"
            raise UsageError(f"--notify {shown}: unknown sink; expected slack:URL, webhook:URL or github")
    _check_url(github_api_url, f"--github-api-url {github_api_url!r}: expected an http(s) URL")
    if status_url is not None:
        _check_url(status_url, f"--status-url {status_url!r}: expected an http(s) URL")
    return sinks


def _check_url(url: str, error: str) -> None:
    """``url`` is an http(s) URL with a host, else a ``UsageError`` saying ``error``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(error)


def _github_sink(env: Mapping[str, str], remote_url: str | None, api_url: str, status_url: str | None) -> GitHubSink:
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"--notify github: ${TOKEN_ENV} is not set (a token with statuses: write)")
    found = github_repository(remote_url, api_url) if remote_url else None
    if found is None:
        raise UsageError(
            "--notify github: the repository's remote is not a GitHub repository "
            "(expected https://github.com/OWNER/REPO, git@github.com:OWNER/REPO.git or ssh://git@github.com/OWNER/REPO)"
        )
    return GitHubSink(found[0], found[1], token, api_url, status_url)
