"""DESIGN §11 signed commits: with --allowed-signers / --trusted-gpg-keys only well-signed commits are applied.

Real keys: SSH keys made by ``ssh-keygen``, an OpenPGP key made by ``gpg
--batch --quick-gen-key`` in a private GnuPG home.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import SpecRepo

ALIASES = "deploy_specs/aliases.yaml"


@dataclass
class SshKeys:
    trusted: Path
    stranger: Path
    allowed_signers: Path


@pytest.fixture
def ssh_keys(tmp_path: Path) -> SshKeys:
    for name in ("trusted", "stranger"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(tmp_path / name)], check=True
        )
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"dev@example.com {(tmp_path / 'trusted.pub').read_text()}", encoding="utf-8")
    return SshKeys(tmp_path / "trusted", tmp_path / "stranger", allowed)


@dataclass
class GpgKeys:
    home: Path
    trusted: str  # fingerprint
    stranger: str
    public: Path  # the trusted key, armored


def _gpg(home: Path, *args: str) -> str:
    done = subprocess.run(
        ["gpg", "--batch", "--homedir", str(home), *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


@pytest.fixture
def gpg_keys(tmp_path: Path) -> Iterator[GpgKeys]:
    if shutil.which("gpg") is None:
        pytest.fail("gpg is not installed (.ci/run installs gnupg)")
    home = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))  # short: gpg-agent's socket path has a length limit
    home.chmod(0o700)
    try:
        fingerprints = []
        for who in ("Dev <dev@example.com>", "Stranger <stranger@example.com>"):
            _gpg(home, "--passphrase", "", "--quick-gen-key", who, "ed25519", "sign", "never")
            listed = _gpg(home, "--list-keys", "--with-colons", who)
            fingerprints.append(next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:")))
        public = tmp_path / "trusted.asc"
        public.write_text(_gpg(home, "--armor", "--export", fingerprints[0]), encoding="utf-8")
        yield GpgKeys(home, fingerprints[0], fingerprints[1], public)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def commit_ssh_signed(repo: SpecRepo, key: Path, message: str) -> str:
    repo.git("add", "-A")
    repo.git(
        "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-q", "--allow-empty", "-S", "-m", message
    )
    return repo.head()


def commit_gpg_signed(repo: SpecRepo, keys: GpgKeys, fingerprint: str, message: str) -> str:
    repo.git("add", "-A")
    subprocess.run(
        [
            "git",
            "-c",
            "gpg.format=openpgp",
            "-c",
            f"user.signingkey={fingerprint}",
            "commit",
            "-q",
            "-S",
            "-m",
            message,
        ],
        cwd=repo.path,
        env={**os.environ, "GNUPGHOME": str(keys.home)},
        check=True,
        capture_output=True,
    )
    return repo.head()


def set_routing(repo: SpecRepo, routing: str) -> None:
    path = repo.path / ALIASES
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    index = max(i for i, line in enumerate(lines) if line.strip().startswith("routing:"))  # prod is last
    lines[index] = f"  routing: {routing}\n"
    path.write_text("".join(lines), encoding="utf-8")


def prod_routing(repo: SpecRepo) -> object:
    return repo.cli_json("status")["aliases"]["orders-handler/prod"]["routing"]


@pytest.fixture
def signed_example(repo: SpecRepo, ssh_keys: SshKeys) -> SpecRepo:
    """The example specs in a commit signed by the trusted SSH key, applied once under --allowed-signers."""
    repo.copy_example()
    commit_ssh_signed(repo, ssh_keys.trusted, "example specs, signed")
    repo.publish("orders-handler", times=2)
    result = repo.cli("apply", "--allowed-signers", str(ssh_keys.allowed_signers))
    assert result.code == 0, result.stderr
    return repo


def test_an_unsigned_commit_is_not_applied(signed_example: SpecRepo, ssh_keys: SshKeys) -> None:
    """With --allowed-signers an unsigned head applies nothing; last_error says which commit and why."""
    set_routing(signed_example, '{"2": 100}')
    unsigned = signed_example.commit("unsigned")
    result = signed_example.cli("apply", "--allowed-signers", str(ssh_keys.allowed_signers))
    assert result.code == 1 and result.stderr.strip() == f"error: unverified commit {unsigned}: not signed"
    status = signed_example.cli_json("status")
    assert status["last_error"] == f"unverified commit {unsigned}: not signed"
    assert prod_routing(signed_example) == {"1": 95, "2": 5}


def test_a_commit_signed_by_another_key_is_not_applied(signed_example: SpecRepo, ssh_keys: SshKeys) -> None:
    """A good signature by a key that is not in the allowed-signers file counts for nothing."""
    set_routing(signed_example, '{"2": 100}')
    sha = commit_ssh_signed(signed_example, ssh_keys.stranger, "signed by a stranger")
    result = signed_example.cli("apply", "--allowed-signers", str(ssh_keys.allowed_signers))
    assert result.code == 1 and f"unverified commit {sha}: no good SSH signature" in result.stderr, result.stderr
    assert prod_routing(signed_example) == {"1": 95, "2": 5}


def test_a_commit_signed_by_an_allowed_key_is_applied(signed_example: SpecRepo, ssh_keys: SshKeys) -> None:
    """After a refused commit, the next one signed by an allowed key applies, from the environment variable too."""
    set_routing(signed_example, '{"2": 100}')
    signed_example.commit("unsigned")
    assert signed_example.cli("apply", "--allowed-signers", str(ssh_keys.allowed_signers)).code == 1
    set_routing(signed_example, '{"1": 50, "2": 50}')
    sha = commit_ssh_signed(signed_example, ssh_keys.trusted, "signed")
    os.environ["RECONCILER_ALLOWED_SIGNERS"] = str(ssh_keys.allowed_signers)
    try:
        result = signed_example.cli("apply", output="json")
    finally:
        del os.environ["RECONCILER_ALLOWED_SIGNERS"]
    assert result.code == 0 and result.json["revision"] == sha, result.stderr
    assert prod_routing(signed_example) == {"1": 50, "2": 50}
    assert signed_example.cli_json("status")["last_error"] is None


def test_rollback_to_an_unsigned_commit_is_refused(signed_example: SpecRepo, ssh_keys: SshKeys) -> None:
    """rollback applies only a signed target too (an unsigned commit on the branch is refused, nothing pinned)."""
    set_routing(signed_example, '{"2": 100}')
    unsigned = signed_example.commit("unsigned")
    set_routing(signed_example, '{"1": 50, "2": 50}')
    commit_ssh_signed(signed_example, ssh_keys.trusted, "signed")
    assert signed_example.cli("apply", "--allowed-signers", str(ssh_keys.allowed_signers)).code == 0
    result = signed_example.cli("rollback", unsigned, "--allowed-signers", str(ssh_keys.allowed_signers))
    assert result.code == 1 and "unverified commit" in result.stderr
    assert signed_example.cli_json("status")["pinned"] is None


def test_a_missing_allowed_signers_file_is_one_line(signed_example: SpecRepo, tmp_path: Path) -> None:
    """--allowed-signers naming no file is refused naming the flag and its variable."""
    result = signed_example.cli("apply", "--allowed-signers", str(tmp_path / "nowhere"))
    assert result.code == 1 and "--allowed-signers" in result.stderr and "RECONCILER_ALLOWED_SIGNERS" in result.stderr


def test_gpg_signed_commits(repo: SpecRepo, gpg_keys: GpgKeys) -> None:
    """--trusted-gpg-keys: a commit signed by the trusted key applies; one by another key or none does not."""
    repo.copy_example()
    commit_gpg_signed(repo, gpg_keys, gpg_keys.trusted, "example, signed")
    repo.publish("orders-handler", times=2)
    flags = ("--trusted-gpg-keys", str(gpg_keys.public))
    first = repo.cli("apply", *flags)
    assert first.code == 0, first.stderr
    set_routing(repo, '{"2": 100}')
    stranger = commit_gpg_signed(repo, gpg_keys, gpg_keys.stranger, "signed by a stranger")
    refused = repo.cli("apply", *flags)
    assert refused.code == 1 and f"unverified commit {stranger}: no good OpenPGP signature" in refused.stderr
    assert prod_routing(repo) == {"1": 95, "2": 5}
    set_routing(repo, '{"1": 50, "2": 50}')
    trusted = commit_gpg_signed(repo, gpg_keys, gpg_keys.trusted, "signed")
    applied = repo.cli("apply", *flags, output="json")
    assert applied.code == 0 and applied.json["revision"] == trusted, applied.stderr
    assert prod_routing(repo) == {"1": 50, "2": 50}


def test_an_ssh_signed_commit_is_refused_when_only_gpg_keys_are_trusted(
    signed_example: SpecRepo, gpg_keys: GpgKeys
) -> None:
    """The user's own git configuration never widens the policy: only the keys given count."""
    signed_example.git("config", "gpg.ssh.allowedSignersFile", "/dev/null")
    result = signed_example.cli("apply", "--trusted-gpg-keys", str(gpg_keys.public))
    assert result.code == 1 and "unverified commit" in result.stderr


@pytest.mark.parametrize("url", [False, True], ids=["local", "url"])
def test_the_daemon_refuses_to_start_without_its_allowed_signers_file(
    example_repo: SpecRepo, tmp_path: Path, url: bool
) -> None:
    """run with --allowed-signers naming no file stops at start with one line, for a checkout and a URL alike."""
    repo = example_repo.path.as_uri() if url else str(example_repo.path)
    argv = [sys.executable, "-m", "reconciler", "run", "--repo", repo, "--state-dir", str(tmp_path / "state")]
    argv += ["--listen", "127.0.0.1:0", "--log-format", "json", "--allowed-signers", str(tmp_path / "missing")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "--allowed-signers" in output and "Traceback" not in output, output
