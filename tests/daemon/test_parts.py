"""The daemon's parts in-process: backoff, webhook verification, trigger coalescing, ref filter, redaction."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import watchfiles

from reconciler.errors import UsageError
from reconciler.gitsource import _remote_env, redact
from reconciler.httpapi import WebhookAuth, parse_listen
from reconciler.logs import MASK, configure_logging, redact_secrets
from reconciler.triggers import RefFilter, Triggers
from reconciler.worker import backoff_delay

SECRET = b"It's a Secret to Everybody"
BODY = b'{"ref": "refs/heads/main"}'
GOOD = "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


def test_backoff_doubles_from_one_second_and_caps_at_300() -> None:
    """Temporary failures wait 1, 2, 4 … seconds, never more than 300."""
    assert [backoff_delay(n) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        pytest.param({"X-Hub-Signature-256": GOOD}, True, id="github-signature"),
        pytest.param({"X-Reconciler-Token": SECRET.decode()}, True, id="shared-token"),
        pytest.param({"X-Gitlab-Token": SECRET.decode()}, True, id="gitlab-token"),
        pytest.param({"X-Hub-Signature-256": GOOD.replace("sha256=", "sha1=")}, False, id="wrong-algorithm"),
        pytest.param({"X-Hub-Signature-256": "sha256=" + "0" * 64}, False, id="forged-signature"),
        pytest.param({"X-Hub-Signature-256": GOOD, "X-Reconciler-Token": "x"}, True, id="signature-wins"),
        pytest.param({"X-Reconciler-Token": SECRET.decode()[:-1]}, False, id="token-prefix"),
        pytest.param({}, False, id="no-credentials"),
    ],
)
def test_webhook_verification(headers: dict[str, str], accepted: bool) -> None:
    """Only a matching HMAC of the exact body or the exact shared token is accepted."""
    assert (WebhookAuth(SECRET).verify(headers, BODY) is None) is accepted


def test_webhook_signature_covers_the_body() -> None:
    """A valid signature of one payload does not authorise another."""
    assert WebhookAuth(SECRET).verify({"X-Hub-Signature-256": GOOD}, BODY + b" ") is not None


def test_webhooks_are_refused_when_no_secret_is_set() -> None:
    """Without RECONCILER_WEBHOOK_SECRET every webhook is refused."""
    assert "not set" in (WebhookAuth(None).verify({"X-Reconciler-Token": ""}, BODY) or "")


def test_triggers_during_a_pass_coalesce_into_one() -> None:
    """However many triggers arrive before the worker takes them, it runs one pass with all their reasons."""
    triggers = Triggers()
    for reason in ("git", "git", "webhook", "resync"):
        triggers.fire(reason)
    assert triggers.take() == {"git", "webhook", "resync"}
    triggers.fire("git")
    triggers.close()
    assert triggers.take() is None and triggers.fire("git") is False


@pytest.mark.parametrize(
    ("relpath", "watched"),
    [
        pytest.param("HEAD", True, id="HEAD"),
        pytest.param("packed-refs", True, id="packed-refs"),
        pytest.param("refs/heads/main", True, id="branch"),
        pytest.param("refs/remotes/origin/main", True, id="remote-branch"),
        pytest.param("refs/heads/feature", False, id="other-branch"),
        pytest.param("refs/heads/main.lock", False, id="lock-file"),
        pytest.param("refs/tags/applied/default/1", False, id="own-tags"),
        pytest.param("objects/ab/cdef", False, id="objects"),
        pytest.param("ORIG_HEAD", False, id="ORIG_HEAD"),
    ],
)
def test_ref_filter_watches_only_refs_that_move_the_branch(tmp_path: Path, relpath: str, watched: bool) -> None:
    """The watcher wakes for HEAD, packed-refs and the followed branch, not for other refs or objects."""
    refs = RefFilter(tmp_path, tmp_path, "main")
    assert refs(watchfiles.Change.modified, str(tmp_path.resolve() / relpath)) is watched


def test_ref_filter_also_wakes_for_the_instance_record(tmp_path: Path) -> None:
    """A pin or unpin written by ``rollback``/``resume`` beside the daemon wakes it too."""
    record = tmp_path / "state" / "instances" / "default.json"
    refs = RefFilter(tmp_path / ".git", tmp_path / ".git", "main", record)
    assert refs(watchfiles.Change.added, str(record.resolve())) is True
    assert refs(watchfiles.Change.added, str(record.parent.resolve() / "other.json")) is False


def test_urls_with_credentials_are_redacted() -> None:
    """user:password@ in any URL is masked before it can reach a log line or message."""
    text = "cannot fetch https://bot:ghp_abc123@github.com/o/r.git and ssh://git@host/r"
    assert redact(text) == "cannot fetch https://***@github.com/o/r.git and ssh://***@host/r"


def test_log_processor_masks_secret_values_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook secret and git token never appear in an event, whatever key carries them."""
    monkeypatch.setenv("RECONCILER_WEBHOOK_SECRET", "hook-secret-42")
    monkeypatch.setenv("RECONCILER_GIT_TOKEN", "ghp_token_99")
    event = redact_secrets(None, "info", {"event": "x", "detail": "got hook-secret-42", "token": "t", "n": 3})
    assert event == {"event": "x", "detail": f"got {MASK}", "token": MASK, "n": 3}
    assert "ghp_token_99" not in str(redact_secrets(None, "info", {"event": "x", "errors": ["a ghp_token_99"]}))


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        pytest.param("127.0.0.1:8080", ("127.0.0.1", 8080), id="ipv4"),
        pytest.param(":9000", ("0.0.0.0", 9000), id="all-interfaces"),
        pytest.param("[::1]:8080", ("::1", 8080), id="ipv6"),
    ],
)
def test_listen_addresses(listen: str, expected: tuple[str, int]) -> None:
    """--listen takes HOST:PORT, an empty host meaning every interface."""
    assert parse_listen(listen) == expected


