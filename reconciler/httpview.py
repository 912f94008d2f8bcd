"""What the daemon's HTTP endpoints read and call (``httpapi.DaemonView``): health, ``/status``, webhooks.

Built by ``daemon.py`` over the worker (what the passes found) and the
trigger sources (a webhook fires ``WEBHOOK``).  ``/status`` builds no engine
and reads neither the backend nor the specs: per request it reads the
instance record (so a pin made by the CLI shows at once) and the branch's ref
file, and combines them with the worker's last ``StatusSnapshot`` (live state,
drift and tag names as the last pass left them), whose live part is rendered
once and then reused: a request costs the same whatever the size of the specs.
While a pass runs, the revisions and error are the snapshot's record's (its
live state's moment), with the pin and the attempted revision read afresh.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from reconciler.engine import Config
from reconciler.errors import GitError
from reconciler.lease import Elector
from reconciler.metrics import Metrics
from reconciler.statusview import (
    RESOURCE_KEYS,
    LiveView,
    ResourceRenderer,
    StatusSnapshot,
    dumps_status,
    status_json,
)
from reconciler.triggers import WEBHOOK, TriggerSources
from reconciler.worker import Worker

NOT_COMPARED_YET = "live state not compared with it yet (the daemon's first pass is under way)"
NOT_COMPARED = "live state not compared with it since (the daemon's next pass does)"


class HttpView:
    """The daemon as the endpoints see it; every method is called from the HTTP server's thread."""

    def __init__(
        self, config: Config, worker: Worker, sources: TriggerSources, metrics: Metrics, elector: Elector | None
    ) -> None:
        self.config = config
        self.worker = worker
        self.sources = sources
        self.metrics = metrics
        self.elector = elector
        self._renderer = ResourceRenderer()  # kept across snapshots: an unchanged entry is rendered once
        self._body: tuple[LiveView | None, str, bytes] | None = None  # the last body served, and of what

    def healthy(self) -> bool:
        return self.health_problem() is None

    def health_problem(self) -> str | None:
        return self.worker.health_problem()

    def ready(self) -> bool:
        return self.worker.ready()

    def not_ready_reason(self) -> str | None:
        return self.worker.not_ready_reason()

    def metrics_text(self) -> tuple[bytes, str]:
        return self.metrics.render()

    def webhook(self) -> bool:
        self.metrics.webhooks.labels("accepted").inc()
        return self.sources.fire(WEBHOOK)

    def webhook_rejected(self) -> None:
        self.metrics.webhooks.labels("rejected").inc()

    def status(self) -> dict[str, Any]:
        """The ``/status`` document as data (the live part built once per snapshot, shared)."""
        snapshot = self.worker.snapshot
        resources = snapshot.view.resources if snapshot is not None else None
        return self._status(snapshot, resources)

    def status_body(self) -> bytes:
        """The ``/status`` document as the JSON bytes served: the live part spliced in as rendered once."""
        snapshot = self.worker.snapshot
        data = self._status(snapshot, None)
        view, small = snapshot.view if snapshot is not None else None, json.dumps(data)
        last = self._body
        if last is not None and last[0] is view and last[1] == small:  # nothing changed: the same bytes again
            return last[2]
        body = dumps_status(data, view.dumped(self._renderer) if view is not None else {})
        self._body = (view, small, body)
        return body

    def _status(self, snapshot: StatusSnapshot | None, resources: dict[str, Any] | None) -> dict[str, Any]:
        """The document; ``resources``: its live part (None: empty, or spliced in by the caller)."""
        worker = self.worker
        engine = worker.engine
        if engine is None:
            raise GitError("the repository has not been cloned yet")
        before = (worker.passes_started, worker.passes_ended)
        if snapshot is not worker.snapshot:  # replaced since the caller read it: a pass ended meanwhile
            before = (-1, -1)
        record = engine.records.load(self.config.instance)
        idle = before[0] == before[1] and before == (worker.passes_started, worker.passes_ended)
        if not idle and snapshot is not None and snapshot.record is not None:
            # a pass ran meanwhile: its record may say "applied" before its live state is published; show the
            # record of the snapshot, with what a pass does not own (the pin) and the revision it attempts now
            record = replace(snapshot.record, pinned=record.pinned, attempted_revision=record.attempted_revision)
        branch = self.config.branch or engine.branch
        head = engine.repo.branch_ref(branch)
        target = record.pinned.revision if record.pinned else head
        if snapshot is None:
            unknown: str | None = NOT_COMPARED_YET
        elif snapshot.revision is None or snapshot.revision != target:
            unknown = NOT_COMPARED
        else:
            unknown = None if snapshot.live_changes is not None else NOT_COMPARED
        compared = unknown is None and target == record.applied_revision  # as ``Engine.status`` counts drift
        data = status_json(
            instance=self.config.instance,
            backend=self.config.backend,
            branch=branch,
            record=record,
            head=head,
            live_changes=snapshot.live_changes if compared and snapshot is not None else None,
            live_error=snapshot.live_error if snapshot is not None else None,
            tags=snapshot.tags if snapshot is not None else {},
            resources=resources or {key: {} for key in RESOURCE_KEYS},
            unknown=unknown,
        )
        data["role"] = worker.role()
        data["daemon"] = {
            **worker.view(),
            "live_checked_at": snapshot.checked_at if snapshot is not None else None,
            "live_checked_revision": snapshot.revision if snapshot is not None else None,
        }
        if self.elector is not None:
            data["lease"] = self.elector.view()
        return data
