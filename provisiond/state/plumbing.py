"""The StateStore's plumbing: its SQLAlchemy engine, and the read and write
transactions every part of the store goes through, which turn database errors into a
``StoreError`` naming the store (``StoreBase``, the base of every part).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from provisiond.errors import StoreError


def _insufficient_privilege(exc: sa.exc.DBAPIError) -> bool:
    """PostgreSQL's SQLSTATE 42501: the role may not do this to the table."""
    orig = exc.orig
    return (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) == "42501"


def _utc(value: datetime) -> datetime:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)



class StoreBase:
    """An open store: the engine (None: a read-only store whose database is not there),
    whether it may write, its URL without the password, and the tables it has."""

    def __init__(self, engine: Engine | None, *, readonly: bool, display: str, tables: set[str]) -> None:
        self._engine = engine
        self.readonly = readonly
        self.display = display
        self._tables = tables
        self._journal_lock = threading.Lock()
        self._writer_guard = threading.Lock()

    @property
    def exists(self) -> bool:
        """False for a read-only store whose database is not there (it reads as empty)."""
        return self._engine is not None

    # -- plumbing -----------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"state store {self.display}: {what}: {exc}") from exc

    @contextmanager
    def _read(self, table: str) -> Iterator[Connection | None]:
        """A read transaction of ``table``, or None when the (read-only) store lacks it.

        A database role without SELECT on ``table`` (one granted the tables of an older
        schema, say) is a ``StoreError`` that names the table and the GRANT it needs.
        """
        if self._engine is None or table not in self._tables:
            yield None
            return
        try:
            with self._engine.connect() as conn, conn.begin():
                yield conn
        except sa.exc.DBAPIError as exc:
            if not _insufficient_privilege(exc):
                raise
            user = self._engine.url.username
            role = '"' + user.replace('"', '""') + '"' if user else "<the role of state.url>"
            raise StoreError(
                f"state store {self.display}: permission denied for table {table}: the database "
                f"role has no SELECT privilege on it (GRANT SELECT ON {table} TO {role})"
            ) from exc

    @contextmanager
    def _write(self, what: str, lock: int | None = None) -> Iterator[Connection]:
        if self.readonly or self._engine is None:
            raise StoreError(f"state store {self.display}: {what}: opened read-only")
        with self._errors(what):
            with self._engine.connect() as raw:
                conn = raw.execution_options(provisiond_write=True)
                with conn.begin():
                    if lock is not None and conn.dialect.name == "postgresql":
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
                    yield conn
