"""Prefix pools (issue #24) through the whole pipeline: billing -> a /56 delegated-prefix
pool and a /29 block pool -> address lists on a simulated router (/ipv6 and /ip) and
Delegated-IPv6-Prefix / Framed-Route in a real FreeRADIUS's Access-Accept; a billing
prefix is honoured, leaving holds the prefix, rejoining gets it back."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from world import World

sys.path.insert(0, str(Path(__file__).parent.parent / "radius"))
sys.path.insert(0, str(Path(__file__).parent.parent))

from dbservers import Server, fresh_database  # noqa: E402
from freeradius import FreeRadius, freeradius, load_schema  # noqa: E402

POOLS = """
[[pool]]
name = "ftth-pd"
group = "FTTH"
networks = ["2001:db8:100::/40"]
prefix_length = 56
radius_attribute = "Delegated-IPv6-Prefix"
hold = "24h"

[[pool]]
name = "tower-blocks"
group = "Tower Hosts"
networks = ["100.64.8.0/24"]
exclude = ["100.64.8.0/29"]
prefix_length = 29
radius_attribute = "Framed-Route"
hold = "24h"

[radius]
url = "{radius_url}"

[[radius_group]]
group = "FTTH"
radius_group = "ftth"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
"""
LISTS = (("group", "Tower Hosts", "tower-hosts"), ("group", "FTTH", "ftth"))


@pytest.fixture
def radius_db(pg_server: Server) -> Iterator[str]:
    with fresh_database(pg_server, prefix="radius") as url:
        load_schema(
            url,
            "INSERT INTO radcheck (username, attribute, op, value) VALUES "
            "('home', 'Cleartext-Password', ':=', 'home-pw'), ('ridge', 'Cleartext-Password', ':=', 'ridge-pw')",
            "INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES "
            "('ftth', 'Mikrotik-Rate-Limit', ':=', '100M/500M'), ('tower', 'Mikrotik-Rate-Limit', ':=', '1G/1G')",
        )
        yield url


@pytest.fixture
def fr(radius_db: str) -> Iterator[FreeRadius]:
    with freeradius(radius_db) as server:
        yield server


def test_delegated_prefix_and_tower_block_reach_router_and_radius(
    world: World, radius_db: str, fr: FreeRadius
) -> None:
    world.router("core-1")
    world.sql("INSERT INTO groups (name) VALUES ('FTTH')")
    world.account(1, "Home One", groups=["FTTH"], usernames=["home"])
    world.account(2, "Home Two", groups=["FTTH"], ips=["2001:db8:100::/56"])  # billing's prefix
    world.account(7, "Ridge Tower", groups=["Tower Hosts"], usernames=["ridge"])
    world.write_config(lists=LISTS, extra=POOLS.format(radius_url=radius_db))

    code, out, err = world.run("plan")
    assert code == 2, out + err
    # account 2's billing /56 is its allocation and never handed to anyone else
    assert "+ lease ftth-pd 2001:db8:100:100::/56  acct 1" in out
    assert "+ lease tower-blocks 100.64.8.8/29  acct 7" in out  # the first /29 is excluded
    assert "+ home Delegated-IPv6-Prefix = 2001:db8:100:100::/56" in out
    assert "+ ridge Framed-Route = 100.64.8.8/29 0.0.0.0 1" in out
    code, out, err = world.run("apply")
    assert code == 0, out + err

    assert set(world.entries("core-1", "ftth", menu="ipv6")) == {"2001:db8:100::/56", "2001:db8:100:100::/56"}
    assert set(world.entries("core-1", "tower-hosts")) == {"100.64.8.8/29"}
    reply_code, attrs = fr.authenticate("home", "home-pw")
    assert reply_code == 2 and attrs["Delegated-IPv6-Prefix"] == ["2001:db8:100:100::/56"]
    reply_code, attrs = fr.authenticate("ridge", "ridge-pw")
    assert reply_code == 2 and attrs["Framed-Route"] == ["100.64.8.8/29 0.0.0.0 1"]
    world.assert_converged()

    code, out, err = world.run("ipam", "show", "1")
    assert code == 0 and "2001:db8:100:100::/56" in out, out + err
    code, out, err = world.run("explain", "1")
    assert code == 0, out + err
    assert "selects: pool ftth-pd 2001:db8:100::/40 as /56s (Delegated-IPv6-Prefix)" in out
    assert "leased ftth-pd 2001:db8:100:100::/56" in out
    assert "Delegated-IPv6-Prefix" in out and "ftth 2001:db8:100:100::/56" in out

    # the tower leaves (and so "Tower Hosts" would be empty: --force), its /29 is held
    world.account(7, "Ridge Tower", groups=[], usernames=["ridge"])
    code, out, err = world.run("apply", "--force")
    assert code == 0, out + err
    assert world.entries("core-1", "tower-hosts") == {}
    assert "Framed-Route" not in fr.authenticate("ridge", "ridge-pw")[1]
    code, out, _ = world.run("ipam", "list", "--format", "json")
    assert [(x["account_id"], x["address"], x["state"]) for x in json.loads(out)["leases"]
            if x["pool"] == "tower-blocks"] == [("7", "100.64.8.8/29", "held")]
    world.assert_converged()

    # another tower may not get the held block; the first one rejoins and gets its own back
    world.account(8, "Other Tower", groups=["Tower Hosts"])
    world.account(7, "Ridge Tower renamed", groups=["Tower Hosts"], usernames=["ridge"])
    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert set(world.entries("core-1", "tower-hosts")) == {"100.64.8.8/29", "100.64.8.16/29"}
    assert fr.authenticate("ridge", "ridge-pw")[1]["Framed-Route"] == ["100.64.8.8/29 0.0.0.0 1"]
    world.assert_converged()


def test_check_config_reports_billing_prefixes_inside_a_pool_and_bad_prefix_settings(world: World) -> None:
    world.router("core-1")
    world.sql("INSERT INTO groups (name) VALUES ('FTTH')")
    world.account(2, "Home Two", groups=["FTTH"], ips=["2001:db8:100::/56"])
    world.account(7, "Ridge Tower", groups=["Tower Hosts"])
    world.write_config(lists=LISTS, extra=POOLS.split("[radius]")[0])
    code, out, err = world.run("check-config")
    assert code == 0, out + err
    assert ("warning: pool[0].networks: pool 'ftth-pd' overlaps 1 billing-assigned value(s): "
            "2001:db8:100::/56 (account 2); they are never allocated to anyone else") in out

    bad = POOLS.split("[radius]")[0].replace("prefix_length = 56", "prefix_length = 36").replace(
        'radius_attribute = "Framed-Route"', 'radius_attribute = "Delegated-IPv6-Prefix"')
    world.write_config(lists=LISTS, extra=bad + '[[pool]]\nname = "again"\ngroup = "FTTH"\n'
                       'networks = ["2001:db8:180::/41"]\nprefix_length = 129\n')
    code, out, err = world.run("check-config")
    assert code == 1
    assert "error: pool[0].prefix_length: /36 is shorter than networks[0] 2001:db8:100::/40: no /36 fits in it" in out
    assert "error: pool[1].radius_attribute: Delegated-IPv6-Prefix carries an IPv6 prefix; this pool is IPv4" in out
    assert "error: pool[2].prefix_length: Input should be less than or equal to 128" in out


INTERFACE_BLOCKS = """
[[pool]]
name = "business"
group = "Tower Hosts"
networks = ["100.64.9.0/24"]
prefix_length = 30
radius_attribute = "Framed-IP-Address"

