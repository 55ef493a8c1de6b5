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

import itertools
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine, make_url

from provisiond.errors import LeaseConflict, StoreError
from provisiond.core.changes import Change, Conflict, Create, Delete, Resource, Update
from provisiond.core.ipam import Allocation, Lease
from provisiond.state.parts import encode_part, part_entry, part_rows
from provisiond.state.requests import PassRequests
from provisiond.state.tables import (
    UTCDateTime,
    journal_parts,
    journal_t,
    leases_t,
    metadata,
    pass_requests,
    radreply_ledger,
    reads,
    runs,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
# pg_advisory_xact_lock keys: arbitrary, fixed, provisiond's own.
MIGRATE_LOCK = 0x70726F76_0001
LEASE_LOCK = 0x70726F76_0002
VERSION_TABLE = "provisiond_schema_version"
# The newest migration's revision (provisiond/state/migrations/versions): a store that
# is there already opens without alembic. A test holds it to alembic's own head.
SCHEMA_HEAD = "0003"


_JOURNAL_SKIP = frozenset({"action", "kind", "group", "account_id", "result", "message"})
_DETAIL_ENCODER = json.JSONEncoder(sort_keys=True, default=str)  # one encoder, not one per row
JOURNAL_CHUNK = 20_000  # journal rows per executemany (and per transaction)
_JOURNAL_COLUMNS = ("run_id", "at", "target", "action", "kind", "group_name", "account_id",
                    "detail", "result", "message")
# A journal row after its (run_id, at, target): action, kind, group, account_id, detail
# (unencoded), result, message.
_JournalRow = tuple[str, str, str, str, dict[str, Any], str, str]
_JournalHead = tuple[str, datetime, str]
# A part of at least this many changes, all of these kinds, is one journal_parts row.
# RADIUS rows stay one per change: usernames_written reads their detail by account.
PART_ROWS = 200
_PART_KINDS = frozenset({"address-list", "lease"})
# radius_accounts looks up to this many usernames by their spelling in the journal's
# detail; more, in one read of every RADIUS row of the journal.
SPELLING_LOOKUPS = 500
# Lease changes are journalled as the target ``ipam``, kind ``lease``, group the pool.
LEASE_TARGET = "ipam"
RELEASED_BY_HAND = "released by hand (provisiond ipam release)"
_TABLES = ("reads", "runs", "journal", "journal_parts", "radreply_ledger", "leases", "pass_requests")


def _insufficient_privilege(exc: sa.exc.DBAPIError) -> bool:
    """PostgreSQL's SQLSTATE 42501: the role may not do this to the table."""
    orig = exc.orig
    return (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) == "42501"


def _utc(value: datetime) -> datetime:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _sqlite_path(url: sa.URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


class StateStore(PassRequests):
    """provisiond's own database. Build it with ``StateStore.open``."""

    def __init__(self, engine: Engine | None, *, readonly: bool, display: str, tables: set[str]) -> None:
        self._engine = engine
        self.readonly = readonly
        self.display = display
        self._tables = tables
        self._journal_lock = threading.Lock()
        self._writer: _JournalWriter | None = None
        self._writer_guard = threading.Lock()

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

    # -- source reads ---------------------------------------------------------------

    def record_read(self, accounts: int, rows: int, at: datetime) -> None:
        """Remember a successful billing read (the yardstick for the next one)."""
        with self._write("record read") as conn:
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

    def journal(
        self,
        run_id: str,
        target: str,
        entries: Iterable[Mapping[str, Any]],
        *,
        at: datetime | None = None,
    ) -> None:
        """Record applied changes: each entry is a change's JSON plus ``result`` and ``message``.

        ``entries`` may be a generator: rows are made and written ``JOURNAL_CHUNK`` at a
        time, each chunk in its own short transaction, so a journal of 100,000 changes is
        never one list in memory and never holds the write lock while it is built.
        """
        skip = _JOURNAL_SKIP
        head = (run_id, _utc(at) if at is not None else datetime.now(UTC), target)
        rows = ((str(entry.get("action", "")), str(entry.get("kind", "")), str(entry.get("group", "")),
                 str(entry.get("account_id", "")), {k: v for k, v in entry.items() if k not in skip},
                 str(entry.get("result", "ok")), str(entry.get("message", "")))
                for entry in entries)
        while chunk := list(itertools.islice(rows, JOURNAL_CHUNK)):
            self._journal_rows([_Outcome(head, rows=chunk)])

    def journal_changes(
        self,
        run_id: str,
        target: str,
        *,
        applied: Iterable[Change] = (),
        failed: Iterable[tuple[Change, str]] = (),
        conflicts: Iterable[Conflict] = (),
        at: datetime | None = None,
        wait: bool = True,
    ) -> None:
        """``journal`` for a target's outcome: the same rows, made straight from the changes.

        A cold apply's 400,000 rows skip the change's full JSON (``change_to_json``) and
        its filtering: the detail is the resource's identity and attributes, its account
        name, its id and (an update) what it was before.

        ``wait=False`` queues the rows for the store's journal writer (a thread) and
        returns at once, so a target journals what it applied while it applies the
        rest; ``at`` is now, not when the row is written. ``flush_journal`` (and so
        ``finish_run`` and ``close``) waits until every queued row is written and raises
        the writer's error, if it failed. The caller must not change what it queued.
        """
        head = (run_id, _utc(at) if at is not None else datetime.now(UTC), target)
        outcome = _Outcome(head, list(applied), list(failed), list(conflicts))
        if not outcome.count:
            return
        if not wait:
            # Made here, in the target's own thread, which holds the interpreter anyway;
            # the writer thread only inserts (SQLite lets the interpreter go meanwhile).
            # A thread of its own making them took the interpreter from the targets'
            # sessions, each hand-over a wait for the OS to run the other thread.
            # Whatever goes wrong is raised by flush_journal: a journal never stops a
            # target half-way through its writes.
            writer = self._journal_writer()
            try:
                assert self._engine is not None
                rows = _journal_rows_of(self._engine.dialect, [outcome])
            except Exception as exc:  # noqa: BLE001 - raised by flush_journal
                writer.fail(exc)
                return
            writer.put(rows)
            return
        for part in outcome.split(JOURNAL_CHUNK):
            self._journal_rows([part])

    def sync_journal(self) -> None:
        """Wait until the rows queued so far are written; later ones may still be queued.
        A writer's failure is raised by ``finish_run``, not here."""
        with self._writer_guard:
            writer = self._writer
        if writer is not None:
            writer.sync()

    def flush_journal(self) -> None:
        """Wait until the journal rows queued so far (``wait=False``) are written.

        Raises ``StoreError`` if the writer failed: the rows it had not written are
        lost (the journal is history; the targets were written all the same).
        """
        with self._writer_guard:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _journal_writer(self) -> _JournalWriter:
        with self._writer_guard:
            if self._writer is None:
                if self.readonly or self._engine is None:
                    raise StoreError(f"state store {self.display}: journal: opened read-only")
                self._writer = _JournalWriter(self)
            return self._writer

    def _journal_rows(self, parts: Sequence[_Outcome]) -> None:
        """One transaction of journal rows (``_journal_rows_of``)."""
        if self.readonly or self._engine is None:
            raise StoreError(f"state store {self.display}: journal: opened read-only")
        rows = _journal_rows_of(self._engine.dialect, parts)
        self._insert_rows([rows], ", ".join(sorted({part.head[2] for part in parts})))

    def _insert_rows(self, rows: Sequence[_Rows], targets: str, conn: Connection | None = None) -> None:
        """One transaction. A cold apply's 400,000 changes cost ~25,000 instructions each
        in SQLite as rows of an indexed table, more than sending them to the routers; as
        200 parts they cost their JSON. Writers of one process take turns on a lock of
        their own: SQLite's busy wait would put a waiting writer to sleep for
        milliseconds after the lock is free."""
        what = f"journal {targets}"
        with self._journal_lock:
            if conn is None:
                with self._write(what) as fresh:
                    _insert_journal(fresh, rows)
            else:
                with self._errors(what), conn.begin():
                    _insert_journal(conn, rows)

    def usernames_written(self, accounts: Collection[str]) -> set[str]:
        """RADIUS usernames provisiond ever wrote rows for, for these accounts (the journal).

        A scoped pass reads RADIUS rows by username; this finds a renamed username's
        old rows, which billing no longer names. (RADIUS rows are never in parts.)
        """
        ids = sorted(set(accounts))
        out: set[str] = set()
        with self._errors("journal usernames"), self._read("journal") as conn:
            if conn is None:
                return out
            c = journal_t.c
            for start in range(0, len(ids), 500):
                query = sa.select(c.detail).where(
                    c.account_id.in_(ids[start:start + 500]),
                    c.kind.in_(("radusergroup", "radreply")),
                    c.action != "delete",
                )
                for (detail,) in conn.execute(query):
                    name = json.loads(detail).get("username")
                    if name:
                        out.add(str(name))
        return out

    def radius_accounts(self, usernames: Collection[str]) -> dict[str, str]:
        """The account each RADIUS username was last written for (username -> account id).

        RADIUS rows carry no account id; a row provisiond deletes is journalled under
        the account it wrote the row for: the radreply ledger's, else the newest
        journalled create or update of a row of that username. Unknown names are left out.
        """
        wanted = set(usernames)
        out: dict[str, str] = {}
        if not wanted:
            return out
        with self._errors("radius accounts"):
            with self._read("radreply_ledger") as conn:
                if conn is not None:
                    names = sorted(wanted)
                    for start in range(0, len(names), 500):
                        rl = radreply_ledger.c
                        query = sa.select(rl.username, rl.account_id).where(
                            rl.username.in_(names[start:start + 500]))
                        out.update({str(u): str(a) for u, a in conn.execute(query) if a})
            left = sorted(wanted - set(out))
            with self._read("journal") as conn:
                if conn is None or not left:
                    return out
                c = journal_t.c
                radius_rows = (sa.select(c.account_id, c.detail)
                               .where(c.kind.in_(("radusergroup", "radreply")), c.action != "delete",
                                      c.account_id != "")
                               .order_by(c.id.desc()))
                # The detail is JSON text (the journal has no username column): a few
                # usernames are looked for by their spelling in it, 50 to a query; many
                # (a large delete) in one read of every RADIUS row.
                batches = [left[i:i + 50] for i in range(0, len(left), 50)]
                queries = [radius_rows.where(sa.or_(*(
                    c.detail.contains(f'"username": {json.dumps(u)}', autoescape=True) for u in batch)))
                    for batch in batches] if len(left) <= SPELLING_LOOKUPS else [radius_rows]
                for query in queries:
                    for account_id, detail in conn.execute(query):
                        name = str(json.loads(detail).get("username", ""))
                        if name in wanted and name not in out:
                            out[name] = str(account_id)
        return out

    def history(
        self,
        since: datetime | None = None,
        account: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Journal entries, newest first: the ``journal`` rows and the changes of the
        ``journal_parts`` rows, as one."""
        with self._errors("history"):
            out = self._journal_history(since, account, limit)
            out += self._part_history(since, account, limit)
        out.sort(key=lambda item: item[0], reverse=True)
        return [entry for _, entry in out[:limit]]

    def _journal_history(self, since: datetime | None, account: str | None,
                         limit: int) -> list[tuple[tuple[datetime, int, int, int], dict[str, Any]]]:
        """The newest ``limit`` rows of ``journal`` (of ``account``, ``since``)."""
        out: list[tuple[tuple[datetime, int, int, int], dict[str, Any]]] = []
        with self._read("journal") as conn:
            if conn is None:
                return out
            query = sa.select(journal_t).order_by(journal_t.c.at.desc(), journal_t.c.id.desc())
            if since is not None:
                query = query.where(journal_t.c.at >= _utc(since))
            if account is not None:
                query = query.where(journal_t.c.account_id == account)
            for r in conn.execute(query.limit(limit)).mappings():
                out.append(((r["at"], 0, r["id"], 0), {
                    "at": r["at"],
                    "run_id": r["run_id"],
                    "target": r["target"],
                    "action": r["action"],
                    "kind": r["kind"],
                    "group": r["group_name"],
                    "account_id": r["account_id"],
                    "detail": json.loads(r["detail"]),
                    "result": r["result"],
                    "message": r["message"],
                }))
        return out

    def _part_history(self, since: datetime | None, account: str | None,
                      limit: int) -> list[tuple[tuple[datetime, int, int, int], dict[str, Any]]]:
        """The newest ``limit`` changes of ``journal_parts`` (of ``account``, ``since``)."""
        out: list[tuple[tuple[datetime, int, int, int], dict[str, Any]]] = []
        with self._read("journal_parts") as conn:
            if conn is None:
                return out
            p = journal_parts.c
            query = sa.select(p.id, p.run_id, p.at, p.target, p.rows).order_by(p.at.desc(), p.id.desc())
            if since is not None:
                query = query.where(p.at >= _utc(since))
            if account is not None:
                query = query.where(p.accounts.contains(f",{account},", autoescape=True))
            for part in conn.execute(query):
                if len(out) >= limit:
                    break  # every later part is older than what is already here
                try:
                    rows = part_rows(part.rows)
                except ValueError as exc:
                    raise StoreError(f"state store {self.display}: history: journal_parts "
                                     f"{part.id}: {exc}") from exc
                for i in range(len(rows) - 1, -1, -1):
                    row = rows[i]
                    if account is not None and row[3] != account:
                        continue
                    out.append(((part.at, 1, part.id, i), {
                        "at": part.at, "run_id": part.run_id, "target": part.target,
                        **part_entry(row),
                    }))
        return out

    # -- the radreply ownership ledger ------------------------------------------------

    def radreply_owned(self) -> set[tuple[str, str]]:
        """Every (username, attribute) whose radreply rows provisiond created."""
        with self._errors("read radreply ledger"), self._read("radreply_ledger") as conn:
            if conn is None:
                return set()
            rows = conn.execute(sa.select(radreply_ledger.c.username, radreply_ledger.c.attribute))
            return {(str(u), str(a)) for u, a in rows}

    def radreply_record(
        self,
        *,
        added: Iterable[tuple[str, str, str]],
        removed: Iterable[tuple[str, str]],
    ) -> None:
        """Record radreply rows provisiond created (username, attribute, account_id) or deleted."""
        added, removed = list(added), list(removed)
        if not added and not removed:
            return
        now = datetime.now(UTC)
        with self._write("record radreply ledger") as conn:
            gone = {(u, a) for u, a in removed} | {(u, a) for u, a, _ in added}
            if gone:  # one executemany, not a round trip per row (100k users on a first run)
                conn.execute(
                    radreply_ledger.delete().where(
                        radreply_ledger.c.username == sa.bindparam("k_username"),
                        radreply_ledger.c.attribute == sa.bindparam("k_attribute"),
                    ),
                    [{"k_username": u, "k_attribute": a} for u, a in sorted(gone)],
                )
            if added:
                latest = {(u, a): acct for u, a, acct in added}
                conn.execute(
                    radreply_ledger.insert(),
                    [
                        {"username": u, "attribute": a, "account_id": acct, "recorded_at": now}
                        for (u, a), acct in sorted(latest.items())
                    ],
                )

    # -- leases ------------------------------------------------------------------------

    def leases(self, pool: str | None = None) -> list[Lease]:
        """Every lease (leased or held), optionally of one pool, by pool and account."""
        with self._errors("read leases"), self._read("leases") as conn:
            if conn is None:
                return []
            return _leases(conn, pool)

    def reserve(self, allocation: Allocation, now: datetime, *, run_id: str | None = None) -> None:
        """Record an Allocation in one transaction, or raise ``LeaseConflict`` and record nothing.

        Expired holds are freed first; every release, return and new lease is checked
        against the rows as they are under the lock, so two processes can never lease
        one address twice (and the table's constraints back that up). Every change is
        journalled in the same transaction (target ``ipam``), under ``run_id`` (the
        pass's run; without one, a run of its own).
        """
        if not allocation.changed:
            return
        now = _utc(now)
        with self._write("reserve leases", lock=LEASE_LOCK) as conn:
            rows = _leases(conn, None)
            freed: list[Lease] = []
            if any(_expired(x, now) for x in rows):
                freed = _delete_expired(conn, now)
                rows = [x for x in rows if not _expired(x, now)]
            current = {(x.pool, x.address): x for x in rows}
            by_address = {x.address: x for x in current.values()}
            leased = {(x.pool, x.account_id) for x in current.values() if x.state == "leased"}
            for lease in allocation.releases:
                _expect(current, lease, "leased", "release")
                leased.discard((lease.pool, lease.account_id))
            for lease in allocation.returns:
                _expect(current, lease, "held", "return")
            for lease in allocation.returns:
                _not_leased_twice(leased, lease)
            for lease in allocation.new:
                other = by_address.get(lease.address)
                if other is not None:
                    raise LeaseConflict(
                        f"pool {lease.pool}: cannot lease {lease.address} to account "
                        f"{lease.account_id}: already {other.state} for account {other.account_id} "
                        f"(pool {other.pool})",
                        pool=lease.pool, address=lease.address, account_id=lease.account_id,
                    )
                _not_leased_twice(leased, lease)
                by_address[lease.address] = lease
            self._apply(conn, allocation, now)
            changes: list[Change] = [Delete(_lease_resource(x)) for x in freed]
            changes += [Update(_lease_resource(current[(x.pool, x.address)]), _lease_resource(x))
                        for x in (*allocation.releases, *allocation.returns)]
            changes += Create.each(map(_lease_resource, allocation.new))
            if changes:
                run = run_id if run_id is not None else _run_of_its_own(conn, "ipam", now)
                outcome = _Outcome((run, now, LEASE_TARGET), changes)
                parts = list(outcome.split(JOURNAL_CHUNK))
                _insert_journal(conn, [_journal_rows_of(conn.dialect, parts)])
        log.info(
            "leases reserved new=%d released=%d returned=%d expired=%d",
            len(allocation.new), len(allocation.releases), len(allocation.returns),
            len(allocation.expired),
        )

    @staticmethod
    def _apply(conn: Connection, allocation: Allocation, now: datetime) -> None:
        c = leases_t.c
        key = (c.pool == sa.bindparam("k_pool")) & (c.address == sa.bindparam("k_address"))
        if allocation.releases:
            conn.execute(
                leases_t.update().where(key).values(
                    state="held", released_at=now, held_until=sa.bindparam("h_until")
                ),
                [
                    {"k_pool": x.pool, "k_address": x.address, "h_until": x.held_until or now}
                    for x in allocation.releases
                ],
            )
        if allocation.returns:
            conn.execute(
                leases_t.update().where(key).values(
                    state="leased", leased_at=now, released_at=None, held_until=None
                ),
                [{"k_pool": x.pool, "k_address": x.address} for x in allocation.returns],
            )
        if allocation.new:
            try:
                conn.execute(
                    leases_t.insert(),
                    [
                        {"pool": x.pool, "address": x.address, "account_id": x.account_id,
                         "state": "leased", "leased_at": now}
                        for x in allocation.new
                    ],
                )
            except sa.exc.IntegrityError as exc:
                first = allocation.new[0]
                raise LeaseConflict(
                    f"pool {first.pool}: the database refused new leases "
                    f"(first: {first.address} for account {first.account_id}): {exc.orig}",
                    pool=first.pool, address=first.address, account_id=first.account_id,
                ) from exc

    def release(
        self,
        account_id: str,
        pool: str | None = None,
        *,
        now: datetime,
        hold: float | Mapping[str, float] = 86400.0,
    ) -> list[Lease]:
        """Release an account's leased addresses into hold by hand (seconds, per pool or
        one); journalled (target ``ipam``) under a run of its own, mode ``ipam release``."""
        now = _utc(now)
        out: list[Lease] = []
        before: list[Lease] = []
        with self._write(f"release account {account_id}", lock=LEASE_LOCK) as conn:
            query = sa.select(leases_t).where(
                leases_t.c.account_id == account_id, leases_t.c.state == "leased"
            )
            if pool is not None:
                query = query.where(leases_t.c.pool == pool)
            for row in conn.execute(query.order_by(leases_t.c.pool)).mappings().all():
                seconds = hold.get(row["pool"], 86400.0) if isinstance(hold, Mapping) else hold
                until = now + timedelta(seconds=seconds)
                conn.execute(
                    leases_t.update()
                    .where(leases_t.c.pool == row["pool"], leases_t.c.address == row["address"])
                    .values(state="held", released_at=now, held_until=until)
                )
                out.append(Lease(row["pool"], row["address"], account_id, "held", until))
                before.append(_lease(row))
            if out:
                run = _run_of_its_own(conn, "ipam release", now)
                updates = [Update(_lease_resource(b), _lease_resource(x)) for b, x in zip(before, out)]
                rows = [(a, k, g, acct, d, res, RELEASED_BY_HAND)
                        for a, k, g, acct, d, res, _ in _change_rows(updates, (), ())]
                outcome = _Outcome((run, now, LEASE_TARGET), rows=rows)
                _insert_journal(conn, [_journal_rows_of(conn.dialect, [outcome])])
        return out

    def expire_holds(self, now: datetime) -> list[Lease]:
        """Free every address whose hold ran out; returns the freed leases."""
        with self._write("expire holds", lock=LEASE_LOCK) as conn:
            return _delete_expired(conn, _utc(now))


def _lease_resource(lease: Lease) -> Resource:
    """A lease as a journal row's resource: kind ``lease``, group its pool."""
    attrs: tuple[tuple[str, str], ...] = (("state", lease.state),)
    if lease.held_until is not None:
        attrs += (("held_until", _utc(lease.held_until).isoformat(timespec="seconds")),)
    return Resource.make("lease", lease.pool, (("pool", lease.pool), ("address", lease.address)),
                         attrs, lease.account_id, "")


def _run_of_its_own(conn: Connection, mode: str, now: datetime) -> str:
    """A run, started and finished now, for lease changes made outside a pass's run."""
    run_id = uuid.uuid4().hex
    conn.execute(runs.insert().values(id=run_id, mode=mode, started_at=now, finished_at=now,
                                      result="ok", summary="{}"))
    return run_id


def _change_rows(applied: Iterable[Change], failed: Iterable[tuple[Change, str]],
                 conflicts: Iterable[Conflict]) -> Iterator[_JournalRow]:
    """Journal rows (after run, at, target) for a target's outcome, the detail unencoded."""
    for c in applied:
        r = c.resource
        yield c.action, r.kind, r.group, r.account_id, _detail(c), "ok", ""
    for c, message in failed:
        r = c.resource
        yield c.action, r.kind, r.group, r.account_id, _detail(c), "failed", message
    for conflict in conflicts:
        r = conflict.resource
        detail = _detail(Create(r))
        detail["reason"] = conflict.reason
        yield "create", r.kind, r.group, r.account_id, detail, "conflict", conflict.reason


@dataclass(slots=True)
class _Outcome:
    """Finished changes of one target to journal under one (run_id, at, target), or
    (``journal``) rows made already."""

    head: _JournalHead
    applied: Sequence[Change] = ()
    failed: Sequence[tuple[Change, str]] = ()
    conflicts: Sequence[Conflict] = ()
    rows: Sequence[_JournalRow] = ()

    @property
    def count(self) -> int:
        return len(self.applied) + len(self.failed) + len(self.conflicts) + len(self.rows)

    def split(self, size: int) -> Iterator[_Outcome]:
        """Parts of at most ``size`` changes, in order."""
        changes: list[tuple[str, Any]] = [("a", c) for c in self.applied]
        changes += [("f", x) for x in self.failed]
        changes += [("c", x) for x in self.conflicts]
        for start in range(0, len(changes), size):
            chunk = changes[start:start + size]
            yield _Outcome(self.head, [x for k, x in chunk if k == "a"],
                           [x for k, x in chunk if k == "f"], [x for k, x in chunk if k == "c"])


@dataclass(slots=True)
class _Rows:
    """Journal rows ready for the database: journal_parts rows and journal rows."""

    parts: list[dict[str, Any]]
    single: list[tuple[Any, ...]]

    @property
    def count(self) -> int:
        return sum(int(p["changes"]) for p in self.parts) + len(self.single)


def _journal_rows_of(dialect: Dialect, parts: Sequence[_Outcome]) -> _Rows:
    """Each part of ``PART_ROWS`` or more address-list changes as one journal_parts row
    (its rows one JSON document), the others as a journal row per change."""
    bind = journal_t.c.at.type.dialect_impl(dialect).bind_processor(dialect)
    out = _Rows([], [])
    encode = _DETAIL_ENCODER.encode
    for part in parts:
        run_id, at, target = part.head
        encoded = (encode_part(part.applied, part.failed, part.conflicts, _PART_KINDS)
                   if not part.rows and part.count >= PART_ROWS else None)
        if encoded is not None:
            rows, accounts = encoded
            out.parts.append({"run_id": run_id, "at": at, "target": target, "changes": len(accounts),
                              "accounts": "," + ",".join(accounts) + ",", "rows": rows})
            continue
        when = bind(at) if bind is not None else at
        made = part.rows or list(_change_rows(part.applied, part.failed, part.conflicts))
        out.single += [(run_id, when, target, a, k, g, acct, encode(d), r, m)
                       for a, k, g, acct, d, r, m in made]
    return out


def _insert_journal(conn: Connection, rows: Sequence[_Rows]) -> None:
    parts = [p for r in rows for p in r.parts]
    single = [x for r in rows for x in r.single]
    if parts:
        conn.execute(journal_parts.insert(), parts)
    if single:
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(f"INSERT INTO journal ({', '.join(_JOURNAL_COLUMNS)}) "
                             f"VALUES ({', '.join([mark] * len(_JOURNAL_COLUMNS))})", single)


class _JournalWriter:
    """The thread behind ``journal_changes(wait=False)``.

    Queued rows (made by the caller) wait until ``JOURNAL_CHUNK`` changes are queued (or
    ``close``); then the thread writes them in one transaction, on a connection it keeps
    for the run: few, large transactions (a commit writes every index page it touched).
    Targets never wait on each other's journal, nor on the journal's disk.
    """

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._queue: list[_Rows] = []
        self._queued = 0  # changes waiting
        self._closing = False
        self._error: BaseException | None = None
        self._asked = 0  # sync() calls so far
        self._synced = 0  # of those, the ones whose rows are written
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    def put(self, rows: _Rows) -> None:
        with self._cond:
            if self._error is not None:
                return  # raised by close(); the targets go on
            self._queue.append(rows)
            self._queued += rows.count
            if self._queued >= JOURNAL_CHUNK:
                self._cond.notify()

    def fail(self, exc: BaseException) -> None:
        """The rows of a part could not be made: nothing more is written; ``close`` raises."""
        with self._cond:
            if self._error is None:
                self._error = exc
            self._queue, self._queued = [], 0
            self._cond.notify()

    def sync(self) -> None:
        """Wait until what is queued now is written (a target finished: its journal must
        not wait for the others')."""
        with self._cond:
            self._asked += 1
            ticket = self._asked
            self._cond.notify_all()
            while self._synced < ticket and self._error is None and self._thread.is_alive():
                self._cond.wait(1.0)

    def close(self) -> None:
        """Write what is queued, stop the thread; raise its error, if any."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        if isinstance(self._error, StoreError):
            raise self._error
        if self._error is not None:
            raise StoreError(f"state store {self._store.display}: journal: "
                             f"{type(self._error).__name__}: {self._error}") from self._error

    def _run(self) -> None:
        conn: Connection | None = None
        try:
            while True:
                with self._cond:
                    while (not self._closing and self._queued < JOURNAL_CHUNK
                           and self._error is None and self._synced == self._asked):
                        self._cond.wait()
                    batch, self._queue, self._queued = self._queue, [], 0
                    asked, closing = self._asked, self._closing
                    if self._error is not None:
                        return
                if batch:
                    if conn is None:
                        engine = self._store._engine
                        if engine is None:
                            raise StoreError(f"state store {self._store.display}: journal: closed")
                        conn = engine.connect().execution_options(provisiond_write=True)
                    self._store._insert_rows(batch, "(queued)", conn)
                with self._cond:
                    self._synced = asked
                    self._cond.notify_all()
                if closing and not batch:
                    return
        except BaseException as exc:  # noqa: BLE001 - raised by close()
            with self._cond:
                self._error = exc
                self._queue = []
                self._cond.notify_all()
        finally:
            if conn is not None:
                conn.close()


def _detail(change: Change) -> dict[str, Any]:
    """A journal row's detail: ``change_to_json`` without the row's own columns."""
    r = change.resource
    out: dict[str, Any] = dict((*r.ident, *r.attrs, ("account_name", r.account_name)))
    if r.ref:
        out["id"] = r.ref
    if isinstance(change, Update):
        out["id"] = change.old.ref
        out["before"] = dict(change.old.attrs)
    return out


def _leases(conn: Connection, pool: str | None) -> list[Lease]:
    query = sa.select(leases_t).order_by(leases_t.c.pool, leases_t.c.account_id, leases_t.c.address)
    if pool is not None:
        query = query.where(leases_t.c.pool == pool)
    return [_lease(r) for r in conn.execute(query).mappings()]


def _lease(r: sa.RowMapping) -> Lease:
    return Lease(
        pool=r["pool"],
        address=r["address"],
        account_id=r["account_id"],
        state="held" if r["state"] == "held" else "leased",
        held_until=r["held_until"],
        leased_at=r["leased_at"],
    )


def _expired(lease: Lease, now: datetime) -> bool:
    return lease.state == "held" and lease.held_until is not None and lease.held_until <= now


def _delete_expired(conn: Connection, now: datetime) -> list[Lease]:
    query = sa.select(leases_t).where(leases_t.c.state == "held", leases_t.c.held_until <= now)
    expired = [_lease(r) for r in conn.execute(query).mappings()]
    if expired:
        conn.execute(
            leases_t.delete().where(
                leases_t.c.state == "held", leases_t.c.held_until <= now
            )
        )
    return expired


def _expect(current: Mapping[tuple[str, str], Lease], lease: Lease, state: str, what: str) -> None:
    row = current.get((lease.pool, lease.address))
    if row is None or row.account_id != lease.account_id or row.state != state:
        now_is = "free" if row is None else f"{row.state} for account {row.account_id}"
        raise LeaseConflict(
            f"pool {lease.pool}: cannot {what} {lease.address} for account {lease.account_id}: "
            f"it is {now_is}",
            pool=lease.pool, address=lease.address, account_id=lease.account_id,
        )


def _not_leased_twice(leased: set[tuple[str, str]], lease: Lease) -> None:
    if (lease.pool, lease.account_id) in leased:
        raise LeaseConflict(
            f"pool {lease.pool}: account {lease.account_id} already has a leased address; "
            f"refusing {lease.address}",
            pool=lease.pool, address=lease.address, account_id=lease.account_id,
        )
    leased.add((lease.pool, lease.account_id))


# -- engines and migrations ---------------------------------------------------------


def _sqlite_engine(url: sa.URL, *, readonly: bool) -> Engine | None:
    path = _sqlite_path(url)
    if readonly and path is not None:
        if not path.exists():
            return None  # an empty store; plan must not create the file

        # A read-write handle under query_only lets SQLite tidy its -wal/-shm files on
        # close; without write permission, fall back to a true read-only open.
        writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
        target = str(path) if writable else f"{path.resolve().as_uri()}?mode=ro"

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                target,
                uri=not writable,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA query_only = ON")
            return conn

        engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)
    else:
        if path is not None:
            make_private_dirs(path.parent)
            create_private_file(path)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            poolclass=sa.pool.NullPool if path is not None else sa.pool.StaticPool,
        )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy, not the driver, say when a transaction starts (see _on_begin).
        dbapi.isolation_level = None
        cur = dbapi.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        if not readonly and path is not None:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: a deferred transaction upgrading to a write
        # lock can fail at once with "database is locked" despite the busy timeout.
        immediate = conn.get_execution_options().get("provisiond_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents 0700; existing ones stay as they are."""
    missing: list[Path] = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # mkdir's mode is filtered through the umask


def create_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists (an empty file is a new SQLite database)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # open's mode is filtered through the umask
    finally:
        os.close(fd)


def state_files(url: str) -> list[Path]:
    """The files of a SQLite state store (database, -wal, -shm, the daemon's lock); [] otherwise."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return []
    path = _sqlite_path(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is None:
        return []
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", ".lock"))]


def permission_warnings(url: str) -> list[str]:
    """For check-config: existing state files that other users may read or write."""
    out = []
    for path in state_files(url):
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            continue
        if mode & 0o077:
            out.append(f"state.url: {path} has mode {mode:04o}: other users can read every account's "
                       f"name and address in it; chmod 600 {path}")
    return out


def _server_engine(url: sa.URL, *, readonly: bool) -> Engine:
    if url.get_backend_name() != "postgresql":
        raise StoreError(
            f"state store {url.render_as_string(hide_password=True)}: "
            "use a sqlite:// or postgresql:// URL"
        )
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, pool_pre_ping=True)
    if readonly:
        engine = engine.execution_options(postgresql_readonly=True)
    return engine


def _at_head(engine: Engine) -> bool:
    """True when the version table already names ``SCHEMA_HEAD``: nothing to migrate, and
    alembic (a third of a second to import) is not loaded. Anything else, a store not
    made yet included, is left to alembic."""
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except sa.exc.SQLAlchemyError:
        return False
    return [tuple(row) for row in found] == [(SCHEMA_HEAD,)]


def _upgrade(engine: Engine) -> None:
    """Bring the schema to head, one process at a time."""
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "provisiond.state:migrations")
    config.set_main_option("version_table", VERSION_TABLE)
    with engine.connect() as raw:
        conn = raw.execution_options(provisiond_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATE_LOCK)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
