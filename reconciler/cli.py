"""The command line (click): parsing and output only; the work is the engine's, the daemon's.

How to extend it (the one pattern every command follows):

* A **common flag** (shared by several commands) is one ``Flag`` entry in ``FLAGS``; add its name to
  the flag sets (``GIT``, ``BACKEND``, ``OUTPUT``...) or ``flags=`` of the commands it applies to.
  It is then accepted before or after the command (``reconciler --repo . plan`` = ``reconciler plan
  --repo .``), read from ``RECONCILER_<FLAG>``, shown in those commands' help only, and reaches the
  command as a field of ``Common`` (add the field there too).
* A **command** is a function ``(common: Common, out: Out, **its own params) -> exit code`` decorated
  with ``@command(parent, "name", flags=..., example="reconciler name ...")`` above its own
  ``@option(...)`` / ``@click.argument(...)`` decorators.  ``option`` is click.option that also reads
  ``RECONCILER_<FLAG>`` and names the variable in help and errors.
* A **daemon flag** is an ``@option`` on ``run`` plus a field of the same name in
  ``reconciler.daemon.DaemonConfig``; ``daemon_config`` copies it over.  Nothing below this module
  imports click: commands hand the engine and daemon frozen dataclasses (``Config``, ``DaemonConfig``).
* A command that **applies actions** (apply, rollback, rollout ...) shows them as they complete:
  ``progress = Progress(out, sys.stderr)``; ``engine.on_wait = progress.wait``; pass
  ``on_action=progress.action`` to the engine; ``progress.close()`` at the end.
* A command **imports what it needs inside it** (``common.engine()``, ``from reconciler.daemon import
  run_daemon``): ``--help`` and usage errors load no engine, only ``run`` loads the daemon, and ``validate``
  (``common.reader()``) no engine, backend, plan or logging (a test checks).
  SIGTERM/SIGINT are held from the console script's first line (``signals``): ``run`` adopts a held one,
  every other command gets it back as it starts.
* Expected failures are ``ReconcilerError``s (each with its ``exit_code``); ``main`` prints them as
  one ``error:`` line on stderr, never a traceback.  Usage errors exit 1 (plan's 2 means "changes").
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click
from click.core import ParameterSource

from reconciler import __version__, signals
from reconciler.errors import ReconcilerError, SpecError, UsageError
from reconciler.sinks import GITHUB_API
from reconciler.terminal import LiveLine

if TYPE_CHECKING:  # imported where a command needs them: `--help` and usage errors load none of them
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    from reconciler.backends.local import LocalCloud
    from reconciler.daemonconfig import DaemonConfig
    from reconciler.engine import ActionDone, Engine, ReconcileResult
    from reconciler.model import Action, PlanWarning
    from reconciler.plan import Plan
    from reconciler.reader import Config, SpecReader

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
LOCK_WAIT = 30.0  # seconds a CLI writer waits for a daemon's reconcile in flight
ENV_PREFIX = "RECONCILER_"
SWITCH_VALUES = "1, true, yes, on or 0, false, no, off"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


# ------------------------------------------------------------------ options


def env_name(flag: str) -> str:
    """``--resync-interval`` -> ``RECONCILER_RESYNC_INTERVAL``."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def _shown(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "off" if value is False else "on" if value is True else str(value)


class EnvOption(click.Option):
    """An option that also reads ``RECONCILER_<FLAG>``: its help shows the variable and the default in force
    (and where it came from); a bad value from the variable is an error that names the variable."""

    def __init__(self, *args: Any, unset: str | None = None, sensitive: bool = False, **kwargs: Any) -> None:
        kwargs.update(show_default=False, show_envvar=False)
        self.documented_default: Any = kwargs.get("default", False if kwargs.get("is_flag") else None)
        super().__init__(*args, **kwargs)
        self.unset = unset  # describes a None default, e.g. "the current branch"
        self.sensitive = sensitive  # the value may hold a secret (a Slack URL's path): help only says it is set

    @property
    def variable(self) -> str:
        return str(self.envvar)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        raw = os.environ.get(self.variable) or None
        source = f" from {self.variable}" if raw is not None else ""
        value: Any = raw if raw is not None else self.documented_default
        if raw is not None and self.sensitive:
            effective = "set"
        elif value is None:
            effective = self.unset or "none"
        elif raw is not None and self.is_flag:
            effective = "on" if raw.strip().lower() in ("1", "true", "yes", "on", "t", "y") else "off"
        else:
            try:
                effective = _shown(self.type.convert(value, self, ctx) if isinstance(value, str) else value)
            except click.BadParameter:
                effective = repr(value)
        text = f"{record[1]} " if record[1] else ""
        return record[0], f"{text}[env {self.variable}; default: {effective}{source}]"

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as exc:
            if ctx.get_parameter_source(self.name or "") is not ParameterSource.ENVIRONMENT:
                raise
            raise self.environment_error(os.environ.get(self.variable, ""), exc, ctx) from None

    def environment_error(self, raw: str, exc: click.BadParameter, ctx: click.Context) -> click.UsageError:
        reason = f"expected {SWITCH_VALUES}" if self.is_flag else exc.message
        return click.UsageError(f"{self.variable}={raw!r} (for {self.opts[-1]}): {reason}", ctx)