def test_listen_without_port_is_a_usage_error() -> None:
    """--listen without a port is refused with a message naming the expected form."""
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_listen("localhost")


def test_git_token_reaches_git_only_through_the_credential_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    """git gets RECONCILER_GIT_TOKEN from the helper when it asks; the token is in no URL, argument or config value."""
    monkeypatch.setenv("RECONCILER_GIT_TOKEN", "ghp_s3cret_token")
    env = _remote_env(url="https://git.example.com/acme/deploy.git")
    assert all("ghp_s3cret_token" not in value for value in env.values())

    def fill(protocol: str, host: str) -> list[str]:
        done = subprocess.run(
            ["git", "-c", "credential.interactive=false", "credential", "fill"],
            input=f"protocol={protocol}\nhost={host}\npath=acme/deploy.git\n\n",
            env={**os.environ, **env, "GIT_ASKPASS": "", "SSH_ASKPASS": ""},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.splitlines()

    answer = fill("https", "git.example.com")
    assert "username=x-access-token" in answer and "password=ghp_s3cret_token" in answer
    for protocol, host in (("http", "git.example.com"), ("https", "elsewhere.example.com")):  # DESIGN §11
        assert "password=ghp_s3cret_token" not in fill(protocol, host)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "as_json"), [(io.StringIO, True), (_Terminal, False)], ids=["pipe", "terminal"])
def test_auto_log_format_is_json_off_a_terminal_and_console_on_one(
    restore_logging: None, stream: type[io.StringIO], as_json: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--log-format auto writes JSON lines to a pipe or file and readable lines to a terminal."""
    monkeypatch.setenv("NO_COLOR", "1")
    out = stream()
    configure_logging("auto", stream=out)
    structlog.get_logger("test").info("reconcile", revision="abc", result="noop")
    line = out.getvalue().strip()
    if as_json:
        assert json.loads(line)["event"] == "reconcile"
    else:
        assert line.startswith("20") and "reconcile" in line and "revision=abc" in line
