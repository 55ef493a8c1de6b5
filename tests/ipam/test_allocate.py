"""ipam.allocate: pure rules, no database (issue #4)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import netaddr
import pytest

from provisiond.core.ipam import Allocation, Lease, Pool, allocate
from provisiond.core.model import Account
from provisiond.settings import PoolSettings

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def acct(aid: str, *groups: str, addresses: Sequence[str] = ()) -> Account:
    return Account(aid, name=f"acct {aid}", groups=frozenset(groups), addresses=tuple(addresses))


def members(n: int, group: str = "towers", start: int = 1) -> list[Account]:
    return [acct(str(i), group) for i in range(start, start + n)]


def towers(*networks: str, exclude: Sequence[str] = (), hold: float = 3600, **kw: int) -> Pool:
    return Pool.build("towers", "towers", networks or ("100.64.0.0/24",), exclude=exclude, hold=hold, **kw)


def record(leases: Iterable[Lease], a: Allocation) -> list[Lease]:
    """What reserve would leave in the store (expired holds dropped)."""
    rows = {(x.pool, x.address): x for x in leases if x not in a.expired}
    for x in (*a.releases, *a.returns, *a.new):
        rows[(x.pool, x.address)] = x
    return list(rows.values())


def passes(accounts: Sequence[Account], pools: Sequence[Pool], leases: list[Lease], now: datetime = NOW) -> tuple[Allocation, list[Lease]]:
    a = allocate(accounts, pools, leases, now)
    return a, record(leases, a)


def test_lowest_free_in_stable_account_order() -> None:
    accounts = [acct("10", "towers"), acct("9", "towers"), acct("100", "towers"), acct("x", "other")]
    a = allocate(accounts, [towers()], [], NOW)
    assert a.addresses == {"9": ("100.64.0.1",), "10": ("100.64.0.2",), "100": ("100.64.0.3",)}
    assert [x.account_id for x in a.new] == ["9", "10", "100"]
    assert all(x.state == "leased" and x.pool == "towers" for x in a.new)


def test_deterministic_regardless_of_input_order() -> None:
    accounts = members(50)
    a1 = allocate(accounts, [towers()], [], NOW)
    a2 = allocate(list(reversed(accounts)), [towers()], [], NOW)
    assert a1 == a2


def test_sticky_across_passes_and_new_members_fill_gaps() -> None:
    pool = towers()
    a, leases = passes(members(5), [pool], [])
    # account 2 leaves; 6 joins: 6 must not get 2's held address
    accounts = [x for x in members(6) if x.id != "2"]
    b, leases = passes(accounts, [pool], leases)
    assert b.addresses["1"] == a.addresses["1"] and b.addresses["5"] == a.addresses["5"]
    assert b.addresses["6"] == ("100.64.0.6",)
    assert [(x.account_id, x.address, x.state, x.held_until) for x in b.releases] == [
        ("2", "100.64.0.2", "held", NOW + HOUR)
    ]
    c, _ = passes(accounts, [pool], leases)
    assert not c.changed and c.addresses == b.addresses


def test_sticky_across_config_reload_that_grows_pool() -> None:
    _, leases = passes(members(3), [towers("100.64.0.0/24")], [])
    bigger = towers("100.64.0.0/24", "100.64.1.0/24", exclude=["100.64.0.4"])
    a = allocate(members(3), [bigger], leases, NOW)
    assert not a.changed
    assert a.addresses == {"1": ("100.64.0.1",), "2": ("100.64.0.2",), "3": ("100.64.0.3",)}


def test_rejoin_during_hold_returns_same_address() -> None:
    pool = towers()
    _, leases = passes(members(3), [pool], [])
    _, leases = passes([acct("1", "towers"), acct("3", "towers")], [pool], leases)
    a, leases = passes(members(4), [pool], leases, NOW + timedelta(minutes=59))
    assert [(x.account_id, x.address) for x in a.returns] == [("2", "100.64.0.2")]
    assert a.addresses["2"] == ("100.64.0.2",)
    assert a.addresses["4"] == ("100.64.0.4",)
    assert {x.state for x in leases} == {"leased"}


def test_held_address_is_free_after_hold() -> None:
    pool = towers()
    _, leases = passes(members(2), [pool], [])
    _, leases = passes([acct("2", "towers")], [pool], leases)  # 1 leaves: .1 held
    later = NOW + HOUR
    a = allocate([acct("2", "towers"), acct("3", "towers")], [pool], leases, later)
    assert [(x.address, x.account_id) for x in a.expired] == [("100.64.0.1", "1")]
    assert a.addresses["3"] == ("100.64.0.1",)
    # and while held, nobody else gets it
    b = allocate([acct("2", "towers"), acct("3", "towers")], [pool], leases, later - timedelta(seconds=1))
    assert b.addresses["3"] == ("100.64.0.3",) and not b.expired


def test_account_gone_from_billing_releases() -> None:
    pool = towers()
    _, leases = passes(members(2), [pool], [])
    a = allocate([acct("1", "towers")], [pool], leases, NOW)
    assert [(x.account_id, x.state) for x in a.releases] == [("2", "held")]


@pytest.mark.parametrize(
    ("networks", "exclude", "expected"),
    [
        (["100.64.0.0/30"], [], ["100.64.0.1", "100.64.0.2"]),  # network and broadcast skipped
        (["100.64.0.0/31"], [], ["100.64.0.0", "100.64.0.1"]),  # RFC 3021: both usable
        (["100.64.0.7/32"], [], ["100.64.0.7"]),
        (["100.64.0.0/29"], ["100.64.0.1", "100.64.0.3-100.64.0.5"], ["100.64.0.2", "100.64.0.6"]),
        (["100.64.0.0/30", "100.64.0.8/30"], [], ["100.64.0.1", "100.64.0.2", "100.64.0.9", "100.64.0.10"]),
        (["2001:db8::/126"], [], ["2001:db8::1", "2001:db8::2", "2001:db8::3"]),  # :: is anycast
        (["2001:db8::/127"], [], ["2001:db8::", "2001:db8::1"]),
        (["2001:db8::5/128"], [], ["2001:db8::5"]),
    ],
)
def test_every_usable_address_and_nothing_else(networks: list[str], exclude: list[str], expected: list[str]) -> None:
    pool = Pool.build("p", "g", networks, exclude=exclude)
    a = allocate(members(len(expected) + 2, "g"), [pool], [], NOW)
    assert [x.address for x in a.new] == expected
    assert pool.size == len(expected)
    assert a.failures == {str(len(expected) + 1): "pool p exhausted", str(len(expected) + 2): "pool p exhausted"}


def test_exhaustion_fails_the_account_not_the_pass() -> None:
    small = Pool.build("small", "a", ["100.64.0.0/30"])
    big = Pool.build("big", "b", ["100.64.1.0/24"])
    accounts = [acct("1", "a"), acct("2", "a"), acct("3", "a"), acct("4", "b")]
    a = allocate(accounts, [small, big], [], NOW)
    assert a.failures == {"3": "pool small exhausted"}
    assert a.addresses["4"] == ("100.64.1.1",)
    assert "3" not in a.addresses


def test_priority_between_pools_then_name() -> None:
    low = Pool.build("a-low", "g1", ["100.64.0.0/24"], priority=0)
    high = Pool.build("z-high", "g2", ["100.64.1.0/24"], priority=10)
    tie = Pool.build("b-tie", "g3", ["100.64.2.0/24"], priority=0)
    assert allocate([acct("1", "g1", "g2")], [low, high], [], NOW).addresses == {"1": ("100.64.1.1",)}
    assert allocate([acct("1", "g1", "g3")], [tie, low], [], NOW).addresses == {"1": ("100.64.0.1",)}


def test_priority_change_moves_the_account_and_holds_the_old_address() -> None:
    low = Pool.build("low", "g1", ["100.64.0.0/24"], hold=60)  # the old pool's hold applies
    _, leases = passes([acct("1", "g1")], [low], [])
    high = Pool.build("high", "g2", ["100.64.1.0/24"], priority=5)
    a = allocate([acct("1", "g1", "g2")], [low, high], leases, NOW)
    assert a.addresses == {"1": ("100.64.1.1",)}
    assert [(x.pool, x.address, x.held_until) for x in a.releases] == [
        ("low", "100.64.0.1", NOW + timedelta(seconds=60))
    ]


def test_dual_stack_one_address_per_family() -> None:
    v4 = towers()
    v6 = Pool.build("towers6", "towers", ["2001:db8:1::/64"])
    a = allocate([acct("1", "towers")], [v4, v6], [], NOW)
    assert a.addresses == {"1": ("100.64.0.1", "2001:db8:1::1")}


def test_ipv6_lowest_free_single_addresses() -> None:
    pool = Pool.build("v6", "g", ["2001:db8::/48"], exclude=["2001:db8::1-2001:db8::3"])
    a = allocate(members(3, "g"), [pool], [], NOW)
    assert [x.address for x in a.new] == ["2001:db8::4", "2001:db8::5", "2001:db8::6"]


def test_billing_address_wins() -> None:
    pool = towers()
    a = allocate(
        [acct("1", "towers", addresses=["203.0.113.7"]), acct("2", "towers")], [pool], [], NOW
    )
    assert "1" not in a.addresses
    assert a.addresses["2"] == ("100.64.0.1",)
    # a billing address inside the pool is never handed to anyone else
    b = allocate(
        [acct("1", "towers", addresses=["100.64.0.1"]), acct("2", "towers")], [pool], [], NOW
    )
    assert b.addresses == {"2": ("100.64.0.2",)} and not b.conflicts
    # billing networks inside the pool block the whole network
    c = allocate(
        [acct("1", "other", addresses=["100.64.0.0/29"]), acct("2", "towers")], [pool], [], NOW
    )
    assert c.addresses == {"2": ("100.64.0.8",)}


def test_billing_address_of_other_family_does_not_stop_allocation() -> None:
    a = allocate([acct("1", "towers", addresses=["2001:db8::9"])], [towers()], [], NOW)
    assert a.addresses == {"1": ("100.64.0.1",)}


def test_billing_address_arriving_releases_the_pool_lease() -> None:
    pool = towers()
    _, leases = passes([acct("1", "towers")], [pool], [])
    a = allocate([acct("1", "towers", addresses=["203.0.113.7"])], [pool], leases, NOW)
    assert [(x.account_id, x.address, x.state) for x in a.releases] == [("1", "100.64.0.1", "held")]
    assert a.addresses == {}


@pytest.mark.parametrize("state", ["leased", "held"])
def test_billing_address_leased_to_another_account_conflicts_for_both(state: str) -> None:
    pool = towers()
    lease = Lease("towers", "100.64.0.1", "1", "leased")
    if state == "held":
        lease = dataclasses.replace(lease, state="held", held_until=NOW + HOUR)
    accounts = [acct("1", "towers"), acct("2", "residential", addresses=["100.64.0.1"])]
    a = allocate(accounts, [pool], [lease], NOW)
    by_account = {c.account_id: c for c in a.conflicts}
    assert set(by_account) == {"1", "2"}
    assert by_account["2"].other_account_id == "1" and by_account["1"].other_account_id == "2"
    assert all(c.address == "100.64.0.1" and c.pool == "towers" for c in a.conflicts)
    assert "account 1" in by_account["2"].reason and "account 2" in by_account["1"].reason
    # nothing is moved behind anyone's back
    assert not a.new and not a.releases
    if state == "leased":
        assert a.addresses == {"1": ("100.64.0.1",)}


def test_shrunk_pool_reports_and_keeps_leases() -> None:
    _, leases = passes(members(10), [towers("100.64.0.0/24")], [])
    shrunk = towers("100.64.0.0/29")  # .1 - .6 usable
    a = allocate(members(10), [shrunk], leases, NOW)
    assert not a.changed
    assert sorted(o.lease.address for o in a.out_of_pool) == [f"100.64.0.{i}" for i in (10, 7, 8, 9)]
    assert a.addresses["9"] == ("100.64.0.9",)  # kept, not moved
    assert all("no longer part of pool towers" in o.reason for o in a.out_of_pool)


def test_newly_excluded_address_is_reported_not_moved() -> None:
    _, leases = passes(members(3), [towers()], [])
    a = allocate(members(3), [towers(exclude=["100.64.0.2"])], leases, NOW)
    assert [o.lease.account_id for o in a.out_of_pool] == ["2"]
    assert not a.changed


def test_removed_pool_leases_are_reported() -> None:
    _, leases = passes(members(1), [towers()], [])
    other = Pool.build("other", "x", ["10.0.0.0/24"])
    a = allocate(members(1), [other], leases, NOW)
    assert [o.reason for o in a.out_of_pool] == ["pool towers is not configured any more"]
    assert not a.changed and a.addresses == {}


def test_held_out_of_pool_address_is_not_returned() -> None:
    held = Lease("towers", "100.64.0.200", "1", "held", NOW + HOUR)
    a = allocate([acct("1", "towers")], [towers("100.64.0.0/25")], [held], NOW)
    assert not a.returns and a.addresses == {"1": ("100.64.0.1",)}


def test_from_settings_matches_settings_validation() -> None:
    ps = PoolSettings(
        name="towers", group="Tower Hosts", networks=["100.64.0.0/24", "100.64.9.0/31"],
        exclude=["100.64.0.1-100.64.0.10"], priority=3, hold="2h",
    )
    pool = Pool.from_settings(ps)
    assert (pool.name, pool.group, pool.priority, pool.hold) == ("towers", "Tower Hosts", 3, 2 * HOUR)
    assert pool.size == 254 - 10 + 2
    assert "100.64.0.11" in pool and "100.64.0.255" not in pool and "100.64.9.1" in pool
    assert netaddr.IPAddress("100.64.0.0") not in pool.usable


def test_to_json_and_lines() -> None:
    pool = towers("100.64.0.0/30")
    a = allocate(members(3), [pool], [], NOW)
    data = a.to_json()
    assert data["new"][0] == {"account_id": "1", "pool": "towers", "address": "100.64.0.1", "state": "leased"}
    assert data["failures"] == {"3": "pool towers exhausted"}
    assert a.lines()[0] == "+ lease towers 100.64.0.1  acct 1"


def test_fifty_thousand_in_a_slash_16() -> None:
    """Correct at scale; how fast is measured in bench/ipam_bench.py, not asserted here."""
    pool = Pool.build("big", "g", ["10.20.0.0/16"], exclude=["10.20.0.0/24"])
    accounts = members(50_000, "g")
    a = allocate(accounts, [pool], [], NOW)
    assert len(a.new) == 50_000 and not a.failures
    assert a.new[0].address == "10.20.1.0" and a.addresses["1"] == ("10.20.1.0",)
    b = allocate(accounts, [pool], list(a.new), NOW)
    assert not b.changed


def test_standing_allocation_keeps_the_leases_as_they_stand_and_decides_nothing() -> None:
    """A shared member without the global claim plans with ``standing()``: an account
    already leased keeps its address, a new one waits for the global member, a release
    still takes its address off, and nothing is left for ``reserve`` to record."""
    pool = towers()
    leases = [Lease("towers", "100.64.0.1", "1"), Lease("towers", "100.64.0.2", "2")]
    decided = allocate([acct("1", "towers"), acct("3", "towers")], [pool], leases, NOW)
    assert decided.new and decided.releases  # account 3 is new, account 2 left
    standing = decided.standing()
    assert not standing.changed
    assert dict(standing.addresses) == {"1": ("100.64.0.1",)}
