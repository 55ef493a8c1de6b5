"""Shared mode's members as ``provisiond status`` and ``explain`` show them.

Reads the membership tables (``daemon.membersql.read_view``) straight from the state
store on a short-lived connection of its own, so it works with no daemon answering and
tells what the database decides (its clock, its claims), not what one daemon believes.
``describe`` turns that View into a JSON-ready dict, ``lines`` into status's text;
``owner`` names who writes one target, for ``explain``. Writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from provisiond import settings as settings_mod
from provisiond.daemon.metrics import target_names
from provisiond.daemon.pg import close_quietly, connect_kwargs, first_line, is_postgresql
from provisiond.daemon.shares import GLOBAL, LIVE, STOPPED, UNCERTAIN, View

SHOWN = 8  # routers named per member before "and N more" (--claims lists them all)
TIMEOUT = 5  # seconds: connecting, and each statement


def read(settings: settings_mod.Settings) -> tuple[View | None, str | None]:
    """(the View, None), or (None, why not): "" when there is nothing to read (not a
    PostgreSQL store, or one without the membership tables), else the error."""
    url = settings.state.url.get_secret_value()
    if not is_postgresql(url):
        return None, ""
    import psycopg
    from psycopg import sql

    from provisiond.daemon import membersql

    conn = None
    try:
        kwargs = connect_kwargs(url, connect_timeout=TIMEOUT)
        kwargs["application_name"] = "provisiond status"
        conn = psycopg.connect(**kwargs)
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(TIMEOUT * 1000)))
        return membersql.read_view(conn, ttl=settings.daemon.member_ttl), None
    except psycopg.errors.UndefinedTable:
        return None, ""  # a store no daemon of this version has opened yet
    except psycopg.Error as exc:  # its message names host and database, never the password
        return None, first_line(exc)
    finally:
        close_quietly(conn)


def shown(settings: settings_mod.Settings, view: View | None) -> bool:
    """Members are listed in shared mode, and in standby mode while some member is live
    or uncertain (a daemon running shared on this store): stale rows alone say nothing."""
    if settings.daemon.members == "shared":
        return True
    return view is not None and bool(view.ids(LIVE, UNCERTAIN))


def resources(settings: settings_mod.Settings, view: View) -> list[str]:
    """What members claim: every router a pass writes, ``global``, and any claim row."""
    routers = [t for t in target_names(settings) if t != "radius"]
    return sorted({*routers, GLOBAL, *view.claims}, key=_order)


def _order(resource: str) -> tuple[bool, str]:
    return resource == GLOBAL, resource


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    return (f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else
            f"{s / 3600:.0f}h" if s < 172800 else f"{s / 86400:.0f}d")


def _since(view: View, at: datetime | None) -> float | None:
    return None if at is None else round((view.now - at).total_seconds(), 3)


def describe(view: View, *, resources: Sequence[str], ttl: float) -> dict[str, Any]:
    """Members, their live claims, every claim, and what nobody holds: JSON-ready."""
    held: dict[str, dict[str, int]] = {}
    for row in view.claims.values():
        if row.live and row.owner is not None:
            held.setdefault(row.owner, {})[row.resource] = row.token
    members = []
    for m in view.members:
        owned = held.get(m.member_id, {})
        members.append({
            "member_id": m.member_id, "host": m.host, "pid": m.pid, "state": m.state,
            "started_at": m.started_at, "renewed_at": m.renewed_at, "expires_at": m.expires_at,
            "renewed_ago": _since(view, m.renewed_at), "expired_ago": _since(view, m.expires_at),
            "routers": {r: t for r, t in sorted(owned.items()) if r != GLOBAL},
            "global": owned.get(GLOBAL),
        })
    claims = [{"resource": r.resource, "owner": r.owner, "token": r.token, "live": r.live,
               "claimed_at": r.claimed_at, "claimed_ago": _since(view, r.claimed_at),
               "expires_at": r.expires_at, "wanted_by": r.wanted_by}
              for r in sorted(view.claims.values(), key=lambda c: _order(c.resource))]
    live = {r.resource for r in view.claims.values() if r.live and r.owner is not None}
    return {"read_at": view.now, "ttl": ttl, "members": members, "claims": claims,
            "unowned": [r for r in resources if r not in live]}


def owner(view: View, target: str, kind: str) -> dict[str, Any]:
    """Who writes ``target`` now: a router's own claim; radius (and every other global
    work) is the ``global`` claim's. ``member`` None: nobody holds a live claim."""
    resource = target if kind == "routeros" else GLOBAL
    row = view.claims.get(resource)
    out: dict[str, Any] = {"resource": resource, "member": None, "token": None}
    if row is None:
        return out
    if row.live and row.owner is not None:
        return {**out, "member": row.owner, "token": row.token}
    if row.owner is not None:
        out["last"] = {"member": row.owner, "token": row.token,
                       "expired_ago": _since(view, row.expires_at)}
    return out


