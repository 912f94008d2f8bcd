"""The command line: argument parsing and output only; the work is the engine's.

Every command takes the common flags after its own name; every flag may also
come from ``RECONCILER_<FLAG>`` (flag > environment > default).  Expected
errors become one line on stderr and an exit code (``ReconcilerError.exit_code``),
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import structlog

from reconciler import __version__
from reconciler.engine import Config, Engine, ReconcileResult
from reconciler.errors import ReconcilerError, SpecError, UsageError
from reconciler.plan import Action, Plan

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
LOCK_WAIT = 30.0  # seconds a CLI writer waits for a daemon's reconcile in flight


# ------------------------------------------------------------------ parsing


ENV_PREFIX = "RECONCILER_"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def env_name(flag: str) -> str:
    """``--resync-interval`` -> ``RECONCILER_RESYNC_INTERVAL``."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class _Parser(argparse.ArgumentParser):
    """Exits 1 on usage errors (argparse's 2 would read as "changes" for plan); checks values from the environment.

    argparse converts a string default with the option's ``type`` but never
    checks it against ``choices``; values from ``RECONCILER_<FLAG>`` are checked
    here, so a bad variable is a usage error naming the variable.
    """

    def error(self, message: str) -> Any:  # exit 1, as exit 2 means "changes" for plan
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            variable: str | None = getattr(action, "env_var", None)
            raw = os.environ.get(variable) if variable else None
            if raw is None or action.choices is None or getattr(parsed, action.dest, None) != raw:
                continue
            if raw not in action.choices:
                expected = ", ".join(map(str, action.choices))
                self.error(f"{variable}={raw!r}: expected one of {expected}")
        return parsed, extras


