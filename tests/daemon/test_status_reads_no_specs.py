"""/status answers from the worker's last desired state: it validates no specs of its own."""

from __future__ import annotations

from reconciler.cli import parsed_run
from reconciler.daemon import Daemon
from tests.support import SpecRepo


def test_status_uses_the_workers_desired_state_of_the_applied_revision(example_repo: SpecRepo) -> None:
    config, settings = parsed_run(["--repo", str(example_repo.path), "--state-dir", str(example_repo.state_dir)])
    daemon = Daemon(config, settings)
    try:
        assert daemon.worker.engine is not None
        cold = daemon.http.status()  # nothing applied yet: the status engine loads the head's specs itself
        assert daemon.http._status_engine is not None and daemon.http._status_engine.last_desired is not None
        assert cold["applied_revision"] is None
        daemon.http._status_engine.last_desired = None
        result = daemon.worker.engine.reconcile()  # what the worker does in a pass
        assert result.ok and daemon.worker.engine.last_desired is not None
        daemon.http._status_cache = None
        status = daemon.http.status()
        assert status["applied_revision"] == example_repo.head()
        assert daemon.http._status_engine.last_desired is None  # it read no specs: the worker's were the applied ones
        assert status["aliases"]["orders-handler/prod"]["routing"] == {"1": 95, "2": 5}
        assert set(status["stages"]) == {f"orders/{name}" for name in ("dev", "test", "prod", "v1", "v2")}
    finally:
        daemon.stop()
