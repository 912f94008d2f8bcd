"""``POST /hooks/git`` as a forge (or an attacker) sees it: status codes on the wire, and what reaches the log."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket

import pytest

from tests.daemon.conftest import SECRET, Daemon, wait_for

pytestmark = pytest.mark.daemon

OVER_25_MB = 26 * 1024 * 1024  # over GitHub's cap whether "25 MB" means 10**6 or 2**20 bytes


def connect(daemon: Daemon, timeout: float = 5.0) -> http.client.HTTPConnection:
    host, port = daemon.base.removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def post(daemon: Daemon, path: str, headers: dict[str, str], body: bytes | None = b"") -> tuple[int, bytes]:
    """POST with exactly these headers (no Content-Length added); ``body=None`` sends the headers only."""
    conn = connect(daemon)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def signed(body: bytes) -> dict[str, str]:
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Length": str(len(body)), "X-Hub-Signature-256": signature, "X-GitHub-Event": "push"}


def webhook_triggers(daemon: Daemon) -> float:
    return daemon.metric("reconciler_triggers_total", source="webhook")


@pytest.mark.parametrize("path", ["/hooks/other", "/hooks/git/extra", "/"])
def test_post_to_an_unknown_path_is_404(running: Daemon, path: str) -> None:
    """Only /hooks/git takes a POST; any other path is 404 with a JSON error, and triggers nothing."""
    body = b"{}"
    code, answer = post(running, path, signed(body), body)
    assert code == 404 and "error" in json.loads(answer)
    assert webhook_triggers(running) == 0


def test_get_of_an_unknown_path_is_404(running: Daemon) -> None:
    """A GET of a path the daemon does not serve is 404."""
    assert running.request("/nothing-here")[0] == 404


@pytest.mark.parametrize("length", ["abc", "-1", "1e3"], ids=["word", "negative", "float"])
def test_malformed_content_length_is_400(running: Daemon, length: str) -> None:
    """A Content-Length that is no byte count is a bad request: 400, nothing triggered."""
    code, _ = post(running, "/hooks/git", {"Content-Length": length, "X-Reconciler-Token": SECRET}, None)
    assert code == 400
    assert webhook_triggers(running) == 0


def test_a_body_over_25_mb_is_refused_with_413_before_it_is_sent(running: Daemon) -> None:
    """An announced body over GitHub's 25 MB cap gets 413 at once: the daemon answers before reading any of it."""
    headers = {"Content-Length": str(OVER_25_MB), "X-Reconciler-Token": SECRET}
    code, _ = post(running, "/hooks/git", headers, None)  # the body is never sent: a daemon waiting for it times out
    assert code == 413
    assert webhook_triggers(running) == 0
    assert running.request("/healthz")[0] == 200


def test_a_large_signed_body_under_the_cap_is_accepted(running: Daemon) -> None:
    """A 2 MiB push payload (big pushes are) is read whole, verified and accepted."""
    body = json.dumps({"ref": "refs/heads/main", "commits": ["x" * 1024] * 2048}).encode()
    code, answer = post(running, "/hooks/git", signed(body), body)
    assert code == 202 and json.loads(answer)["accepted"] is True
    wait_for(lambda: webhook_triggers(running) == 1, what="the webhook trigger")
    [accepted] = wait_for(lambda: running.events("webhook_accepted"), what="the delivery logged")
    assert accepted["client"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("X-Reconciler-Token", "tok-9f3e-entirely-different-value", id="other-token"),
        pytest.param("X-Reconciler-Token", SECRET[:-5], id="prefix-of-the-secret"),
        pytest.param("X-Gitlab-Token", SECRET + "-and-more", id="secret-with-a-suffix"),
        pytest.param("X-Gitlab-Token", "", id="empty"),
        pytest.param("X-Hub-Signature-256", "sha256=" + "5e" * 32, id="forged-signature"),
    ],
)
def test_a_rejected_credential_is_never_written_to_the_log(running: Daemon, header: str, value: str) -> None:
    """A wrong token or signature gets 401 and is logged as rejected, without the value that was sent."""
    body = b'{"ref": "refs/heads/main"}'
    code, _ = post(running, "/hooks/git", {"Content-Length": str(len(body)), header: value}, body)
    assert code == 401
    wait_for(lambda: running.events("webhook_rejected"), what="the rejection logged")
    text = running.log_text()
    for sent in (value, value.removeprefix("sha256="), value.replace(SECRET, "")):  # the log masks SECRET itself
        assert not sent or sent not in text
    assert SECRET not in text
    assert webhook_triggers(running) == 0


def stalled_delivery(daemon: Daemon) -> socket.socket:
    """A delivery whose headers promise 1000 bytes of body, of which 10 are sent: the daemon waits for the rest."""
    host, port = daemon.base.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    head = f"POST /hooks/git HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\nX-Reconciler-Token: x\r\n\r\n"
    sock.sendall(head.encode() + b"0123456789")
    return sock


def test_a_fifth_delivery_while_four_bodies_are_read_gets_503(running: Daemon) -> None:
    """At most 4 webhook bodies are read at once: the next gets 503 (a forge retries); after them, 401 again."""
    body = b'{"ref": "refs/heads/main"}'
    unsigned = {"Content-Length": str(len(body)), "X-Reconciler-Token": "not-the-secret"}
    stalled = [stalled_delivery(running) for _ in range(4)]
    try:
        wait_for(lambda: post(running, "/hooks/git", unsigned, body)[0] == 503, what="a 503 for the fifth")
    finally:
        for sock in stalled:
            sock.sendall(b"x" * 990)  # the rest of the promised body: each is read, verified and refused
            sock.close()
    wait_for(lambda: post(running, "/hooks/git", unsigned, body)[0] == 401, what="room for deliveries again")
    assert webhook_triggers(running) == 0


def test_a_chunked_signed_body_is_read_and_accepted(running: Daemon) -> None:
    """``Transfer-Encoding: chunked`` (no Content-Length) is read whole and its signature checked."""
    body = json.dumps({"ref": "refs/heads/main", "pad": "y" * 5000}).encode()
    headers = signed(body)
    del headers["Content-Length"]
    conn = connect(running)
    try:
        conn.putrequest("POST", "/hooks/git", skip_accept_encoding=True)
        for name, value in {**headers, "Transfer-Encoding": "chunked"}.items():
            conn.putheader(name, value)
        conn.endheaders()
        for start in range(0, len(body), 1000):
            piece = body[start : start + 1000]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
        assert conn.getresponse().status == 202
    finally:
        conn.close()
    wait_for(lambda: webhook_triggers(running) == 1, what="the webhook trigger")
