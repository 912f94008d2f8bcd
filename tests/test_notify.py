"""Notification sinks and delivery, against real local HTTP servers standing in for Slack, webhooks and GitHub."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import urllib3
from structlog.testing import capture_logs

from reconciler.errors import UsageError
from reconciler.events import Applying, Notice, Outcome
from reconciler.notify import Notifier, NotifyConfig, backoff_delay, make_notifier, rate_limit_wait
from reconciler.sinks import GitHubSink, SlackSink, WebhookSink, github_repository, make_sinks, sign
from tests.daemon.conftest import wait_for
from tests.httpsink import Answer, StandIn, stand_in

README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = "notify-secret-8c21"
TOKEN = "ghp_test-token-5d9a"
A, B = "a" * 40, "b" * 40
FAST = {"backoff": 0.02, "timeout": urllib3.Timeout(connect=2.0, read=2.0)}


class Counts:
    """A ``count`` callback for the notifier: (sink, result) -> how many."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}

    def __call__(self, sink: str, result: str) -> None:
        self.seen[(sink, result)] = self.seen.get((sink, result), 0) + 1

    def get(self, sink: str, result: str) -> int:
        return self.seen.get((sink, result), 0)


@pytest.fixture
def notifiers() -> Iterator[Callable[..., Notifier]]:
    made: list[Notifier] = []

    def make(*sinks: Any, **options: Any) -> Notifier:
        notifier = Notifier("default", list(sinks), **{**FAST, **options})
        notifier.start()
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close(0.5)


def readme_verify() -> Callable[[bytes, str, bytes], bool]:
    """The ``verify`` function of the README's signature snippet, run verbatim."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- verify-signature -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's signature snippet is missing"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    verify: Callable[[bytes, str, bytes], bool] = namespace["verify"]
    return verify


# ---------------------------------------------------------------- webhook


def test_webhook_signature_verifies_with_the_readme_snippet(notifiers: Callable[..., Notifier]) -> None:
    """A webhook event carries t=…,sha256=… over "<t>." + body, which the README's receiver code accepts."""
    with stand_in() as server:
        notifier = notifiers(WebhookSink(server.url + "/hook", SECRET.encode()))
        notifier.publish(Notice("applied", B, tag="applied/default/2", message="applied", actions=(("a", "r"),)))
        [got] = wait_for(server.delivered, what="the webhook")
    verify = readme_verify()
    header = got.headers["x-reconciler-signature"]
    assert re.fullmatch(r"t=\d+,sha256=[0-9a-f]{64}", header)
    assert verify(SECRET.encode(), header, got.body)
    event = got.json
    assert {k: event[k] for k in ("event", "instance", "revision", "tag")} == {
        "event": "applied",
        "instance": "default",
        "revision": B,
        "tag": "applied/default/2",
    }
    assert event["actions"] == [{"action": "a", "resource": "r"}] and event["time"].endswith("Z")
    assert got.headers["x-reconciler-event"] == "applied" and got.headers["x-reconciler-delivery"] == event["id"]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b + b" "), id="body-changed"),
        pytest.param(lambda h, b: (h.replace("sha256=", "sha256=0"), b), id="signature-changed"),
        pytest.param(lambda h, b: (re.sub(r"t=(\d+)", lambda m: f"t={int(m[1]) - 1}", h), b), id="timestamp-changed"),
        pytest.param(lambda h, b: (sign(SECRET.encode(), int(time.time()) - 3600, b), b), id="an-hour-old-replay"),
        pytest.param(lambda h, b: (sign(b"another secret", int(time.time()), b), b), id="other-secret"),
        pytest.param(lambda h, b: ("", b), id="unsigned"),
    ],
)
def test_the_readme_snippet_refuses_a_forged_or_replayed_event(
    tamper: Callable[[str, bytes], tuple[str, bytes]],
) -> None:
    """The receiver code refuses a changed body, signature or timestamp, an old signature and another secret."""
    body = b'{"event":"applied"}'
    header = sign(SECRET.encode(), int(time.time()), body)
    verify = readme_verify()
    assert verify(SECRET.encode(), header, body)
    assert not verify(SECRET.encode(), *tamper(header, body))


def test_a_webhook_without_a_secret_is_sent_unsigned(notifiers: Callable[..., Notifier]) -> None:
    """Without RECONCILER_NOTIFY_SECRET the event still goes out, without a signature header."""
    with stand_in() as server:
        notifiers(WebhookSink(server.url)).publish(Notice("failed", B, message="boom"))
        [got] = wait_for(server.delivered, what="the webhook")
    assert "x-reconciler-signature" not in got.headers and got.json["message"] == "boom"


