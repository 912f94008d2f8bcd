"""``/status`` answers from what the worker's last pass left (no second engine, no backend or spec read per
request) and says the same as ``reconciler status --output json`` about the same state."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.backends.local import DB_NAME, LocalCloud
from reconciler.cli import parsed_run
from reconciler.daemon import Daemon
from reconciler.triggers import GIT, RESYNC, STARTUP
from tests.daemon.conftest import Daemon as DaemonProcess
from tests.daemon.conftest import set_prod_routing, wait_for
from tests.support import SpecRepo

PROD = "orders-handler/prod"
_watched: dict[int, list[tuple[str, tuple[Any, ...]]]] = {}  # thread id -> audit events seen on that thread


def _audit(event: str, args: tuple[Any, ...]) -> None:
    seen = _watched.get(threading.get_ident())
    if seen is not None and event in ("open", "sqlite3.connect", "subprocess.Popen", "os.posix_spawn"):
        seen.append((event, args))


sys.addaudithook(_audit)  # once per process (hooks cannot be removed); records only while a test watches a thread


@pytest.fixture
def in_process(example_repo: SpecRepo) -> Iterator[Callable[..., Daemon]]:
    """A daemon built in this process (not started): the test runs its worker's passes itself."""
    made: list[Daemon] = []

    def make(*flags: str) -> Daemon:
        config, settings = parsed_run(
            ["--repo", str(example_repo.path), "--state-dir", str(example_repo.state_dir), *flags]
        )
        daemon = Daemon(config, settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()
        daemon._close()


def watched(call: Callable[[], Any]) -> tuple[Any, list[tuple[str, tuple[Any, ...]]]]:
    """``call()``'s result and the files it opened, databases it connected to and processes it started."""
    _watched[threading.get_ident()] = seen = []
    try:
        return call(), seen
    finally:
        del _watched[threading.get_ident()]


def test_status_reads_only_the_record_and_the_branch_ref(
    example_repo: SpecRepo, in_process: Callable[..., Daemon]
) -> None:
    """After a pass, /status opens the instance record and the branch's ref and nothing else: no database, no
    spec, no git process; with the worker's backend closed it still lists every stage and alias."""
    daemon = in_process()
    assert daemon.worker.engine is not None
    daemon.worker._pass({STARTUP})
    daemon.worker.engine.backend.close()  # any backend read from now on would raise
    body, seen = watched(daemon.http.status_body)
    status = json.loads(body)
    assert status["applied_revision"] == example_repo.head() and status["sync"] == "synced"
    assert set(status["stages"]) == {f"orders/{name}" for name in ("dev", "test", "prod", "v1", "v2")}
    assert status["aliases"][PROD]["routing"] == {"1": 95, "2": 5}
    opened = sorted({str(args[0]) for event, args in seen if event == "open"})
    assert [event for event, _ in seen if event != "open"] == []
    record = str(example_repo.state_dir / "instances" / "default.json")
    assert set(opened) <= {record, str(example_repo.path / ".git" / "refs" / "heads" / "main")}, opened
    assert record in opened
    assert body == json.dumps(status, indent=2).encode() + b"\n"  # spliced, yet what json.dumps writes


def test_the_live_part_is_rendered_again_only_where_a_pass_changed_it(
    example_repo: SpecRepo, in_process: Callable[..., Daemon]
) -> None:
    """After a commit, /status shows the new routing; the body is still exactly what json.dumps writes, and a
    request that finds nothing changed is served the very same bytes."""
    daemon = in_process()
    daemon.worker._pass({STARTUP})
    before = json.loads(daemon.http.status_body())
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    example_repo.commit("prod: all on version 2")
    daemon.worker._pass({GIT})
    body = daemon.http.status_body()
    after = json.loads(body)
    assert after["aliases"][PROD]["routing"] == {"2": 100} and after["stages"] == before["stages"]
    assert body == json.dumps(after, indent=2).encode() + b"\n"
    assert daemon.http.status_body() is body


def test_status_during_a_held_pass_answers_with_the_last_pass_and_the_attempt(
    example_repo: SpecRepo, in_process: Callable[..., Daemon]
) -> None:
    """While a pass waits on the backend (its first action on a database another process holds), /status
    answers: the previous pass's revisions and live state, the revision being attempted, never "synced"."""
    first = example_repo.head()
    daemon = in_process()
    daemon.worker._pass({STARTUP})
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    second = example_repo.commit("prod: all on version 2")
    cloud = LocalCloud(example_repo.state_dir)
    try:
        with cloud.transaction():  # the pass's first action waits for this write lock
            held = threading.Thread(target=daemon.worker._pass, args=({GIT},), daemon=True)
            held.start()
            status = wait_for(
                lambda: (s := daemon.http.status())["attempted_revision"] == second and s, what="the pass to start"
            )
            assert held.is_alive()  # answered while the pass is held
            assert status["applied_revision"] == first and status["aliases"][PROD]["routing"] == {"1": 95, "2": 5}
            assert status["sync"] == "out_of_sync", status["sync_reason"]
    finally:
        cloud.close()
    held.join(30)
    status = daemon.http.status()
    assert status["applied_revision"] == second and status["aliases"][PROD]["routing"] == {"2": 100}
    assert status["sync"] == "synced"


def test_status_before_the_first_pass_never_says_synced(
    example_repo: SpecRepo, in_process: Callable[..., Daemon]
) -> None:
    """Applied by an earlier run, the daemon cannot tell live state matches until its first pass has looked."""
    assert example_repo.cli("apply").code == 0
    daemon = in_process()
    status = daemon.http.status()
    assert status["applied_revision"] == example_repo.head()
    assert status["sync"] == "out_of_sync" and "not compared" in status["sync_reason"], status["sync_reason"]
    assert status["daemon"]["live_checked_at"] is None
    daemon.worker._pass({STARTUP})
    assert daemon.http.status()["sync"] == "synced"


def test_a_pin_by_the_cli_shows_at_once(example_repo: SpecRepo, in_process: Callable[..., Daemon]) -> None:
    """rollback and resume run beside the daemon show in /status before the daemon's next pass."""
    first = example_repo.head()
    daemon = in_process()
    daemon.worker._pass({STARTUP})
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    example_repo.commit("prod: all on version 2")
    daemon.worker._pass({RESYNC})
    assert example_repo.cli("rollback", first).code == 0
    status = daemon.http.status()  # no pass ran since
    assert status["pinned"]["revision"] == first and status["sync"] == "pinned"
    assert example_repo.cli("resume").code == 0
    assert daemon.http.status()["pinned"] is None


def test_live_state_changed_out_of_band_shows_after_the_next_pass(
    example_repo: SpecRepo, in_process: Callable[..., Daemon]
) -> None:
    """/status shows live state as the last pass saw it: a console click shows once a pass has looked (resync)."""
    daemon = in_process("--no-self-heal")
    daemon.worker._pass({STARTUP})
    checked = daemon.http.status()["daemon"]["live_checked_at"]
    cloud = LocalCloud(example_repo.state_dir)
    cloud.update_alias("orders-handler", "prod", "1", {}, "clicked in the console")
    cloud.close()
    assert daemon.http.status()["aliases"][PROD]["routing"] == {"1": 95, "2": 5}
    daemon.worker._pass({RESYNC})
    status = daemon.http.status()
    assert status["aliases"][PROD]["routing"] == {"1": 100}
    assert status["sync"] == "out_of_sync" and "(drift)" in status["sync_reason"]
    assert status["daemon"]["live_checked_at"] >= checked


def _without_daemon_keys(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k not in ("role", "daemon", "lease")}


def same_as_cli(daemon: DaemonProcess, repo: SpecRepo, what: str) -> dict[str, Any]:
    """Wait until /status (without its daemon-only keys) equals ``reconciler status --output json``."""
    last: list[Any] = []

    def same() -> dict[str, Any] | None:
        over_http, cli = _without_daemon_keys(daemon.status()), repo.cli_json("status")
        last[:] = [over_http, cli]
        return over_http if over_http == cli else None

    try:
        found: dict[str, Any] = wait_for(same, 20, what)
    except AssertionError:
        over_http, cli = last
        diff = {
            k: (over_http.get(k), cli.get(k)) for k in over_http.keys() | cli.keys() if over_http.get(k) != cli.get(k)
        }
        raise AssertionError(f"{what}: /status and `status --output json` differ: {diff}") from None
    return found


@pytest.mark.daemon
def test_status_endpoint_equals_the_status_command_through_a_day(
    example_repo: SpecRepo, start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """Commits, drift (reported, not healed), a pin, a resume and a failed pass: /status says what the CLI says."""
    first = example_repo.head()
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, "--no-self-heal", "--resync-interval", "0.3")
    daemon.wait_applied(first)
    assert same_as_cli(daemon, example_repo, "first apply")["sync"] == "synced"
    set_prod_routing(example_repo, 'routing: {"1": 50, "2": 50}')
    second = example_repo.commit("prod: half on version 2")
    daemon.wait_applied(second)
    assert same_as_cli(daemon, example_repo, "a commit")["sync_reason"].startswith(second[:12])
    cloud = LocalCloud(example_repo.state_dir)
    cloud.update_alias("orders-handler", "prod", "1", {}, "clicked in the console")
    cloud.close()
    wait_for(lambda: daemon.metric("reconciler_drift_total") >= 1, what="the drift found at a resync")
    assert "(drift)" in same_as_cli(daemon, example_repo, "drift")["sync_reason"]
    assert example_repo.cli("rollback", first).code == 0
    assert daemon.status()["pinned"]["revision"] == first  # at once
    assert same_as_cli(daemon, example_repo, "pinned")["sync"] == "pinned"
    assert example_repo.cli("resume").code == 0
    daemon.wait_applied(second, timeout=20)
    same_as_cli(daemon, example_repo, "resumed")
    example_repo.write("deploy_specs/broken.yaml", "apiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: x}\n")
    example_repo.commit("a stage without spec")
    wait_for(lambda: daemon.status()["last_error"], what="the failed pass")
    assert same_as_cli(daemon, example_repo, "a failed pass")["sync"] == "failed"


@pytest.mark.daemon
def test_status_polled_through_commits_never_shows_a_revision_with_another_revisions_live_state(
    example_repo: SpecRepo, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """Every answer polled while commits apply pairs the applied revision with that revision's live state (the
    record says "applied" a moment before the pass publishes its live state: /status must not mix the two)."""
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir)
    routings = {example_repo.head(): {"1": 95, "2": 5}}
    daemon.wait_applied(example_repo.head())
    answers: list[dict[str, Any]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            code, body = daemon.request("/status")
            if code == 200:
                answers.append(json.loads(body))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        for weight in (10, 20, 30, 40, 50, 60):
            set_prod_routing(example_repo, f'routing: {{"1": {100 - weight}, "2": {weight}}}')
            head = example_repo.commit(f"prod: {weight} % on version 2")
            routings[head] = {"1": 100 - weight, "2": weight}
            daemon.wait_applied(head)
    finally:
        stop.set()
        poller.join(10)
    assert len(answers) >= 6, len(answers)
    mixed = [
        (a["applied_revision"][:12], a["aliases"][PROD]["routing"])
        for a in answers
        if a["aliases"] and a["aliases"][PROD]["routing"] != routings[a["applied_revision"]]
    ]
    assert mixed == []


def test_the_status_command_never_says_synced_when_live_state_cannot_be_read(example_repo: SpecRepo) -> None:
    """Applied and at the head, but the backend unreadable: out_of_sync, saying why (not "synced" on trust)."""
    assert example_repo.cli("apply").code == 0
    for suffix in ("-wal", "-shm"):
        (example_repo.state_dir / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
    (example_repo.state_dir / DB_NAME).write_bytes(b"not a database" * 100)
    status = example_repo.cli_json("status")
    assert status["live_error"] and status["sync"] == "out_of_sync"
    assert "live state cannot be read" in status["sync_reason"], status["sync_reason"]
