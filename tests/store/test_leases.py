"""Leases in the StateStore: reserve, release, hold expiry, constraints, racing processes."""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from provisiond.errors import StoreError
from provisiond.core.ipam import Allocation, Lease, Pool, allocate
from provisiond.core.model import Account
from provisiond.errors import LeaseConflict
from provisiond.state.store import StateStore

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
POOL = Pool.build("towers", "towers", ["100.64.0.0/24"], hold=3600)


def members(*ids: str) -> list[Account]:
    return [Account(i, groups=frozenset({"towers"})) for i in ids]


def run_pass(store: StateStore, accounts: list[Account], now: datetime = NOW) -> Allocation:
    allocation = allocate(accounts, [POOL], store.leases(), now)
    store.reserve(allocation, now)
    return allocation


def test_reserve_release_return_expire(store: StateStore) -> None:
    run_pass(store, members("1", "2", "3"))
    assert [(x.account_id, x.address, x.state) for x in store.leases()] == [
        ("1", "100.64.0.1", "leased"), ("2", "100.64.0.2", "leased"), ("3", "100.64.0.3", "leased"),
    ]
    assert store.leases()[0].leased_at == NOW
    run_pass(store, members("1", "3"))  # 2 leaves
    held = [x for x in store.leases() if x.state == "held"]
    assert held == [Lease("towers", "100.64.0.2", "2", "held", NOW + HOUR)]
    a = run_pass(store, members("1", "2", "3", "4"), NOW + 30 * timedelta(minutes=1))
    assert [x.address for x in a.returns] == ["100.64.0.2"] and a.addresses["4"] == ("100.64.0.4",)
    assert {x.state for x in store.leases()} == {"leased"}
    # a second pass is a no-op
    assert not allocate(members("1", "2", "3", "4"), [POOL], store.leases(), NOW).changed


def test_expired_hold_is_freed_by_reserve_and_reused(store: StateStore) -> None:
    run_pass(store, members("1", "2"))
    run_pass(store, members("2"))
    later = NOW + 2 * HOUR
    a = run_pass(store, members("2", "3"), later)
    assert a.addresses["3"] == ("100.64.0.1",)
    assert [(x.account_id, x.address) for x in store.leases()] == [("2", "100.64.0.2"), ("3", "100.64.0.1")]


def test_expire_holds(store: StateStore) -> None:
    run_pass(store, members("1", "2"))
    run_pass(store, [])
    assert store.expire_holds(NOW + HOUR - timedelta(seconds=1)) == []
    freed = store.expire_holds(NOW + HOUR)
    assert sorted(x.address for x in freed) == ["100.64.0.1", "100.64.0.2"]
    assert store.leases() == []


def test_release_by_hand(store: StateStore) -> None:
    other = Pool.build("v6", "towers", ["2001:db8::/64"])
    allocation = allocate(members("1"), [POOL, other], [], NOW)
    store.reserve(allocation, NOW)
    released = store.release("1", "v6", now=NOW, hold={"v6": 60})
    assert released == [Lease("v6", "2001:db8::1", "1", "held", NOW + timedelta(seconds=60))]
    assert store.release("1", now=NOW, hold=120)[0].held_until == NOW + timedelta(seconds=120)
    assert store.release("1", now=NOW) == []
    assert {x.state for x in store.leases()} == {"held"}
    assert [x.pool for x in store.leases("v6")] == ["v6"]


def test_reserve_refuses_an_address_already_taken(store: StateStore) -> None:
    stale = allocate(members("1"), [POOL], [], NOW)
    run_pass(store, members("2"))  # another process took .1 meanwhile
    with pytest.raises(LeaseConflict, match=r"pool towers: cannot lease 100\.64\.0\.1 to account 1: already leased for account 2") as info:
        store.reserve(stale, NOW)
    assert (info.value.pool, info.value.address, info.value.account_id) == ("towers", "100.64.0.1", "1")
    assert isinstance(info.value, StoreError)
    assert [x.account_id for x in store.leases()] == ["2"]


def test_reserve_refuses_a_second_lease_for_one_account(store: StateStore) -> None:
    run_pass(store, members("1"))
    twice = Allocation(new=(Lease("towers", "100.64.0.9", "1"),))
    with pytest.raises(LeaseConflict, match="account 1 already has a leased address"):
        store.reserve(twice, NOW)


def test_reserve_is_all_or_nothing(store: StateStore) -> None:
    run_pass(store, members("1"))
    bad = Allocation(
        new=(Lease("towers", "100.64.0.5", "5"),),
        releases=(Lease("towers", "100.64.0.77", "7", "held", NOW + HOUR),),
    )
    with pytest.raises(LeaseConflict, match=r"cannot release 100\.64\.0\.77 for account 7: it is free"):
        store.reserve(bad, NOW)
    assert [x.address for x in store.leases()] == ["100.64.0.1"]


def test_readonly_store_cannot_reserve(store_url: str) -> None:
    StateStore.open(store_url).close()
    with StateStore.open(store_url, readonly=True) as ro:
        with pytest.raises(StoreError, match="read-only"):
            ro.reserve(allocate(members("1"), [POOL], [], NOW), NOW)


