"""Ready means able to apply (DESIGN §13): the aws backend without credentials keeps /readyz 503 and retries."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.aws.conftest import REGION, AwsRepo
from tests.daemon.conftest import Daemon, wait_for

pytestmark = [pytest.mark.aws, pytest.mark.daemon]

NO_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def test_no_credentials_keep_readyz_503_and_are_retried_with_backoff(aws_repo: AwsRepo, tmp_path: Path) -> None:
    """/healthz 200, /readyz 503, /status names the credential problem, and the pass is retried (not left to
    the resync): reconciler_consecutive_failures climbs past 1."""
    env = {k: v for k, v in os.environ.items() if k not in NO_CREDENTIALS}
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }
    flags = ("--backend", "aws", "--endpoint-url", aws_repo.url, "--region", REGION, "--resync-interval", "3600")
    daemon = Daemon(str(aws_repo.path), aws_repo.state_dir, tmp_path / "daemon.log", *flags, env=env)
    try:
        wait_for(lambda: daemon.metric("reconciler_consecutive_failures") >= 2, timeout=20, what="a retry")
        assert daemon.request("/healthz")[0] == 200
        code, body = daemon.request("/readyz")
        assert code == 503 and b"credentials" in body, body
        status = daemon.status()
        assert "credentials" in (status["last_error"] or ""), status
        assert "credentials" in (status["daemon"]["not_ready_reason"] or ""), status
        assert status["applied_revision"] is None
    finally:
        daemon.stop()


def test_an_endpoint_that_refuses_keeps_readyz_503(aws_repo: AwsRepo, tmp_path: Path) -> None:
    """A refused connection is retried, never ready, and the reason shows in /status."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AWS_MAX_ATTEMPTS": "1"}
    refused = "http://127.0.0.1:9"  # discard port: nothing listens
    flags = ("--backend", "aws", "--endpoint-url", refused, "--region", REGION, "--resync-interval", "3600")
    daemon = Daemon(str(aws_repo.path), aws_repo.state_dir, tmp_path / "daemon.log", *flags, env=env)
    try:
        wait_for(lambda: daemon.metric("reconciler_consecutive_failures") >= 2, timeout=20, what="a retry")
        assert daemon.request("/readyz")[0] == 503
        assert daemon.request("/healthz")[0] == 200
        assert "127.0.0.1:9" in (daemon.status()["daemon"]["not_ready_reason"] or "")
    finally:
        daemon.stop()


def test_a_worker_stuck_past_its_deadline_fails_healthz(aws_repo: AwsRepo, tmp_path: Path) -> None:
    """An endpoint that accepts and never answers holds the pass; after --worker-deadline /healthz is 503."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (the kernel does), never reads or answers
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        flags = ("--backend", "aws", "--endpoint-url", endpoint, "--region", REGION, "--worker-deadline", "1")
        daemon = Daemon(str(aws_repo.path), aws_repo.state_dir, tmp_path / "daemon.log", *flags, env=env)
        try:
            wait_for(lambda: daemon.request("/healthz")[0] == 503, timeout=20, what="/healthz to fail")
            assert b"no progress" in daemon.request("/healthz")[1]
        finally:
            daemon.proc.kill()
            daemon.proc.wait(5)
    finally:
        silent.close()
