"""Remote repositories as a cluster uses them: credentials (HTTPS token, SSH key) and --push-tags on real remotes."""

from __future__ import annotations

import base64
import json
import shlex
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import GitError
from reconciler.gitsource import SshIdentity, _remote_env, clone_or_open
from tests.daemon.conftest import Daemon, set_prod_routing, wait_for
from tests.support import SpecRepo, self_signed_tls

pytestmark = pytest.mark.daemon

TOKEN = "ghp_cluster_token_7f3a9"
KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-5e8d\n-----END OPENSSH PRIVATE KEY-----\n"
Start = Callable[..., Daemon]


# --------------------------------------------------------------------- SSH


@pytest.fixture
def ssh_files(tmp_path: Path) -> SshIdentity:
    """A mounted key and known_hosts, in a folder with a space in its name (paths must survive quoting)."""
    folder = tmp_path / "ssh secret"
    folder.mkdir()
    (folder / "id_ed25519").write_text(KEY_TEXT, encoding="utf-8")
    (folder / "id_ed25519").chmod(0o600)
    (folder / "known_hosts").write_text("git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\n")
    return SshIdentity(str(folder / "id_ed25519"), str(folder / "known_hosts"))


def test_ssh_command_makes_ssh_use_only_the_key_and_known_hosts(ssh_files: SshIdentity) -> None:
    """The GIT_SSH_COMMAND git gets makes the real ssh use that key alone, that known_hosts, strict, no prompts."""
    argv = shlex.split(_remote_env(ssh_files)["GIT_SSH_COMMAND"])
    assert argv[argv.index("-i") + 1] == ssh_files.key
    done = subprocess.run([*argv, "-G", "git.example.com"], capture_output=True, text=True, timeout=10, check=True)
    config = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert config["identitiesonly"] == "yes" and config["batchmode"] == "yes"
    assert config["stricthostkeychecking"] == "true"
    assert config["userknownhostsfile"] == ssh_files.known_hosts


def test_no_ssh_flags_leave_the_users_ssh_command_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --ssh-key/--known-hosts a GIT_SSH_COMMAND of the environment is used as it is."""
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -F /etc/my_ssh_config")
    assert "GIT_SSH_COMMAND" not in _remote_env(SshIdentity())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: connections are refused


def test_ssh_remote_that_cannot_be_reached_is_one_line_without_secrets(tmp_path: Path, ssh_files: SshIdentity) -> None:
    """A clone over SSH that fails is a one-line, temporary error naming the remote, with no key material in it."""
    url = f"ssh://git@127.0.0.1:{closed_port()}/acme/deploy.git"
    with pytest.raises(GitError) as caught:
        clone_or_open(url, tmp_path / "work", "main", ssh=ssh_files)
    message = str(caught.value)
    assert caught.value.temporary and "\n" not in message
    assert "Connection refused" in message and "127.0.0.1" in message
    assert "not-a-real-key" not in message


def test_missing_ssh_key_is_a_clear_error_before_any_git(tmp_path: Path) -> None:
    """--ssh-key naming no file fails at once, saying which flag and path."""
    with pytest.raises(GitError, match="--ssh-key /nowhere/id_ed25519: no readable file"):
        clone_or_open(
            "git@example.com:acme/deploy.git", tmp_path / "work", "main", ssh=SshIdentity("/nowhere/id_ed25519")
        )


# ------------------------------------------------------------- HTTPS token


class RefusingGitServer:
    """An HTTPS git remote that answers every request 401 (Basic) and remembers the credentials it was sent.

    HTTPS, as the token is offered to nothing else (DESIGN §11); its certificate is self-signed, so the
    ``token`` fixture sets GIT_SSL_NO_VERIFY for the git processes of the test and its daemons.
    """

    def __init__(self, tls: ssl.SSLContext) -> None:
        seen: list[str] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization", ""))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/acme/deploy.git"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def refusing(tmp_path: Path) -> Iterator[RefusingGitServer]:
    server = RefusingGitServer(self_signed_tls(tmp_path))
    yield server
    server.close()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """RECONCILER_GIT_TOKEN set (before any daemon fixture copies the environment); test certificates accepted."""
    monkeypatch.setenv("RECONCILER_GIT_TOKEN", TOKEN)
    monkeypatch.setenv("GIT_SSL_NO_VERIFY", "1")
    return TOKEN


def test_refused_token_is_one_line_that_never_shows_it(tmp_path: Path, refusing: RefusingGitServer, token: str) -> None:
    """git sends the token (via the helper) and the refusal is one line naming the remote, without the token."""
    with pytest.raises(GitError) as caught:
        clone_or_open(refusing.url, tmp_path / "work", "main")
    message = str(caught.value)
    assert f"Basic {base64.b64encode(f'x-access-token:{token}'.encode()).decode()}" in refusing.seen
    assert "Authentication failed" in message and refusing.url in message
    assert token not in message and "\n" not in message


def test_daemon_keeps_retrying_a_remote_that_refuses_the_token(
    tmp_path: Path, token: str, refusing: RefusingGitServer, start_daemon: Start
) -> None:
    """The daemon lives on, not ready, retrying with backoff; the token appears in no log line."""
    daemon = start_daemon(refusing.url, tmp_path / "state", ready=False)
    wait_for(lambda: len(daemon.events("retry_scheduled")) >= 2, timeout=15, what="two failed clones")
    assert daemon.request("/healthz")[0] == 200 and daemon.request("/readyz")[0] == 503
    assert "Authentication failed" in daemon.events("fetch_failed")[0]["error"]
    first, second = [e["retry_in_s"] for e in daemon.events("retry_scheduled")][:2]
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0  # 1 s, 2 s, jittered over the upper half
    assert token not in daemon.log_text()


# --------------------------------------------------------------- push tags


def remote_tags(origin: SpecRepo) -> dict[str, str]:
    """applied tags on the remote -> the commit each names."""
    names = origin.git("tag", "--list", "applied/*").split()
    return {name: origin.git("rev-parse", f"{name}^{{commit}}") for name in names}


@pytest.fixture
def blocked_pushes(example_repo: SpecRepo) -> Path:
    """A pre-receive hook on the remote that refuses every push while the returned file exists."""
    block = example_repo.path.parent / "block-pushes"
    block.touch()
    hook = example_repo.path / ".git" / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nif [ -e '{block}' ]; then echo 'pushes are blocked' >&2; exit 1; fi\n")
    hook.chmod(0o755)
    return block


def pushing(start: Start, origin: SpecRepo, *extra: str) -> Daemon:
    return start(origin.path.as_uri(), origin.state_dir, "--push-tags", "--interval", "0.2", *extra)


def test_restart_on_a_fresh_clone_numbers_after_the_remote_tags(example_repo: SpecRepo, start_daemon: Start) -> None:
    """A daemon on an empty work dir (a new pod) reads the remote's applied tags: the next tag is 2, not 1 again."""
    first = pushing(start_daemon, example_repo, "--workdir", str(example_repo.path.parent / "clone-1"))
    first.wait_applied(example_repo.head())
    wait_for(lambda: remote_tags(example_repo), what="tag 1 on the remote")
    assert first.stop() == 0
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    head = example_repo.commit("prod: all on version 2")
    second = pushing(start_daemon, example_repo, "--workdir", str(example_repo.path.parent / "clone-2"))
    second.wait_applied(head)
    wait_for(lambda: len(remote_tags(example_repo)) == 2, what="tag 2 on the remote")
    assert remote_tags(example_repo)["applied/default/2"] == head
    assert second.events("tag_push_failed") == [] and second.events("tags_renumbered") == []


