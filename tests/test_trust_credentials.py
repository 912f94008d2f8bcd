"""DESIGN §11 credentials: RECONCILER_GIT_TOKEN reaches only the remote's own host over HTTPS.

Real git HTTP servers: ``git http-backend`` behind a small stdlib HTTP(S)
server that asks for Basic credentials and records every Authorization
header it is sent; a redirecting one sends git to another host.
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import GitError
from reconciler.gitsource import clone_or_open, redact
from tests.support import SpecRepo, self_signed_tls

TOKEN = "ghp_trust-token-6f1d"


class _Handler(BaseHTTPRequestHandler):
    server: GitHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        srv = self.server
        auth = self.headers.get("Authorization")
        if auth is not None:
            srv.seen.append(auth)
        if srv.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", srv.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.ask_credentials and auth is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": str(srv.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x",
            "REMOTE_ADDR": "127.0.0.1",
        }
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class GitHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, host: str, tls: ssl.SSLContext | None, ask_credentials: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.root, self.ask_credentials = root, ask_credentials
        self.redirect_to: str | None = None
        self.seen: list[str] = []
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{host}:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def tls(tmp_path: Path) -> ssl.SSLContext:
    return self_signed_tls(tmp_path)


@pytest.fixture
def served(example_repo: SpecRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bare copy of the example repository to serve; the token set, TLS not verified (a self-signed test CA)."""
    root = tmp_path / "served"
    root.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(example_repo.path), str(root / "repo.git")], check=True)
    monkeypatch.setenv("RECONCILER_GIT_TOKEN", TOKEN)
    monkeypatch.setenv("GIT_SSL_NO_VERIFY", "1")
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.fixture
def servers() -> Iterator[list[GitHttpServer]]:
    started: list[GitHttpServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def carried_token(server: GitHttpServer) -> bool:
    return any(TOKEN in base64.b64decode(a.split()[-1]).decode(errors="replace") for a in server.seen if " " in a)


def test_the_token_reaches_the_remote_over_https(
    served: Path, tls: ssl.SSLContext, servers: list, tmp_path: Path
) -> None:
    """The remote's own host over HTTPS asks for credentials and gets the token (the control case)."""
    server = GitHttpServer(served, "127.0.0.1", tls, ask_credentials=True)
    servers.append(server)
    repo = clone_or_open(f"{server.url}/repo.git", tmp_path / "work", "main")
    assert repo.branch_head("main") and carried_token(server)


def test_the_token_is_never_sent_over_plain_http(served: Path, servers: list, tmp_path: Path) -> None:
    """A plain-HTTP remote that asks for credentials never gets the token: the clone fails instead."""
    server = GitHttpServer(served, "127.0.0.1", None, ask_credentials=True)
    servers.append(server)
    with pytest.raises(GitError) as failed:
        clone_or_open(f"{server.url}/repo.git", tmp_path / "work", "main")
    assert not carried_token(server) and TOKEN not in str(failed.value)


def test_the_token_is_never_sent_to_the_host_a_redirect_names(
    served: Path, tls: ssl.SSLContext, servers: list, tmp_path: Path
) -> None:
    """The remote redirects to another host that asks for credentials: that host never gets the token."""
    other = GitHttpServer(served, "localhost", tls, ask_credentials=True)
    remote = GitHttpServer(served, "127.0.0.1", tls, ask_credentials=False)
    remote.redirect_to = other.url
    servers.extend([other, remote])
    with pytest.raises(GitError):
        clone_or_open(f"{remote.url}/repo.git", tmp_path / "work", "main")
    assert other.seen == [] or not carried_token(other)
    assert not carried_token(remote)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("https://user:p@ss@host/r.git", "https://***@host/r.git", id="at-in-password"),
        pytest.param("https://x:tok@github.com/o/r", "https://***@github.com/o/r", id="plain"),
        pytest.param(
            "fetch https://a:b@h/x and https://c:d@@i/y", "fetch https://***@h/x and https://***@i/y", id="two"
        ),
        pytest.param("https://host/no-credentials", "https://host/no-credentials", id="none"),
    ],
)
def test_redact_masks_the_whole_userinfo(text: str, shown: str) -> None:
    """redact() hides everything before the host, even a password holding '@'."""
    assert redact(text) == shown
