"""Prometheus metrics of the daemon, in their own registry; updated by ``daemon.py``, served by ``httpapi.py``.

Every name starts with ``reconciler_``.  Label values that are known up front
are created at start, so a dashboard sees zeros instead of missing series.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

from reconciler.model import ACTION_ORDER
from reconciler.rollout import PHASES

RESULTS = ("success", "noop", "invalid", "failed")


class Metrics:
    """The daemon's counters, gauges and histograms."""

    def __init__(self, trigger_sources: Iterable[str] = ()) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series only add noise
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter("reconciler_reconciles", "Reconcile passes by result.", ["result"], registry=r)
        self.reconcile_duration = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Duration of a reconcile pass (plan and apply) by result.",
            ["result"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.actions = Counter(
            "reconciler_actions", "Applied actions by kind and result.", ["kind", "result"], registry=r
        )
        self.commit_to_applied = Histogram(
            "reconciler_commit_to_applied_seconds",
            "Seconds from a commit's committer time to the moment it was applied (git times have 1 s resolution).",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.drift = Counter("reconciler_drift", "Drifted resources found by resync checks.", registry=r)
        self.drifted_resources = Gauge(
            "reconciler_drifted_resources", "Resources drifted at the last check (0 when in sync).", registry=r
        )
        self.last_success = Gauge(
            "reconciler_last_success_timestamp_seconds", "Unix time of the last successful reconcile.", registry=r
        )
        self.applied_revision = Info(
            "reconciler_applied_revision", "The revision live state was last set to.", registry=r
        )
        self.triggers = Counter("reconciler_triggers", "Triggers received by source.", ["source"], registry=r)
        self.fetches = Counter(
            "reconciler_fetches", "Fetches of a remote repository by result.", ["result"], registry=r
        )
        self.webhooks = Counter("reconciler_webhooks", "Webhook requests by result.", ["result"], registry=r)
        self.unverified_commits = Counter(
            "reconciler_unverified_commits",
            "Commits not applied for want of a good signature by a trusted key (each counted once).",
            registry=r,
        )
        self.consecutive_failures = Gauge(
            "reconciler_consecutive_failures", "Temporary failures since the last success (drives backoff).", registry=r
        )
        self.ready = Gauge("reconciler_ready", "1 once the first reconcile has finished.", registry=r)
        self.pinned = Gauge("reconciler_pinned", "1 while the instance is pinned by a rollback.", registry=r)
        self.tag_push_failures = Counter("reconciler_tag_push_failures", "Failed pushes of applied tags.", registry=r)
        self.leader = Gauge(
            "reconciler_leader",
            "1 while this replica may reconcile (always, without --lock), 0 as a standby.",
            registry=r,
        )
        self.notifications = Counter(
            "reconciler_notifications",
            "Notification deliveries by sink kind and result (success, retried, failed, dropped).",
            ["sink", "result"],
            registry=r,
        )
        self.rollout_weight = Gauge(
            "reconciler_rollout_weight",
            "Percent of traffic a rollout gives its target now, by resource.",
            ["resource"],
            registry=r,
        )
        self.rollout_phase = Gauge(
            "reconciler_rollout_phase",
            "1 for the phase a resource's rollout is in (progressing, paused, succeeded, failed, halted), else 0.",
            ["resource", "phase"],
            registry=r,
        )
        self._rollouts: set[str] = set()
        for result in RESULTS:
            self.reconciles.labels(result)
            self.reconcile_duration.labels(result)
        for kind in ACTION_ORDER:
            for result in ("success", "failed"):
                self.actions.labels(kind, result)
        for source in trigger_sources:
            self.triggers.labels(source)
        for result in ("success", "failed"):
            self.fetches.labels(result)
        for result in ("accepted", "rejected"):
            self.webhooks.labels(result)

    def show_rollouts(self, rollouts: dict[str, tuple[str, float]]) -> None:
        """Set the rollout gauges to ``resource -> (phase, weight)``; resources gone lose their series."""
        for resource in self._rollouts - set(rollouts):
            self.rollout_weight.remove(resource)
            for phase in PHASES:
                self.rollout_phase.remove(resource, phase)
        for resource, (current, weight) in rollouts.items():
            self.rollout_weight.labels(resource).set(weight)
            for phase in PHASES:
                self.rollout_phase.labels(resource, phase).set(1 if phase == current else 0)
        self._rollouts = set(rollouts)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
