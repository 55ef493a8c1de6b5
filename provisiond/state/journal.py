"""The change journal: every applied, failed or collided change of a run, by target
and account, and the reads of it (``history``, the RADIUS usernames an account had).

A target hands its changes over in parts as it applies; ``journal_changes(wait=False)``
queues them for a writer thread that inserts them in chunks while the target goes on.
Address-list changes of one part (``PART_ROWS`` or more) are one ``journal_parts`` row.
With ``fences`` set, a target's rows carry the claim on it they were handed over under
and are left out (logged, counted) once it is lost; the other targets' rows are written.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from provisiond.core.changes import Change, Conflict, Create, Update
from provisiond.errors import StoreError
from provisiond.state.claims import ClaimLost, Fence, lock_claims
from provisiond.state.parts import encode_part, part_entry, part_rows
from provisiond.state.plumbing import StoreBase, _utc
from provisiond.state.tables import journal_parts, journal_t, radreply_ledger, runs

log = logging.getLogger(__name__)

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



class JournalMixin(StoreBase):
    """The StateStore's journal (a part of ``StateStore``)."""

    _writer: _JournalWriter | None = None  # made by the first journal_changes(wait=False)

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
        chunk = list(itertools.islice(rows, JOURNAL_CHUNK))
        if not chunk:
            return
        try:
            fence = self._fence_of(target, "journal")
        except ClaimLost:
            return  # logged and counted: the journal is history, the target goes on
        while chunk:
            self._journal_rows([_Outcome(head, rows=chunk)], fence)
            chunk = list(itertools.islice(rows, JOURNAL_CHUNK))

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
        try:
            fence = self._fence_of(target, "journal")  # the claim the changes were applied under
        except ClaimLost:
            return  # logged and counted: the journal is history, the target goes on
        if not wait:
            # Rows are made here, in the target's own thread; the writer thread only
            # inserts them. Whatever goes wrong is raised by flush_journal: a journal
            # never stops a target half-way through its writes.
            writer = self._journal_writer()
            try:
                assert self._engine is not None
                rows = _journal_rows_of(self._engine.dialect, [outcome], fence)
            except Exception as exc:  # noqa: BLE001 - raised by flush_journal
                writer.fail(exc)
                return
            writer.put(rows)
            return
        for part in outcome.split(JOURNAL_CHUNK):
            self._journal_rows([part], fence)

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

    def _journal_rows(self, parts: Sequence[_Outcome], fence: Fence | None = None) -> None:
        """One transaction of journal rows (``_journal_rows_of``)."""
        if self.readonly or self._engine is None:
            raise StoreError(f"state store {self.display}: journal: opened read-only")
        rows = _journal_rows_of(self._engine.dialect, parts, fence)
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
                    _insert_journal(fresh, self._claimed(fresh, rows))
            else:
                with self._errors(what), conn.begin():
                    _insert_journal(conn, self._claimed(conn, rows))

    def _claimed(self, conn: Connection, rows: Sequence[_Rows]) -> Sequence[_Rows]:
        """``rows`` less those whose claim is lost. Every claim is locked (``lock_claims``:
        two statements for the batch) in ``conn``'s transaction before any row is
        inserted; a lost one writes nothing, so the transaction goes on with the others'."""
        fences = sorted({r.fence for r in rows if r.fence is not None},
                        key=lambda f: (f.resource, f.owner, f.token))
        lost = set(lock_claims(conn, fences))
        if not lost:
            return rows
        refused: dict[tuple[str, Fence], int] = {}
        for r in rows:
            if r.fence in lost:
                refused[(r.target, r.fence)] = refused.get((r.target, r.fence), 0) + r.count
        for (target, fence), count in sorted(refused.items(), key=lambda x: (x[0][0], x[0][1].token)):
            self._refused(ClaimLost(fence), target, f"journal rows={count}")
        return [r for r in rows if r.fence not in lost]

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
    """Journal rows ready for the database: journal_parts rows and journal rows, of
    ``target``, written only while ``fence`` (if any) still holds."""

    parts: list[dict[str, Any]]
    single: list[tuple[Any, ...]]
    target: str = ""
    fence: Fence | None = None

    @property
    def count(self) -> int:
        return sum(int(p["changes"]) for p in self.parts) + len(self.single)


def _journal_rows_of(dialect: Dialect, parts: Sequence[_Outcome], fence: Fence | None = None) -> _Rows:
    """Each part of ``PART_ROWS`` or more address-list changes as one journal_parts row
    (its rows one JSON document), the others as a journal row per change."""
    bind = journal_t.c.at.type.dialect_impl(dialect).bind_processor(dialect)
    out = _Rows([], [], ", ".join(sorted({part.head[2] for part in parts})), fence)
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

    def __init__(self, store: JournalMixin) -> None:
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
