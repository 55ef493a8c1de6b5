"""The SQL writes of one RADIUS apply: ``radusergroup`` / ``radreply`` rows deleted,
created and updated inside the transaction ``target.RadiusTarget`` opens.

Every delete and update must hit exactly the row ``observe`` saw (id, username and
group or attribute), so a row changed since the plan fails the apply rather than
touching someone else's row; creates go in batches, and a failed batch is retried row
by row to name the row the database refused. A failure raises ``RowFailed`` naming the
row; the caller rolls the whole transaction back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from provisiond.core.changes import Change, Create, Delete, Resource, Update
from provisiond.targets.radius.tables import chunks, radreply, radusergroup, reason


def describe(r: Resource) -> str:
    second = r.get("groupname") or r.get("attribute")
    return f"{r.kind} {r.get('username')}/{second}"


class RowFailed(Exception):
    """One row could not be written; the whole transaction rolls back."""


def write(conn: Connection, changes: Sequence[Change]) -> list[tuple[str, str]]:
    """Delete -> Create -> Update; returns the radreply keys no row holds any more."""
    deletes = [c for c in changes if isinstance(c, Delete)]
    creates = [c for c in changes if isinstance(c, Create)]
    updates = [c for c in changes if isinstance(c, Update)]
    for table, kind in ((radusergroup, "radusergroup"), (radreply, "radreply")):
        mine = [c for c in deletes if c.old.kind == kind]
        _checked(conn, table, "delete", mine,
                 table.delete().where(*_where(table)), [_params(table, c.old) for c in mine])
    for table, kind in ((radusergroup, "radusergroup"), (radreply, "radreply")):
        _insert(conn, table, [c.new for c in creates if c.new.kind == kind])
    for table, kind in ((radusergroup, "radusergroup"), (radreply, "radreply")):
        mine_u = [c for c in updates if c.new.kind == kind]
        values: dict[str, Any] = {"priority": sa.bindparam("n_priority")} if table is radusergroup else {
            "op": sa.bindparam("n_op"), "value": sa.bindparam("n_value")}
        params = [_params(table, c.old) | {f"n_{k}": v for k, v in c.new.attrs} for c in mine_u]
        for p in params:
            if "n_priority" in p:
                p["n_priority"] = int(p["n_priority"])
        _checked(conn, table, "update", mine_u,
                 table.update().where(*_where(table)).values(**values), params)
    gone = sorted({(c.old.get("username"), c.old.get("attribute")) for c in deletes if c.old.kind == "radreply"})
    still: set[tuple[str, str]] = set()
    for part in chunks(gone):
        users = sorted({u for u, _ in part})
        for row in conn.execute(
            sa.select(radreply.c.username, radreply.c.attribute).where(radreply.c.username.in_(users))
        ):
            still.add((row.username, row.attribute))
    return [k for k in gone if k not in still]


def _where(table: sa.Table) -> list[Any]:
    second = table.c.groupname if table is radusergroup else table.c.attribute
    return [table.c.id == sa.bindparam("k_id"), table.c.username == sa.bindparam("k_username"),
            second == sa.bindparam("k_second")]


def _params(table: sa.Table, r: Resource) -> dict[str, Any]:
    second = r.get("groupname") if table is radusergroup else r.get("attribute")
    try:
        ref = int(r.ref)
    except ValueError:
        raise RowFailed(f"{describe(r)} has no row id (ref {r.ref!r}); re-plan") from None
    return {"k_id": ref, "k_username": r.get("username"), "k_second": second}


def _checked(
    conn: Connection, table: sa.Table, verb: str, changes: Sequence[Change], stmt: Any,
    params: list[dict[str, Any]],
) -> None:
    """Run ``stmt`` for every row; each must hit exactly the row observe saw."""
    for part_c, part_p in zip(chunks(changes), chunks(params)):
        try:
            hit = conn.execute(stmt, list(part_p)).rowcount
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            raise RowFailed(f"{verb} {describe(part_c[0].resource)} (or a row after it) failed: {reason(exc)}") from exc
        if hit == len(part_p):
            continue
        ids = [p["k_id"] for p in part_p]
        present = {row.id for row in conn.execute(sa.select(table.c.id).where(table.c.id.in_(ids)))}
        for c, p in zip(part_c, part_p):
            if (verb == "delete" and p["k_id"] in present) or (verb == "update" and p["k_id"] not in present):
                raise RowFailed(f"{verb} {describe(c.resource)} (id {p['k_id']}) failed: row changed or gone since observe")
        raise RowFailed(f"{verb} {describe(part_c[0].resource)}: {hit} of {len(part_p)} rows matched; "
                        "rows changed since observe")


def _insert(conn: Connection, table: sa.Table, rows: Sequence[Resource]) -> None:
    def values(r: Resource) -> dict[str, Any]:
        if table is radusergroup:
            return {"username": r.get("username"), "groupname": r.get("groupname"),
                    "priority": int(r.get("priority", "0"))}
        return {"username": r.get("username"), "attribute": r.get("attribute"),
                "op": r.get("op", "="), "value": r.get("value")}

    for part in chunks(rows, 5000):
        batch = [values(r) for r in part]
        try:
            with conn.begin_nested():
                conn.execute(table.insert(), batch)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:  # the database went away: no row to blame
                raise
            for r, v in zip(part, batch):  # find the row to name
                try:
                    with conn.begin_nested():
                        conn.execute(table.insert(), [v])
                except sa.exc.DBAPIError as row_exc:
                    raise RowFailed(f"create {describe(r)} failed: {reason(row_exc)}") from row_exc
            raise RowFailed(f"create {describe(part[0])} (batch) failed: {reason(exc)}") from exc
