"""The README's first hour, run as a newcomer would: a fresh clone, command 1, then the walkthrough.

The commands and the outputs come from README.md itself (its fenced blocks), so the two cannot drift:
command 1 is the line after ``# 1.`` in the first ``sh`` block; in the "Walkthrough" section every
``sh`` block is run line by line, and the ``text`` block after it must be what those lines printed
(stdout and stderr), after both sides have their SHAs, times, durations and the local backend's
random ids replaced by placeholders.  A line ``…`` stands for any number of lines, a ``…`` in a line
for any text.  A line ending in ``# exit N`` must exit N; every other line must exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SET_UP_TIMEOUT = 900  # seconds: a fresh venv installs the dependencies from the package index

pytestmark = pytest.mark.readme


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return [(match[1], match[2]) for match in FENCE.finditer(text)]


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def command_one(text: str) -> str:
    language, body = blocks(text)[0]
    assert language == "sh"
    lines = body.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("# 1.")) + 1]


def steps(text: str) -> list[tuple[list[str], str | None]]:
    """The walkthrough's sh blocks (their command lines), each with the text block that follows it, if any."""
    found: list[tuple[list[str], str | None]] = []
    fenced = blocks(section(text, "Walkthrough"))
    for index, (language, body) in enumerate(fenced):
        if language != "sh":
            continue
        expected = fenced[index + 1][1] if index + 1 < len(fenced) and fenced[index + 1][0] == "text" else None
        commands = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        found.append((commands, expected))
    return found


PLACEHOLDERS = [
    (re.compile(r"https://[a-z0-9]{10}\.execute-api"), "https://API-ID.execute-api"),
    (re.compile(r"(deployment|→) [a-z0-9]{6}\b"), r"\1 DEPLOYMENT-ID"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:\+00:00|Z)"), "TIME"),
    (re.compile(r"\b[0-9a-f]{7,40}\b"), "SHA"),
    (re.compile(r"\b\d+\.\ds\b"), "N.Ns"),
]


def normalised(text: str) -> str:
    for pattern, placeholder in PLACEHOLDERS:
        text = pattern.sub(placeholder, text)
    return text


def matches(expected: str, actual: str) -> bool:
    """``actual`` is what ``expected`` shows, placeholders and ``…`` elisions aside."""
    parts = []
    for line in normalised(expected).splitlines():
        if line == "…":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(re.escape(piece) for piece in line.split("…")) + r"\n")
    return re.fullmatch("".join(parts), normalised(actual)) is not None


def test_matching_allows_elisions_and_placeholders() -> None:
    """The matcher itself: SHAs and times differ, ``…`` elides, anything else must be equal."""
    expected = "Applied 1 action at 8572e1829abd at 2026-12-01T12:50:20+00:00.\n…\nend … here\n"
    assert matches(expected, "Applied 1 action at 0123456789ab at 2027-01-01T00:00:00+00:00.\nx\ny\nend of it here\n")
    assert not matches(expected, "Applied 2 actions at 0123456789ab at 2027-01-01T00:00:00+00:00.\nend here\n")


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh clone of this repository's HEAD on branch main, after README command 1 (daemon stopped)."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs this repository's git history to clone")
    base = tmp_path_factory.mktemp("readme")
    gitconfig = base / "gitconfig"
    gitconfig.write_text(
        "[user]\n\tname = Newcomer\n\temail = newcomer@example.com\n"
        "[commit]\n\tgpgsign = false\n[tag]\n\tgpgsign = false\n[init]\n\tdefaultBranch = main\n",
        encoding="utf-8",
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RECONCILER_", "GIT_", "VIRTUAL_"))}
    env.update(GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1", NO_COLOR="1")
    path = base / "reconciler"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True, env=env)
    subprocess.run(["git", "switch", "-q", "-C", "main"], cwd=path, check=True, env=env)

    # Command 1 verbatim; its daemon on a free port (the variable, not the text, says so), stopped as by Ctrl-C.
    daemon = subprocess.Popen(
        ["bash", "-c", command_one(README.read_text(encoding="utf-8"))],
        cwd=path,
        env={**env, "RECONCILER_LISTEN": "127.0.0.1:0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + SET_UP_TIMEOUT
    try:
        while not tag_list(path, env):
            assert daemon.poll() is None, f"command 1 ended early: {daemon.stdout.read() if daemon.stdout else ''}"
            assert time.monotonic() < deadline, "command 1 applied nothing in time"
            time.sleep(0.5)
    finally:
        os.killpg(daemon.pid, signal.SIGINT)  # Ctrl-C
        output, _ = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, output
    assert "\n1\n2\n" in "\n" + output, output  # the two publish-version lines (after any pip warnings)
    return path, env


def tag_list(path: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run(["git", "tag", "-l", "applied/*"], cwd=path, env=env, capture_output=True, text=True)
    return done.stdout.split()


def test_set_up_leaves_the_clone_clean(clone: tuple[Path, dict[str, str]]) -> None:
    """After command 1, `git status` shows nothing: venv, state and build output are all ignored."""
    path, env = clone
    status = subprocess.run(["git", "status", "--porcelain"], cwd=path, env=env, capture_output=True, text=True)
    assert status.stdout == ""
    assert tag_list(path, env) == ["applied/default/1"]


def test_the_walkthrough_runs_as_written(clone: tuple[Path, dict[str, str]]) -> None:
    """Every walkthrough command exits as the README says and prints what the README shows."""
    path, env = clone
    found = steps(README.read_text(encoding="utf-8"))
    assert len(found) >= 5 and all(expected is not None for _, expected in found)
    for commands, expected in found:
        printed = []
        for command in commands:
            exit_code = re.search(r"#\s*exit (\d+)", command)
            done = subprocess.run(
                ["bash", "-c", command], cwd=path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert done.returncode == (int(exit_code[1]) if exit_code else 0), (command, done.stdout)
            printed.append(done.stdout)
        assert expected is not None
        actual = "".join(printed)
        assert matches(expected, actual), f"{commands}\n--- README shows:\n{expected}--- printed:\n{actual}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_moto_recipe_runs_as_written(tmp_path: Path) -> None:
    """The "Pointing it at moto" recipe, in a fresh clone whose .venv is this one (it has moto from the test
    extra), on a free port instead of 5000: it applies, and the plan after it is in sync."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs this repository's git history to clone")
    text = README.read_text(encoding="utf-8")
    recipe = next(body for language, body in blocks(section(text, "The aws backend")) if "moto_server" in body)
    port = str(free_port())
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n\tname = N\n\temail = n@example.com\n[commit]\n\tgpgsign = false\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RECONCILER_", "GIT_", "AWS_"))}
    env.update(GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1", NO_COLOR="1")
    path = tmp_path / "reconciler"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True, env=env)
    (path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    script = "set -e\n" + recipe.replace("127.0.0.1:5000", f"127.0.0.1:{port}").replace("-p 5000", f"-p {port}")
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # moto_server, started with &, is in this group: killed below
    )
    try:
        output, _ = shell.communicate(timeout=600)
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
    assert shell.returncode == 0, output
    assert "published version 2" in output
    assert re.search(r"^Applied \d+ actions at [0-9a-f]{12}, tagged applied/default/1\.$", output, re.MULTILINE), output
    assert re.search(r"^In sync at [0-9a-f]{12}: no changes\.\n\Z", output, re.MULTILINE), output