def test_each_retry_is_signed_afresh_with_the_same_delivery_id(notifiers: Callable[..., Notifier]) -> None:
    """A retried event keeps its X-Reconciler-Delivery id, and every attempt carries a valid signature."""
    with stand_in(Answer(500)) as server:
        notifiers(WebhookSink(server.url, SECRET.encode())).publish(Notice("failed", B))
        wait_for(server.delivered, what="the retry")
        first, second = server.answered()
    verify = readme_verify()
    assert first.headers["x-reconciler-delivery"] == second.headers["x-reconciler-delivery"]
    assert all(verify(SECRET.encode(), r.headers["x-reconciler-signature"], r.body) for r in (first, second))


def test_applying_is_not_sent_to_webhooks_or_slack(notifiers: Callable[..., Notifier]) -> None:
    """`applying` only drives GitHub's pending status; the webhook and Slack see the events of §12 only."""
    with stand_in() as server:
        notifier = notifiers(WebhookSink(server.url), SlackSink(server.url + "/slack"))
        notifier.observe(Applying(B))
        notifier.observe(Outcome(B, "success", previous=A, tag="applied/default/2"))
        wait_for(lambda: len(server.delivered()) == 2, what="two messages")
    assert sorted(r.path for r in server.answered()) == ["/", "/slack"]


# ------------------------------------------------------------------ slack


def test_slack_gets_text_and_blocks(notifiers: Callable[..., Notifier]) -> None:
    """Slack's incoming webhook gets {"text", "blocks"} naming the event, instance, revision and tag."""
    with stand_in() as server:
        notifiers(SlackSink(server.url + "/services/T/B/X")).publish(
            Notice("failed", B, message="update_alias <Alias/x>: throttled", actions=(("update_alias", "Alias/x"),))
        )
        [got] = wait_for(server.delivered, what="the slack message")
    message = got.json
    assert set(message) == {"text", "blocks"}
    assert message["text"].startswith(f"reconciler/default: failed {B[:12]}: update_alias")
    assert "&lt;Alias/x&gt;" in message["text"]  # Slack's control characters escaped
    rendered = json.dumps(message["blocks"])
    assert B[:12] in rendered and "update_alias" in rendered


# ----------------------------------------------------------------- github


def test_github_gets_pending_then_success_with_context_token_and_target_url(notifiers: Callable[..., Notifier]) -> None:
    """A new revision gets `pending`, then `success` naming the tag, as reconciler/<instance>, with the token."""
    with stand_in() as api:
        sink = GitHubSink("acme", "orders", TOKEN, api.url, "https://grafana.example.com/d/r")
        notifier = notifiers(sink)
        notifier.observe(Applying(B))
        notifier.observe(Outcome(B, "success", previous=A, tag="applied/default/2", actions=(("a", "r"),)))
        pending, success = wait_for(lambda: len(api.delivered()) == 2 and api.delivered(), what="two statuses")
    for got in (pending, success):
        assert got.path == f"/repos/acme/orders/statuses/{B}"
        assert got.headers["authorization"] == f"Bearer {TOKEN}"
        assert got.json["context"] == "reconciler/default"
        assert got.json["target_url"] == "https://grafana.example.com/d/r"
    assert pending.json["state"] == "pending" and success.json["state"] == "success"
    assert "applied/default/2" in success.json["description"]


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        pytest.param(Outcome(B, "failed", previous=A, message="throttled"), "failure", id="failed-is-failure"),
        pytest.param(Outcome(B, "invalid", previous=A, message="x" * 500), "error", id="invalid-is-error"),
    ],
)
def test_github_failure_and_error(notifiers: Callable[..., Notifier], outcome: Outcome, state: str) -> None:
    """A failed pass is a `failure` status, invalid specs an `error`; the description fits GitHub's 140 characters."""
    with stand_in() as api:
        notifiers(GitHubSink("acme", "orders", TOKEN, api.url)).observe(outcome)
        [got] = wait_for(api.delivered, what="the status")
    assert got.json["state"] == state and len(got.json["description"]) <= 140
    assert "target_url" not in got.json


# --------------------------------------------------------------- delivery