def _option_kwargs(decls: Sequence[str], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A value-taking option without a type or metavar shows its name as metavar (``--repo REPO``)."""
    flag = next(d for d in decls if d.startswith("--"))
    if kwargs.get("is_flag") or "metavar" in kwargs or "type" in kwargs:
        return dict(kwargs)
    return {**kwargs, "metavar": flag.lstrip("-").upper().replace("-", "_")}


def option(*decls: str, help: str = "", unset: str | None = None, **kwargs: Any) -> Callable[[Any], Any]:
    """click.option that also reads ``RECONCILER_<FLAG>`` (flag > variable > default), said in its help."""
    flag = next(d for d in decls if d.startswith("--"))
    return click.option(
        *decls, cls=EnvOption, envvar=env_name(flag), help=help, unset=unset, **_option_kwargs(decls, kwargs)
    )


@dataclass(frozen=True)
class Flag:
    """A common flag: its click declaration, made once and attached to every command it applies to."""

    decls: tuple[str, ...]
    help: str
    kwargs: Mapping[str, Any]
    unset: str | None = None

    @property
    def name(self) -> str:
        return next(d for d in self.decls if d.startswith("--")).lstrip("-").replace("-", "_")

    @property
    def variable(self) -> str:
        return env_name(self.decls[-1])

    def param(self) -> EnvOption:
        """The option as a command takes it (reading its variable)."""
        kwargs = _option_kwargs(self.decls, self.kwargs)
        return EnvOption(self.decls, envvar=self.variable, help=self.help, unset=self.unset, **kwargs)

    def before_command(self) -> click.Option:
        """The option as the top-level group takes it: no default, no variable (the command reads those)."""
        kwargs = {k: v for k, v in _option_kwargs(self.decls, self.kwargs).items() if k != "default"}
        return click.Option(self.decls, help=f"{self.help} [env {self.variable}]", **kwargs)


FLAGS: dict[str, Flag] = {
    flag.name: flag
    for flag in (
        Flag(
            ("--repo",), "git repository (path or URL); '.': the one containing the current directory", {"default": "."}
        ),
        Flag(("--branch",), "branch to follow", {}, unset="the current branch; main for a URL"),
        Flag(("--path",), "specs root", {"default": "deploy_specs"}),
        Flag(
            ("--state-dir",),
            "local backend and records",
            {"metavar": "DIR"},
            unset="reconciler/ in the repository's git directory, out of every commit's reach (for a URL: "
            ".reconciler/ in the current directory, or the git directory of the checkout it is in)",
        ),
        Flag(
            ("--instance",), "name of this reconciler instance; tags are applied/<instance>/<n>", {"default": "default"}
        ),
        Flag(("--ssh-key",), "SSH private key for an ssh:// or git@ remote", {"metavar": "PATH"}, unset="ssh's own"),
        Flag(
            ("--known-hosts",),
            "known_hosts file for an SSH remote (host keys are checked strictly)",
            {"metavar": "PATH"},
            unset="ssh's own",
        ),
        Flag(("--backend",), "where live state is", {"type": click.Choice(["local", "aws"]), "default": "local"}),
        Flag(("--region",), "AWS region (aws backend, --lock)", {}, unset="the AWS default chain"),
        Flag(
            ("--endpoint-url",),
            "AWS endpoint, e.g. a moto_server or LocalStack (aws backend, --lock)",
            {"metavar": "URL"},
            unset="AWS's own",
        ),
        Flag(
            ("-o", "--output"),
            "text for people, json for programs",
            {"type": click.Choice(["text", "json"]), "default": "text"},
        ),
        Flag(
            ("--color",),
            "colour the text output; auto: on a terminal unless NO_COLOR is set",
            {"type": click.Choice(["auto", "always", "never"]), "default": "auto"},
        ),
        Flag(("-v", "--verbose"), "log engine events to stderr", {"is_flag": True}),
        Flag(
            ("--allowed-signers",),
            "git's SSH allowed-signers file: only commits with a good signature by one of its keys are applied",
            {"metavar": "FILE"},
            unset="none (signatures not checked)",
        ),
        Flag(
            ("--trusted-gpg-keys",),
            "armored OpenPGP public keys: only commits with a good signature by one of them are applied",
            {"metavar": "FILE"},
            unset="none (signatures not checked)",
        ),
        Flag(
            ("--lock",),
            "DynamoDB table holding the daemon's lease and the instance record (pin, applied revision, rollout "
            "progress); give it to rollback/resume/status too, to act on a cluster's instance from anywhere",
            {"metavar": "dynamodb://TABLE"},
            unset="none (one daemon per state directory, records in the state directory)",
        ),
    )
}

# Flag sets: which common flags a command takes.
SOURCE = ("repo", "branch", "path", "ssh_key", "known_hosts")  # where the specs come from
GIT = (*SOURCE, "state_dir", "instance", "lock")  # ... and the instance's records and tags
BACKEND = ("backend", "region", "endpoint_url")
OUTPUT = ("output", "color", "verbose")
SIGNED = ("allowed_signers", "trusted_gpg_keys")  # who may sign what apply, rollback and run apply


@dataclass(frozen=True)
class Common:
    """The common flags' values, wherever they were given (before or after the command, or the environment)."""

    repo: str = "."
    branch: str | None = None
    path: str = "deploy_specs"
    state_dir: str | None = None
    instance: str = "default"
    ssh_key: str | None = None
    known_hosts: str | None = None
    backend: str = "local"
    region: str | None = None
    endpoint_url: str | None = None
    output: str = "text"
    color: str = "auto"
    verbose: bool = False
    allowed_signers: str | None = None
    trusted_gpg_keys: str | None = None
    lock: str | None = None

    def config(self, allow_empty: bool = False) -> Config:
        """The engine's configuration; ``--instance`` is checked here, as it names tags and files."""
        if not INSTANCE_NAME.fullmatch(self.instance):
            raise UsageError(
                f"--instance {self.instance!r}: expected 1-63 characters of [A-Za-z0-9_-] starting with a letter "
                "or digit (it names git tags and record files)"
            )
        from reconciler.reader import Config

        return Config(
            repo=self.repo,
            branch=self.branch,
            path=self.path,
            backend=self.backend,
            state_dir=self.state_dir,
            instance=self.instance,
            region=self.region,
            endpoint_url=self.endpoint_url,
            extra={key: value for key in ("ssh_key", "known_hosts") if (value := getattr(self, key))},
            allow_empty=allow_empty,
            lock=self.lock,
            allowed_signers=self.allowed_signers,
            trusted_gpg_keys=self.trusted_gpg_keys,
        )

    def engine(self, allow_empty: bool = False) -> Engine:
        """The engine of ``config`` (imported here, by the commands that use one)."""
        from reconciler.engine import Engine

        return Engine(self.config(allow_empty))

    def reader(self) -> SpecReader:
        """What ``validate`` reads the specs with: the engine's repository, state and parse cache, no backend (it
        imports no engine, plan, backend, rollout or logging module), and no memo for a next load (there is none)."""
        from reconciler.reader import SpecReader

        return SpecReader(self.config(), memo=False)


INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
assert set(FLAGS) == {f.name for f in fields(Common)}, "every common flag is a field of Common"


def _flag_spelling(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parsing(click.Command):
    """Usage errors of this CLI: a common flag that does not apply is named as such (not "no such option"),
    a typo gets the closest spelling only, and every error knows its command (for "see ... --help")."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            name = exc.option_name.split("=", 1)[0].lstrip("-").replace("-", "_")
            if not isinstance(self, click.Group) and (name in FLAGS or exc.option_name in ("-o", "-v")):
                raise click.UsageError(f"{exc.option_name} does not apply to `{ctx.command_path}`", ctx) from None
            if exc.possibilities:  # the closest spelling only: "Did you mean '--prune'?"
                raise click.NoSuchOption(exc.option_name, possibilities=exc.possibilities[:1], ctx=ctx) from None
            raise
        except click.UsageError as exc:
            exc.ctx = exc.ctx or ctx
            raise


class Command(_Parsing):
    """A command of this CLI (see ``command``)."""


class Group(_Parsing, click.Group):
    """A group of this CLI: its commands are ``Command``s."""

    command_class = Command


def command(
    parent: click.Group, name: str, *, flags: Sequence[str], example: str, help: str
) -> Callable[[Callable[..., int]], click.Command]:
    """Make ``function(common, out, **own params) -> int`` the command ``name`` of ``parent``.

    ``flags`` names the common flags (of ``FLAGS``) it takes; ``example`` is shown at the end of its help.
    """
    unknown = set(flags) - set(FLAGS)
    assert not unknown, f"no such common flag: {unknown}"

    def decorate(function: Callable[..., int]) -> click.Command:
        own: list[click.Parameter] = list(reversed(getattr(function, "__click_params__", [])))
        common: list[click.Parameter] = [FLAGS[flag].param() for flag in flags]

        @functools.wraps(function)
        def callback(**params: Any) -> int:
            ctx = click.get_current_context()
            values = _common_values(ctx, flags, {flag: params.pop(flag) for flag in flags})
            options = Common(**values)
            out = Out(options.output, colour=options.color)
            ERRORS.colour = options.color
            if name != "run":  # the daemon takes SIGTERM/SIGINT over itself (and adopts one held)
                signals.release()
                configure_cli_logging(options.verbose)
            return function(options, out, **params)

        made = Command(
            name,
            callback=callback,
            params=own + common,
            help=help,
            short_help=help.split(";")[0].split(".")[0],
            epilog=f"\b\nExample:\n  {example}",
            context_settings=CONTEXT,
        )
        parent.add_command(made)
        return made

    return decorate


def _common_values(ctx: click.Context, flags: Sequence[str], given: dict[str, Any]) -> dict[str, Any]:
    """The command's common flags: given after the command, else before it, else the variable or default.

    A common flag given before a command it does not apply to is a usage error.
    """
    root = ctx.find_root()
    before = {
        key: value
        for key, value in root.params.items()
        if root.get_parameter_source(key) is ParameterSource.COMMANDLINE
    }
    for key in before:
        if key not in flags:
            raise click.UsageError(f"{_flag_spelling(key)} does not apply to `{ctx.command_path}`", ctx)
    values = dict(given)
    for key in flags:
        if ctx.get_parameter_source(key) is not ParameterSource.COMMANDLINE and key in before:
            values[key] = before[key]
    return values


@click.group(
    cls=Group,
    context_settings=CONTEXT,
    no_args_is_help=True,
    epilog="\b\nCommon flags go before or after the command; each command's --help lists those it takes.\n"
    "Example:\n  reconciler --repo . plan -o json",
)
@click.version_option(__version__, "--version", prog_name="reconciler", message="%(prog)s %(version)s")
def cli(**_: Any) -> None:
    """GitOps for API Gateway stages and Lambda aliases."""
    check_environment(click.get_current_context())


def _env_options(group: click.Group) -> Iterator[EnvOption]:
    for found in group.commands.values():
        if isinstance(found, click.Group):
            yield from _env_options(found)
        else:
            yield from (param for param in found.params if isinstance(param, EnvOption))


def check_environment(ctx: click.Context) -> None:
    """Every ``RECONCILER_<FLAG>`` set must suit its flag, whichever command runs (a container's environment
    is shared by all of them): a bad one is a usage error naming the variable."""
    seen: set[str] = set()
    for param in _env_options(cli):
        raw = os.environ.get(param.variable)
        if not raw or param.variable in seen:
            continue
        seen.add(param.variable)
        try:
            (click.BOOL if param.is_flag else param.type).convert(raw, param, ctx)
        except click.BadParameter as exc:
            raise param.environment_error(raw, exc, ctx) from None


cli.params.extend(flag.before_command() for flag in FLAGS.values())  # accepted before the command too


@cli.group("local", cls=Group, context_settings=CONTEXT)
def local() -> None:
    """Local backend tools."""


@cli.group("rollout", cls=Group, context_settings=CONTEXT)
def rollout_group() -> None:
    """Act on a rollout under way: promote it or abort it (through the instance record, beside a daemon)."""


# ------------------------------------------------------------------- output


def colour_wanted(setting: str, stream: TextIO) -> bool:
    """``--color``: always, never, or auto (a terminal, and no ``NO_COLOR`` in the environment)."""
    if setting == "always":
        return True
    if setting == "never":
        return False
    return stream.isatty() and "NO_COLOR" not in os.environ


class Out:
    """Writes text for people (coloured on a terminal) or one JSON document."""

    def __init__(self, fmt: str, stream: TextIO | None = None, colour: str = "auto") -> None:
        self.json = fmt == "json"
        self.stream = stream or sys.stdout
        self.colour = colour_wanted(colour, self.stream)

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def line(self, text: str = "") -> None:
        print(text, file=self.stream)

    def document(self, data: Any) -> None:
        print(json.dumps(data, indent=2, sort_keys=False), file=self.stream)


@dataclass
class ErrorStyle:
    colour: str = "auto"  # the command's --color, once parsed


ERRORS = ErrorStyle()


def error_line(message: str, label: str = "error", colour: str = "31") -> None:
    """One line on stderr, whatever the message holds (line breaks in it are escaped)."""
    prefix = f"\033[{colour}m{label}:\033[0m" if colour_wanted(ERRORS.colour, sys.stderr) else f"{label}:"
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    print(f"{prefix} {message}", file=sys.stderr)


def warning_lines(warnings: Sequence[PlanWarning]) -> None:
    """Warnings, one ``warning:`` line each on stderr (as errors are, with ``-o json`` too)."""
    for warning in warnings:
        error_line(str(warning), "warning", "33")


def _abbreviate(value: Any) -> Any:
    """Definition hashes shortened to 12 characters, at any depth."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    if isinstance(value, dict):
        return {k: _abbreviate(v) for k, v in value.items()}
    return value


def _short(value: Any) -> str:
    value = _abbreviate(value)
    if value is None:
        return "(none)"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _field_changes(name: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """One line per changed leaf when both sides are mappings (canary, variables), else one line."""
    if isinstance(old, dict) and isinstance(new, dict) and old and new:
        return [
            (f"{name}.{key}", old.get(key), new.get(key))
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
    return [(name, old, new)]


def plural(count: int, word: str) -> str:
    """``1 API``, ``2 APIs``, ``1 alias``, ``3 aliases``."""
    if count == 1:
        return f"1 {word}"
    return f"{count} {word}es" if word.endswith("s") else f"{count} {word}s"


SYMBOLS = {"create": ("+", "32"), "adopt": ("&", "36"), "update": ("~", "33"), "delete": ("-", "31")}


def render_action(out: Out, action: Action, prefix: str = "  ", suffix: str = "", failed: bool = False) -> None:
    """``  ~ Alias/orders-handler/prod  (update_alias)`` and one line per changed field under it."""
    verb = action.action.split("_", 1)[0]
    symbol, colour = ("!", "31") if failed else SYMBOLS[verb]
    gap = "  " if prefix == "  " else " "
    out.line(out.paint(f"{prefix}{symbol} {action.resource}", colour) + f"{gap}({action.action}){suffix}")
    for name, (old, new) in action.changes.items():
        if verb == "create":
            out.line(f"      {name}: {_short(new)}")
        elif verb == "delete":
            out.line(f"      {name}: {_short(old)}")
        else:
            for leaf, before, after in _field_changes(name, old, new):
                out.line(f"      {leaf}: {_short(before)} → {_short(after)}")


def render_plan(out: Out, plan: Plan) -> None:
    revision = (plan.revision or "")[:12]
    if plan.in_sync:
        out.line(f"In sync at {revision}: no changes.")
    else:
        counts = {verb: sum(1 for a in plan.actions if a.action.startswith(verb)) for verb in SYMBOLS}
        adopt = f", {counts['adopt']} to adopt" if counts["adopt"] else ""
        out.line(
            f"Plan for {revision}: {counts['create']} to create{adopt}, {counts['update']} to change, "
            f"{counts['delete']} to delete."
        )
        for action in plan.actions:
            render_action(out, action)
    if plan.orphans:
        out.line(out.paint(f"Orphaned (managed, no spec; deleted only with --prune): {len(plan.orphans)}", "35"))
        for resource in plan.orphans:
            out.line(f"  ? {resource}")


def report_spec_error(out: Out, exc: SpecError) -> None:
    if out.json:
        out.document({"valid": False, "revision": exc.revision, "errors": [i.as_json() for i in exc.issues]})
    for issue in exc.issues:
        error_line(str(issue))


# ----------------------------------------------------------------- commands

REV = option("--rev", help="revision (default: the pin, else the branch head)", unset="the pin, else the branch head")
ALLOW_EMPTY = option(
    "--allow-empty", is_flag=True, help="let --prune delete every managed resource when the specs declare none"
)
WORKTREE_FLAG = option(
    "--worktree",
    is_flag=True,
    help="read the working tree (uncommitted edits, untracked files not ignored) instead of a commit",
)


def _read_what(engine: SpecReader, rev: str | None, worktree: bool, pinned: bool) -> str:
    """The revision validate/plan read: the working tree, ``--rev``, or the preview target."""
    if worktree:
        if rev is not None:
            raise UsageError("--worktree and --rev: expected one of them (the working tree, or a commit)")
        from reconciler.gitsource import WORKTREE

        return WORKTREE
    return engine.preview_target(rev, pinned=pinned)  # any branch, a detached HEAD: a PR's preview


@command(
    cli,
    "validate",
    flags=(*SOURCE, "state_dir", *OUTPUT),
    example="reconciler validate --rev HEAD~1",
    help="Parse and check the specs at a revision (no backend). Exit 0 valid, 1 invalid.",
)
@option("--rev", help="revision to check", unset="the branch head")
@WORKTREE_FLAG
def cmd_validate(common: Common, out: Out, rev: str | None, worktree: bool) -> int:
    reader = common.reader()
    try:
        revision = _read_what(reader, rev, worktree, pinned=False)
        try:
            desired = reader.desired(revision)
        except SpecError as exc:
            report_spec_error(out, exc)
            return EXIT_ERROR
        summary = {
            "apis": len(desired.apis),
            "stages": len(desired.stages),
            "aliases": len(desired.aliases),
            "basePathMappings": len(desired.mappings),
        }
        if out.json:
            out.document({"valid": True, "revision": revision, "errors": [], **summary})
        else:
            kinds = (("apis", "API"), ("stages", "stage"), ("aliases", "alias"), ("basePathMappings", "mapping"))
            counts = ", ".join(
                plural(summary[key], word) for key, word in kinds if key != "basePathMappings" or summary[key]
            )
            out.line(f"Valid {'in the working tree' if worktree else 'at ' + revision[:12]}: {counts}.")
        return EXIT_OK
    finally:
        reader.close()


@command(
    cli,
    "plan",
    flags=(*GIT, *BACKEND, *OUTPUT),
    example="reconciler plan --prune -o json",
    help="Show what apply would change. Exit 0 in sync, 2 changes, 1 error.",
)
@REV
@option("--prune", is_flag=True, help="also plan deleting orphaned managed resources")
@ALLOW_EMPTY
@WORKTREE_FLAG
def cmd_plan(common: Common, out: Out, rev: str | None, prune: bool, allow_empty: bool, worktree: bool) -> int:
    engine = common.engine(allow_empty)
    try:
        revision = _read_what(engine, rev, worktree, pinned=True)
        if rev is None and not worktree and not out.json:
            say_pinned(out, engine)
        try:
            plan, _, _ = engine.make_plan(revision, prune=prune)
        except SpecError as exc:
            report_spec_error(out, exc)
            return EXIT_ERROR
        # a rollout under way: live is not yet what git says, though its next step may need only time
        under_way = {r: s.view() for r, s in engine.rollouts().items() if s.active and not rev}
        if out.json:
            out.document({**plan.as_json(), "in_sync": plan.in_sync and not under_way, "rollouts": under_way})
        else:
            render_plan(out, plan)
            for line in rollout_lines(under_way):
                out.line(line)
        warning_lines(plan.warnings)
        return EXIT_OK if plan.in_sync and not under_way else EXIT_CHANGES
    finally:
        engine.close()


class Progress:
    """What ``apply`` and ``rollback`` print while they work: each action as it completes
    (``[3/11] + Stage/orders/prod (create_stage) 0.4s``, flushed at once), and on a terminal a live
    line while the backend waits (``waiting 4.2s for the CreateDeployment quota``).  Text output only:
    with ``-o json`` stdout holds the one document."""

    def __init__(self, out: Out, live: TextIO | None = None) -> None:
        self.out = out
        self.live = LiveLine(live) if live is not None and live.isatty() and not out.json else None
        self.done = 0
        self.total: int | None = None

    def action(self, done: ActionDone) -> None:
        self.done, self.total = done.index, done.total
        if self.out.json:
            return
        if self.live is not None:
            self.live.clear()
        status = f" failed after {done.seconds:.1f}s" if done.error else f" {done.seconds:.1f}s"
        render_action(self.out, done.action, f"[{done.index}/{done.total}] ", status, bool(done.error))
        self.out.stream.flush()

    def wait(self, seconds: float, quota: str) -> None:
        """The backend's pacing hook (``Engine.on_wait``): called before it sleeps ``seconds``."""
        if self.live is None:
            return
        step = f"[{self.done + 1}/{self.total}] " if self.total else ""
        self.live.show(f"{step}waiting {{left}} for the {quota}", seconds)

    def close(self) -> None:
        if self.live is not None:
            self.live.clear()


def say_pinned(out: Out, engine: Engine) -> None:
    """While pinned, ``plan`` and ``apply`` say that they work on the pin, not on the branch head."""
    pinned = engine.record().pinned
    if pinned is None:
        return
    head = engine.head()
    ahead = "" if head == pinned.revision else f", not the head of {engine.branch} ({head[:12]})"
    out.line(
        out.paint(f"Pinned to {pinned.revision[:12]} ({pinned.tag or 'revision'})", "35")
        + f": this is what is applied{ahead}; `reconciler resume` follows {engine.branch} again."
    )


def report_result(out: Out, result: ReconcileResult, engine: Engine) -> int:
    """The end of ``apply``/``rollback``: the JSON document, or the summary line (the actions were printed
    as they completed, by ``Progress``)."""
    if out.json:
        out.document(
            {
                "revision": result.revision,
                "result": result.result,
                "applied": [a.as_json() for a in result.applied],
                "tag": result.tag,
                "error": str(result.error) if result.error else None,
                "in_sync": result.ok and not result.progressing,
                "rollouts": {s.resource: s.view() for s in result.rollouts},
                "warnings": [w.as_json() for w in result.all_warnings],
            }
        )
    else:
        if result.ok:
            if result.applied:
                tag = f", tagged {result.tag}" if result.tag else ""
                out.line(
                    f"Applied {len(result.applied)} action{'s' if len(result.applied) != 1 else ''} "
                    f"at {result.revision[:12]}{tag}."
                )
            else:
                out.line(f"In sync at {result.revision[:12]}: nothing to apply.")
                if result.tag:
                    out.line(f"Made {result.tag}, owed by an earlier apply whose tag git could not create then.")
            if result.plan and result.plan.orphans:
                out.line(f"{len(result.plan.orphans)} orphaned resource(s) kept; run with --prune to delete them.")
            if result.progressing:
                for line in rollout_lines({s.resource: s.view() for s in result.rollouts}):
                    out.line(line)
                out.line(
                    "Rollouts under way: the commit is tagged when they succeed; "
                    "the daemon drives them in time, or run `reconciler apply` again."
                )
    warning_lines(result.all_warnings)
    if result.error is not None:
        if isinstance(result.error, SpecError):
            for issue in result.error.issues:
                error_line(str(issue))
        else:
            error_line(str(result.error))
        return result.error.exit_code
    return EXIT_OK


@command(
    cli,
    "apply",
    flags=(*GIT, *SIGNED, *BACKEND, *OUTPUT),
    example="reconciler apply --prune",
    help="One reconcile pass, then exit. Exit 0 ok, 1 error.",
)
@REV
@option("--prune", is_flag=True, help="delete managed resources whose spec is gone")
@ALLOW_EMPTY
def cmd_apply(common: Common, out: Out, rev: str | None, prune: bool, allow_empty: bool) -> int:
    engine = common.engine(allow_empty)
    progress = Progress(out, sys.stderr)
    engine.on_wait = progress.wait
    try:
        if rev is None and not out.json:
            say_pinned(out, engine)
        with engine.state.writer_lock(f"reconciler apply, instance {engine.instance}", wait=LOCK_WAIT):
            result = engine.reconcile(rev, prune=prune, on_action=progress.action)
        progress.close()
        return report_result(out, result, engine)
    finally:
        progress.close()
        engine.close()


@command(
    cli,
    "rollback",
    flags=(*GIT, *SIGNED, *BACKEND, *OUTPUT),
    example="reconciler rollback applied/default/3",
    help="Apply an earlier revision now and pin the instance to it. Exit 0 ok, 1 error.",
)
@click.argument("target", required=False)
@option("--prune", is_flag=True, help="also delete managed resources the target does not name")
@ALLOW_EMPTY
def cmd_rollback(common: Common, out: Out, target: str | None, prune: bool, allow_empty: bool) -> int:
    """TARGET: an applied tag or a revision (default: the applied tag before the current one)."""
    engine = common.engine(allow_empty)
    progress = Progress(out, sys.stderr)
    engine.on_wait = progress.wait
    try:
        with engine.state.writer_lock(f"reconciler rollback, instance {engine.instance}", wait=LOCK_WAIT):
            result = engine.rollback(target, prune=prune, on_action=progress.action)
        progress.close()
        code = report_result(out, result, engine)
        if (result.error is None or result.error.temporary) and not out.json:  # pinned (see Engine.rollback)
            retry = "" if result.error is None else " (the failure is temporary: the next reconcile goes on with it)"
            out.line(
                f"Pinned instance {engine.instance!r} to {result.revision[:12]}{retry}; "
                "`reconciler resume` follows the branch again."
            )
        return code
    finally:
        progress.close()
        engine.close()


@command(
    cli,
    "resume",
    flags=(*GIT, *BACKEND, *OUTPUT),
    example="reconciler resume",
    help="Unpin: follow the branch head again.",
)
def cmd_resume(common: Common, out: Out) -> int:
    engine = common.engine()
    try:
        with engine.state.writer_lock(f"reconciler resume, instance {engine.instance}", wait=LOCK_WAIT):
            was = engine.record().pinned
            record = engine.resume()
        if out.json:
            out.document({"instance": record.instance, "pinned": None, "was_pinned": was is not None})
        elif was is None:
            out.line(f"Instance {record.instance!r} is not pinned; it follows {engine.branch} already.")
        else:
            out.line(
                f"Instance {record.instance!r} unpinned from {was.revision[:12]} ({was.tag or 'revision'}); "
                f"the next reconcile applies the head of {engine.branch}."
            )
        return EXIT_OK
    finally:
        engine.close()


def _rollout_command(common: Common, out: Out, resource: str, what: str) -> int:
    engine = common.engine()
    try:
        with engine.state.writer_lock(f"reconciler rollout {what}, instance {engine.instance}", wait=LOCK_WAIT):
            state = engine.rollout_command(resource, what)
    finally:
        engine.close()
    if out.json:
        out.document({"resource": resource, "command": what, "rollout": state.view()})
    else:
        doing = {"promote": "leaves its current pause", "promote_full": "goes to 100 %", "abort": "rolls back"}
        out.line(
            f"{resource}: the next reconcile {doing[what]} (a running daemon does it now; else `reconciler apply`)."
        )
    return EXIT_OK


@command(
    rollout_group,
    "promote",
    flags=(*GIT, *BACKEND, *OUTPUT),  # the backend flags give --lock its region and endpoint
    example="reconciler rollout promote Alias/orders-handler/prod --full",
    help="Leave the current pause of RESOURCE's rollout now (--full: go to 100 % at once).",
)
@click.argument("resource")
@option("--full", is_flag=True, help="skip every remaining step: the target takes 100 %")
def cmd_rollout_promote(common: Common, out: Out, resource: str, full: bool) -> int:
    """RESOURCE: Alias/<function>/<alias> or Stage/<api>/<stage>."""
    return _rollout_command(common, out, resource, "promote_full" if full else "promote")


@command(
    rollout_group,
    "abort",
    flags=(*GIT, *BACKEND, *OUTPUT),  # the backend flags give --lock its region and endpoint
    example="reconciler rollout abort Stage/orders/prod",
    help="Abort RESOURCE's rollout as a failure with onFailure: rollback (the stable version alone).",
)
@click.argument("resource")
def cmd_rollout_abort(common: Common, out: Out, resource: str) -> int:
    """RESOURCE: Alias/<function>/<alias> or Stage/<api>/<stage>."""
    return _rollout_command(common, out, resource, "abort")


@command(
    cli,
    "status",
    flags=(*GIT, *BACKEND, *OUTPUT),
    example="reconciler status -o json",
    help="Live state, desired and applied revision, pin, last error.",
)
def cmd_status(common: Common, out: Out) -> int:
    engine = common.engine()
    try:
        status = engine.status()
        tags = {tag.revision: tag.name for tag in reversed(engine.history())}  # newest wins
    finally:
        engine.close()
    if out.json:
        out.document(status)
        return EXIT_OK
    render_status(out, status, tags)
    return EXIT_OK


VERDICT_COLOURS = {"synced": "32", "out_of_sync": "33", "progressing": "36", "pinned": "35", "failed": "31"}


def table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Rows with every column padded to its widest cell (trailing blanks dropped)."""
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(max(map(len, rows), default=0))]
    return [indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def render_status(out: Out, status: Mapping[str, Any], tags: Mapping[str, str]) -> None:
    """The verdict first, then revisions (short SHAs with their applied tags), then live stages and aliases."""

    def named(revision: str | None) -> str:
        if revision is None:
            return "(none)"
        return f"{revision[:12]}  {tags[revision]}" if revision in tags else revision[:12]

    out.line(out.paint(status["sync"], VERDICT_COLOURS.get(status["sync"], "0")) + f": {status['sync_reason']}")
    branch, pin = status["branch"] or "the branch", status["pinned"]
    rows = [["instance", f"{status['instance']} ({status['backend']} backend), following {branch}"]]
    if pin:
        rows.append(["pinned", f"{named(pin['revision'])}  since {pin['pinned_at']}"])
        if status["branch_head"] != pin["revision"]:
            rows.append(["branch head", f"{named(status['branch_head'])}  (not applied while pinned)"])
    else:
        rows.append(["desired", f"{named(status['desired_revision'])}  (head of {branch})"])
    applied_at = f"  at {status['applied_at']}" if status.get("applied_at") else ""
    rows.append(["applied", named(status["applied_revision"]) + applied_at])
    if status["attempted_revision"] != status["applied_revision"]:
        rows.append(["attempted", named(status["attempted_revision"])])
    for line in table(rows):
        out.line(line)
    if status["last_error"]:
        out.line(out.paint(f"last error  {status['last_error']}", "31"))

    out.line(f"stages ({len(status['stages'])})")
    stages = []
    for name, stage in status["stages"].items():
        canary = stage["canary"]
        extra = f"canary {canary['percentTraffic']:g}% → {canary['deployment_id']}" if canary else ""
        unmanaged = "unmanaged" if not stage["managed"] else ""
        stages.append([name, f"deployment {stage['deployment_id']}", extra, stage["url"], unmanaged])
    for line in table(stages, "  "):
        out.line(line)
    for line in rollout_lines(status.get("rollouts", {})):
        out.line(line)
    out.line(f"aliases ({len(status['aliases'])})")
    aliases = []
    for name, alias in status["aliases"].items():
        routing = ", ".join(f"{version} {percent:g}%" for version, percent in alias["routing"].items())
        aliases.append([name, routing, "" if alias["managed"] else "unmanaged"])
    for line in table(aliases, "  "):
        out.line(line)
    mappings = status.get("basePathMappings") or {}
    if mappings:  # shown only where custom domains are mapped
        out.line(f"base path mappings ({len(mappings)})")
        rows = [
            [m["url"], f"→ {m['api'] or m['restApiId']}/{m['stage'] or '(none)'}", "" if m["managed"] else "unmanaged"]
            for m in mappings.values()
        ]
        for line in table(rows, "  "):
            out.line(line)


def rollout_lines(rollouts: Mapping[str, Any]) -> list[str]:
    """One line per rollout: ``Alias/orders-handler/prod  progressing  step 2/4  10 % → 2  failures 0``."""
    if not rollouts:
        return []
    lines = [f"rollouts ({len(rollouts)}):"]
    for resource, r in rollouts.items():
        line = (
            f"  {resource}  {r['phase']}  step {r['step']}/{r['steps']}  {r['weight']:g} % → {r['target']}"
            f"  failures {r['failures']}"
        )
        for extra in (r.get("message"), r.get("inconclusive") and f"unread: {r['inconclusive']}"):
            if extra:
                line += f"  ({extra})"
        lines.append(line)
    return lines


@command(
    cli,
    "history",
    flags=(*GIT, *BACKEND, *OUTPUT),
    example="reconciler history --instance blue",
    help="Applied tags, newest first.",
)
def cmd_history(common: Common, out: Out) -> int:
    engine = common.engine()
    try:
        tags = engine.history()
    finally:
        engine.close()
    if out.json:
        out.document([t.as_json() for t in tags])
        return EXIT_OK
    if not tags:
        out.line(f"No applied tags for instance {common.instance!r} yet.")
    for tag in tags:
        row = tag.as_json()
        flag = " (rollback)" if row["rollback"] else ""
        if not row["trusted"]:  # not made by this instance, or its commit left the branch: rollback ignores it
            flag += " (untrusted)"
        out.line(f"{row['tag']:<28} {row['revision'][:12]}  {row['applied_at']}  {row['actions']} action(s){flag}")
    return EXIT_OK


def local_state_dir(common: Common) -> Path:
    """The local backend's directory: ``--state-dir``, else the repository's default (made if missing)."""
    if common.state_dir:
        state = Path(common.state_dir)
    else:  # the default state dir is in the repository
        engine = common.engine()
        state = engine.state.path
        engine.close()
    state.mkdir(parents=True, exist_ok=True)
    return state


@contextlib.contextmanager
def local_cloud(common: Common) -> Iterator[LocalCloud]:
    """The local backend's simulated cloud in its state dir, closed after the command's one call."""
    from reconciler.backends.local import LocalCloud

    cloud = LocalCloud(local_state_dir(common))
    try:
        yield cloud
    finally:
        cloud.close()


@command(
    local,
    "publish-version",
    flags=("repo", "state_dir", *OUTPUT),
    example="reconciler local publish-version orders-handler --state-dir /tmp/state",
    help="Publish a new version of FUNCTION in the local backend (creating the function if needed) and print "
    "its number. With --state-dir it needs no git repository.",
)
@click.argument("function")
def cmd_publish_version(common: Common, out: Out, function: str) -> int:
    with local_cloud(common) as cloud:
        version = cloud.publish_version(function)
    if out.json:
        out.document({"function": function, "version": str(version)})
    else:
        out.line(str(version))
    return EXIT_OK


@command(
    local,
    "create-domain",
    flags=("repo", "state_dir", *OUTPUT),
    example="reconciler local create-domain api.example.com --state-dir /tmp/state",
    help="Create the custom domain name NAME in the local backend, as one made with its certificate in API "
    "Gateway, so that BasePathMapping specs can map its paths. Creating one that exists changes nothing.",
)
@click.argument("name")
def cmd_create_domain(common: Common, out: Out, name: str) -> int:
    with local_cloud(common) as cloud:
        created = cloud.create_domain_name(name)
    if out.json:
        out.document({"domain": name, "created": created})
    else:
        out.line(f"domain {name}: " + ("created" if created else "exists already"))
    return EXIT_OK


@command(
    local,
    "set-alarm",
    flags=("repo", "state_dir", *OUTPUT),
    example="reconciler local set-alarm orders-5xx ALARM",
    help="Set the simulated CloudWatch alarm NAME (created on first use) that rollouts of the local backend watch.",
)
@click.argument("name")
@click.argument("state", type=click.Choice(["OK", "ALARM", "INSUFFICIENT_DATA"]))
def cmd_set_alarm(common: Common, out: Out, name: str, state: str) -> int:
    with local_cloud(common) as cloud:
        changed = cloud.set_alarm(name, state)
    if out.json:
        out.document({"alarm": name, "state": state, "changed": changed})
    else:
        out.line(f"alarm {name}: {state}" + ("" if changed else " (unchanged)"))
    return EXIT_OK


@command(
    cli,
    "run",
    flags=(*GIT, *SIGNED, *BACKEND, "verbose"),
    example="reconciler run --listen 0.0.0.0:8080 --prune",
    help="The daemon: follow the branch until SIGTERM/SIGINT, then exit 0.",
)
@option("--listen", metavar="HOST:PORT", default="127.0.0.1:8080", help="HTTP address")
@option("--interval", type=float, metavar="S", default=30.0, help="seconds between fetches of a remote")
@option("--resync-interval", type=float, metavar="S", default=300.0, help="seconds between drift checks")
@option(
    "--debounce",
    type=float,
    metavar="S",
    default=0.02,
    help="seconds to wait for git ref changes to settle",
)
@option("--no-self-heal", is_flag=True, help="report drift but do not correct it")
@option("--prune", is_flag=True, help="delete orphaned managed resources")
@ALLOW_EMPTY
@option("--once", is_flag=True, help="one reconcile, then exit")
@option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    help="auto: JSON off a terminal",
)
@option("--workdir", metavar="DIR", help="clone of a remote --repo", unset="<state-dir>/repo")
@option("--push-tags", is_flag=True, help="push applied tags to the remote")
@option("--lease-duration", type=float, metavar="S", default=15.0, help="seconds a --lock lease lasts")
@option("--lease-renew-interval", type=float, metavar="S", default=5.0, help="seconds between lease renewals")
@option(
    "--notify",
    multiple=True,
    metavar="SINK",
    sensitive=True,
    help="tell slack:URL, webhook:URL or github about applies and failures; repeatable (variable: comma-separated)",
    unset="none",
)
@option(
    "--github-api-url",
    metavar="URL",
    default=GITHUB_API,
    help="GitHub API for --notify github (GitHub Enterprise: https://HOST/api/v3)",
)
@option("--status-url", metavar="URL", help="target_url of --notify github commit statuses", unset="none")
@option(
    "--worker-deadline",
    type=float,
    metavar="S",
    default=900.0,
    help="seconds a pass may go without progress (an action, a fetch) before /healthz fails",
)
def cmd_run(common: Common, out: Out, **settings: Any) -> int:
    from reconciler.daemon import run_daemon

    config = common.config(settings.pop("allow_empty"))
    return run_daemon(config, daemon_config({**settings, "verbose": common.verbose, "lock": common.lock}))


def daemon_config(params: Mapping[str, Any]) -> DaemonConfig:
    """``run``'s own flags (and --verbose) as the daemon's typed configuration."""
    from reconciler.daemonconfig import DaemonConfig

    return DaemonConfig(**{f.name: params[f.name] for f in fields(DaemonConfig) if f.name in params})


# ------------------------------------------------------------ entry points


def parse(argv: Sequence[str]) -> tuple[click.Command, dict[str, Any]]:
    """The command ``argv`` names and its parameters as the command would get them (common flags merged).

    For tests and tools that want the parsed values without running the command.
    """
    ctx = cli.make_context("reconciler", list(argv))
    group: click.Group = cli
    with ctx:
        while True:
            name, found, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
            assert found is not None and name is not None
            sub = found.make_context(name, rest, parent=ctx)
            if isinstance(found, click.Group):
                group, ctx = found, sub
                continue
            own = dict(sub.params)
            with sub:
                flags = [key for key in FLAGS if key in own]
                merged = _common_values(sub, flags, {key: own.pop(key) for key in flags})
            return found, {**merged, **own}


def parsed_run(argv: Sequence[str]) -> tuple[Config, DaemonConfig]:
    """``reconciler run <argv>`` parsed into the engine's and the daemon's configuration (not started)."""
    _, params = parse(["run", *argv])
    common = Common(**{key: params.pop(key) for key in FLAGS if key in params})
    config = common.config(params.pop("allow_empty"))
    return config, daemon_config({**params, "verbose": common.verbose})


def options_of(*path: str) -> set[str]:
    """Every option spelling of a command, e.g. ``options_of("run")``."""
    found: click.Command = cli
    for name in path:
        assert isinstance(found, click.Group)
        found = found.commands[name]
    return {spelling for param in found.params for spelling in (*param.opts, *param.secondary_opts)}


def configure_cli_logging(verbose: bool) -> None:
    """One-shot commands log engine events only with --verbose, as console lines on stderr.

    Configured as structlog is first imported, by whichever module imports it, not by importing it here:
    ``validate`` logs nothing (but a state directory moved once) and so never loads it (with the asyncio it
    imports, ≈60 ms of CPU, a tenth of a cold validate at 10,000 resources).
    """
    if "structlog" in sys.modules:
        _configure_structlog(verbose)
        return
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterImport)]  # an earlier command's
    sys.meta_path.insert(0, _AfterImport("structlog", functools.partial(_configure_structlog, verbose)))


class _AfterImport:
    """Finds module ``name`` as the other finders do, once, and runs ``then`` right after it is executed."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then
        self.loader: Loader | None = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self  # type: ignore[assignment]  # a loader by duck typing
        return spec

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        assert self.loader is not None
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        assert self.loader is not None
        module.__spec__.loader = module.__loader__ = self.loader  # type: ignore[union-attr]
        self.loader.exec_module(module)
        self.then()


def _configure_structlog(verbose: bool) -> None:
    import logging

    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO if verbose else logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: the exit code of the command, 1 for a usage error (never click's 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args, prog_name="reconciler", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        return EXIT_ERROR
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        error_line(exc.format_message() + where)
        return EXIT_ERROR
    except click.ClickException as exc:
        error_line(exc.format_message())
        return EXIT_ERROR
    except ReconcilerError as exc:
        error_line(str(exc))
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        return 130
    except BrokenPipeError:  # e.g. `reconciler status | head`: the reader left, so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    return code if isinstance(code, int) else EXIT_OK
