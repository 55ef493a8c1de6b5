"""Connecting to FreeRADIUS's database, and the checks ``check-config`` runs on it.

``open_engine`` makes the SQLAlchemy engine ``target.RadiusTarget`` keeps (driver
timeouts from ``[radius] timeout``; SQLite made to run an apply as one transaction);
``check_connection`` (``check-config --connect``) reads one row of each table
provisiond writes; ``check_radius_config`` warns of managed groups without reply rows
and of usernames FreeRADIUS's SQL escaping mangles. The database URL's password never
reaches an error or a log line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from provisiond.errors import TargetError
from provisiond.settings import Settings
from provisiond.targets.radius.tables import radgroupreply, radreply, radusergroup, reason

# Characters FreeRADIUS's default SQL escaping leaves alone (group_membership_query
# always uses it, even with auto_escape): anything else mangles the username.
SAFE_USERNAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@.-_: /")


def open_engine(url: str, *, timeout: float) -> tuple[Engine, str]:
    """The engine for ``url`` and the URL as errors may show it (no password)."""
    url_obj = sa.engine.make_url(url)
    engine = sa.create_engine(url_obj, pool_pre_ping=True, connect_args=_connect_args(url_obj, timeout))
    if url_obj.get_backend_name() == "sqlite":
        _sqlite_transactions(engine)
    return engine, url_obj.render_as_string(hide_password=True)


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, open transactions (SQLAlchemy's pysqlite recipe).

    pysqlite (Python < 3.12) sends no BEGIN before a SAVEPOINT, so SQLite takes the
    first ``begin_nested`` as the outer transaction and its RELEASE commits: inserts
    written before a later failing row would stay. With an explicit BEGIN the whole
    apply is one transaction again.
    """

    @sa.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi: Any, _record: object) -> None:
        dbapi.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def _connect_args(url: sa.engine.URL, timeout: float) -> dict[str, Any]:
    backend = url.get_backend_name()
    secs = max(1, int(timeout))
    if backend == "postgresql":
        return {"connect_timeout": secs, "options": f"-c statement_timeout={int(timeout * 1000)}"}
    if backend in ("mysql", "mariadb"):
        return {"connect_timeout": secs, "read_timeout": secs, "write_timeout": secs}
    if backend == "sqlite":
        return {"timeout": timeout}
    return {}


def check_connection(url: str, *, timeout: float) -> str:
    """Connect and read one row of each table provisiond writes, changing nothing
    (``check-config --connect``). Raises TargetError naming the database, never its password."""
    url_obj = sa.engine.make_url(url)
    display = url_obj.render_as_string(hide_password=True)
    engine = sa.create_engine(url_obj, connect_args=_connect_args(url_obj, timeout))
    try:
        with engine.connect() as conn:
            for table in (radusergroup, radreply):
                conn.execute(sa.select(table.c.id).limit(1)).all()
    except sa.exc.SQLAlchemyError as exc:
        raise TargetError("radius", f"{display}: {reason(exc)}") from exc
    finally:
        engine.dispose()
    return f"connected to {display}; radusergroup and radreply readable"


def check_radius_config(settings: Settings, engine: Engine, usernames: Iterable[str] = ()) -> list[str]:
    """Warnings an operator should act on: empty managed groups, usernames rlm_sql mangles."""
    out: list[str] = []
    managed = sorted({m.radius_group for m in settings.radius_group})
    if managed:
        try:
            with engine.connect() as conn:
                have = {
                    row.groupname
                    for row in conn.execute(
                        sa.select(radgroupreply.c.groupname).where(radgroupreply.c.groupname.in_(managed)).distinct()
                    )
                }
        except sa.exc.SQLAlchemyError as exc:
            return [f"radius: cannot check radgroupreply: {reason(exc)}"]
        for g in managed:
            if g not in have:
                out.append(
                    f"radius_group {g!r} has no radgroupreply rows: when it sorts first for a user it "
                    "silences every later group (FreeRADIUS stops at a group without reply rows)"
                )
    bad = sorted({u for u in usernames if not set(u) <= SAFE_USERNAME_CHARS})
    for u in bad[:20]:
        odd = "".join(sorted(set(u) - SAFE_USERNAME_CHARS))
        out.append(
            f"radius username {u!r} has characters FreeRADIUS's SQL escaping mangles ({odd!r}): "
            "its groups will not be found; use only A-Z a-z 0-9 @ . - _ : / and space"
        )
    if len(bad) > 20:
        out.append(f"... and {len(bad) - 20} more such radius usernames")
    return out
