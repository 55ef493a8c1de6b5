"""Prefix pools (issue #24) end to end with a real FreeRADIUS 3.2 on PostgreSQL and the
NAS double: the pool's allocation reaches the Access-Accept in the pool's attribute,
leaving the group removes it and disconnects the live session."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import pyrad.packet as P
import pytest
from freeradius import FreeRadius
from helpers import TOWER, MemoryLedger, account, execute, make_plan, rows, sync

from provisiond.core.ipam import Lease, Pool, allocate
from provisiond.core.model import Account
from provisiond.core.radius import GroupMapping, radius
from provisiond.sim.nas import NasDouble, free_udp_port
from provisiond.targets.coa import CoaSender
from provisiond.targets.radius import RadiusTarget

NOW = datetime(2026, 12, 1, tzinfo=UTC)
FTTH = GroupMapping(radius_group="ftth", group="FTTH", priority=1)
MAPS = [FTTH, TOWER]
POOLS = [
    Pool.build("pd", "FTTH", ["2001:db8:100::/40"], prefix_length=56),
    Pool.build("wan", "FTTH", ["2001:db8:ff00::/40"], prefix_length=64, radius_attribute="Framed-IPv6-Prefix"),
    Pool.build("blocks", "Tower Hosts", ["100.64.8.0/24"], prefix_length=29),
]


class World:
    """Billing accounts and the leases a StateStore would hold, pass after pass."""

    def __init__(self) -> None:
        self.leases: list[Lease] = []

    def allocated(self, accounts: Sequence[Account]) -> dict[str, tuple[str, ...]]:
        a = allocate(accounts, POOLS, self.leases, NOW)
        rows_ = {(x.pool, x.address): x for x in self.leases if x not in a.expired}
        for x in (*a.releases, *a.returns, *a.new):
            rows_[(x.pool, x.address)] = x
        self.leases = list(rows_.values())
        return dict(a.addresses)


@pytest.fixture
def nas() -> Iterator[NasDouble]:
    double = NasDouble("127.0.0.1", secret=b"nas-secret", port=free_udp_port("127.0.0.1")).start()
    yield double
    double.stop()


def setup_policy(url: str) -> None:
    execute(
        url,
        "INSERT INTO radcheck (username, attribute, op, value) VALUES "
        "('alice', 'Cleartext-Password', ':=', 'a-pass'), ('tower7', 'Cleartext-Password', ':=', 't-pass')",
        "INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES "
        "('ftth', 'Mikrotik-Rate-Limit', '=', '100M/500M'), ('tower', 'Mikrotik-Rate-Limit', '=', '1G/1G')",
        "INSERT INTO nas (nasname, shortname, secret) VALUES ('127.0.0.1', 'bng-1', 'nas-secret')",
    )


def test_delegated_prefix_wan_prefix_and_routed_block_reach_the_access_accept(
    fr: FreeRadius, radius_pg: str, nas: NasDouble
) -> None:
    setup_policy(radius_pg)
    sender = CoaSender(shared_secret=None, port=nas.port, timeout=0.5, retries=2)
    target = RadiusTarget(radius_pg, groups=["ftth", "tower"], ledger=MemoryLedger(), coa=sender,
                          coa_mode="coa", nas_secrets=True)
    world = World()
    accounts = [account("1", "alice", groups=["FTTH"]), account("7", "tower7", groups=["Tower Hosts"])]
    allocated = world.allocated(accounts)
    assert allocated == {"1": ("2001:db8:100::/56", "2001:db8:ff00::/64"), "7": ("100.64.8.0/29",)}
    plan, result = sync(target, accounts, MAPS, allocated, POOLS)
    assert result.ok, result.error

    assert fr.authenticate("alice", "a-pass") == (P.AccessAccept, {
        "Delegated-IPv6-Prefix": ["2001:db8:100::/56"], "Framed-IPv6-Prefix": ["2001:db8:ff00::/64"],
        "Mikrotik-Rate-Limit": ["100M/500M"]})
    assert fr.authenticate("tower7", "t-pass") == (P.AccessAccept, {
        "Framed-Route": ["100.64.8.0/29 0.0.0.0 1"], "Mikrotik-Rate-Limit": ["1G/1G"]})
    # idempotent: the same pass again allocates and plans nothing
    assert world.allocated(accounts) == allocated
    assert make_plan(target, accounts, MAPS, allocated, POOLS)[0].changes == ()

    # alice is online; she leaves FTTH: her rows go and her session is disconnected
    execute(radius_pg,
            "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime, "
            "delegatedipv6prefix) VALUES ('81a00001', 'u-1', 'alice', '127.0.0.1', now(), '2001:db8:100::/56')")
    gone = [account("1", "alice", groups=[]), accounts[1]]
    allocated = world.allocated(gone)
    assert [(x.address, x.state) for x in world.leases if x.account_id == "1"] == [
        ("2001:db8:100::/56", "held"), ("2001:db8:ff00::/64", "held")]
    plan, result = sync(target, gone, MAPS, allocated, POOLS)
    assert result.ok, result.error
    assert [(f["action"], f["username"], f["result"]) for f in result.followups] == [("disconnect", "alice", "ack")]
    (dis,) = nas.packets()
    assert dis.code == P.DisconnectRequest and dis.attributes["User-Name"] == ["alice"]
    assert fr.authenticate("alice", "a-pass") == (P.AccessAccept, {})
    assert rows(radius_pg, "radreply", "username", "attribute", "value") == [
        ("tower7", "Framed-Route", "100.64.8.0/29 0.0.0.0 1")]
    assert make_plan(target, gone, MAPS, allocated, POOLS)[0].changes == ()
    target.close()


def test_prefix_change_on_a_live_session_disconnects(radius_pg: str, nas: NasDouble) -> None:
    setup_policy(radius_pg)
    sender = CoaSender(shared_secret=None, port=nas.port, timeout=0.5, retries=2)
    target = RadiusTarget(radius_pg, groups=["ftth", "tower"], ledger=MemoryLedger(), coa=sender,
                          coa_mode="coa", nas_secrets=True)
    start = [account("1", "alice", groups=["FTTH"])]
    assert sync(target, start, MAPS, {"1": ("2001:db8:100::/56",)}, POOLS)[1].ok
    execute(radius_pg,
            "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime) "
            "VALUES ('81a00002', 'u-2', 'alice', '127.0.0.1', now())")
    plan, result = sync(target, start, MAPS, {"1": ("2001:db8:100:100::/56",)}, POOLS)
    assert [(f["action"], f["reason"]) for f in result.followups] == [
        ("disconnect", "Delegated-IPv6-Prefix 2001:db8:100::/56 -> 2001:db8:100:100::/56")]
    assert [p.code for p in nas.packets()] == [P.DisconnectRequest]
    target.close()


def test_hand_made_prefix_row_is_left_alone_and_reported(radius_pg: str) -> None:
    execute(radius_pg, "INSERT INTO radreply (username, attribute, op, value) VALUES "
                       "('alice', 'delegated-ipv6-prefix', '=', '2001:db8:9::/56')")
    target = RadiusTarget(radius_pg, groups=["ftth"], ledger=MemoryLedger())
    plan, result = sync(target, [account("1", "alice", groups=["FTTH"])], [FTTH],
                        {"1": ("2001:db8:100::/56",)}, POOLS)
    assert result.ok
    assert [c.reason[:40] for c in plan.conflicts] == ["hand-made delegated-ipv6-prefix row (id "]
    assert rows(radius_pg, "radreply", "attribute", "value") == [("delegated-ipv6-prefix", "2001:db8:9::/56")]
    target.close()


def test_billing_prefix_fills_the_slot_in_the_pools_attribute() -> None:
    accounts = [account("1", "alice", groups=["FTTH"], addresses=["2001:db8:100:0500::/56", "100.64.0.9"])]
    want, conflicts = radius(accounts, {"1": ("2001:db8:ff00::/64",)}, MAPS, pools=POOLS)
    assert not conflicts
    assert sorted((r.get("attribute"), r.get("value")) for r in want.values() if r.kind == "radreply") == [
        ("Delegated-IPv6-Prefix", "2001:db8:100:500::/56"), ("Framed-IP-Address", "100.64.0.9"),
        ("Framed-IPv6-Prefix", "2001:db8:ff00::/64")]


def test_a_pool_with_radius_attribute_none_writes_no_row() -> None:
    quiet = [Pool.build("v4", "FTTH", ["100.64.0.0/24"], radius_attribute="none")]
    want, _ = radius([account("1", "alice", groups=["FTTH"])], {"1": ("100.64.0.5",)}, MAPS, pools=quiet)
    assert [r.kind for r in want.values()] == ["radusergroup"]
    want, _ = radius([account("1", "alice", groups=["FTTH"])], {"1": ("100.64.0.5",)}, MAPS)
    assert sorted(r.kind for r in want.values()) == ["radreply", "radusergroup"]  # without pools: as before