def test_a_sink_that_refuses_twice_then_accepts_gets_the_event_once(notifiers: Callable[..., Notifier]) -> None:
    """Two 503s, then 200: the event is delivered exactly once, and counted as two retries and one success."""
    counts = Counts()
    with stand_in(Answer(503), Answer(503)) as server:
        notifiers(WebhookSink(server.url, SECRET.encode()), count=counts).publish(Notice("failed", B))
        wait_for(server.delivered, what="the third attempt")
        time.sleep(0.3)  # a duplicate, if any, would arrive now
        assert [r.status for r in server.answered()] == [503, 503, 200]
    assert len({r.headers["x-reconciler-delivery"] for r in server.answered()}) == 1
    assert counts.seen == {("webhook", "retried"): 2, ("webhook", "success"): 1}


def test_a_connection_refused_is_retried(notifiers: Callable[..., Notifier]) -> None:
    """A receiver that is down (connection refused) is retried until it answers."""
    server = StandIn()
    port = server.server.server_address[1]
    server.server.server_close()  # the port is closed: connections are refused
    counts = Counts()
    notifiers(WebhookSink(f"http://127.0.0.1:{port}/"), count=counts).publish(Notice("failed", B))
    wait_for(lambda: counts.get("webhook", "retried") >= 2, what="retries")
    assert counts.get("webhook", "success") == 0 and counts.get("webhook", "dropped") == 0


def test_429_retry_after_is_honoured(notifiers: Callable[..., Notifier]) -> None:
    """Slack's 429 with Retry-After: 1 waits that second (not the short backoff) before trying again."""
    with stand_in(Answer(429, {"Retry-After": "1"})) as server, capture_logs() as logs:
        notifiers(SlackSink(server.url)).publish(Notice("failed", B))
        wait_for(server.delivered, what="the retry")
    [retry] = [e for e in logs if e["event"] == "notification_retry"]
    assert retry["status"] == 429 and retry["retry_in_s"] >= 1.0


def test_github_secondary_rate_limit_is_waited_out(notifiers: Callable[..., Notifier]) -> None:
    """GitHub's 403 with x-ratelimit-remaining: 0 waits until x-ratelimit-reset, then the status is posted."""
    reset = str(int(time.time()) + 2)
    limited = Answer(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}, b'{"message": "rate limit"}')
    with stand_in(limited) as api, capture_logs() as logs:
        notifiers(GitHubSink("acme", "orders", TOKEN, api.url)).observe(Outcome(B, "failed", previous=A))
        wait_for(api.delivered, what="the status after the reset")
    [retry] = [e for e in logs if e["event"] == "notification_retry"]
    assert retry["status"] == 403 and retry["retry_in_s"] >= 1.0


def test_a_refusal_is_not_retried(notifiers: Callable[..., Notifier]) -> None:
    """A 403 that is no rate limit (a token without statuses: write) fails at once, with GitHub's answer logged."""
    counts = Counts()
    denied = Answer(403, {}, b'{"message": "Resource not accessible by personal access token"}')
    with stand_in(denied) as api, capture_logs() as logs:
        notifiers(GitHubSink("acme", "orders", TOKEN, api.url), count=counts).observe(Outcome(B, "failed", previous=A))
        wait_for(lambda: counts.get("github", "failed"), what="the refusal")
        assert len(api.answered()) == 1
    [refused] = [e for e in logs if e["event"] == "notification_refused"]
    assert refused["status"] == 403 and "not accessible" in refused["answer"]


def test_an_event_is_dropped_after_its_retry_budget(notifiers: Callable[..., Notifier]) -> None:
    """A sink failing for longer than the retry budget: the event is dropped, logged and counted."""
    counts = Counts()
    with stand_in(default=Answer(500)) as server, capture_logs() as logs:
        notifiers(WebhookSink(server.url), count=counts, retry_for=0.5).publish(Notice("failed", B))
        wait_for(lambda: counts.get("webhook", "dropped"), what="the drop")
    assert counts.get("webhook", "success") == 0 and counts.get("webhook", "retried") >= 1
    assert any(e["event"] == "notification_dropped" for e in logs)


def test_a_hanging_sink_never_blocks_the_caller_and_a_full_queue_drops(notifiers: Callable[..., Notifier]) -> None:
    """With a sink that never answers, publishing returns at once; beyond the queue's bound events are dropped."""
    counts = Counts()
    with stand_in(default=Answer(hang=True)) as server:
        notifier = notifiers(WebhookSink(server.url), count=counts, queue_size=3, timeout=urllib3.Timeout(30, 30))
        notifier.publish(Notice("failed", A))
        wait_for(lambda: server.arrived == 1, what="the first request to hang")
        for _ in range(10):
            notifier.publish(Notice("failed", B))  # returns although the sink's thread is stuck
        assert counts.get("webhook", "dropped") == 7 and server.arrived == 1


