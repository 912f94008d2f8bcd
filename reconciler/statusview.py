"""What ``status`` shows of one instance: the sync verdict (DESIGN §13) and the JSON document, built from the
instance record, the branch head, live state and the applied tags' names.

One function renders it for both answers: the CLI's ``status`` (``Engine.status``, which reads everything
itself) and the daemon's ``/status`` (``httpview.py``, which combines the record and the head read per request
with the worker's last ``StatusSnapshot``).  No I/O here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from reconciler.model import LiveAlias, LiveApi, LiveBasePathMapping, LiveStage, LiveState, percent_json
from reconciler.plan import canary_json, routing_json
from reconciler.rollouts import load_states
from reconciler.specs import NONE_BASE_PATH
from reconciler.state import InstanceRecord

SYNC_VERDICTS = ("synced", "out_of_sync", "progressing", "pinned", "failed")
RESOURCE_KEYS = ("apis", "stages", "aliases", "basePathMappings")  # the live part, last in the document


@dataclass(frozen=True)
class SyncVerdict:
    sync: str  # one of SYNC_VERDICTS
    reason: str  # one line for people, short SHAs with their applied tags


def sync_verdict(
    record: InstanceRecord,
    target: str | None,
    head: str | None,
    branch: str,
    live_changes: int | None,
    rollout: str | None,
    tags: Mapping[str, str],
    unknown: str | None = None,
) -> SyncVerdict:
    """DESIGN §13's verdict, first match wins: failed (the last pass failed), progressing (a rollout under
    way), pinned, out_of_sync (the target is not what is applied, or live state drifted), synced.

    ``live_changes`` counts the actions that would bring live state to ``target``; ``unknown`` says why live
    state cannot be told to match ``target`` (not read yet, or unreadable): then never ``synced``.
    """

    def named(revision: str | None) -> str:
        if revision is None:
            return "(none)"
        tag = tags.get(revision)
        return f"{revision[:12]} ({tag})" if tag else revision[:12]

    drift = f"; live state differs from it in {live_changes} place{'s' if live_changes != 1 else ''}"
    drifted = drift if live_changes else ""
    if record.last_error:
        return SyncVerdict(
            "failed", f"the last pass, at {named(record.attempted_revision)}, failed: {record.last_error}"
        )
    if rollout:
        return SyncVerdict("progressing", rollout)
    if record.pinned is not None:
        where = f"; {branch} is at {named(head)}" if head and head != record.pinned.revision else ""
        state = "applied" if record.applied_revision == record.pinned.revision else "not applied yet"
        return SyncVerdict(
            "pinned",
            f"to {named(record.pinned.revision)}, {state}{drifted}{where}; `reconciler resume` follows {branch} again",
        )
    if target is None:
        return SyncVerdict("out_of_sync", f"{branch} cannot be read")
    if record.applied_revision is None:
        return SyncVerdict("out_of_sync", f"nothing applied yet; {branch} is at {named(target)}")
    if record.applied_revision != target:
        return SyncVerdict(
            "out_of_sync", f"{branch} is at {named(target)}; applied is {named(record.applied_revision)}"
        )
    if live_changes:
        return SyncVerdict("out_of_sync", f"{named(target)}, the head of {branch}, is applied{drift} (drift)")
    if unknown is not None:
        return SyncVerdict("out_of_sync", f"{named(target)}, the head of {branch}, is applied; {unknown}")
    return SyncVerdict("synced", f"{named(target)}, the head of {branch}, is applied and live")


def rollout_under_way(record: InstanceRecord) -> str | None:
    """What the rollouts in flight are doing ("Alias/orders-handler/prod at step 2 of 4, 10 %"), else None:
    the ``progressing`` verdict."""
    active = [(resource, state) for resource, state in sorted(load_states(record.extra).items()) if state.active]
    if not active:
        return None
    return "; ".join(
        f"{resource} at step {state.shown_step} of {state.steps}, {percent_json(state.weight)} %"
        for resource, state in active
    )


def _api_json(name: str, a: LiveApi) -> dict[str, Any]:
    return {"id": a.id, "endpointType": a.endpoint_type, "tags": a.tags, "url": a.url}


def _stage_json(key: tuple[str, str], s: LiveStage) -> dict[str, Any]:
    return {
        "deployment_id": s.deployment_id,
        "definition_sha256": s.definition_sha256,
        "variables": s.variables,
        "canary": None
        if s.canary is None
        else {
            **(canary_json(s.canary) or {}),
            "percentTraffic": float(s.canary.percent_traffic),
            "deployment_id": s.canary.deployment_id,
        },
        "url": s.url,
        "managed": s.managed,
        **(s.settings.as_json() if s.settings is not None else {}),
    }


def _alias_json(key: tuple[str, str], a: LiveAlias) -> dict[str, Any]:
    return {"routing": routing_json(a.routing), "managed": a.managed}


def _mapping_json(key: tuple[str, str], m: LiveBasePathMapping) -> dict[str, Any]:
    domain, base_path = key
    return {
        "api": m.api,
        "restApiId": m.rest_api_id,
        "stage": m.stage,
        "url": f"https://{domain}/" + ("" if base_path == NONE_BASE_PATH else base_path),
        "managed": m.managed,
    }


def _joined(key: Any) -> str:
    return key if isinstance(key, str) else "/".join(key)


# the live part, section by section: its key in the document, its entries in live state, one entry's JSON
SECTIONS: tuple[tuple[str, Callable[[LiveState], Mapping[Any, Any]], Callable[[Any, Any], dict[str, Any]]], ...] = (
    ("apis", lambda live: live.apis, _api_json),
    ("stages", lambda live: live.stages, _stage_json),
    ("aliases", lambda live: live.aliases, _alias_json),
    ("basePathMappings", lambda live: live.mappings, _mapping_json),
)


def resources_json(live: LiveState) -> dict[str, Any]:
    """The live part of the document: ``apis``, ``stages``, ``aliases``, ``basePathMappings``."""
    return {
        name: {_joined(key): entry(key, value) for key, value in sorted(entries(live).items())}
        for name, entries, entry in SECTIONS
    }


class ResourceRenderer:
    """The live part as the JSON bytes ``dumps_status`` splices in, rendered entry by entry and kept: an entry
    whose live object is the very one rendered last time (live state copies share unchanged entries) is not
    rendered again, so after a pass that changed one alias of 10,000 only that alias is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[str, dict[Any, tuple[object, bytes]]] = {}  # section -> key -> (live object, its bytes)

    def render(self, live: LiveState) -> dict[str, bytes]:
        with self._lock:
            rendered: dict[str, bytes] = {}
            for name, entries, entry in SECTIONS:
                before, now = self._done.get(name, {}), {}
                for key, value in sorted(entries(live).items()):
                    done = before.get(key)
                    if done is None or done[0] is not value:
                        text = json.dumps(entry(key, value), indent=2).replace("\n", "\n    ")
                        done = (value, f"    {json.dumps(_joined(key))}: {text}".encode())
                    now[key] = done
                self._done[name] = now
                members = [done[1] for done in now.values()]
                rendered[name] = b"{\n" + b",\n".join(members) + b"\n  }" if members else b"{}"
            return rendered


