"""``provisiond status`` and ``provisiond pass``: see and steer the running daemon.

``status`` reads the state store (who leads, or in shared mode the members and their
claims: ``cli.members``; the last passes) and, when the config names
``daemon.metrics_listen``, the daemon's own ``/healthz`` and ``/metrics`` (per target
back-off, degraded parts, pools, a failed reload). It writes nothing and works for
anyone who can read the config and the store.

``pass`` writes a request into the state store, which the leading daemon takes within
a second (``daemon.requests``), and waits for the pass that served it: exit 0 when that
pass converged, 2 when it was partial (a target failed, was refused or backs off), 1
when it failed or no daemon answered in ``--timeout``. It works with every billing
source (SQL or Sonar) and every state store (SQLite or PostgreSQL).
"""

from __future__ import annotations

import fnmatch
import getpass
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from provisiond import settings as settings_mod
from provisiond.cli.commands import EXIT_CHANGES, EXIT_ERROR, EXIT_OK
from provisiond.daemon.leader import file_holder
from provisiond.daemon.metrics import parse_listen
from provisiond.daemon.pg import connect_kwargs, is_postgresql

WAIT_POLL = 0.25
EXIT_BY_RESULT = {"ok": EXIT_OK, "partial": EXIT_CHANGES}


def cmd_pass(settings: settings_mod.Settings, *, targets: list[str] | None,
             accounts: frozenset[str] | None, timeout: float) -> int:
    from provisiond.state.store import StateStore

    known = [r.name for r in settings.router] + (["radius"] if settings.radius is not None else [])
    unknown = [t for t in targets or () if not any(fnmatch.fnmatchcase(n, t) for n in known)]
    if unknown:
        print(f"error: --target {', '.join(map(repr, unknown))} matches no target (targets: "
              f"{', '.join(known) or 'none'})", file=sys.stderr)
        return EXIT_ERROR
    store = StateStore.open(settings.state.url.get_secret_value(), readonly=False)
    try:
        by = f"{getpass.getuser()}@{socket.gethostname()}"
        request_id = store.request_pass(by=by, targets=targets, accounts=accounts)
        what = (f"accounts {', '.join(sorted(accounts))}" if accounts
                else f"targets {', '.join(targets)}" if targets else "a full pass")
        print(f"pass requested ({what}); waiting for the daemon (up to {timeout:.0f}s)",
              file=sys.stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = store.pass_request(request_id)
            if row is not None and row["state"] == "done":
                print(f"pass {row['pass_number']}: {row['result']}: {row['status']}")
                return EXIT_BY_RESULT.get(str(row["result"]), EXIT_ERROR)
            time.sleep(WAIT_POLL)
        row = store.pass_request(request_id)
        taken = row is not None and row["state"] == "taken"
        print("error: " + ("the daemon took the request but its pass has not ended within "
                           f"{timeout:.0f}s (--timeout)" if taken else
                           f"no leading daemon took the request within {timeout:.0f}s: is "
                           "`provisiond run` running on this state store?"), file=sys.stderr)
        return EXIT_ERROR
    finally:
        store.close()


def cmd_status(settings: settings_mod.Settings, *, fmt: str, claims: bool = False) -> int:
    from provisiond.cli import members
    from provisiond.state.store import StateStore

    url = settings.state.url.get_secret_value()
    store = StateStore.open(url, readonly=True)
    try:
        runs = [r for r in store.runs(limit=50) if r.get("mode") == "daemon"][:10]
    finally:
        store.close()
    doc: dict[str, Any] = {"leader": leader_of(url), "passes": [_pass(r) for r in runs]}
    view, why = members.read(settings)
    if members.shown(settings, view):
        if view is not None:
            doc["members"] = members.describe(view, resources=members.resources(settings, view),
                                              ttl=settings.daemon.member_ttl)
        elif why:
            doc["members_error"] = f"cannot read the members from the state store: {why}"
    listen = settings.daemon.metrics_listen
    if listen:
        doc.update(from_daemon(listen))
    if fmt == "json":
        print(json.dumps(doc, indent=2, default=str))
        return EXIT_OK
    for line in _lines(doc, shared=settings.daemon.members == "shared", claims=claims):
        print(line)
    return EXIT_OK


def leader_of(url: str) -> str | None:
    """Who holds the leader lock of the store at ``url`` (None: nobody, or cannot tell)."""
    if is_postgresql(url):
        import psycopg

        from provisiond.daemon.leader import pg_holder

        try:
            with psycopg.connect(**connect_kwargs(url, connect_timeout=5)) as conn:
                return pg_holder(conn)
        except psycopg.Error:
            return None
    from sqlalchemy.engine import make_url
    from pathlib import Path

    database = make_url(url).database or ""
    return file_holder(Path(database + ".lock")) if database else None


def _pass(run: dict[str, Any]) -> dict[str, Any]:
    summary = run.get("summary") or {}
    started, finished = run.get("started_at"), run.get("finished_at")
    duration = (finished - started).total_seconds() if isinstance(started, datetime) \
        and isinstance(finished, datetime) else None
    changes = sum(int(t.get("applied", 0)) for t in (summary.get("targets") or {}).values())
    return {"pass": summary.get("pass"), "at": started, "kind": summary.get("kind", "?"),
            "result": run.get("result") or "running", "changes": changes, "duration": duration,
            "refused": sorted((summary.get("refused") or {}).keys()),
            "errors": sorted((summary.get("errors") or {}).keys()), "member": summary.get("member")}


def from_daemon(listen: str) -> dict[str, Any]:
    host, port = parse_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    out: dict[str, Any] = {"daemon": base}
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            out["metrics"] = _parse_metrics(r.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        out["daemon_error"] = f"cannot reach {base}: {getattr(exc, 'reason', exc)}"
        return out
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            out["health"] = r.read().decode().strip()
    except urllib.error.HTTPError as exc:
        out["health"] = exc.read().decode().strip()
    except (urllib.error.URLError, OSError) as exc:
        out["health"] = f"cannot reach /healthz: {exc}"
    return out


def _parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """name -> labels text -> value, for the series status shows."""
    wanted = ("provisiond_target_backoff_seconds", "provisiond_target_consecutive_failures",
              "provisiond_pool_utilisation_ratio", "provisiond_pool_unallocated_accounts",
              "provisiond_config_reload_failed", "provisiond_leader", "provisiond_conflicts",
              "provisiond_listen_state", "provisiond_mirror_entries", "provisiond_mirror_age_seconds",
              "provisiond_full_pass_interval_seconds")
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(wanted):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        out.setdefault(name, {})[labels.rstrip("}")] = float(value)
    return out


def mirrors(metrics: dict[str, dict[str, float]]) -> dict[str, str]:
    """Per router, the daemon's mirror in words: listen state, entries, last full read."""
    out: dict[str, str] = {}
    states: dict[str, str] = {}
    for labels, value in metrics.get("provisiond_listen_state", {}).items():
        pairs = dict(p.split("=", 1) for p in labels.split(","))
        if value:
            states[pairs["target"].strip('"')] = pairs["state"].strip('"')
    for target, state in states.items():
        key = f'target="{target}"'
        entries = metrics.get("provisiond_mirror_entries", {}).get(key, 0)
        age = metrics.get("provisiond_mirror_age_seconds", {}).get(key, 0)
        text = f"listen {state}"
        if state == "live":
            text += f", {entries:.0f} entries mirrored, confirmed by a full read {age:.0f}s ago"
        elif state in ("down", "refused"):
            text += " (scoped passes print; full-passed at the short interval)"
        out[target] = text
    return out


def _lines(doc: dict[str, Any], *, shared: bool = False, claims: bool = False) -> list[str]:
    from provisiond.cli import members

    nobody = ('none (daemon.members = "shared": every member is active)' if shared
              else "none (no daemon holds the leader lock)")
    out = [f"leader: {doc['leader'] or nobody}"]
    if "members" in doc:
        out += members.lines(doc["members"], claims=claims, standby=not shared)
    if "members_error" in doc:
        out.append(f"members: {doc['members_error']}")
    if "daemon_error" in doc:
        out.append(f"daemon: {doc['daemon_error']}")
    metrics = doc.get("metrics") or {}
    for labels, seconds in sorted(metrics.get("provisiond_target_backoff_seconds", {}).items()):
        target = labels.partition('"')[2].rstrip('"')
        fails = metrics.get("provisiond_target_consecutive_failures", {}).get(labels, 0)
        state = f"backing off {seconds:.0f}s ({fails:.0f} failure(s) in a row)" if seconds else "ok"
        out.append(f"target {target}: {state}")
    for target, mirror in sorted(mirrors(metrics).items()):
        out.append(f"router {target}: {mirror}")
    interval = metrics.get("provisiond_full_pass_interval_seconds", {}).get("")
    if interval:
        out.append(f"full passes: every {interval:.0f}s")
    for labels, share in sorted(metrics.get("provisiond_pool_utilisation_ratio", {}).items()):
        pool = labels.partition('"')[2].rstrip('"')
        short = metrics.get("provisiond_pool_unallocated_accounts", {}).get(labels, 0)
        out.append(f"pool {pool}: {share:.0%} used" + (f", {short:.0f} account(s) without an "
                                                     "address (exhausted)" if short else ""))
    if metrics.get("provisiond_config_reload_failed", {}).get("", 0):
        out.append("reload: the last reload FAILED; the previous configuration runs (see the log)")
    if "health" in doc:
        out += [f"health: {line}" for line in doc["health"].splitlines()]
    out.append("last passes:")
    for p in doc["passes"]:
        at = p["at"].astimezone().strftime("%Y-%m-%d %H:%M:%S") if isinstance(p["at"], datetime) else p["at"]
        took = f"{p['duration']:.1f}s" if p["duration"] is not None else "-"
        extra = (f"  refused: {', '.join(p['refused'])}" if p["refused"] else "") + \
                (f"  failed: {', '.join(p['errors'])}" if p["errors"] else "")
        by = f"  member {p['member']}" if p.get("member") else ""
        out.append(f"  pass {p['pass'] or '?'}  {at}  {p['kind']}  {p['result']}  "
                   f"changes={p['changes']}  {took}{by}{extra}")
    if not doc["passes"]:
        out.append("  none recorded")
    return out
