"""psycopg connections outside SQLAlchemy, for the two jobs a pool cannot do: holding a
session-level advisory lock (leader election) and ``LISTEN`` (billing notifications).

Takes the SQLAlchemy URL from the settings and returns psycopg ``connect`` arguments;
used by ``daemon.leader`` and ``daemon.listen``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import make_url


def is_postgresql(url: str) -> bool:
    try:
        return make_url(url).get_backend_name() == "postgresql"
    except Exception:  # noqa: BLE001 - a malformed URL is reported by the reconciler
        return False


def connect_kwargs(url: str, *, connect_timeout: float = 10.0) -> dict[str, Any]:
    """psycopg.connect() keyword arguments for a ``postgresql[+driver]://`` URL.

    TCP keep-alives make a silently dead server (no FIN) show up as an error within
    about 25 s instead of hanging the connection forever.
    """
    u = make_url(url)
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, int(connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "application_name": "provisiond",
    }
    for key, value in (("host", u.host), ("port", u.port), ("user", u.username),
                       ("password", u.password), ("dbname", u.database)):
        if value is not None:
            kwargs[key] = value
    for key, qv in u.query.items():
        kwargs[key] = qv if isinstance(qv, str) else qv[-1]
    return kwargs


def display(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def close_quietly(conn: Any) -> None:
    """Close a psycopg connection that may be broken already (None: nothing to close)."""
    if conn is None:
        return
    import psycopg

    try:
        conn.close()
    except psycopg.Error:
        pass


def first_line(exc: BaseException) -> str:
    """An error's first line for a log line (psycopg's carry a multi-line context)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
