"""The ``provisiond`` command line: arguments in, a subcommand run, an exit code out.

The outermost edge. Parses arguments, sets up logging, loads the settings and hands
them to the subcommand: ``commands`` (check-config, plan, apply), ``explain``,
``history``, ``ipam``, ``demo``, or ``provisiond.daemon.loop`` for ``run``. Exit codes follow
Terraform's ``-detailed-exitcode``: 0 nothing to do, 2 changes, 1 error.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

from provisiond import __version__
from provisiond import settings as settings_mod
from provisiond.cli.commands import EXIT_ERROR, check_config, cmd_apply, cmd_plan
from provisiond.cli.console import COLOR_CHOICES, ProgressBars, progress_wanted
from provisiond.cli.history import cmd_history
from provisiond.cli.logs import setup_logging
from provisiond.errors import ConfigError, ProvisiondError, SourceError, StoreError

log = logging.getLogger("provisiond")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="provisiond",
        description="Keep MikroTik address lists, FreeRADIUS groups and IP pools in step with billing.",
    )
    p.add_argument("--version", action="version", version=f"provisiond {__version__}")
    p.add_argument(
        "--config", "-c", metavar="PATH",
        help="config file (default: $PROVISIOND_CONFIG, else /etc/provisiond/provisiond.toml)",
    )
    p.add_argument("--verbose", "-v", action="count", default=0, help="more logging (-vv: per change)")
    p.add_argument("--log-format", choices=["text", "json"], default=None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    check = sub.add_parser("check-config", help="validate the config, its secrets, the billing query "
                           "and the mappings (writes nothing)")
    check.add_argument("--connect", action="store_true",
                       help="also log in to every router and the RADIUS database (changes nothing)")

    plan = sub.add_parser("plan", help="show what would change (writes nothing)")
    plan.add_argument("--format", choices=["text", "json"], default="text")
    plan.add_argument("--out", metavar="FILE", help="also save the plan as JSON for apply --plan")
    _scope_and_colour(plan)

    apply = sub.add_parser("apply", help="plan and apply")
    apply.add_argument("--plan", dest="plan_file", metavar="FILE", help="apply exactly this saved plan")
    apply.add_argument("--force", action="store_true", help="apply even over the safety thresholds")
    apply.add_argument("--format", choices=["text", "json"], default="text")
    _scope_and_colour(apply)

    explain = sub.add_parser("explain", help="why an account is (or is not) where it is, per target")
    explain.add_argument("account", metavar="ACCOUNT", help="the billing account id")
    explain.add_argument("--format", choices=["text", "json"], default="text")
    explain.add_argument("--journal", type=int, default=10, metavar="N",
                         help="how many of its last journal entries to show (default 10)")
    _colour(explain)

    demo = sub.add_parser("demo", help="run plan/apply/plan against a built-in simulator and SQLite")
    demo.add_argument("--accounts", type=int, default=300, metavar="N")
    demo.add_argument("--dir", metavar="DIR", help="keep the demo's files here (default: a temp dir)")
    demo.add_argument("--quiet", "-q", action="store_true", help="print only summaries")
    demo.add_argument("--full", action="store_true",
                      help="print every line of the diff (default: a summary per list with a few "
                           "sample lines)")
    _colour(demo)
    demo.add_argument("--source", choices=["sql", "sonar"], default="sql",
                      help="read billing from SQLite (default) or from a fake Sonar's GraphQL API")

    sub.add_parser("run", help="reconcile continuously (the systemd service)")

    status = sub.add_parser("status", help="the running daemon: leader, last passes, targets, "
                            "pools, health (writes nothing)")
    status.add_argument("--format", choices=["text", "json"], default="text")
    status.add_argument("--claims", action="store_true",
                        help="shared mode: every claim (router or global), its member and fencing "
                             "token")

    pass_ = sub.add_parser("pass", help="ask the running daemon for a pass now and wait for it")
    pass_.add_argument("--target", "-t", dest="targets", action="append", metavar="NAME",
                       help="only this target (repeatable)")
    pass_.add_argument("--account", dest="accounts", action="append", metavar="ID",
                       help="only this billing account (repeatable, or ID,ID)")
    pass_.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                       help="how long to wait for the pass (default 300)")

    hist = sub.add_parser("history", help="show the journal of applied changes")
    hist.add_argument("--since", metavar="WHEN", help="ISO time or a duration like 2h, 7d")
    hist.add_argument("--account", metavar="ID")
    hist.add_argument("--limit", type=int, default=200, metavar="N",
                      help="the newest N entries (default 200); says so when there are more")
    hist.add_argument("--format", choices=["text", "json"], default="text")

    try:
        from provisiond.cli import ipam as ipam_cmd

        ipam_cmd.add_parser(sub)
    except ImportError:  # IPAM not installed in this build
        pass
    _config_everywhere(sub)
    return p


def _colour(p: argparse.ArgumentParser) -> None:
    p.add_argument("--color", "--colour", dest="color", choices=COLOR_CHOICES, default="auto",
                   help="colour the text output: auto (a terminal without NO_COLOR), always, never")


def _scope_and_colour(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", "-t", dest="targets", action="append", metavar="NAME",
                   help="only this target: a router name or glob (core-*), or radius; repeatable")
    p.add_argument("--account", dest="accounts", action="append", metavar="ID",
                   help="a scoped pass: only this billing account (repeatable, or ID,ID)")
    _colour(p)


def _accounts(values: list[str] | None) -> frozenset[str] | None:
    """``--account`` values (each may also be comma-separated) -> ids, or None."""
    if not values:
        return None
    ids = frozenset(p.strip() for v in values for p in v.split(",") if p.strip())
    return ids or None


def _config_everywhere(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Accept ``--config`` after the subcommand too (``provisiond plan --config F``).

    SUPPRESS as the default: a subcommand that is not given ``--config`` leaves the
    value from before the subcommand (or None) alone.
    """
    for parser in sub.choices.values():
        parser.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                            help="config file (also accepted before the subcommand)")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _config_everywhere(action)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity=args.verbose, fmt=args.log_format or "text")
    if args.command == "demo":
        from provisiond.cli.demo import run_demo

        return run_demo(accounts=args.accounts, directory=args.dir, quiet=args.quiet,
                        full=args.full, color=args.color, source=args.source)
    path = settings_mod.config_path(args.config)
    if args.command == "check-config":
        return check_config(path, connect=args.connect)
    try:
        settings = settings_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    log_format = args.log_format or settings.daemon.log_format
    if args.log_format is None and settings.daemon.log_format != "text":
        setup_logging(verbosity=args.verbose, fmt=settings.daemon.log_format)
    if args.command in ("plan", "apply"):
        # One pass, then exit: everything it makes is freed by reference counting, and
        # the cycle collector would only rescan what is alive (eight times, 60 ms of a
        # 100,000-account plan). The daemon (``run``) keeps it.
        gc.disable()
    try:
        if args.command == "plan":
            return cmd_plan(settings, fmt=args.format, out=args.out, targets=args.targets,
                            accounts=_accounts(args.accounts), color=args.color)
        if args.command == "apply":
            return cmd_apply(settings, plan_file=args.plan_file, force=args.force, fmt=args.format,
                             targets=args.targets, accounts=_accounts(args.accounts),
                             color=args.color,
                             progress=progress_wanted(log_format))
        if args.command == "explain":
            from provisiond.cli.explain import cmd_explain

            return cmd_explain(settings, args.account, fmt=args.format, color=args.color,
                               journal=args.journal)
        if args.command == "history":
            return cmd_history(settings, args)
        if args.command == "ipam":
            from provisiond.cli import ipam as ipam_cmd

            return int(ipam_cmd.run(args, settings))
        if args.command in ("status", "pass"):
            from provisiond.cli import daemonctl

            if args.command == "status":
                return daemonctl.cmd_status(settings, fmt=args.format, claims=args.claims)
            return daemonctl.cmd_pass(settings, targets=args.targets,
                                      accounts=_accounts(args.accounts), timeout=args.timeout)
        if args.command == "run":
            from provisiond.daemon.loop import run_daemon

            bars = ProgressBars() if progress_wanted(log_format) else None
            return int(run_daemon(path, settings, first_pass_progress=bars))
    except SourceError as exc:  # the one place a CLI billing error says so
        print(f"error: source: {exc}; nothing written", file=sys.stderr)
        return EXIT_ERROR
    except (StoreError, ProvisiondError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    raise AssertionError(args.command)


def entry() -> None:
    """The console script: ``main`` plus a quiet exit when the reader of stdout goes away."""
    # A pass builds hundreds of thousands of small acyclic objects (rows, entries, keys);
    # with the default thresholds the cycle collector rescans them all again and again
    # (half the billing read at 100,000 accounts). Collect far less often; what is
    # loaded at start-up is never scanned again.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        code = main()
        sys.stdout.flush()
        if not gc.isenabled():
            # ``plan`` and ``apply`` (one pass, run without the cycle collector) are done:
            # their store and connections are closed, their output written. Freeing the
            # pass's objects one by one at interpreter exit (100,000 accounts, the
            # readers' cycles) took 0.2 s of a 4 s plan; the OS takes them back at once.
            logging.shutdown()
            sys.stderr.flush()
            os._exit(code)
    except BrokenPipeError:  # e.g. `provisiond plan | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
