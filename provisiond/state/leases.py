"""Leases: the addresses IPAM handed out, held back after release, returned.

``reserve`` records a pass's Allocation in one transaction before any target write, or
raises ``LeaseConflict`` and records nothing; every lease change is journalled (target
``ipam``). PostgreSQL serialises reservations with a transaction-scoped advisory lock;
the unique constraints on ``leases`` are the last line: never one address twice. In
shared membership a reservation needs the ``global`` claim (``ClaimLost`` without it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from provisiond.core.changes import Change, Create, Delete, Resource, Update
from provisiond.core.ipam import Allocation, Lease
from provisiond.errors import LeaseConflict
from provisiond.state.claims import GLOBAL
from provisiond.state.journal import (
    JOURNAL_CHUNK,
    LEASE_TARGET,
    RELEASED_BY_HAND,
    JournalMixin,
    _change_rows,
    _insert_journal,
    _journal_rows_of,
    _Outcome,
    _run_of_its_own,
)
from provisiond.state.plumbing import _utc
from provisiond.state.tables import leases_t

log = logging.getLogger(__name__)

LEASE_LOCK = 0x70726F76_0002  # pg_advisory_xact_lock key: arbitrary, fixed, provisiond's own


class LeasesMixin(JournalMixin):
    """The StateStore's leases (a part of ``StateStore``); journalled, so built on the journal."""

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
        pass's run; without one, a run of its own). ``ClaimLost`` (nothing recorded)
        when ``fences`` is set and this member lost the ``global`` claim.
        """
        if not allocation.changed:
            return
        now = _utc(now)
        with self._write("reserve leases", lock=LEASE_LOCK, target=GLOBAL) as conn:
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