def test_failed_push_never_blocks_applying_and_is_retried(
    example_repo: SpecRepo, blocked_pushes: Path, start_daemon: Start
) -> None:
    """While the remote refuses pushes, commits are still applied and the tags wait; then they are pushed in order."""
    first = example_repo.head()
    daemon = pushing(start_daemon, example_repo)
    daemon.wait_applied(first)
    set_prod_routing(example_repo, 'routing: {"2": 100}')
    second = daemon.wait_applied(example_repo.commit("prod: all on version 2"))["applied_revision"]
    wait_for(lambda: daemon.status()["daemon"]["unpushed_tags"] == ["applied/default/1", "applied/default/2"])
    assert daemon.metric("reconciler_tag_push_failures_total") >= 2
    assert "pushes are blocked" in daemon.events("tag_push_failed")[0]["error"]
    assert remote_tags(example_repo) == {}
    blocked_pushes.unlink()
    wait_for(lambda: len(remote_tags(example_repo)) == 2, what="both tags pushed")
    assert remote_tags(example_repo) == {"applied/default/1": first, "applied/default/2": second}
    assert daemon.status()["daemon"]["unpushed_tags"] == []


def test_number_taken_on_the_remote_is_renumbered(
    example_repo: SpecRepo, blocked_pushes: Path, start_daemon: Start
) -> None:
    """If another replica pushed applied/default/1 first, this daemon's tag becomes applied/default/2."""
    daemon = pushing(start_daemon, example_repo)
    daemon.wait_applied(example_repo.head())
    wait_for(lambda: daemon.events("tag_push_failed"), what="the first push refused")
    example_repo.git("tag", "-a", "applied/default/1", "-m", '{"by": "the other replica"}', "HEAD")
    blocked_pushes.unlink()
    wait_for(lambda: "applied/default/2" in remote_tags(example_repo), what="the renumbered tag")
    message = json.loads(example_repo.git("tag", "--list", "--format=%(contents)", "applied/default/2"))
    assert message["renumbered_from"] == "applied/default/1" and message["tag"] == "applied/default/2"
    assert json.loads(example_repo.git("tag", "--list", "--format=%(contents)", "applied/default/1")) == {
        "by": "the other replica"
    }
    assert [e["new"] for e in daemon.events("tags_renumbered")] == [["applied/default/2"]]
    assert daemon.status()["daemon"]["unpushed_tags"] == []
