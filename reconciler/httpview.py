"""What the daemon's HTTP endpoints read and call (``httpapi.DaemonView``): health, ``/status``, webhooks.

Built by ``daemon.py`` over the worker (what the passes found) and the
trigger sources (a webhook fires ``WEBHOOK``).  ``/status`` reads through an
engine of its own (never the worker's, which may be in a pass), reusing the
worker's validated specs and, on AWS, a backend read for ``STATUS_TTL``
seconds between passes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from reconciler.engine import Config, Engine
from reconciler.errors import GitError
from reconciler.gitsource import GitRepo
from reconciler.lease import Elector
from reconciler.metrics import Metrics
from reconciler.triggers import WEBHOOK, TriggerSources
from reconciler.worker import Worker

STATUS_TTL = {"aws": 2.0}  # seconds /status reuses a backend read between passes (AWS reads count against quotas)


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
        self._status_engine: Engine | None = None
        self._status_lock = threading.Lock()
        self._status_cache: tuple[float, int, dict[str, Any]] | None = None  # aws: (when, after pass, the answer)

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
        worker = self.worker
        with self._status_lock:
            if self._status_engine is None:
                if worker.engine is None:
                    raise GitError("the repository has not been cloned yet")
                repo = GitRepo(worker.engine.repo.git_dir if worker.remote else self.config.repo)
                self._status_engine = Engine(self.config, repo=repo)
            now, passes = time.monotonic(), worker.passes_done
            cache = self._status_cache
            if cache is not None and cache[1] == passes and now - cache[0] < STATUS_TTL.get(self.config.backend, 0):
                data = dict(cache[2])
            else:
                known = worker.engine.last_desired if worker.engine is not None else None
                data = self._status_engine.status(known)  # the worker's specs: /status validates none itself
                self._status_cache = (now, passes, dict(data))
        data["role"] = worker.role()
        data["daemon"] = worker.view()
        if self.elector is not None:
            data["lease"] = self.elector.view()
        return data

    def close(self) -> None:
        if self._status_engine is not None:
            self._status_engine.close()
