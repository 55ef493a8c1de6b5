"""ipam.allocate with prefix pools (issue #24): aligned blocks, slots, billing prefixes."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisiond.core import addresses
from provisiond.core.ipam import Allocation, Lease, Pool, allocate, pool_usage, slots
from provisiond.core.model import Account

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def acct(aid: str, *groups: str, addresses: Sequence[str] = ()) -> Account:
    return Account(aid, name=f"acct {aid}", groups=frozenset(groups), addresses=tuple(addresses))


def record(leases: list[Lease], a: Allocation) -> list[Lease]:
    rows = {(x.pool, x.address): x for x in leases if x not in a.expired}
    for x in (*a.releases, *a.returns, *a.new):
        rows[(x.pool, x.address)] = x
    return list(rows.values())


PD = Pool.build("pd", "ftth", ["2001:db8:100::/40"], prefix_length=56, hold=3600)
WAN = Pool.build("wan", "ftth", ["2001:db8:ff00::/40"], prefix_length=64,
                 radius_attribute="Framed-IPv6-Prefix", hold=3600)
TOWERS = Pool.build("blocks", "towers", ["100.64.8.0/24"], prefix_length=29, hold=3600)


def test_aligned_prefixes_lowest_first() -> None:
    a = allocate([acct("1", "ftth"), acct("2", "ftth"), acct("3", "ftth")], [PD], [], NOW)
    assert a.addresses == {"1": ("2001:db8:100::/56",), "2": ("2001:db8:100:100::/56",),
                           "3": ("2001:db8:100:200::/56",)}
    assert PD.attribute == "Delegated-IPv6-Prefix" and PD.size == 1 << 16


def test_ipv4_blocks_use_the_whole_block_no_reserved_addresses() -> None:
    a = allocate([acct(str(i), "towers") for i in range(1, 4)], [TOWERS], [], NOW)
    assert [x.address for x in a.new] == ["100.64.8.0/29", "100.64.8.8/29", "100.64.8.16/29"]
    assert TOWERS.size == 32 and TOWERS.attribute == "Framed-Route"


def test_wan_and_delegated_prefix_are_two_slots_ipv4_one() -> None:
    v4 = Pool.build("v4", "ftth", ["100.64.0.0/24"])
    a = allocate([acct("1", "ftth")], [PD, WAN, v4, TOWERS.__class__.build(
        "blk", "ftth", ["100.65.0.0/24"], prefix_length=30)], [], NOW)
    # one IPv4 allocation (blk sorts before v4 at equal priority), one per IPv6 attribute
    assert a.addresses["1"] == ("100.65.0.0/30", "2001:db8:100::/56", "2001:db8:ff00::/64")


def test_exclusions_are_never_straddled() -> None:
    pool = Pool.build("blocks", "towers", ["100.64.8.0/27"], prefix_length=29,
                      exclude=["100.64.8.3", "100.64.8.17-100.64.8.20"])
    a = allocate([acct(str(i), "towers") for i in range(1, 5)], [pool], [], NOW)
    assert [x.address for x in a.new] == ["100.64.8.8/29", "100.64.8.24/29"]
    assert a.failures == {"3": "pool blocks exhausted", "4": "pool blocks exhausted"}
    assert pool.size == 2


def test_exhaustion_names_the_accounts_and_keeps_existing_leases() -> None:
    pool = Pool.build("pd", "ftth", ["2001:db8::/54"], prefix_length=56)
    first = allocate([acct(str(i), "ftth") for i in range(1, 4)], [pool], [], NOW)
    leases = record([], first)
    a = allocate([acct(str(i), "ftth") for i in range(1, 8)], [pool], leases, NOW)
    assert [x.account_id for x in a.new] == ["4"]
    assert a.failures == {"5": "pool pd exhausted", "6": "pool pd exhausted", "7": "pool pd exhausted"}
    assert not a.releases and a.addresses["1"] == first.addresses["1"]


def test_billing_prefix_blocks_allocation_and_fills_the_slot() -> None:
    accounts = [acct("1", "ftth", addresses=["2001:db8:100::/56"]), acct("2", "ftth"),
                acct("3", "ftth", addresses=["2001:db8:100:180::/57"])]
    a = allocate(accounts, [PD], [], NOW)
    # 1's billing /56 fills its slot; 3's /57 does not (another length) but blocks :100:100::/56
    assert "1" not in a.addresses
    assert a.addresses == {"2": ("2001:db8:100:200::/56",), "3": ("2001:db8:100:300::/56",)}
    assert [(p.name, v) for p, v in slots(accounts[0], [PD, WAN])] == [
        ("pd", "2001:db8:100::/56"), ("wan", None)]


def test_billing_address_inside_a_leased_prefix_conflicts() -> None:
    leases = [Lease("pd", "2001:db8:100::/56", "1")]
    a = allocate([acct("1", "ftth"), acct("2", addresses=["2001:db8:100:5::1"])], [PD], leases, NOW)
    assert [(c.account_id, c.other_account_id) for c in a.conflicts] == [("2", "1"), ("1", "2")]


def test_hold_release_return_and_sticky_across_rename_and_reload() -> None:
    leases = record([], allocate([acct("1", "ftth"), acct("2", "ftth")], [PD], [], NOW))
    left = allocate([Account("2", name="renamed", groups=frozenset({"ftth"}))], [PD], leases, NOW)
    assert [(x.address, x.state) for x in left.releases] == [("2001:db8:100::/56", "held")]
    assert left.addresses == {"2": ("2001:db8:100:100::/56",)}
    leases = record(leases, left)
    # a reload that grows the pool and adds an exclusion elsewhere moves nobody
    grown = Pool.build("pd", "ftth", ["2001:db8:100::/40", "2001:db8:200::/40"], prefix_length=56,
                       exclude=["2001:db8:1ff::/48"], hold=3600)
    back = allocate([acct("1", "ftth"), acct("2", "ftth"), acct("3", "ftth")], [grown], leases, NOW + HOUR / 2)
    assert [x.address for x in back.returns] == ["2001:db8:100::/56"]
    assert back.addresses["3"] == ("2001:db8:100:200::/56",)
    leases = record(leases, back)
    assert not allocate([acct("1", "ftth"), acct("2", "ftth"), acct("3", "ftth")], [grown], leases,
                        NOW + HOUR).changed


def test_shorter_length_after_reload_reports_not_moves() -> None:
    leases = [Lease("pd", "2001:db8:100::/56", "1")]
    changed = Pool.build("pd", "ftth", ["2001:db8:100::/40"], prefix_length=60)
    a = allocate([acct("1", "ftth")], [changed], leases, NOW)
    assert not a.new and [o.lease.address for o in a.out_of_pool] == ["2001:db8:100::/56"]
    assert a.addresses == {"1": ("2001:db8:100::/56",)}


def test_pool_usage_counts_prefixes() -> None:
    leases = [Lease("blocks", "100.64.8.0/29", "1"),
              Lease("blocks", "100.64.8.8/29", "2", "held", NOW + HOUR)]
    assert pool_usage(TOWERS, leases, NOW) == {"name": "blocks", "size": 32, "leased": 1, "held": 1,
                                               "free": 30, "utilisation": 0.0625}


def test_fifty_thousand_slash_56_from_a_slash_40() -> None:
    accounts = [acct(str(i), "ftth") for i in range(50_000)]
    a = allocate(accounts, [PD], [], NOW)
    assert len(a.new) == 50_000 and not a.failures
    assert a.new[-1].address == "2001:db8:1c3:4f00::/56"
    assert not allocate(accounts, [PD], record([], a), NOW).changed


# -- properties ------------------------------------------------------------------------------

@st.composite
def pool_and_world(draw: st.DrawFn) -> tuple[Pool, list[str], list[list[str]]]:
    v6 = draw(st.booleans())
    bits = 128 if v6 else 32
    base_len = draw(st.integers(bits - 10, bits - 3))
    length = draw(st.integers(base_len + 1, min(base_len + 6, bits)))
    base = (0x20010DB8 << 96) if v6 else (100 << 24 | 64 << 16)
    nets = [base + k * (1 << (bits - base_len)) for k in draw(st.sets(st.integers(0, 3), min_size=1, max_size=2))]
    size = 1 << (bits - base_len)
    version = 6 if v6 else 4

    def text(value: int) -> str:
        return addresses.text_of(version, value)

    exclude = []
    for _ in range(draw(st.integers(0, 3))):
        net = draw(st.sampled_from(nets))
        a = draw(st.integers(0, size - 1))
        b = draw(st.integers(a, min(size - 1, a + size // 4)))
        exclude.append(text(net + a) if a == b else f"{text(net + a)}-{text(net + b)}")
    billing = []
    for _ in range(draw(st.integers(0, 3))):
        net = draw(st.sampled_from(nets))
        blen = draw(st.integers(base_len + 1, bits))
        off = draw(st.integers(0, (1 << (blen - base_len)) - 1)) << (bits - blen)
        billing.append(f"{text(net + off)}/{blen}")
    pool = Pool.build("p", "g", [f"{text(n)}/{base_len}" for n in nets], exclude=exclude,
                      prefix_length=length, hold=3600)
    steps = draw(st.lists(st.sets(st.integers(0, 40), max_size=40), min_size=1, max_size=4))
    members = [[str(i) for i in sorted(s)] for s in steps]
    return pool, billing, members


def _span(text: str) -> tuple[int, int]:
    net = ipaddress.ip_network(text)
    return int(net.network_address), int(net.broadcast_address)


@settings(max_examples=150, deadline=None)
@given(pool_and_world())
def test_property_no_overlap_misalignment_exclusion_and_sticky(world: tuple[Pool, list[str], list[list[str]]]) -> None:
    pool, billing, steps = world
    billing_holder = [acct(f"b{i}", addresses=[b]) for i, b in enumerate(billing)]
    leases: list[Lease] = []
    now = NOW
    for ids in steps:
        accounts = [acct(i, "g") for i in ids] + billing_holder
        a = allocate(accounts, [pool], leases, now)
        leases = record(leases, a)
        live = [x for x in leases if x.state == "leased" or (x.held_until or now) > now]
        spans = sorted(_span(x.address) for x in live)
        for (f1, l1), (f2, _) in zip(spans, spans[1:]):
            assert l1 < f2, "two allocations overlap"
        for first, last in spans:
            assert last - first + 1 == pool.step and first % pool.step == 0, "misaligned"
            assert all(pool.contains(v) for v in (first, last)) and pool.offers((pool.version, first, last))
            for b in billing:
                bf, bl = _span(b)
                if pool.version == ipaddress.ip_network(b).version:
                    assert bl < first or bf > last, f"allocation overlaps billing {b}"
        # every member holds exactly one prefix or is named as failing
        for i in ids:
            assert (i in a.addresses) != (i in a.failures)
        # sticky and idempotent: the same pass again changes nothing
        again = allocate(accounts, [pool], leases, now)
        assert not again.changed and again.addresses == a.addresses
        now += timedelta(seconds=1)


@pytest.mark.parametrize(("kw", "message"), [
    ({"networks": ["100.64.0.0/24"], "prefix_length": 33}, r"/33 is longer than an IPv4 address \(/32 at most\)"),
    ({"networks": ["100.64.0.0/24"], "prefix_length": 22}, r"/22 is shorter than networks\[0\] 100.64.0.0/24"),
    ({"networks": ["100.64.0.0/24", "2001:db8::/48"], "prefix_length": 56}, "mixes IPv4 and IPv6"),
    ({"networks": ["100.64.0.0/24"], "prefix_length": 29, "radius_attribute": "Framed-IPv6-Prefix"},
     "Framed-IPv6-Prefix carries an IPv6 prefix; this pool is IPv4"),
    ({"networks": ["2001:db8::/48"], "prefix_length": 56, "radius_attribute": "Framed-Route"},
     "Framed-Route carries IPv4; this pool is IPv6"),
    ({"networks": ["100.64.0.0/24"], "prefix_length": 31, "radius_attribute": "Framed-IP-Address"},
     "a /31 block has no host for Framed-IP-Address"),
    ({"networks": ["100.64.0.0/24"], "radius_attribute": "Framed-Routes"}, "Input should be"),
])
def test_pool_settings_refuse_bad_prefix_settings(kw: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    from provisiond.settings import PoolSettings

    with pytest.raises(ValidationError, match=message):
        PoolSettings(name="p", group="g", **kw)  # type: ignore[arg-type]


def test_pool_settings_count_aligned_prefixes() -> None:
    from provisiond.settings import PoolSettings

    s = PoolSettings(name="p", group="g", networks=["100.64.8.0/27"], prefix_length=29,
                     exclude=["100.64.8.3", "100.64.8.17-100.64.8.20"])
    assert s.allocations() == Pool.from_settings(s).size == 2
    assert PoolSettings(name="p", group="g", networks=["100.64.8.0/29"], prefix_length=29,
                        exclude=["100.64.8.7"]).allocations() == 0


def test_a_prefix_pool_selects_by_selector_keys() -> None:
    from dataclasses import replace

    from provisiond.core.model import Match
    from provisiond.settings import PoolSettings

    s = PoolSettings(name="pd", groups=["FTTH", "Fibre"], active=True, networks=["2001:db8:100::/40"],
                     prefix_length=56)
    pool = Pool.from_settings(s)
    assert pool.match == Match(groups=frozenset({"FTTH", "Fibre"}), active=True)
    accounts = [replace(acct("1", "Fibre"), active=True), acct("2", "FTTH"),  # 2 is not active
                replace(acct("3", "FTTH"), active=True)]
    a = allocate(accounts, [pool], [], NOW)
    assert a.addresses == {"1": ("2001:db8:100::/56",), "3": ("2001:db8:100:100::/56",)}
