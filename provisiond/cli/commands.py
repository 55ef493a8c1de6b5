"""``check-config``, ``plan`` and ``apply``: a Reconciler's results as text, JSON and exit codes.

Called by ``cli.main`` (and by ``cli.demo``, which runs the same steps). Builds a
Reconciler (``provisiond.engine``) from the settings, runs one pass and renders it
with ``core.render``. ``plan`` writes nothing; ``apply`` exits 0 when every target
converged and 1 when any failed or was refused (the others are still applied).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisiond import settings as settings_mod
from provisiond.cli.console import painter, progress_bars
from provisiond.core import render
from provisiond.core.model import Snapshot
from provisiond.errors import ConfigError, PlanRefused, ProvisiondError

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def check_config(path: Path, *, connect: bool = False) -> int:
    """Validate the config, read every secret file, run the billing query and check that
    every mapping matches someone in billing; with ``connect``, also log in to every router
    and the RADIUS database. Writes nothing anywhere. Exit 0 OK, 1 problems."""
    try:
        settings = settings_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        print(f"{path}: {len(exc.problems)} problem(s)")
        return EXIT_ERROR
    problems = secret_problems(settings)
    warnings = settings_mod.warnings(path, settings)
    from provisiond.sources.sql import SqlSource

    snapshot: Snapshot | None = None
    try:
        if settings.source.type == "sonar":
            problems += _check_sonar(settings)
        else:
            assert settings.source.query is not None
            source = SqlSource(settings.source.resolved_url(), settings.source.query,
                               timeout=settings.source.timeout, display=settings.source.display_url(),
                               needs=settings.flags_used())
            try:
                found = source.check_columns()
                problems += found
                if not found:
                    snapshot = source.read()
            finally:
                source.close()
    except ConfigError:
        pass  # an unreadable source.password_file / token_file: reported by secret_problems
    except ProvisiondError as exc:
        problems.append(f"source: {exc}")
    except Exception as exc:  # noqa: BLE001 - e.g. an unknown driver in the URL
        problems.append(f"source.url: {type(exc).__name__}: {exc}")
    if snapshot is not None:
        from provisiond.engine.checks import unmatched_problems

        problems += unmatched_problems(settings, snapshot)
        warnings += pool_billing_warnings(settings, snapshot)
        warnings += notify_warnings(settings)
    if settings.radius is not None and not any(p.startswith("radius.") for p in problems):
        import sqlalchemy as sa

        from provisiond.targets.radius import check_radius_config

        usernames = [u for a in snapshot.accounts.values() for u in a.usernames] if snapshot else []
        try:
            engine = sa.create_engine(settings.radius.resolved_url())
            warnings += check_radius_config(settings, engine, usernames)
            engine.dispose()
        except ProvisiondError as exc:
            problems.append(f"radius: {exc}")
        except Exception as exc:  # noqa: BLE001 - e.g. an unknown driver in the URL
            problems.append(f"radius.url: {type(exc).__name__}: {exc}")
    from provisiond.state.store import permission_warnings

    warnings += permission_warnings(settings.state.url.get_secret_value())
    for w in warnings:
        print(f"warning: {w}")
    failed = 0
    if connect:
        for line, ok in connection_checks(settings):
            print(f"connect: {line}")
            failed += not ok
    for problem in problems:
        print(f"error: {problem}")
    if problems or failed:
        print(f"{path}: {len(problems) + failed} problem(s)")
        return EXIT_ERROR
    print(f"{path}: OK ({len(settings.router)} router(s), {len(settings.address_list)} address list "
          f"mapping(s), {len(settings.radius_group)} RADIUS group(s), {len(settings.pool)} pool(s)"
          + (", every connection tested" if connect else "") + ")")
    return EXIT_OK


_SONAR_KEYS = {"url": "source.url", "token": "source.token_file", "schema": "source (Sonar's schema)",
               "timeout": "source.url", "limit": "source (request limit)", "answer": "source"}


def _check_sonar(settings: settings_mod.Settings) -> list[str]:
    """One small query; the problem names what is wrong: URL, token or schema."""
    from provisiond.sources.sonar import SonarError, SonarSource

    s = settings.source
    token = s.sonar_token()  # a ConfigError names source.token_file
    source = SonarSource(s.resolved_url(), token, page_size=s.sonar_page_size, timeout=s.timeout)
    try:
        source.check()
    except SonarError as exc:
        key = _SONAR_KEYS.get(exc.kind, "source")
        if exc.kind == "token" and s.token is not None:
            key = "source.token"
        return [f"{key}: {exc}"]
    finally:
        source.close()
    return []


def notify_warnings(settings: settings_mod.Settings) -> list[str]:
    """``daemon.notify_channel`` against the billing database: PostgreSQL, and the
    channel its trigger notifies (``provisiond_notify_channel()``, from
    config/billing-notify-trigger.sql) the same. Changes nothing."""
    import sqlalchemy as sa

    channel = settings.daemon.notify_channel
    if channel is None or settings.source.type != "sql":
        return []
    url = sa.engine.make_url(settings.source.resolved_url())
    if url.get_backend_name() != "postgresql":
        return [f"daemon.notify_channel: billing is on {url.get_backend_name()}, not PostgreSQL: "
                "no notifications, passes run on the interval only"]
    timeout = max(1, int(settings.source.timeout))
    engine = sa.create_engine(url, connect_args={"connect_timeout": timeout})
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT to_regproc('provisiond_notify_channel')")).scalar()
            if found is None:
                return ["daemon.notify_channel: the billing database has no "
                        "provisiond_notify_channel(): install (or re-run) "
                        "config/billing-notify-trigger.sql, or make your own triggers NOTIFY "
                        f"{channel!r}"]
            theirs = conn.execute(sa.text("SELECT provisiond_notify_channel()")).scalar()
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return [f"daemon.notify_channel: cannot read the billing trigger's channel: {reason}"]
    finally:
        engine.dispose()
    if theirs != channel:
        return [f"daemon.notify_channel is {channel!r} but the billing database's trigger notifies "
                f"{theirs!r} (provisiond_notify_channel() in config/billing-notify-trigger.sql): "
                "billing changes wait for the next interval"]
    return []


def secret_problems(settings: settings_mod.Settings) -> list[str]:
    """Read every secret file provisiond will need, now rather than at the first pass."""
    checks: list[tuple[str, Callable[[], object]]] = []
    for i, r in enumerate(settings.router):
        if r.password_file is not None:
            checks.append((f"router[{i}].password_file", r.secret))
    if settings.source.password_file is not None:
        checks.append(("source.password_file", settings.source.resolved_url))
    if settings.source.token_file is not None:
        checks.append(("source.token_file", settings.source.sonar_token))
    if settings.radius is not None and settings.radius.password_file is not None:
        checks.append(("radius.password_file", settings.radius.resolved_url))
    if settings.coa.secret_file is not None:
        checks.append(("coa.secret_file", settings.coa.shared_secret))
    out = []
    for where, read in checks:
        try:
            read()
        except ConfigError as exc:
            out += [f"{where}: cannot read {p.split(': cannot read ', 1)[-1]}" for p in exc.problems]
    return out


def pool_billing_warnings(settings: settings_mod.Settings, snapshot: Snapshot) -> list[str]:
    """Pools whose networks overlap billing-assigned addresses or prefixes: allowed (no
    allocation ever collides with them), but worth a look. One line per pool."""
    from provisiond.core import addresses, ipam

    pools = [ipam.Pool.from_settings(p) for p in settings.pool]
    hits: dict[int, list[str]] = {}
    for account in sorted(snapshot.accounts.values(), key=lambda a: ipam.account_order(a.id)):
        for text in account.addresses:
            span = addresses.parse(text)
            if span is None:
                continue
            for i, pool in enumerate(pools):
                if span[0] == pool.version and any(a <= span[2] and span[1] <= b for a, b in pool.networks):
                    hits.setdefault(i, []).append(f"{text} (account {account.id})")
    out = []
    for i, found in sorted(hits.items()):
        shown = ", ".join(found[:5]) + (f", and {len(found) - 5} more" if len(found) > 5 else "")
        out.append(f"pool[{i}].networks: pool {pools[i].name!r} overlaps {len(found)} billing-assigned "
                   f"value(s): {shown}; they are never allocated to anyone else")
    return out


def connection_checks(settings: settings_mod.Settings) -> list[tuple[str, bool]]:
    """Log in to every router and the RADIUS database; change nothing. (line, ok) each."""
    from provisiond.errors import TargetError
    from provisiond.targets.routeros import RouterTarget

    out: list[tuple[str, bool]] = []
    for r in settings.router:
        target = RouterTarget(r, lists=(), marker=settings.marker)
        try:
            out.append((f"{r.name}: ok: {target.check_connection()}", True))
        except (TargetError, ConfigError) as exc:
            out.append((f"{r.name}: FAILED: {_unprefixed(str(exc), r.name)}", False))
        finally:
            target.close()
    if settings.radius is not None:
        from provisiond.targets.radius import check_connection

        try:
            line = check_connection(settings.radius.resolved_url(), timeout=settings.radius.timeout)
            out.append((f"radius: ok: {line}", True))
        except (TargetError, ConfigError) as exc:
            out.append((f"radius: FAILED: {_unprefixed(str(exc), 'radius')}", False))
    return out


def _unprefixed(message: str, name: str) -> str:
    return message.removeprefix(f"{name}: ")


def _reconciler(settings: settings_mod.Settings, *, readonly: bool) -> Any:
    from provisiond.engine import Reconciler

    return Reconciler(settings, readonly=readonly)


def scope_line(pp: Any) -> str | None:
    """``Scope: core-* -> core-1, core-2`` for a plan limited with ``--target``, and
    ``Accounts: 1042, 1043`` for one limited with ``--account``."""
    lines = []
    if pp.accounts is not None:
        shown = sorted(pp.accounts, key=lambda a: (len(a), a))
        lines.append(f"Accounts: {', '.join(shown[:20])}{' …' if len(shown) > 20 else ''} "
                     "(a scoped pass: other accounts not planned nor applied)")
    if not pp.target_patterns:
        return "\n".join(lines) or None
    names = sorted(pp.kinds) or ["(none)"]
    lines.append(f"Scope: {', '.join(pp.target_patterns)} -> {', '.join(names)} "
                 "(other targets not planned nor applied)")
    return "\n".join(lines)


def cmd_plan(
    settings: settings_mod.Settings,
    *,
    fmt: str,
    out: str | None,
    targets: Sequence[str] | None = None,
    accounts: frozenset[str] | None = None,
    color: str = "auto",
    digest: Callable[[str], str] | None = None,
) -> int:
    """``digest`` reshapes the plain text before it is coloured (the demo's summary).
    ``accounts`` (``--account``): a scoped pass for those account ids."""
    rec = _reconciler(settings, readonly=True)
    try:
        pp = rec.plan(targets=targets, accounts=accounts, checksums=bool(out) or fmt == "json")
        safety = rec.safety
    finally:
        rec.close()
    # Say now what apply would refuse, so nobody finds out halfway through a change window.
    refused: dict[str, str] = {}
    for plan in pp.plans:
        try:
            plan.check_safety(safety)
        except PlanRefused as exc:
            refused[plan.target] = ("apply will refuse this without --force: "
                                    + str(exc).removeprefix(f"{plan.target}: "))
    if pp.ipam_refused:
        refused["ipam"] = ("apply will refuse this without --force: "
                           + pp.ipam_refused.removeprefix("ipam: "))
    if out or fmt == "json":
        extra: dict[str, Any] = {"created_at": (pp.now or datetime.now(UTC)).isoformat(),
                                 "notes": pp.notes}
        if pp.target_patterns:
            extra["scope"] = {"targets": list(pp.target_patterns), "resolved": sorted(pp.kinds)}
        if pp.ipam_refused:
            extra["ipam_refused"] = refused["ipam"]
        if pp.ipam_json:
            extra["ipam"] = pp.ipam_json
        if pp.accounts is not None:
            extra["accounts"] = sorted(pp.accounts)
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
        lines = render.render_lines(pp.plans, errors=pp.errors, refused=refused, notes=pp.notes,
                                    ipam=pp.allocation.lines() if pp.allocation else (),
                                    ipam_changes=pp.ipam_changes)
        write_text(_scoped(pp, lines), color=color, digest=digest)
    if pp.errors:
        return EXIT_ERROR
    return EXIT_CHANGES if pp.has_changes else EXIT_OK


def cmd_apply(
    settings: settings_mod.Settings,
    *,
    plan_file: str | None,
    force: bool,
    fmt: str,
    targets: Sequence[str] | None = None,
    accounts: frozenset[str] | None = None,
    color: str = "auto",
    progress: bool = False,
    digest: Callable[[str], str] | None = None,
) -> int:
    """``progress``: live bars on stderr while targets apply (a terminal only)."""
    if plan_file and targets:
        print("error: --target cannot narrow a saved plan: it applies the scope it was made "
              "with; make a new plan with --target", file=sys.stderr)
        return EXIT_ERROR
    if plan_file and accounts:
        print("error: --account cannot narrow a saved plan: it applies the accounts it was "
              "made for; make a new plan with --account", file=sys.stderr)
        return EXIT_ERROR
    rec = _reconciler(settings, readonly=False)
    shown: list[bool] = []  # the plan was shown while the targets were written
    try:
        if plan_file:
            try:
                doc = json.loads(Path(plan_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                print(f"error: {plan_file}: cannot read the saved plan: {exc}", file=sys.stderr)
                return EXIT_ERROR
            pp = rec.load_saved(doc)
            with progress_bars(progress) as bars:
                result = rec.apply(pp, force=force, progress=bars.factory if bars else None)
        else:
            # Each target is written as soon as its own plan is made. Without live
            # progress bars (which own the terminal meanwhile) the plan is shown while
            # the targets are written; it is the same text either way.
            def show(pp: Any, refused: Mapping[str, str]) -> None:
                write_text(_plan_lines(pp, refused), color=color)
                sys.stdout.flush()
                shown.append(True)

            with progress_bars(progress) as bars:
                result = rec.plan_and_apply(
                    force=force, progress=bars.factory if bars else None, targets=targets,
                    accounts=accounts,
                    while_writing=show if bars is None and fmt != "json" and digest is None else None)
            pp = result.plan
    finally:
        rec.close()
    if shown:
        write_text(apply_lines(result), color=color)
    elif fmt == "json":
        print(json.dumps(apply_json(result), indent=2, ensure_ascii=False))
    else:
        write_text(itertools.chain(_plan_lines(pp, result.refused), apply_lines(result)),
                   color=color, digest=digest)
    return EXIT_OK if result.ok else EXIT_ERROR


def _plan_lines(pp: Any, refused: Mapping[str, str]) -> Iterator[str]:
    """An apply's plan, as ``plan`` shows it, with what safety refused."""
    return _scoped(pp, render.render_lines(
        pp.plans, errors=pp.errors, refused=refused, notes=pp.notes,
        ipam=pp.allocation.lines() if pp.allocation else (), ipam_changes=pp.ipam_changes))


def _scoped(pp: Any, lines: Iterable[str]) -> Iterator[str]:
    scope = scope_line(pp)
    if scope:
        yield scope
    yield from lines


def write_text(lines: Iterable[str], *, color: str, digest: Callable[[str], str] | None = None,
               chunk: int = 2000) -> None:
    """Lines of human output to stdout, as they are made, ``chunk`` lines per write.

    A cold plan is 400,000 lines: streamed, the whole text is never one string in
    memory. ``digest`` (the demo's summary) needs the whole text, so it still gets it.
    """
    paint = painter(color)
    if digest is not None:
        sys.stdout.write(paint.text(digest("".join(line + "\n" for line in lines))))
        return
    it = iter(lines)
    while batch := "".join(line + "\n" for line in itertools.islice(it, chunk)):
        sys.stdout.write(paint.text(batch))


def apply_lines(result: Any) -> list[str]:
    lines = []
    for r in result.results:
        counts = r.counts()
        state = "ok" if r.ok else "FAILED"
        lines.append(
            f"{r.target}: {state}: {counts['create']} created, {counts['update']} updated, "
            f"{counts['delete']} deleted, {len(r.failed)} failed, {len(r.conflicts)} conflict(s)"
            + (f" [{sum(1 for f in r.followups if f.get('result') == 'ack')} of "
               f"{len(r.followups)} CoA/Disconnect acknowledged]" if r.followups else "")
        )
        if r.error:
            lines.append(f"  error: {r.error.removeprefix(r.target + ': ')}")
        for _, message in r.failed[:50]:
            lines.append(f"  failed: {message}")
        for conflict in r.conflicts[:50]:
            lines.append(f"  conflict: {render.resource_line(conflict.resource)}: {conflict.reason}")
        for f in r.followups:
            if f.get("result") != "ack":
                lines.append(f"  {render.followup_line(f)}: {f.get('result')} {f.get('detail', '')}".rstrip())
    # Refusals and targets that could not be planned are in the plan printed above.
    lines.append(f"Apply: {'ok' if result.ok else 'FAILED'} in {result.duration:.1f}s.")
    return lines


def apply_json(result: Any) -> dict[str, Any]:
    from provisiond.core.changes import change_to_json

    return {
        "ok": result.ok,
        "duration": round(result.duration, 3),
        "scope": list(result.plan.target_patterns),
        "refused": result.refused,
        "errors": result.plan.errors,
        "targets": [
            {
                "target": r.target,
                "ok": r.ok,
                "error": r.error,
                "applied": [change_to_json(c) for c in r.applied],
                "failed": [{**change_to_json(c), "message": m} for c, m in r.failed],
                "conflicts": [c.to_json() for c in r.conflicts],
                "followups": [dict(f) for f in r.followups],
            }
            for r in result.results
        ],
    }