[radius]
url = "{radius_url}"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
"""


def test_an_interface_block_reaches_radius_as_address_and_netmask(
    world: World, radius_db: str, fr: FreeRadius
) -> None:
    """``radius_attribute = "Framed-IP-Address"`` on a /30: the block's first host and its
    netmask (RFC 2865 Framed-IP-Address, Framed-IP-Netmask), not a route."""
    world.router("core-1")
    world.account(7, "Ridge Tower", groups=["Tower Hosts"], usernames=["ridge"])
    world.write_config(lists=(("group", "Tower Hosts", "tower-hosts"),),
                       extra=INTERFACE_BLOCKS.format(radius_url=radius_db))
    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert "+ lease business 100.64.9.0/30  acct 7" in out
    assert set(world.entries("core-1", "tower-hosts")) == {"100.64.9.0/30"}
    reply_code, attrs = fr.authenticate("ridge", "ridge-pw")
    assert reply_code == 2
    assert attrs["Framed-IP-Address"] == ["100.64.9.1"]
    assert attrs["Framed-IP-Netmask"] == ["255.255.255.252"]
    assert "Framed-Route" not in attrs
    world.assert_converged()
    # Leaves the group: both rows go.
    world.account(7, "Ridge Tower", groups=[], usernames=["ridge"])
    assert world.run("apply", "--force")[0] == 0
    assert "Framed-IP-Netmask" not in fr.authenticate("ridge", "ridge-pw")[1]
    world.assert_converged()