def _shown(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "off" if value is False else "on" if value is True else str(value)


def option(
    group: argparse.ArgumentParser | argparse._ArgumentGroup,
    *names: str,
    default: Any = None,
    help: str = "",
    unset: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """An option that also reads ``RECONCILER_<FLAG>``; its help names the variable and the effective default.

    Precedence: the flag, else the variable, else ``default``.  ``unset``
    describes a ``None`` default in the help (e.g. "the current branch").  A
    switch (``action="store_true"``) takes 1/true/yes/on or 0/false/no/off.
    """
    flag = next(n for n in names if n.startswith("--"))
    variable = env_name(flag)
    raw = os.environ.get(variable)
    switch = kwargs.get("action") == "store_true"
    source = ""
    if raw is not None:
        if switch:
            if raw.strip().lower() not in TRUE + FALSE:
                raise UsageError(f"{variable}={raw!r}: expected 1, true, yes, on or 0, false, no, off")
            default = raw.strip().lower() in TRUE
        else:
            default = raw
        source = f" from {variable}"
    elif switch:
        default = False
    if default is None:
        effective = unset or "none"
    else:
        converter = kwargs.get("type")
        try:
            effective = _shown(converter(default) if converter and isinstance(default, str) else default)
        except (TypeError, ValueError):
            effective = repr(default)
    text = f"{help} " if help else ""
    action = group.add_argument(
        *names,
        default=default,
        help=f"{text}[env {variable}; default: {effective}{source}]".replace("%", "%%"),
        **kwargs,
    )
    action.env_var = variable  # type: ignore[attr-defined]
    return action


def common_flags() -> _Parser:
    common = _Parser(add_help=False)
    group = common.add_argument_group("common flags (each also a RECONCILER_<FLAG> environment variable)")
    option(
        group, "--repo", default=".", help="git repository (path or URL); '.': the one containing the current directory"
    )
    option(group, "--branch", help="branch to follow", unset="the current branch; main for a URL")
    option(group, "--path", default="deploy_specs", help="specs root")
    option(group, "--backend", choices=["local", "aws"], default="local", help="where live state is")
    option(
        group,
        "--state-dir",
        help="local backend and records",
        unset=".reconciler/ in the repository root (for a URL: in the current directory)",
    )
    option(
        group, "--instance", default="default", help="name of this reconciler instance; tags are applied/<instance>/<n>"
    )
    option(group, "--output", choices=["text", "json"], default="text", help="text for people, json for programs")
    option(group, "--region", help="AWS region (aws backend, --lock)", unset="the AWS default chain")
    option(
        group,
        "--endpoint-url",
        help="AWS endpoint, e.g. a moto_server or LocalStack (aws backend, --lock)",
        unset="AWS's own",
    )
    option(group, "--ssh-key", metavar="PATH", help="SSH private key for an ssh:// or git@ remote", unset="ssh's own")
    option(
        group,
        "--known-hosts",
        metavar="PATH",
        help="known_hosts file for an SSH remote (host keys are checked strictly)",
        unset="ssh's own",
    )
    option(group, "-v", "--verbose", action="store_true", help="log engine events to stderr")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_flags()
    parser = _Parser(prog="reconciler", description="GitOps for API Gateway stages and Lambda aliases.")
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help_text, description=help_text)

    def prune(parser: argparse.ArgumentParser, help_text: str) -> None:
        option(parser, "--prune", action="store_true", help=help_text)
        allow_empty(parser)

    validate = command("validate", "parse and check the specs at a revision (no backend)")
    validate.add_argument("--rev", help="revision (default: the branch head)")
    plan = command("plan", "show what apply would change; exit 0 in sync, 2 changes, 1 error")
    plan.add_argument("--rev", help="revision (default: the pin, else the branch head)")
    prune(plan, "also plan deleting orphaned managed resources")
    apply = command("apply", "one reconcile pass, then exit")
    apply.add_argument("--rev", help="revision (default: the pin, else the branch head)")
    prune(apply, "delete managed resources whose spec is gone")
    run = command("run", "the daemon: follow the branch until SIGTERM/SIGINT")
    add_daemon_flags(run)
    command("status", "live state, desired/applied revision, pin, last error")
    command("history", "applied tags, newest first")
    rollback = command("rollback", "apply an earlier revision now and pin the instance to it")
    rollback.add_argument(
        "target", nargs="?", help="applied tag or revision (default: the applied tag before the current one)"
    )
    prune(rollback, "also delete managed resources the target does not name")
    command("resume", "unpin: follow the branch head again")
    local = commands.add_parser("local", help="local backend tools")
    local_commands = local.add_subparsers(dest="local_command", required=True, parser_class=_Parser)
    publish = local_commands.add_parser(
        "publish-version", parents=[common], help="publish a new version of a function (created if needed)"
    )
    publish.add_argument("function")
    return parser


def allow_empty(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    option(
        parser,
        "--allow-empty",
        action="store_true",
        help="let --prune delete every managed resource when the specs declare no stage and no alias",
    )


def add_daemon_flags(run: argparse.ArgumentParser) -> None:
    """Flags of ``run``; the daemon module reads them from the namespace."""
    group = run.add_argument_group("daemon flags (each also a RECONCILER_<FLAG> environment variable)")
    option(group, "--listen", metavar="HOST:PORT", default="127.0.0.1:8080", help="HTTP address")
    option(
        group,
        "--interval",
        metavar="S",
        type=float,
        default=30.0,
        help="seconds between fetches of a remote repository",
    )
    option(group, "--resync-interval", metavar="S", type=float, default=300.0, help="seconds between drift checks")
    option(
        group, "--debounce", metavar="S", type=float, default=0.02, help="seconds to wait for git ref changes to settle"
    )
    option(group, "--no-self-heal", action="store_true", help="report drift but do not correct it")
    option(group, "--prune", action="store_true", help="delete orphaned managed resources")
    allow_empty(group)
    option(group, "--once", action="store_true", help="one reconcile, then exit")
    option(group, "--log-format", choices=["auto", "json", "console"], default="auto", help="auto: JSON off a terminal")
    option(group, "--workdir", metavar="DIR", help="clone of a remote --repo", unset="<state-dir>/repo")
    option(group, "--push-tags", action="store_true", help="push applied tags to the remote")
    option(
        group,
        "--lock",
        metavar="dynamodb://TABLE",
        help="leader election among replicas: only the holder of a DynamoDB lease reconciles",
        unset="none (one daemon per state directory, by a file lock)",
    )
    option(group, "--lease-duration", metavar="S", type=float, default=15.0, help="seconds a --lock lease lasts")
    option(group, "--lease-renew-interval", metavar="S", type=float, default=5.0, help="seconds between lease renewals")


INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def config_from(args: argparse.Namespace) -> Config:
    if not INSTANCE_NAME.fullmatch(args.instance):
        raise UsageError(
            f"--instance {args.instance!r}: expected 1-63 characters of [A-Za-z0-9_-] starting with a letter or digit"
            " (it names git tags and record files)"
        )
    return Config(
        repo=args.repo,
        branch=args.branch,
        path=args.path,
        backend=args.backend,
        state_dir=args.state_dir,
        instance=args.instance,
        region=args.region,
        endpoint_url=args.endpoint_url,
        extra={key: value for key in ("ssh_key", "known_hosts") if (value := getattr(args, key, None))},
        allow_empty=bool(getattr(args, "allow_empty", False)),
    )


# ------------------------------------------------------------------- output


class Out:
    """Writes text for people (coloured on a terminal) or one JSON document."""

    def __init__(self, fmt: str, stream: TextIO | None = None) -> None:
        self.json = fmt == "json"
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty() and "NO_COLOR" not in os.environ

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def line(self, text: str = "") -> None:
        print(text, file=self.stream)

    def document(self, data: Any) -> None:
        print(json.dumps(data, indent=2, sort_keys=False), file=self.stream)


def error_line(message: str) -> None:
    """One line on stderr, whatever the message holds (line breaks in it are escaped)."""
    colour = sys.stderr.isatty() and "NO_COLOR" not in os.environ
    prefix = "\033[31merror:\033[0m" if colour else "error:"
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    print(f"{prefix} {message}", file=sys.stderr)


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


SYMBOLS = {"create": ("+", "32"), "update": ("~", "33"), "delete": ("-", "31")}


def render_action(out: Out, action: Action) -> None:
    verb = action.action.split("_", 1)[0]
    symbol, colour = SYMBOLS[verb]
    out.line(out.paint(f"  {symbol} {action.resource}", colour) + f"  ({action.action})")
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
        out.line(
            f"Plan for {revision}: {counts['create']} to create, {counts['update']} to change, "
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


def cmd_validate(args: argparse.Namespace, out: Out) -> int:
    engine = Engine(config_from(args))
    try:
        revision = engine.repo.resolve(args.rev) if args.rev else engine.head()
        try:
            desired = engine.desired(revision)
        except SpecError as exc:
            report_spec_error(out, exc)
            return EXIT_ERROR
        summary = {"apis": len(desired.apis), "stages": len(desired.stages), "aliases": len(desired.aliases)}
        if out.json:
            out.document({"valid": True, "revision": revision, "errors": [], **summary})
        else:
            out.line(
                f"Valid at {revision[:12]}: {summary['apis']} APIs, {summary['stages']} stages, "
                f"{summary['aliases']} aliases."
            )
        return EXIT_OK
    finally:
        engine.close()


def cmd_plan(args: argparse.Namespace, out: Out) -> int:
    engine = Engine(config_from(args))
    try:
        revision = engine.resolve_target(args.rev)
        pinned = engine.record().pinned
        if pinned and not args.rev and not out.json:
            out.line(
                f"Pinned to {pinned.revision[:12]} ({pinned.tag or 'revision'}); "
                "`reconciler resume` to follow the branch."
            )
        try:
            plan, _, _ = engine.make_plan(revision, prune=args.prune)
        except SpecError as exc:
            report_spec_error(out, exc)
            return EXIT_ERROR
        if out.json:
            out.document(plan.as_json())
        else:
            render_plan(out, plan)
        return EXIT_OK if plan.in_sync else EXIT_CHANGES
    finally:
        engine.close()


def report_result(out: Out, result: ReconcileResult, engine: Engine) -> int:
    if out.json:
        out.document(
            {
                "revision": result.revision,
                "result": result.result,
                "applied": [a.as_json() for a in result.applied],
                "tag": result.tag,
                "error": str(result.error) if result.error else None,
                "in_sync": result.ok,
            }
        )
    else:
        for action in result.applied:
            render_action(out, action)
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
    if result.error is not None:
        if isinstance(result.error, SpecError):
            for issue in result.error.issues:
                error_line(str(issue))
        else:
            error_line(str(result.error))
        return result.error.exit_code
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, out: Out) -> int:
    engine = Engine(config_from(args))
    try:
        with engine.state.writer_lock(f"reconciler apply, instance {engine.instance}", wait=LOCK_WAIT):
            result = engine.reconcile(args.rev, prune=args.prune)
        return report_result(out, result, engine)
    finally:
        engine.close()


def cmd_rollback(args: argparse.Namespace, out: Out) -> int:
    engine = Engine(config_from(args))
    try:
        with engine.state.writer_lock(f"reconciler rollback, instance {engine.instance}", wait=LOCK_WAIT):
            result = engine.rollback(args.target, prune=args.prune)
        code = report_result(out, result, engine)
        if (result.error is None or result.error.temporary) and not out.json:  # pinned (see Engine.rollback)
            retry = "" if result.error is None else " (the failure is temporary: the next reconcile goes on with it)"
            out.line(
                f"Pinned instance {engine.instance!r} to {result.revision[:12]}{retry}; "
                "`reconciler resume` follows the branch again."
            )
        return code
    finally:
        engine.close()


def cmd_resume(args: argparse.Namespace, out: Out) -> int:
    engine = Engine(config_from(args))
    try:
        with engine.state.writer_lock(f"reconciler resume, instance {engine.instance}", wait=LOCK_WAIT):
            record = engine.resume()
        if out.json:
            out.document({"instance": record.instance, "pinned": None})
        else:
            out.line(f"Instance {record.instance!r} unpinned; the next reconcile follows {engine.branch}.")
        return EXIT_OK
    finally:
        engine.close()


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    engine = Engine(config_from(args))
    try:
        status = engine.status()
    finally:
        engine.close()
    if out.json:
        out.document(status)
        return EXIT_OK
    out.line(f"instance:  {status['instance']} ({status['backend']} backend)")
    for key in ("desired_revision", "applied_revision", "attempted_revision"):
        out.line(f"{key.replace('_', ' ')}: {status[key] or '(none)'}")
    pin = status["pinned"]
    out.line(f"pinned:    {pin['revision'][:12] + ' (' + (pin['tag'] or 'revision') + ')' if pin else 'no'}")
    if status["last_error"]:
        out.line(out.paint(f"last error: {status['last_error']}", "31"))
    out.line(f"stages ({len(status['stages'])}):")
    for name, stage in status["stages"].items():
        canary = stage["canary"]
        extra = f", canary {canary['percentTraffic']:g}% → {canary['deployment_id']}" if canary else ""
        unmanaged = "" if stage["managed"] else " [unmanaged]"
        out.line(f"  {name}: deployment {stage['deployment_id']}{extra} {stage['url']}{unmanaged}")
    out.line(f"aliases ({len(status['aliases'])}):")
    for name, alias in status["aliases"].items():
        routing = ", ".join(f"{v}: {p}%" for v, p in alias["routing"].items())
        unmanaged = "" if alias["managed"] else " [unmanaged]"
        out.line(f"  {name}: {routing}{unmanaged}")
    return EXIT_OK


def cmd_history(args: argparse.Namespace, out: Out) -> int:
    engine = Engine(config_from(args))
    try:
        tags = engine.history()
    finally:
        engine.close()
    if out.json:
        out.document([t.as_json() for t in tags])
        return EXIT_OK
    if not tags:
        out.line(f"No applied tags for instance {args.instance!r} yet.")
    for tag in tags:
        row = tag.as_json()
        flag = " (rollback)" if row["rollback"] else ""
        out.line(f"{row['tag']:<28} {row['revision'][:12]}  {row['applied_at']}  {row['actions']} action(s){flag}")
    return EXIT_OK


def cmd_publish_version(args: argparse.Namespace, out: Out) -> int:
    if args.backend != "local":
        raise UsageError("publish-version works on the local backend only; publish with the AWS tools")
    from reconciler.backends.local import LocalCloud

    engine = Engine(config_from(args))
    try:
        cloud = LocalCloud(engine.state.path)
        version = cloud.publish_version(args.function)
        cloud.close()
    finally:
        engine.close()
    if out.json:
        out.document({"function": args.function, "version": str(version)})
    else:
        out.line(str(version))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: Out) -> int:
    from reconciler.daemon import run_daemon

    return run_daemon(config_from(args), args)


COMMANDS: dict[str, Callable[[argparse.Namespace, Out], int]] = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "run": cmd_run,
    "status": cmd_status,
    "history": cmd_history,
    "rollback": cmd_rollback,
    "resume": cmd_resume,
    "publish-version": cmd_publish_version,
}


def configure_cli_logging(verbose: bool) -> None:
    """One-shot commands log engine events only with --verbose, as console lines on stderr."""
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
    try:
        parser = build_parser()
    except UsageError as exc:  # a RECONCILER_<FLAG> switch with a value that is no yes or no
        error_line(str(exc))
        return exc.exit_code
    args = parser.parse_args(argv)
    name = args.local_command if args.command == "local" else args.command
    if name != "run":
        configure_cli_logging(args.verbose)
    out = Out(args.output)
    try:
        return COMMANDS[name](args, out)
    except ReconcilerError as exc:
        error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `reconciler status | head`: the reader left, so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