def status_json(
    *,
    instance: str,
    backend: str,
    branch: str | None,
    record: InstanceRecord,
    head: str | None,
    live_changes: int | None,
    live_error: str | None,
    tags: Mapping[str, str],
    resources: Mapping[str, Any],
    unknown: str | None = None,
) -> dict[str, Any]:
    """The ``status`` document (DESIGN §4, §9, §10, §13): ``desired_revision`` is what the next pass applies
    (the pin, else the branch head); ``resources`` its live part (``resources_json``, or stand-ins the caller
    replaces when it writes the document out, see ``dumps_status``)."""
    target = record.pinned.revision if record.pinned else head
    if live_error is not None and unknown is None:
        unknown = f"live state cannot be read ({live_error})"
    verdict = sync_verdict(
        record, target, head, branch or "the branch", live_changes, rollout_under_way(record), tags, unknown
    )
    return {
        "instance": instance,
        "backend": backend,
        "branch": branch,
        "sync": verdict.sync,
        "sync_reason": verdict.reason,
        "desired_revision": target,
        "branch_head": head,
        "applied_revision": record.applied_revision,
        "attempted_revision": record.attempted_revision,
        "applied_at": record.applied_at,
        "pinned": None
        if record.pinned is None
        else {
            "revision": record.pinned.revision,
            "tag": record.pinned.tag,
            "pinned_at": record.pinned.pinned_at,
        },
        "last_error": record.last_error,
        "live_error": live_error,
        "rollouts": {r: state.view() for r, state in sorted(load_states(record.extra).items())},
        **{key: resources[key] for key in RESOURCE_KEYS},
    }


def _dumped(value: Any) -> bytes:
    """``value`` as ``json.dumps(..., indent=2)`` writes it one level deep (as a value of the top object)."""
    return json.dumps(value, indent=2).replace("\n", "\n  ").encode()


def dumps_status(data: Mapping[str, Any], dumped: Mapping[str, bytes]) -> bytes:
    """``json.dumps(data, indent=2)`` and a newline, except that the values of the keys in ``dumped`` are
    taken as they are (rendered once per snapshot, not per request): the bytes are the same, made with one
    join (at 10,000 resources a document is megabytes: no intermediate copies)."""
    if not data:
        return b"{}\n"
    parts = [b"{\n"]
    for key, value in data.items():
        parts += [b"  ", json.dumps(key).encode(), b": ", dumped[key] if key in dumped else _dumped(value), b",\n"]
    parts[-1] = b"\n}\n"
    return b"".join(parts)


class LiveView:
    """Live state as one pass left it (a copy nobody changes), and its part of the ``/status`` document, made
    on first use and then reused by every request (and by the snapshots that share it)."""

    def __init__(self, live: LiveState) -> None:
        self.live = live
        self._dumped: dict[str, bytes] | None = None

    @cached_property
    def resources(self) -> dict[str, Any]:
        return resources_json(self.live)

    def dumped(self, renderer: ResourceRenderer) -> dict[str, bytes]:
        """The live part as the JSON bytes ``dumps_status`` splices in."""
        if self._dumped is None:
            self._dumped = renderer.render(self.live)
        return self._dumped


@dataclass(frozen=True)
class StatusSnapshot:
    """What the daemon's worker knew after a pass, published for ``/status`` (replaced, never changed).

    ``revision``: the desired revision the pass compared live state with (None: none); ``live_changes``: the
    actions that would still bring live state to it (0 after a pass that converged; None: not known, e.g.
    after a failed pass); ``live_error``: why live state could not be read; ``tags``: the newest applied tag
    of each tagged revision; ``checked_at``: when the pass ended (ISO 8601).  ``/status`` shows ``record``
    while the next pass runs, so that revisions, error and live state stay of one moment.
    """

    revision: str | None
    view: LiveView
    live_changes: int | None
    live_error: str | None
    tags: Mapping[str, str]
    checked_at: str
    record: InstanceRecord | None  # the instance record as the pass left it (None: it could not be read)
