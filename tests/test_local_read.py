"""The local backend's read is one consistent snapshot, whatever another connection writes meanwhile.

``/status`` reads through its own connection while the daemon's worker applies
actions through another; a read made of separate statements could see a stage
whose API row it had missed (a ``KeyError``, a 500 on ``/status``).  Here the
other writer commits between the read's statements, exactly there, every time:
SQLite's statement trace names the moment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.backends.local import LocalBackend, LocalCloud
from reconciler.model import LiveState
from reconciler.plan import make_plan
from reconciler.specs import DesiredState
from tests.support import desired_alias, desired_api, desired_stage, desired_state, make_definition

V1 = make_definition("v1")
FUNCTION = "orders-handler"


def everything(api: str) -> DesiredState:
    return desired_state(
        desired_api(V1, name=api),
        desired_stage("prod", V1, api=api, variables={"lambdaAlias": "prod"}),
        desired_alias(api, {"1": 100.0}),
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def writer(state_dir: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(state_dir)
    backend.cloud.publish_version(FUNCTION)
    yield backend
    backend.close()


@pytest.fixture
def reader(writer: LocalBackend, state_dir: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(state_dir)
    yield backend
    backend.close()


def apply_all(backend: LocalBackend, desired: DesiredState) -> None:
    for action in make_plan(desired, backend.read(desired)).actions:
        backend.apply(action)


def read_with_a_write_in_between(reader: LocalBackend, before: str, write: Callable[[], None]) -> LiveState:
    """``reader.read()``, with ``write()`` run once (on the reader's thread) just before its first statement
    that contains ``before``."""
    done: list[bool] = []

    def trace(statement: str) -> None:
        if before in statement and not done:
            done.append(True)
            write()

    reader.cloud.db.set_trace_callback(trace)
    try:
        live = reader.read(DesiredState())
    finally:
        reader.cloud.db.set_trace_callback(None)
    assert done, f"no statement of the read contains {before!r}"
    return live


@pytest.mark.parametrize("before", ["FROM deployments", "FROM stages", "FROM aliases"])
def test_a_read_never_sees_half_of_an_apply_committed_meanwhile(
    writer: LocalBackend, reader: LocalBackend, before: str
) -> None:
    """An API, its deployment, stage and alias committed in the middle of a read are all seen, or none is."""
    apply_all(writer, everything("first"))
    live = read_with_a_write_in_between(reader, before, lambda: apply_all(writer, everything("second")))
    assert sorted(live.apis) == ["first"]
    assert sorted(live.stages) == [("first", "prod")]
    assert sorted(live.deployments) == ["first"]
    assert sorted(live.aliases) == [(FUNCTION, "first")]
    assert all(api in live.apis for api, _ in live.stages)
    # and the next read sees all of it
    after = reader.read(DesiredState())
    assert sorted(after.apis) == ["first", "second"] and sorted(after.stages) == [("first", "prod"), ("second", "prod")]


def test_a_read_leaves_no_transaction_open(writer: LocalBackend, reader: LocalBackend) -> None:
    """A read holds no snapshot once done: the next read sees new commits and a writer never waits."""
    reader.read(DesiredState())
    assert not reader.cloud.db.in_transaction
    apply_all(writer, everything("later"))
    assert sorted(reader.read(DesiredState()).apis) == ["later"]


def test_a_read_inside_the_clouds_own_transaction_still_works(writer: LocalBackend) -> None:
    """A read made while the same connection is in a transaction (a test clicking in the console) does not fail."""
    apply_all(writer, everything("first"))
    cloud: LocalCloud = writer.cloud
    with cloud.transaction():
        assert sorted(writer.read(DesiredState()).apis) == ["first"]
