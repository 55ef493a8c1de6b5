"""State-store writes carry the writer's claim (``StateStore.fences``) on the real
PostgreSQL: claims are granted by ``daemon.membersql`` as a member's thread grants them,
and a member that lost one (released and claimed by another, expired) has its writes
refused: journal rows left out, target by target; leases, the radreply ledger and the
billing read refused whole (``ClaimLost``). Without ``fences`` nothing changes.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from harness import pg_kwargs, wait_until

from provisiond.core.changes import Change, Create, Resource
from provisiond.core.ipam import Allocation, Lease
from provisiond.daemon import membersql
from provisiond.daemon.shares import GLOBAL as SHARES_GLOBAL
from provisiond.state.claims import GLOBAL, ClaimLost, Fence, resource_of
from provisiond.state.ondemand import WritableOnDemand
from provisiond.state.store import PART_ROWS, StateStore

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TTL = 60.0  # claims outlive the test unless it expires them


class Member:
    """A member as ``daemon.members`` makes one: its row, its claims, its fences."""

    def __init__(self, url: str, member_id: str) -> None:
        self.me, self.inc = member_id, secrets.token_hex(8)
        self.conn = membersql.connect(url, member_id=member_id, ttl=TTL, margin=5.0)
        assert membersql.register(self.conn, me=self.me, inc=self.inc, host="test", pid=1, ttl=TTL)
        self.fences: dict[str, Fence] = {}

    def claim(self, *resources: str) -> dict[str, int]:
        granted = membersql.claim(self.conn, resources, me=self.me, inc=self.inc)
        self.fences.update({r: Fence(r, self.me, t) for r, t in granted.items()})
        return granted

    def release(self, *resources: str) -> None:
        """Released in the table; ``fences`` keeps them: a member that has not noticed."""
        assert membersql.release(self.conn, resources, me=self.me) == sorted(resources)




@pytest.fixture
def members(url: str) -> Iterator[Callable[[str], Member]]:
    made: list[Member] = []

    def make(member_id: str) -> Member:
        made.append(Member(url, member_id))
        return made[-1]

    yield make
    for m in made:
        m.conn.close()


@pytest.fixture
def store(url: str) -> Iterator[StateStore]:
    s = StateStore.open(url)
    yield s
    s.close()


def changes(count: int) -> list[Change]:
    return [Create(Resource.make("address-list", "tower-hosts",
                                 (("list", "tower-hosts"), ("address", f"100.64.{n >> 8}.{n & 255}")),
                                 (("comment", f"provisiond:{n}"),), str(n), f"acct {n}"))
            for n in range(1, count + 1)]


def journalled(store: StateStore) -> Counter[str]:
    """Journal entries by target (``journal`` rows and ``journal_parts`` changes)."""
    return Counter(str(e["target"]) for e in store.history(limit=100_000))


def expire(admin: psycopg.Connection[Any], *resources: str) -> None:
    """The claims run out, as a member paused past its ttl finds them."""
    admin.execute("UPDATE provisiond_claims SET expires_at = now() - interval '1 second' "
                  "WHERE resource = ANY(%s)", (list(resources),))


def lease(n: int) -> Allocation:
    return Allocation(new=(Lease("towers", f"100.64.9.{n}", str(n)),))


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine sends meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def test_global_and_the_targets_it_covers() -> None:
    assert GLOBAL == SHARES_GLOBAL == "global"
    targets = ("radius", "ipam", "global", "core-1")
    assert [resource_of(t) for t in targets] == [GLOBAL, GLOBAL, GLOBAL, "core-1"]


def test_a_current_fence_writes_every_kind_of_row(
        store: StateStore, members: Callable[[str], Member]) -> None:
    a = members("pop-a")
    assert a.claim("core-1", GLOBAL) == {"core-1": 1, GLOBAL: 1}
    store.fences = a.fences.get
    run = store.start_run("apply")
    with statements() as sent:
        store.journal_changes(run, "core-1", applied=changes(3))
        store.journal(run, "core-1", [{"action": "create", "kind": "address-list", "account_id": "9"}])
        store.journal_changes(run, "core-1", applied=changes(PART_ROWS), wait=False)
        store.journal_changes(run, "radius", applied=changes(2), wait=False)
        store.flush_journal()
        store.reserve(lease(1), NOW, run_id=run)
        store.radreply_record(added=[("u1", "Framed-IP-Address", "1")], removed=())
        store.record_read(10, 12, NOW)
    assert journalled(store) == {"core-1": 4 + PART_ROWS, "radius": 2, "ipam": 1}
    assert [x.address for x in store.leases()] == ["100.64.9.1"]
    assert store.radreply_owned() == {("u1", "Framed-IP-Address")}
    assert store.last_good_read() == 10
    assert store.refused_writes == 0
    # two journal calls, the writer's batch (core-1 and global in one statement), reserve, ledger, read
    locks = [s.count("pg_advisory_xact_lock_shared(") for s in sent if "lock_shared" in s]
    assert locks == [1, 1, 2, 1, 1, 1]
    store.finish_run(run, "ok", {})


def test_a_stale_token_is_refused_and_writes_nothing(
        store: StateStore, members: Callable[[str], Member], caplog: pytest.LogCaptureFixture) -> None:
    a, b = members("pop-a"), members("pop-b")
    a.claim("core-1")
    a.release("core-1")
    assert b.claim("core-1") == {"core-1": 2}  # a's fence still says token 1
    store.fences = a.fences.get
    run = store.start_run("apply")
    with caplog.at_level(logging.ERROR, logger="provisiond.state"):
        store.journal_changes(run, "core-1", applied=changes(3))
        store.journal(run, "core-1", [{"action": "create", "kind": "address-list", "account_id": "9"}])
    assert journalled(store) == {}
    assert store.refused_writes == 2
    assert [r.levelno for r in caplog.records] == [logging.ERROR] * 2
    assert all("target=core-1 member=pop-a token=1" in r.getMessage() for r in caplog.records)
    store.fences = b.fences.get  # the new owner writes
    store.journal_changes(run, "core-1", applied=changes(3))
    assert journalled(store) == {"core-1": 3}


def test_an_expired_claim_is_refused(
        store: StateStore, members: Callable[[str], Member], admin: psycopg.Connection[Any]) -> None:
    a = members("pop-a")
    a.claim("core-1", GLOBAL)
    store.fences = a.fences.get
    run = store.start_run("apply")
    store.journal_changes(run, "core-1", applied=changes(2))
    expire(admin, "core-1", GLOBAL)
    store.journal_changes(run, "core-1", applied=changes(2))
    with pytest.raises(ClaimLost, match="global: write refused: pop-a no longer holds its claim"):
        store.record_read(10, 12, NOW)
    assert journalled(store) == {"core-1": 2}
    assert store.last_good_read() is None and store.refused_writes == 2


def test_a_batch_writes_the_routers_still_held_and_the_writer_goes_on(
        store: StateStore, members: Callable[[str], Member], caplog: pytest.LogCaptureFixture) -> None:
    a, b = members("pop-a"), members("pop-b")
    a.claim("core-1", "core-2")
    a.release("core-2")
    b.claim("core-2")
    store.fences = a.fences.get  # core-1 held, core-2 lost, core-3 never claimed
    run = store.start_run("apply")
    with caplog.at_level(logging.ERROR, logger="provisiond.state"):
        for target in ("core-1", "core-2", "core-3"):
            store.journal_changes(run, target, applied=changes(PART_ROWS), wait=False)  # a part row
            store.journal_changes(run, target, applied=changes(5), wait=False)  # journal rows
        store.sync_journal()  # one batch, one transaction: core-1's rows in, core-2's out
        assert journalled(store) == {"core-1": PART_ROWS + 5}
        store.journal_changes(run, "core-1", applied=changes(7), wait=False)  # the same writer
        store.flush_journal()
    assert journalled(store) == {"core-1": PART_ROWS + 12}
    refusals = sorted(r.getMessage() for r in caplog.records)
    assert len(refusals) == 3 and store.refused_writes == 3  # core-3 twice at once, core-2 in the batch
    assert f"journal rows={PART_ROWS + 5} target=core-2 member=pop-a token=1" in refusals[0]
    assert all("target=core-3 member=- token=-" in m and "holds no claim" in m for m in refusals[1:])
    store.finish_run(run, "ok", {})


@pytest.mark.parametrize("lost", ["taken over", "never held"])
def test_leases_ledger_and_read_need_the_global_claim(
        store: StateStore, members: Callable[[str], Member], lost: str) -> None:
    a, b = members("pop-a"), members("pop-b")
    if lost == "taken over":
        a.claim(GLOBAL)
        a.release(GLOBAL)
        b.claim(GLOBAL)
    store.fences = a.fences.get
    run = store.start_run("apply")
    message = "no longer holds its claim" if lost == "taken over" else "holds no claim"
    with pytest.raises(ClaimLost, match=f"global: write refused: .*{message}"):
        store.reserve(lease(1), NOW, run_id=run)
    with pytest.raises(ClaimLost, match=message):
        store.radreply_record(added=[("u1", "Framed-IP-Address", "1")], removed=())
    with pytest.raises(ClaimLost, match=message):
        store.record_read(10, 12, NOW)
    assert store.leases() == [] and store.radreply_owned() == set() and store.last_good_read() is None
    assert journalled(store) == {} and store.refused_writes == 3
    store.finish_run(run, "ok", {})  # a run of this member's own: never fenced
    assert store.runs()[0]["result"] == "ok"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_without_fences_nothing_changes(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """No claim anywhere, and no statement about claims: every write as before."""
    url = (f"sqlite:///{tmp_path / 'state.db'}" if backend == "sqlite"
           else str(request.getfixturevalue("pg_url")))
    with StateStore.open(url) as store, statements() as sent:
        assert store.fences is None
        run = store.start_run("apply")
        store.journal_changes(run, "core-1", applied=changes(3))
        store.journal_changes(run, "core-2", applied=changes(PART_ROWS), wait=False)
        store.flush_journal()
        store.reserve(lease(1), NOW, run_id=run)
        store.radreply_record(added=[("u1", "Framed-IP-Address", "1")], removed=())
        store.record_read(10, 12, NOW)
        store.finish_run(run, "ok", {})
        assert journalled(store) == {"core-1": 3, "core-2": PART_ROWS, "ipam": 1}
        assert store.last_good_read() == 10 and store.refused_writes == 0
    fencing = ("provisiond_claims", "lock_shared", "set_config")
    assert sent and not [s for s in sent if any(word in s for word in fencing)]


def test_a_claim_waits_for_the_fenced_journal_transaction_under_way(
        url: str, store: StateStore, members: Callable[[str], Member],
        admin: psycopg.Connection[Any]) -> None:
    """The journal's transaction checked a's claim, then waits (on a table lock held
    here); a releases, b asks: not granted while the rows are being written, granted
    once they are committed. (``test_members`` proves the same of ``lock_claim`` alone.)"""
    a, b = members("pop-a"), members("pop-b")
    a.claim("core-1")
    store.fences = a.fences.get
    run = store.start_run("apply")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.journal_changes(run, "core-1", applied=changes(3))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    writer = threading.Thread(target=write)
    with psycopg.connect(**{**pg_kwargs(url), "autocommit": False}) as blocker:
        blocker.execute("LOCK TABLE journal IN SHARE MODE")  # the journal's INSERT waits
        writer.start()
        wait_until(lambda: admin.execute(
            "SELECT 1 FROM pg_locks WHERE relation = 'journal'::regclass AND NOT granted").fetchone(),
            timeout=10.0, what="the journal's insert waiting on the table lock")
        a.release("core-1")
        assert b.claim("core-1") == {}  # the writer holds core-1's lock shared
        assert b.claim("core-1") == {}
        blocker.commit()
    writer.join(10.0)
    assert not errors and not writer.is_alive()
    assert journalled(store) == {"core-1": 3} and store.refused_writes == 0
    assert b.claim("core-1") == {"core-1": 2}
    store.journal_changes(run, "core-1", applied=changes(3))  # a's token 1: refused now
    assert journalled(store) == {"core-1": 3} and store.refused_writes == 1


def test_the_daemons_store_opened_on_demand_takes_its_fences(
        url: str, members: Callable[[str], Member]) -> None:
    """``Sharing.fit`` sets ``fences`` on the Reconciler's store, a ``WritableOnDemand``:
    the store it opens read-write later carries them."""
    a = members("pop-a")
    a.claim(GLOBAL)
    store = WritableOnDemand(url)
    try:
        assert store.last_good_read() is None  # the read-only store, open now
        none: dict[str, Fence] = {}
        store.fences = none.get  # this member holds nothing
        with pytest.raises(ClaimLost, match="global: write refused: this member holds no claim"):
            store.record_read(10, 12, NOW)  # opens the read-write store
        assert store.refused_writes == 1
        store.fences = a.fences.get
        store.record_read(10, 12, NOW)
        assert store.last_good_read() == 10 and store.refused_writes == 1
    finally:
        store.close()
