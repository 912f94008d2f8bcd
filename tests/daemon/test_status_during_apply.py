"""``/status`` polled without pause while the daemon applies: it never answers 500.

A read of the local backend made of separate SELECTs could see a stage or a
deployment whose API row it had missed (a ``KeyError``, a 500) when an action
committed between them; ``tests/test_local_read.py`` puts a commit exactly
there.  This is the same property end to end, as a dashboard polling the daemon
sees it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest

from tests.daemon.conftest import Daemon
from tests.support import SpecRepo

pytestmark = pytest.mark.daemon

APIS = 20
API = """apiVersion: reconciler/v1
kind: RestApi
metadata: {{name: api{i}}}
spec: {{definition: openapi.yaml}}
---
apiVersion: reconciler/v1
kind: Stage
metadata: {{name: live}}
spec: {{api: api{i}, variables: {{lambdaAlias: prod}}}}
"""


class Poller:
    """Polls ``/status`` from a thread until stopped; counts the answers by status code."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.codes: Counter[int] = Counter()
        self.bodies: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            code, body = self.daemon.request("/status")
            self.codes[code] += 1
            if code >= 500:
                self.bodies.append(body)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_status_polled_throughout_applies_never_answers_500(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """From the first apply on, through a commit adding 20 APIs with a stage each, /status answers 200 only."""
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, ready=False)
    daemon.base  # noqa: B018 - waits until the daemon listens, before its first pass is done
    with Poller(daemon) as poller:
        daemon.wait_applied(example_repo.head(), timeout=20)
        example_repo.write("deploy_specs/more.yaml", "---\n".join(API.format(i=i) for i in range(APIS)))
        status = daemon.wait_applied(example_repo.commit("20 more APIs"), timeout=30)
    assert len(status["stages"]) == 5 + APIS
    assert poller.codes[500] == 0, poller.bodies[:3]
    assert set(poller.codes) <= {200, 503}, poller.codes
    assert poller.codes[200] >= 2, poller.codes  # it polled (a loaded machine answers slowly)
