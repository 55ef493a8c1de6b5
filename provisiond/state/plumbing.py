"""The StateStore's plumbing: its SQLAlchemy engine, and the read and write
transactions every part of the store goes through, which turn database errors into a
``StoreError`` naming the store (``StoreBase``, the base of every part). With ``fences``
set (shared membership), a write on behalf of a router or ``global`` carries its claim
(``state.claims``) and is refused once this member lost it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from provisiond.errors import StoreError
from provisiond.state.claims import ClaimLost, Fence, lock_claim, resource_of

log = logging.getLogger(__name__)


def _insufficient_privilege(exc: sa.exc.DBAPIError) -> bool:
    """PostgreSQL's SQLSTATE 42501: the role may not do this to the table."""
    orig = exc.orig
    return (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) == "42501"


def _utc(value: datetime) -> datetime:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)



class StoreBase:
    """An open store: the engine (None: a read-only store whose database is not there),
    whether it may write, its URL without the password, and the tables it has.

    ``fences`` (set by a daemon in shared membership, None everywhere else) gives the
    claim this member holds on a resource, or None; ``refused_writes`` counts the
    writes refused for want of one (each logged at ERROR)."""

    def __init__(self, engine: Engine | None, *, readonly: bool, display: str, tables: set[str]) -> None:
        self._engine = engine
        self.readonly = readonly
        self.display = display
        self._tables = tables
        self._journal_lock = threading.Lock()
        self._writer_guard = threading.Lock()
        self.fences: Callable[[str], Fence | None] | None = None
        self.refused_writes = 0
        self._refusals = threading.Lock()

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
    def _write(self, what: str, lock: int | None = None, *,
               target: str | None = None) -> Iterator[Connection]:
        """A write transaction; on behalf of ``target`` (its claim's, with ``fences``
        set): ``ClaimLost`` and nothing written once this member lost the claim."""
        if self.readonly or self._engine is None:
            raise StoreError(f"state store {self.display}: {what}: opened read-only")
        fence = self._fence_of(target, what) if target is not None else None
        with self._errors(what):
            with self._engine.connect() as raw:
                conn = raw.execution_options(provisiond_write=True)
                with conn.begin():
                    if lock is not None and conn.dialect.name == "postgresql":
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
                    if fence is not None:
                        self._lock_claim(conn, fence, target or fence.resource, what)
                    yield conn

    # -- fencing (shared membership) ------------------------------------------------

    def _fence_of(self, target: str, what: str) -> Fence | None:
        """The fence a write on behalf of ``target`` carries; None: ``fences`` is not
        set, the write is not fenced. ``ClaimLost`` when this member holds no claim."""
        fences = self.fences
        if fences is None:
            return None
        resource = resource_of(target)
        fence = fences(resource)
        if fence is None:
            raise self._refused(ClaimLost(None, resource=resource), target, what)
        return fence

    def _lock_claim(self, conn: Connection, fence: Fence, target: str, what: str) -> None:
        """``lock_claim`` in ``conn``'s transaction; a refusal is logged and counted."""
        try:
            lock_claim(conn, fence)
        except ClaimLost as exc:
            raise self._refused(exc, target, what) from None

    def _refused(self, exc: ClaimLost, target: str, what: str) -> ClaimLost:
        """Count and log a refused write; ``exc`` back, for the caller to raise or drop."""
        fence = exc.fence
        with self._refusals:
            self.refused_writes += 1
        log.error("state store write refused: %s target=%s member=%s token=%s: %s", what, target,
                  fence.owner if fence else "-", fence.token if fence else "-", exc)
        return exc
