"""Packaging: the lock (constraints.txt) covers what pyproject.toml asks for, and the image builds from it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", line.strip())
        if match:
            found[canonicalize_name(match[1].split("[")[0])] = Version(match[2])
    return found


def requirements() -> list[Requirement]:
    listed = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    return [Requirement(text) for text in listed]


def test_every_dependency_is_pinned_within_its_bounds() -> None:
    """Each runtime and test dependency has one pinned version in constraints.txt, inside pyproject's range."""
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in constraints.txt (re-run the command at its top)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (requirement, pinned[name])


def test_pyproject_keeps_ranges_not_pins() -> None:
    """pyproject.toml states lower bounds (a library's users resolve); the exact versions live in the lock."""
    for requirement in requirements():
        assert not any(spec.operator == "==" for spec in requirement.specifier), requirement


def test_the_image_installs_from_the_lock_on_a_base_pinned_by_digest() -> None:
    """The Dockerfile installs with -c constraints.txt, on a base image named by tag and sha256 digest."""
    assert "-c constraints.txt" in DOCKERFILE
    assert re.search(r"^ARG BASE=python:3\.11[\w.\-]*@sha256:[0-9a-f]{64}$", DOCKERFILE, re.MULTILINE)
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_healthcheck_and_command_read_the_same_port() -> None:
    """CMD passes no --listen, so the daemon and the HEALTHCHECK both take the port from RECONCILER_LISTEN."""
    command = re.search(r"^CMD (.*)$", DOCKERFILE, re.MULTILINE)
    assert command and "--listen" not in command[1]
    assert re.search(r"^\s+RECONCILER_LISTEN=0\.0\.0\.0:8080", DOCKERFILE, re.MULTILINE)
    healthcheck = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (.*)$", DOCKERFILE, re.MULTILINE)
    assert healthcheck and "os.environ['RECONCILER_LISTEN']" in healthcheck[1]
