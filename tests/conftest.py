"""Shared fixtures: real temporary git repositories of specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import SpecRepo


@pytest.fixture
def repo(tmp_path: Path) -> SpecRepo:
    """An empty git repository on branch main, with its own state dir."""
    return SpecRepo(tmp_path / "repo")


@pytest.fixture
def example_repo(repo: SpecRepo) -> SpecRepo:
    """The example specs committed, with orders-handler versions 1 and 2 published."""
    repo.copy_example()
    repo.commit("example specs")
    repo.publish("orders-handler", times=2)
    return repo
