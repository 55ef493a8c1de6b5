"""Live sessions and the CoA / Disconnect-Requests a RADIUS plan calls for.

For every username a plan touches that has an open ``radacct`` session, ``requests``
reads all of the user's ``radusergroup`` / ``radreply`` rows (managed or not) and the
groups' ``radgroupreply`` / ``radgroupcheck`` rows, works out the reply FreeRADIUS
would send before and after the plan (``core.radius.effective_reply``) and, when it
differs, decides per the ``[coa]`` / ``[[radius_group]]`` mode: nothing, a CoA-Request
carrying the new attributes, or a Disconnect-Request when a CoA cannot be trusted
(attributes removed or not changeable by CoA, group check rows). ``target`` sends them
through ``targets.coa`` after the commit; ``followup_json`` is their form in a plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from provisiond.core.changes import Change, Delete, Update
from provisiond.core.radius import COA_CHANGEABLE, effective_reply, reply_diff
from provisiond.settings import CoaMode
from provisiond.targets.coa import CoaRequest
from provisiond.targets.radius.tables import (
    chunks,
    nas,
    radacct,
    radgroupcheck,
    radgroupreply,
    radreply,
    radusergroup,
)

MODE_RANK = {"off": 0, "coa": 1, "disconnect": 2}


@dataclass(slots=True)
class UserPolicy:
    """One username's rows before and after a plan (all groups, not only managed ones)."""

    groups_before: list[tuple[int, str]] = field(default_factory=list)
    groups_after: list[tuple[int, str]] = field(default_factory=list)
    reply_before: list[tuple[str, str, str]] = field(default_factory=list)
    reply_after: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CoaModes:
    """What to do for a changed reply: ``default`` (``[coa] mode``), overridden per managed group."""

    groups: tuple[str, ...]
    default: CoaMode
    per_group: Mapping[str, CoaMode]

    def mode_for(self, p: UserPolicy) -> CoaMode:
        before = {g for _, g in p.groups_before}
        after = {g for _, g in p.groups_after}
        considered = (after ^ before) or (after & set(self.groups))  # joined and left alike
        modes = [self.per_group.get(g, self.default) for g in considered if g in self.groups]
        if not modes:
            return self.default
        return max(modes, key=lambda m: MODE_RANK[m])


def requests(conn: Connection, changes: Sequence[Change], modes: CoaModes) -> list[tuple[CoaRequest, str]]:
    """One request per open session of each user whose reply ``changes`` change, with why."""
    touched = sorted({c.resource.get("username") for c in changes})
    sessions: dict[str, list[Any]] = {}
    for part in chunks(touched):
        for s in conn.execute(
            sa.select(radacct.c.username, radacct.c.acctsessionid, radacct.c.nasipaddress,
                      radacct.c.framedipaddress)
            .where(radacct.c.username.in_(part), radacct.c.acctstoptime.is_(None))
            .order_by(radacct.c.radacctid)
        ):
            sessions.setdefault(s.username, []).append(s)
    if not sessions:
        return []
    users = sorted(sessions)
    policies = _policies(conn, users, [c for c in changes if c.resource.get("username") in sessions])
    groups = {g for p in policies.values() for _, g in (*p.groups_before, *p.groups_after)}
    greply, gchecked = _group_rows(conn, sorted(groups))
    out: list[tuple[CoaRequest, str]] = []
    for user in users:
        decided = decide(policies[user], greply, gchecked, mode=modes.mode_for(policies[user]))
        if decided is None:
            continue
        action, attrs, why = decided
        for s in sessions[user]:
            out.append((
                CoaRequest(
                    action=action, nas=str(s.nasipaddress), username=user,
                    acct_session_id=s.acctsessionid,
                    framed_ip=str(s.framedipaddress or ""), attributes=attrs if action == "coa" else (),
                ),
                why,
            ))
    return out