def _insert(conn: sa.Connection, pool: str, address: str, account: str, state: str = "leased") -> None:
    held = NOW + HOUR if state == "held" else None
    conn.execute(
        sa.text(
            "INSERT INTO leases (pool, address, account_id, state, leased_at, held_until) "
            "VALUES (:p, :a, :acct, :s, :t, :h)"
        ),
        {"p": pool, "a": address, "acct": account, "s": state, "t": NOW.replace(tzinfo=None), "h": held},
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("towers", "100.64.0.1", "1"), ("towers", "100.64.0.1", "2")),  # one address, two accounts
        (("towers", "100.64.0.1", "1"), ("old-towers", "100.64.0.1", "2")),  # across pools
        (("towers", "100.64.0.1", "1"), ("towers", "100.64.0.2", "1")),  # two leased for one account
    ],
)
def test_database_constraints_reject_double_leases(
    store_url: str, first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    StateStore.open(store_url).close()
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            _insert(conn, *first)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            _insert(conn, *second)
        with engine.begin() as conn:  # held next to leased for one account is fine
            _insert(conn, "towers", "100.64.0.3", first[2], "held")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            _insert(conn, "towers", "100.64.0.4", "9", "bogus")
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["address", "prefix"])
def test_processes_never_double_lease(store_url: str, tmp_path: Path, kind: str) -> None:
    workers, count, batch = 4, 60, 3
    StateStore.open(store_url).close()
    script = Path(__file__).with_name("lease_worker.py")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), store_url, str(w), str(count), str(batch), str(barrier), str(workers),
             kind],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(workers)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    leases = StateStore.open(store_url, readonly=True).leases()
    assert len(leases) == workers * count
    assert len({x.address for x in leases}) == workers * count
    assert len({x.account_id for x in leases}) == workers * count
    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        dupes = conn.execute(
            sa.text("SELECT address FROM leases GROUP BY address HAVING COUNT(*) > 1")
        ).all()
    engine.dispose()
    assert dupes == []
    # lowest free, packed: nothing skipped
    if kind == "prefix":  # aligned /56s from 2001:db8::/44, one after the other
        base = int(ipaddress.ip_network("2001:db8::/44").network_address)
        assert sorted((int(ipaddress.ip_network(x.address).network_address) - base) >> 72 for x in leases) == list(
            range(workers * count))
        assert {ipaddress.ip_network(x.address).prefixlen for x in leases} == {56}
    else:
        assert sorted(int(x.address.split(".")[-1]) + 256 * int(x.address.split(".")[-2]) for x in leases) == list(
            range(1, workers * count + 1)
        )
    # The race really happened: all four allocated the same first addresses before any
    # reserved them (the barrier), so at least three lost and retried.
    retries = sum(int(out.strip()) for out, _ in outputs)
    assert retries >= workers - 1


def test_concurrent_first_open_migrates_once(store_url: str) -> None:
    url = store_url
    code = "import sys; from provisiond.state.store import StateStore; StateStore.open(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with StateStore.open(url) as store:
        assert store.leases() == []


def test_leases_roundtrip_dataclass_equality(store: StateStore) -> None:
    a = run_pass(store, members("1"))
    assert store.leases() == list(a.new)
    assert dataclasses.replace(store.leases()[0], leased_at=None) == a.new[0]


@pytest.mark.parametrize("part_rows", [2, 200])  # as journal_parts rows, and one row each
def test_every_lease_change_is_journalled_with_its_account(
        store: StateStore, monkeypatch: pytest.MonkeyPatch, part_rows: int) -> None:
    from provisiond.state import journal as store_mod

    monkeypatch.setattr(store_mod, "PART_ROWS", part_rows)
    run_id = store.start_run("apply")
    store.reserve(allocate(members("1", "2", "3"), [POOL], [], NOW), NOW, run_id=run_id)
    run_pass(store, members("1", "3"), NOW + timedelta(minutes=1))  # 2 is held
    run_pass(store, members("1", "3"), NOW + 2 * HOUR)  # and its hold runs out
    store.release("3", now=NOW + 2 * HOUR, hold=60)

    def seen(account: str) -> list[tuple[str, str, str, str, str]]:
        return [(e["target"], e["action"], e["detail"]["address"], e["detail"]["state"], e["message"])
                for e in reversed(store.history(account=account)) if e["kind"] == "lease"]

    assert seen("2") == [("ipam", "create", "100.64.0.2", "leased", ""),
                         ("ipam", "update", "100.64.0.2", "held", ""),
                         ("ipam", "delete", "100.64.0.2", "held", "")]
    assert seen("3") == [("ipam", "create", "100.64.0.3", "leased", ""),
                         ("ipam", "update", "100.64.0.3", "held",
                          "released by hand (provisiond ipam release)")]
    first = [e for e in store.history(account="1") if e["action"] == "create"]
    assert [e["run_id"] for e in first] == [run_id]  # under the pass's run
    modes = {r["mode"] for r in store.runs()}
    assert {"apply", "ipam", "ipam release"} <= modes
