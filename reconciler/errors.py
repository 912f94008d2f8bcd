"""Typed errors shared by every layer; the CLI maps each class to an exit code.

Errors are data (see STYLE.md): a ``SpecError`` is permanent for its revision,
a ``BackendError`` or ``GitError`` may be temporary (the daemon backs off and
retries).  Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Base of every expected failure; ``str()`` is the one-line message."""

    exit_code = 1
    temporary = False


@dataclass(frozen=True)
class SpecIssue:
    """One problem in the specs: where it is and what was expected."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"

    def as_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


class SpecError(ReconcilerError):
    """The specs at a revision are invalid; carries every issue found."""

    def __init__(self, issues: list[SpecIssue], revision: str | None = None) -> None:
        self.issues = list(issues)
        self.revision = revision
        count = len(self.issues)
        head = f"{count} spec error{'s' if count != 1 else ''}"
        if revision:
            head += f" at {revision[:12]}"
        super().__init__(head + ": " + "; ".join(str(i) for i in self.issues[:5]) + (" …" if count > 5 else ""))


class PlanError(SpecError):
    """The specs are valid on their own but cannot be planned against live state."""


class GitError(ReconcilerError):
    """A git operation failed (unknown revision, missing branch, fetch failure)."""

    def __init__(self, message: str, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class BackendError(ReconcilerError):
    """A backend call failed; ``temporary`` says whether retrying may help."""

    def __init__(self, message: str, temporary: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.code = code


class ConflictError(BackendError):
    """The live resource changed under us (e.g. a RevisionId mismatch): re-plan."""

    def __init__(self, message: str, code: str | None = "PreconditionFailedException") -> None:
        super().__init__(message, temporary=True, code=code)


class UnverifiedCommitError(ReconcilerError):
    """The revision to apply carries no good signature from a key of --allowed-signers / --trusted-gpg-keys."""

    def __init__(self, revision: str, why: str) -> None:
        super().__init__(f"unverified commit {revision}: {why}")
        self.revision = revision


class StateError(ReconcilerError):
    """The state directory or instance records are unusable or locked."""


class UsageError(ReconcilerError):
    """The command line asked for something impossible (exit 1, as 2 means "changes")."""


class RolloutError(ReconcilerError):
    """A rollout failed or halted: its commit stays failed (and untagged) until git changes."""