def _policies(conn: Connection, users: Sequence[str], changes: Sequence[Change]) -> dict[str, UserPolicy]:
    out = {u: UserPolicy() for u in users}
    ug: dict[str, list[Any]] = {}
    rr: dict[str, list[Any]] = {}
    for part in chunks(users):
        for row in conn.execute(sa.select(radusergroup).where(radusergroup.c.username.in_(part))):
            ug.setdefault(row.username, []).append(row)
        for row in conn.execute(sa.select(radreply).where(radreply.c.username.in_(part))):
            rr.setdefault(row.username, []).append(row)
    gone = {(c.resource.kind, c.resource.ref) for c in changes if isinstance(c, (Delete, Update))}
    for user, p in out.items():
        for row in sorted(ug.get(user, []), key=lambda r: r.id):
            p.groups_before.append((row.priority, row.groupname))
            if ("radusergroup", str(row.id)) not in gone:
                p.groups_after.append((row.priority, row.groupname))
        for row in sorted(rr.get(user, []), key=lambda r: r.id):
            p.reply_before.append((row.attribute, row.op, row.value))
            if ("radreply", str(row.id)) not in gone:
                p.reply_after.append((row.attribute, row.op, row.value))
    for c in changes:
        if isinstance(c, Delete):
            continue
        r, p = c.resource, out[c.resource.get("username")]
        if r.kind == "radusergroup":
            p.groups_after.append((int(r.get("priority", "0")), r.get("groupname")))
        else:
            p.reply_after.append((r.get("attribute"), r.get("op", "="), r.get("value")))
    for p in out.values():  # FreeRADIUS: ORDER BY priority (ties: row order, kept stable)
        p.groups_before.sort(key=lambda g: g[0])
        p.groups_after.sort(key=lambda g: g[0])
    return out


def _group_rows(
    conn: Connection, groups: Sequence[str]
) -> tuple[dict[str, list[tuple[str, str, str]]], set[str]]:
    reply: dict[str, list[tuple[str, str, str]]] = {}
    checked: set[str] = set()
    for part in chunks(groups):
        for row in conn.execute(
            sa.select(radgroupreply).where(radgroupreply.c.groupname.in_(part)).order_by(radgroupreply.c.id)
        ):
            reply.setdefault(row.groupname, []).append((row.attribute, row.op, row.value))
        for row in conn.execute(
            sa.select(radgroupcheck.c.groupname).where(radgroupcheck.c.groupname.in_(part)).distinct()
        ):
            checked.add(row.groupname)
    return reply, checked


def decide(
    p: UserPolicy,
    greply: Mapping[str, list[tuple[str, str, str]]],
    gchecked: set[str],
    *,
    mode: CoaMode,
) -> tuple[Any, tuple[tuple[str, str], ...], str] | None:
    """``(action, CoA attributes, why)`` for one user, or None: reply unchanged or mode off."""
    if mode == "off":
        return None
    old_reply, old_groups = effective_reply(p.reply_before, p.groups_before, greply)
    new_reply, new_groups = effective_reply(p.reply_after, p.groups_after, greply)
    if old_reply == new_reply:
        return None
    why = reply_diff(old_reply, new_reply)
    if mode == "disconnect":
        return "disconnect", (), why
    if (old_groups | new_groups) & gchecked:
        return "disconnect", (), why + " (radgroupcheck rows: reply not predictable, CoA unsafe)"
    changed = {a for a in old_reply.keys() | new_reply.keys() if old_reply.get(a) != new_reply.get(a)}
    removed = old_reply.keys() - new_reply.keys()
    if removed or not changed <= COA_CHANGEABLE:
        return "disconnect", (), why
    attrs = tuple((a, v) for a in sorted(new_reply) if a in COA_CHANGEABLE for v in new_reply[a])
    return "coa", attrs, why


def nas_secrets(conn: Connection, addresses: set[str]) -> dict[str, str]:
    """The ``nas`` table's secret per NAS address (``[coa] nas_secrets``)."""
    out: dict[str, str] = {}
    for row in conn.execute(sa.select(nas.c.nasname, nas.c.secret).where(nas.c.nasname.in_(sorted(addresses)))):
        if row.secret:
            out.setdefault(str(row.nasname), str(row.secret))
    return out


def followup_json(req: CoaRequest, why: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": req.action, "username": req.username, "acct_session_id": req.acct_session_id,
        "nas": req.nas, "reason": why,
    }
    if req.framed_ip:
        out["framed_ip"] = req.framed_ip
    if req.attributes:
        out["attributes"] = [[a, v] for a, v in req.attributes]
    return out