def test_one_dead_sink_does_not_hold_up_another(notifiers: Callable[..., Notifier]) -> None:
    """Each sink has its own queue and thread: Slack hanging, the webhook still gets the event."""
    with stand_in(default=Answer(hang=True)) as dead, stand_in() as alive:
        notifier = notifiers(SlackSink(dead.url), WebhookSink(alive.url), timeout=urllib3.Timeout(30, 30))
        notifier.publish(Notice("failed", B))
        wait_for(alive.delivered, what="the live sink")
        assert dead.arrived == 1 and not dead.answered()


def test_secrets_never_reach_the_logs(notifiers: Callable[..., Notifier]) -> None:
    """Token, secret, signature and Slack URL path stay out of every log event, in success and in failure."""
    with stand_in(Answer(500), Answer(404, {}, b"no such hook")) as server, capture_logs() as logs:
        slack = SlackSink(server.url + "/services/T000/B000/SLACKPATHSECRET")
        webhook = WebhookSink(server.url + "/hook?token=QUERYSECRET", SECRET.encode())
        github = GitHubSink("acme", "orders", TOKEN, server.url)
        notifier = notifiers(slack, webhook, github)
        notifier.observe(Applying(B))
        notifier.observe(Outcome(B, "failed", previous=A, message="boom"))
        wait_for(lambda: len(server.answered()) >= 4, what="every sink to answer")
        wait_for(lambda: {e.get("sink") for e in logs} >= {"slack:127.0.0.1", "github:acme/orders"}, what="logs")
        signatures = [r.headers["x-reconciler-signature"] for r in server.answered() if r.path.startswith("/hook")]
    text = "\n".join(repr(e) for e in logs) + repr(slack) + repr(webhook) + repr(github)
    for secret in (TOKEN, SECRET, "SLACKPATHSECRET", "QUERYSECRET", *signatures):
        assert secret not in text


def test_close_gives_queued_events_a_grace_then_drops_them(notifiers: Callable[..., Notifier]) -> None:
    """Closing waits at most its timeout for a stuck sink, and counts what was still queued as dropped."""
    counts = Counts()
    with stand_in(default=Answer(hang=True)) as server:
        notifier = Notifier("default", [WebhookSink(server.url)], counts, backoff=0.02, timeout=urllib3.Timeout(30, 30))
        notifier.start()
        for revision in (A, B):
            notifier.publish(Notice("failed", revision))
        wait_for(lambda: server.arrived == 1, what="the first request")
        started = time.monotonic()
        notifier.close(0.3)
        assert time.monotonic() - started < 10  # generous: the request in flight hangs for 60 s
        assert counts.get("webhook", "dropped") == 1  # the queued one; the one in flight is still hanging


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        pytest.param(429, {"retry-after": "7"}, b"", 7.0, id="429-retry-after"),
        pytest.param(429, {}, b"", 0.0, id="429-no-hint-backoff"),
        pytest.param(503, {"retry-after": "3"}, b"", 3.0, id="503-retry-after"),
        pytest.param(403, {"retry-after": "30"}, b"", 30.0, id="github-secondary-retry-after"),
        pytest.param(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1120"}, b"", 120.0, id="github-reset"),
        pytest.param(403, {}, b'{"message":"You have exceeded a secondary rate limit"}', 60.0, id="github-secondary"),
        pytest.param(429, {}, b'{"message":"You have exceeded a secondary rate limit"}', 60.0, id="github-429"),
        pytest.param(403, {"x-ratelimit-remaining": "12"}, b'{"message":"Bad credentials"}', None, id="403-refusal"),
        pytest.param(404, {}, b"", None, id="404"),
        pytest.param(500, {}, b"", None, id="500-no-hint"),
    ],
)
def test_rate_limit_wait(status: int, headers: dict[str, str], body: bytes, expected: float | None) -> None:
    """How long each rate-limit answer asks to wait (None: not a rate limit)."""
    assert rate_limit_wait(status, headers, body, now=1000.0) == expected


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    """Attempt n waits between half and all of min(cap, base * 2^(n-1))."""
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (8, 60.0), (30, 60.0)]:
        delays = {backoff_delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1


# ---------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        pytest.param("https://github.com/acme/orders.git", ("acme", "orders"), id="https-dot-git"),
        pytest.param("https://github.com/acme/orders", ("acme", "orders"), id="https"),
        pytest.param("https://***@github.com/acme/orders.git", ("acme", "orders"), id="https-redacted-credentials"),
        pytest.param("git@github.com:acme/orders.git", ("acme", "orders"), id="scp-like"),
        pytest.param("ssh://git@github.com/acme/orders.git", ("acme", "orders"), id="ssh"),
        pytest.param("https://gitlab.com/acme/orders.git", None, id="gitlab"),
        pytest.param("https://github.com/acme", None, id="no-repo"),
        pytest.param("https://github.com/acme/orders/tree/main", None, id="a-page-not-a-repo"),
        pytest.param("file:///srv/git/orders.git", None, id="file-url"),
        pytest.param("/srv/git/orders", None, id="path"),
        pytest.param("(no origin)", None, id="no-origin"),
    ],
)
def test_github_repository_from_remote_url(remote: str, expected: tuple[str, str] | None) -> None:
    """Owner and repo come from the remote's https, scp-like or ssh URL; other hosts and forms are not GitHub."""
    assert github_repository(remote) == expected