def owner_line(found: Mapping[str, Any]) -> str:
    """One target's owner for ``explain``'s text."""
    if "error" in found:
        return f"owner: unknown (cannot read the members from the state store: {found['error']})"
    via = "its own claim" if found["resource"] != GLOBAL else "the global claim"
    if found["member"] is not None:
        return f"written by member {found['member']} ({via}, token {found['token']})"
    line = f"unowned: no live claim on {found['resource']}, no member writes it now"
    last = found.get("last")
    if last:
        ago = last["expired_ago"]
        line += (f" (last {last['member']}, token {last['token']}"
                 + (f", expired {_ago(ago)} ago" if ago is not None else "") + ")")
    return line


def lines(doc: Mapping[str, Any], *, claims: bool = False, standby: bool = False) -> list[str]:
    """status's text: a count, one line per member, what nobody holds; ``claims``:
    every claim with its owner and fencing token."""
    members = doc["members"]
    counts: dict[str, int] = {}
    for m in members:
        counts[m["state"]] = counts.get(m["state"], 0) + 1
    each = ", ".join(f"{n} {state}" for state, n in counts.items())
    out = [f"members: {len(members)} ({each})" if members else
           "members: none has joined (is `provisiond run` running with daemon.members = \"shared\"?)"]
    if standby and members:
        out.append("members: note: this configuration says daemon.members = \"standby\", but "
                   "members share this state store")
    for m in members:
        out.append(f"member {m['member_id']}: {_state(m)}, host {m['host']} pid {m['pid']}; "
                   + _holds(m))
    if members and doc["unowned"]:
        out.append(f"unowned: {', '.join(doc['unowned'])} (no live claim: no member writes "
                   f"{'it' if len(doc['unowned']) == 1 else 'them'} now)")
    if claims:
        out.append("claims:")
        for c in doc["claims"]:
            out.append(f"  {c['resource']}: {_claim(c)}")
        if not doc["claims"]:
            out.append("  none")
    return out


def _state(m: Mapping[str, Any]) -> str:
    renewed, expired = m["renewed_ago"], m["expired_ago"]
    if m["state"] == STOPPED:
        return f"stopped {_ago(renewed)} ago"
    if m["state"] == LIVE:
        return f"live (renewed {_ago(renewed)} ago)"
    # uncertain: its routers stay proposed to it for one more ttl; dead: they moved
    return f"{m['state']} (lease ran out {_ago(expired)} ago, renewed {_ago(renewed)} ago)"


def _holds(m: Mapping[str, Any]) -> str:
    routers = list(m["routers"])
    held = "global; " if m["global"] is not None else ""
    if not routers:
        return held + "no routers"
    names = ", ".join(routers[:SHOWN]) + (f" and {len(routers) - SHOWN} more" if len(routers) > SHOWN else "")
    return held + f"{len(routers)} router{'s' if len(routers) != 1 else ''}: {names}"


def _claim(c: Mapping[str, Any]) -> str:
    wanted = f", wanted by {c['wanted_by']}" if c["wanted_by"] else ""
    if c["live"] and c["owner"] is not None:
        at = c["claimed_at"]
        since = (f", since {at.astimezone():%Y-%m-%d %H:%M:%S} ({_ago(c['claimed_ago'])} ago)"
                 if isinstance(at, datetime) else "")
        return f"{c['owner']} token {c['token']}{since}{wanted}"
    last = f" (last {c['owner']}, token {c['token']})" if c["owner"] else f" (token {c['token']})"
    return f"unowned{last}{wanted}"
