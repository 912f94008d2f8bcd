"""Test support: a real temporary git repository of specs, driven through the real CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy_specs"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


class SpecRepo:
    """A git repository in a temp dir, with helpers to commit specs and run the CLI on it."""

    def __init__(self, path: Path, state_dir: Path | None = None) -> None:
        self.path = path
        self.state_dir = state_dir or path.parent / f"{path.name}-state"
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "dev@example.com")
        self.git("config", "user.name", "Dev")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def write(self, relpath: str, text: str) -> None:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def remove(self, relpath: str) -> None:
        (self.path / relpath).unlink()

    def copy_example(self) -> None:
        shutil.copytree(EXAMPLE, self.path / "deploy_specs", dirs_exist_ok=True)

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def cli(self, *args: str, output: str | None = None) -> Result:
        """Run ``reconciler <args> --repo <this> --state-dir <state>`` in-process."""
        argv = [*args, "--repo", str(self.path), "--state-dir", str(self.state_dir)]
        if output:
            argv += ["--output", output]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
        return Result(code, out.getvalue(), err.getvalue())

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, output="json")
        assert result.stdout, result.stderr
        return result.json

    def publish(self, function: str, times: int = 1) -> list[str]:
        return [self.cli("local", "publish-version", function).stdout.strip() for _ in range(times)]