def test_github_enterprise_remote_with_its_api_url() -> None:
    """With --github-api-url of a GitHub Enterprise server, remotes on that host count as GitHub."""
    assert github_repository("git@ghe.example.com:acme/orders.git") is None
    assert github_repository("git@ghe.example.com:acme/orders.git", "https://ghe.example.com/api/v3") == (
        "acme",
        "orders",
    )


ENV = {"RECONCILER_GITHUB_TOKEN": TOKEN, "RECONCILER_NOTIFY_SECRET": SECRET}
GITHUB_REMOTE = "git@github.com:acme/orders.git"


@pytest.mark.parametrize(
    ("values", "env", "remote", "error"),
    [
        pytest.param(["teams:https://x"], ENV, GITHUB_REMOTE, "--notify teams: unknown sink", id="unknown-sink"),
        pytest.param(["slack"], ENV, GITHUB_REMOTE, "--notify slack: expected slack:URL", id="slack-without-url"),
        pytest.param(["webhook:"], ENV, GITHUB_REMOTE, "--notify webhook: expected", id="webhook-without-url"),
        pytest.param(["webhook:ftp://x"], ENV, GITHUB_REMOTE, "--notify webhook: expected", id="webhook-not-http"),
        pytest.param(["github"], {}, GITHUB_REMOTE, "--notify github: $RECONCILER_GITHUB_TOKEN", id="no-token"),
        pytest.param(["github"], ENV, "https://gitlab.com/a/b", "--notify github: the repository's", id="not-github"),
        pytest.param(["github"], ENV, None, "--notify github: the repository's", id="no-remote"),
    ],
)
def test_config_errors_name_notify(values: list[str], env: dict[str, str], remote: str | None, error: str) -> None:
    """Each sink that cannot work is one line naming --notify (and no URL, which may hold a secret)."""
    with pytest.raises(UsageError) as caught:
        make_sinks(values, env, remote)
    message = str(caught.value)
    assert message.startswith(error) and "\n" not in message
    assert "https://x" not in message


def test_sinks_from_repeated_flags_and_a_comma_separated_env() -> None:
    """--notify repeated and RECONCILER_NOTIFY's comma-separated form give the same sinks."""
    one = make_sinks(
        ["slack:https://hooks.slack.com/services/T/B/X", "webhook:https://ops.example.com/h", "github"],
        ENV,
        GITHUB_REMOTE,
    )
    env = make_sinks(
        ["slack:https://hooks.slack.com/services/T/B/X, webhook:https://ops.example.com/h,github"], ENV, GITHUB_REMOTE
    )
    assert one == env
    assert [s.name for s in one] == ["slack:hooks.slack.com", "webhook:ops.example.com", "github:acme/orders"]


def test_make_notifier_warns_about_an_unsigned_webhook() -> None:
    """A webhook sink without RECONCILER_NOTIFY_SECRET works, with a warning at start."""
    with capture_logs() as logs:
        notifier = make_notifier(NotifyConfig(("webhook:https://ops.example.com/h",)), "default", None, {})
    assert notifier.sinks == ["webhook:ops.example.com"]
    assert [e["event"] for e in logs] == ["notify_unsigned"]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_a_redirect_is_not_followed_so_the_token_stays_with_the_api(notifiers: Callable[..., Notifier]) -> None:
    """A 302 from the GitHub API URL to another host is a refusal: the other host never sees the token."""
    counts = Counts()
    with stand_in() as elsewhere:
        moved = Answer(302, {"Location": elsewhere.url + "/steal"}, b"")
        with stand_in(moved) as api:
            notifier = notifiers(GitHubSink("acme", "orders", TOKEN, api.url), count=counts)
            notifier.observe(Outcome(B, "failed", previous=A))
            wait_for(lambda: counts.get("github", "failed"), what="the refusal")
        assert elsewhere.arrived == 0
