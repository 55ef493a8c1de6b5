"""The ``provisiond`` command: check-config, plan, apply, demo, run, ipam, history.

The outermost edge: parses arguments, loads the settings, builds a Reconciler and
turns its results into text/JSON and exit codes. ``plan`` follows Terraform's
``-detailed-exitcode``: 0 nothing to do, 2 changes, 1 error. ``apply`` exits 0 when every
target converged and 1 when any failed or was refused (the others are still applied).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisiond import __version__, render
from provisiond import settings as settings_mod
from provisiond.errors import ConfigError, PlanRefused, ProvisiondError, SourceError, StoreError
from provisiond.logs import setup_logging

log = logging.getLogger("provisiond")

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


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

    sub.add_parser("check-config", help="validate the config and test the billing query")

    plan = sub.add_parser("plan", help="show what would change (writes nothing)")
    plan.add_argument("--format", choices=["text", "json"], default="text")
    plan.add_argument("--out", metavar="FILE", help="also save the plan as JSON for apply --plan")

    apply = sub.add_parser("apply", help="plan and apply")
    apply.add_argument("--plan", dest="plan_file", metavar="FILE", help="apply exactly this saved plan")
    apply.add_argument("--force", action="store_true", help="apply even over the safety thresholds")
    apply.add_argument("--format", choices=["text", "json"], default="text")

    demo = sub.add_parser("demo", help="run plan/apply/plan against a built-in simulator and SQLite")
    demo.add_argument("--accounts", type=int, default=300, metavar="N")
    demo.add_argument("--dir", metavar="DIR", help="keep the demo's files here (default: a temp dir)")
    demo.add_argument("--quiet", "-q", action="store_true", help="print only summaries")

    sub.add_parser("run", help="reconcile continuously (the systemd service)")

    hist = sub.add_parser("history", help="show the journal of applied changes")
    hist.add_argument("--since", metavar="WHEN", help="ISO time or a duration like 2h, 7d")
    hist.add_argument("--account", metavar="ID")
    hist.add_argument("--limit", type=int, default=200)
    hist.add_argument("--format", choices=["text", "json"], default="text")

    try:
        from provisiond.commands import ipam as ipam_cmd

        ipam_cmd.add_parser(sub)
    except ImportError:  # IPAM not installed in this build
        pass
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity=args.verbose, fmt=args.log_format or "text")
    if args.command == "demo":
        from provisiond.demo import run_demo

        return run_demo(accounts=args.accounts, directory=args.dir, quiet=args.quiet)
    path = settings_mod.config_path(args.config)
    if args.command == "check-config":
        return check_config(path)
    try:
        settings = settings_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    if args.log_format is None and settings.daemon.log_format != "text":
        setup_logging(verbosity=args.verbose, fmt=settings.daemon.log_format)
    try:
        if args.command == "plan":
            return cmd_plan(settings, fmt=args.format, out=args.out)
        if args.command == "apply":
            return cmd_apply(settings, plan_file=args.plan_file, force=args.force, fmt=args.format)
        if args.command == "history":
            return cmd_history(settings, args)
        if args.command == "ipam":
            from provisiond.commands import ipam as ipam_cmd

            return int(ipam_cmd.run(args, settings))
        if args.command == "run":
            from provisiond.daemon import run_daemon

            return int(run_daemon(path, settings))
    except SourceError as exc:
        print(f"error: source: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (StoreError, ProvisiondError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    raise AssertionError(args.command)


def check_config(path: Path) -> int:
    try:
        settings = settings_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        print(f"{path}: {len(exc.problems)} problem(s)")
        return EXIT_ERROR
    problems: list[str] = []
    warnings = settings_mod.warnings(path, settings)
    from provisiond.sources.sql import SqlSource

    usernames: list[str] = []
    try:
        source = SqlSource(settings.source.resolved_url(), settings.source.query,
                           timeout=settings.source.timeout, display=settings.source.display_url())
        found = source.check_columns()
        problems += found
        if not found and settings.radius is not None:
            snapshot = source.read()
            usernames = [u for a in snapshot.accounts.values() for u in a.usernames]
        source.close()
    except ProvisiondError as exc:
        problems += exc.problems if isinstance(exc, ConfigError) else [f"source: {exc}"]
    except Exception as exc:  # noqa: BLE001 - e.g. an unknown driver in the URL
        problems.append(f"source.url: {type(exc).__name__}: {exc}")
    if settings.radius is not None:
        import sqlalchemy as sa

        from provisiond.targets.radius import check_radius_config

        try:
            engine = sa.create_engine(settings.radius.resolved_url())
            warnings += check_radius_config(settings, engine, usernames)
            engine.dispose()
        except ProvisiondError as exc:
            problems.append(f"radius: {exc}")
        except Exception as exc:  # noqa: BLE001 - e.g. an unknown driver in the URL
            problems.append(f"radius.url: {type(exc).__name__}: {exc}")
    for w in warnings:
        print(f"warning: {w}")
    for problem in problems:
        print(f"error: {problem}")
    if problems:
        print(f"{path}: {len(problems)} problem(s)")
        return EXIT_ERROR
    print(f"{path}: OK ({len(settings.router)} router(s), {len(settings.address_list)} address list "
          f"mapping(s), {len(settings.radius_group)} RADIUS group(s), {len(settings.pool)} pool(s))")
    return EXIT_OK


def _reconciler(settings: settings_mod.Settings, *, readonly: bool) -> Any:
    from provisiond.reconciler import Reconciler

    return Reconciler(settings, readonly=readonly)


def cmd_plan(settings: settings_mod.Settings, *, fmt: str, out: str | None) -> int:
    rec = _reconciler(settings, readonly=True)
    try:
        pp = rec.plan()
        safety = rec.safety
    finally:
        rec.close()
    # Say now what apply would refuse, so nobody finds out halfway through a change window.
    refused: dict[str, str] = {}
    for plan in pp.plans:
        try:
            plan.check_safety(safety)
        except PlanRefused as exc:
            refused[plan.target] = f"apply will refuse this without --force: {exc}"
    if out or fmt == "json":
        extra: dict[str, Any] = {"created_at": (pp.now or datetime.now(UTC)).isoformat(),
                                 "notes": pp.notes}
        if pp.ipam_json:
            extra["ipam"] = pp.ipam_json
        doc = render.render_json(pp.plans, errors=pp.errors, refused=refused, kinds=pp.kinds,
                                 extra=extra)
        if out:
            with Path(out).open("w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2, ensure_ascii=False)
                fh.write("\n")
        if fmt == "json":
            json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
        del doc
    if fmt != "json":
        sys.stdout.write(render.render_text(pp.plans, errors=pp.errors, refused=refused,
                                            notes=pp.notes,
                                            ipam=pp.allocation.lines() if pp.allocation else ()))
    if pp.errors:
        return EXIT_ERROR
    return EXIT_CHANGES if pp.has_changes else EXIT_OK


def cmd_apply(settings: settings_mod.Settings, *, plan_file: str | None, force: bool, fmt: str) -> int:
    rec = _reconciler(settings, readonly=False)
    try:
        if plan_file:
            try:
                doc = json.loads(Path(plan_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                print(f"error: {plan_file}: cannot read the saved plan: {exc}", file=sys.stderr)
                return EXIT_ERROR
            pp = rec.load_saved(doc)
        else:
            pp = rec.plan()
        result = rec.apply(pp, force=force)
    finally:
        rec.close()
    if fmt == "json":
        print(json.dumps(apply_json(result), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render.render_text(pp.plans, errors=pp.errors, refused=result.refused,
                                            notes=pp.notes,
                                            ipam=pp.allocation.lines() if pp.allocation else ()))
        for line in apply_lines(result):
            print(line)
    return EXIT_OK if result.ok else EXIT_ERROR


def apply_lines(result: Any) -> list[str]:
    lines = []
    for r in result.results:
        counts = r.counts()
        state = "ok" if r.ok else "FAILED"
        lines.append(
            f"{r.target}: {state}: {counts['create']} created, {counts['update']} updated, "
            f"{counts['delete']} deleted, {len(r.failed)} failed, {len(r.collisions)} collision(s)"
            + (f" [{sum(1 for f in r.followups if f.get('result') == 'ack')} of "
               f"{len(r.followups)} CoA/Disconnect acknowledged]" if r.followups else "")
        )
        if r.error:
            lines.append(f"  error: {r.error}")
        for _, message in r.failed[:50]:
            lines.append(f"  failed: {message}")
        for conflict in r.collisions[:50]:
            lines.append(f"  collision: {render.resource_line(conflict.resource)}: {conflict.reason}")
        for f in r.followups:
            if f.get("result") != "ack":
                lines.append(f"  {render.followup_line(f)}: {f.get('result')} {f.get('detail', '')}".rstrip())
    for target, message in result.refused.items():
        lines.append(f"{target}: REFUSED: {message}")
    for target, message in result.plan.errors.items():
        lines.append(f"{target}: FAILED: {message}")
    lines.append(f"Apply: {'ok' if result.ok else 'FAILED'} in {result.duration:.1f}s.")
    return lines


def apply_json(result: Any) -> dict[str, Any]:
    from provisiond.changes import change_to_json

    return {
        "ok": result.ok,
        "duration": round(result.duration, 3),
        "refused": result.refused,
        "errors": result.plan.errors,
        "targets": [
            {
                "target": r.target,
                "ok": r.ok,
                "error": r.error,
                "applied": [change_to_json(c) for c in r.applied],
                "failed": [{**change_to_json(c), "message": m} for c, m in r.failed],
                "collisions": [c.to_json() for c in r.collisions],
                "followups": [dict(f) for f in r.followups],
            }
            for r in result.results
        ],
    }


def cmd_history(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from provisiond.store import StateStore

    since = None
    if args.since:
        try:
            since = datetime.now(UTC) - timedelta(seconds=settings_mod.parse_duration(args.since))
        except ValueError:
            try:
                since = datetime.fromisoformat(args.since)
            except ValueError:
                print(f"error: --since: not a time or duration: {args.since!r}", file=sys.stderr)
                return EXIT_ERROR
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
    store = StateStore.open(settings.state.url.get_secret_value(), readonly=True)
    try:
        rows = store.history(since=since, account=args.account, limit=args.limit)
    finally:
        store.close()
    for row in rows:
        if isinstance(row.get("at"), datetime):
            row["at"] = row["at"].isoformat(timespec="seconds")
    if args.format == "json":
        print(json.dumps({"entries": rows}, indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    for row in rows:
        detail = row.get("detail") or {}
        ident = " ".join(str(detail.get(k, "")) for k in ("list", "groupname", "username", "address")
                         if detail.get(k))
        print(f"{row['at']}  {row['target']}  {render.SYMBOL.get(row['action'], '?')} {ident}  "
              f"acct {row.get('account_id', '')}  {row['result']}"
              + (f"  {row['message']}" if row.get("message") else ""))
    return EXIT_OK


def entry() -> None:
    """The console script: ``main`` plus a quiet exit when the reader of stdout goes away."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `provisiond plan | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
