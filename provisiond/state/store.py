"""The StateStore: provisiond's own database (SQLite or PostgreSQL, SQLAlchemy Core).

It remembers what no target can tell us: the leases IPAM handed out, which
``radreply`` rows provisiond created (the ownership ledger), the account count of the
last good billing read (to spot a suspicious one), and a journal of runs and applied
changes. The reconciler reads leases before ``ipam.allocate`` and, in apply only, calls
``reserve`` BEFORE any router or RADIUS write; targets record what they did through
``journal`` and the ledger. ``provisiond plan`` opens the store ``readonly``: nothing is
created, migrated or written, and a missing database reads as an empty one.

Read-write opens bring the schema to the newest Alembic revision (``migrations/``).
Several processes may share one store: SQLite runs in WAL mode with a busy timeout and
takes its write lock up front (``BEGIN IMMEDIATE``); PostgreSQL serialises lease
reservations with a transaction-scoped advisory lock. The unique constraints on
``leases`` are the last line: an address is never leased to two accounts.

The store holds every account's name and address, so a SQLite store is private: the
file (and so SQLite's -wal/-shm, which take its mode) is created 0600 and directories
provisiond creates for it 0700, whatever the umask; ``permission_warnings`` tells
check-config when existing ones are wider.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from provisiond.errors import StoreError
from provisiond.state.claims import GLOBAL
from provisiond.state.engines import SCHEMA_HEAD as SCHEMA_HEAD
from provisiond.state.engines import VERSION_TABLE as VERSION_TABLE
from provisiond.state.engines import _server_engine, _sqlite_engine, _upgrade
from provisiond.state.engines import create_private_file as create_private_file
from provisiond.state.engines import make_private_dirs as make_private_dirs
from provisiond.state.engines import permission_warnings as permission_warnings
from provisiond.state.engines import state_files as state_files
from provisiond.state.journal import JOURNAL_CHUNK as JOURNAL_CHUNK
from provisiond.state.journal import PART_ROWS as PART_ROWS
from provisiond.state.leases import LEASE_LOCK as LEASE_LOCK
from provisiond.state.leases import LeasesMixin
from provisiond.state.ledger import LedgerMixin
from provisiond.state.plumbing import _utc
from provisiond.state.requests import PassRequests
from provisiond.state.tables import journal_parts, reads, runs  # noqa: F401

log = logging.getLogger(__name__)

_TABLES = ("reads", "runs", "journal", "journal_parts", "radreply_ledger", "leases", "pass_requests")


class StateStore(LeasesMixin, LedgerMixin, PassRequests):
    """provisiond's own database. Build it with ``StateStore.open``; its parts (the
    journal, leases, the radreply ledger, pass requests) live in modules of their own."""

    # -- opening -----------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, readonly: bool = False) -> StateStore:
        """Open (read-write: create and migrate to head) the store at ``url``."""
        try:
            parsed = make_url(url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"state store: not a database URL: {exc}") from exc
        display = parsed.render_as_string(hide_password=True)
        try:
            if parsed.get_backend_name() == "sqlite":
                engine = _sqlite_engine(parsed, readonly=readonly)
            else:
                engine = _server_engine(parsed, readonly=readonly)
            if engine is None:
                return cls(None, readonly=True, display=display, tables=set())
            if readonly:
                tables = set(sa.inspect(engine).get_table_names()) & set(_TABLES)
            else:
                _upgrade(engine)
                tables = set(_TABLES)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"state store {display}: cannot open: {exc}") from exc
        except ImportError as exc:
            raise StoreError(f"state store {display}: missing database driver: {exc}") from exc
        log.debug("state store open url=%s readonly=%s", display, readonly)
        return cls(engine, readonly=readonly, display=display, tables=tables)

    def close(self) -> None:
        try:
            self.flush_journal()
        finally:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- source reads ---------------------------------------------------------------

    def record_read(self, accounts: int, rows: int, at: datetime) -> None:
        """Remember a successful billing read (the yardstick for the next one); in shared
        membership only while this member holds the ``global`` claim (else ``ClaimLost``)."""
        with self._write("record read", target=GLOBAL) as conn:
            conn.execute(reads.insert().values(at=_utc(at), accounts=accounts, rows=rows))

    def last_good_read(self) -> int | None:
        """Account count of the last successful billing read, if any."""
        with self._errors("last good read"), self._read("reads") as conn:
            if conn is None:
                return None
            row = conn.execute(
                sa.select(reads.c.accounts).order_by(reads.c.at.desc(), reads.c.id.desc()).limit(1)
            ).first()
            return None if row is None else int(row[0])

    # -- runs and the journal -------------------------------------------------------

    def start_run(self, mode: str) -> str:
        run_id = uuid.uuid4().hex
        with self._write(f"start run ({mode})") as conn:
            conn.execute(runs.insert().values(id=run_id, mode=mode, started_at=datetime.now(UTC)))
        return run_id

    def finish_run(self, run_id: str, result: str, summary: Mapping[str, Any]) -> None:
        """Record how a run ended, once every journal row queued for it is written.

        If the journal writer failed, the run is still recorded as finished: ``failed``,
        the writer's error in its summary (``journal_error``); then that error is raised.
        """
        try:
            self.flush_journal()
        except StoreError as exc:
            self._finish_run(run_id, "failed", {**summary, "journal_error": str(exc)})
            raise
        self._finish_run(run_id, result, summary)

    def _finish_run(self, run_id: str, result: str, summary: Mapping[str, Any]) -> None:
        with self._write(f"finish run {run_id}") as conn:
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    finished_at=datetime.now(UTC),
                    result=result,
                    summary=json.dumps(summary, sort_keys=True, default=str),
                )
            )

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first."""
        with self._errors("list runs"), self._read("runs") as conn:
            if conn is None:
                return []
            rows = conn.execute(
                sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit)
            ).mappings()
            return [
                {**dict(r), "summary": json.loads(r["summary"]) if r["summary"] else {}} for r in rows
            ]
