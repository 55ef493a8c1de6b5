"""The whole pipeline: billing -> IPAM pool -> address list on a simulated router and
Framed-IP-Address in a real FreeRADIUS's Access-Accept, then leave, hold and rejoin."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from world import World

sys.path.insert(0, str(Path(__file__).parent.parent / "radius"))
sys.path.insert(0, str(Path(__file__).parent.parent))

from dbservers import Server, fresh_database  # noqa: E402
from freeradius import FreeRadius, freeradius, load_schema  # noqa: E402

POOL_AND_RADIUS = """
[[pool]]
name = "tower-hosts"
group = "Tower Hosts"
networks = ["100.64.99.0/29"]
exclude = ["100.64.99.1"]
hold = "24h"

[radius]
url = "{radius_url}"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
priority = 1
"""


@pytest.fixture
def radius_db(pg_server: Server) -> Iterator[str]:
    with fresh_database(pg_server, prefix="radius") as url:
        load_schema(
            url,
            "INSERT INTO radcheck (username, attribute, op, value) "
            "VALUES ('ridge', 'Cleartext-Password', ':=', 'ridge-pw')",
            "INSERT INTO radgroupreply (groupname, attribute, op, value) "
            "VALUES ('tower', 'Mikrotik-Rate-Limit', ':=', '100M/100M')",
        )
        yield url


@pytest.fixture
def fr(radius_db: str) -> Iterator[FreeRadius]:
    with freeradius(radius_db) as server:
        yield server


def test_tower_host_gets_a_pool_address_on_the_router_and_in_radius(
    world: World, radius_db: str, fr: FreeRadius
) -> None:
    world.router("core-1")
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], usernames=["ridge"])
    world.write_config(extra=POOL_AND_RADIUS.format(radius_url=radius_db))

    code, out, err = world.run("plan")
    assert code == 2, out + err
    assert "+ lease tower-hosts 100.64.99.2  acct 1042" in out  # .0 network, .1 excluded
    assert '+ tower-hosts 100.64.99.2  acct 1042 "Ridge Tower"' in out
    assert "+ tower ridge  priority 1" in out
    assert "+ ridge Framed-IP-Address = 100.64.99.2" in out
    code, out, err = world.run("ipam", "list", "--format", "json")
    assert json.loads(out)["leases"] == [], "plan must not lease anything"

    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert world.entries("core-1", "tower-hosts")["100.64.99.2"]["comment"] == "provisiond:1042 Ridge Tower"
    reply_code, attrs = fr.authenticate("ridge", "ridge-pw")
    assert reply_code == 2  # Access-Accept
    assert attrs["Framed-IP-Address"] == ["100.64.99.2"]
    assert attrs["Mikrotik-Rate-Limit"] == ["100M/100M"]
    world.assert_converged()

    # Leaves the group: list entry, group and address go; the address is held for it.
    # It was the group's last member, so billing no longer knows "Tower Hosts" at all:
    # that looks exactly like a typo in the config, and emptying needs --force.
    world.account(1042, "Ridge Tower", groups=[], usernames=["ridge"])
    code, out, err = world.run("apply")
    assert code == 1, out + err
    assert ('ipam: REFUSED: pool tower-hosts: 1 releases would empty it, but pool[0].group '
            '"Tower Hosts" matches no account in billing') in out
    assert "100.64.99.2" in world.entries("core-1", "tower-hosts"), "a refused pass writes nothing"
    code, out, err = world.run("apply", "--force")
    assert code == 0, out + err
    assert "100.64.99.2" not in world.entries("core-1", "tower-hosts")
    reply_code, attrs = fr.authenticate("ridge", "ridge-pw")
    assert reply_code == 2 and "Framed-IP-Address" not in attrs and "Mikrotik-Rate-Limit" not in attrs
    code, out, _ = world.run("ipam", "list", "--format", "json")
    leases = json.loads(out)["leases"]
    assert [(x["account_id"], x["address"], x["state"]) for x in leases] == [("1042", "100.64.99.2", "held")]
    world.assert_converged()

    # Someone else joins: they may not get the held address.
    world.account(1043, "Other Tower", groups=["Tower Hosts"])
    assert world.run("apply")[0] == 0
    assert "100.64.99.3" in world.entries("core-1", "tower-hosts")

    # Rejoins within the hold: the same address comes back.
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], usernames=["ridge"])
    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert "100.64.99.2" in world.entries("core-1", "tower-hosts")
    assert fr.authenticate("ridge", "ridge-pw")[1]["Framed-IP-Address"] == ["100.64.99.2"]
    world.assert_converged()


def test_demo_runs_and_converges(capsys: pytest.CaptureFixture[str]) -> None:
    from provisiond.cli import main as cli

    assert cli.main(["demo", "--accounts", "120"]) == 0
    out = capsys.readouterr().out
    assert "demo: converged: the second plan has nothing to do." in out
    assert "+ lease tower-hosts 100.127.0.2" in out
    # issue #24: a /29 per tower block (Framed-Route), a delegated /56 per legacy customer
    assert "+ lease tower-blocks 100.126.0.0/29  acct 1003" in out
    assert '+ tower-hosts 100.126.0.0/29  acct 1003 "Miller Ranch 3"' in out
    assert "+ user1003 Framed-Route = 100.126.0.0/29 0.0.0.0 1" in out
    assert "+ user1005 Delegated-IPv6-Prefix = 2001:db8:100::/56" in out
    assert "no: pool legacy-pd 2001:db8:100::/40 as /56s (Delegated-IPv6-Prefix)" in out
    # A tour: per list a count and three sample lines, then explain on one account.
    assert re.search(r"^  legacy: \d+ to create$", out, re.M)
    assert re.search(r"^    … \d+ more \(demo --full shows every line\)$", out, re.M)
    assert "Explain: account 1000: converged on every target (exit 0)." in out
    assert len(out.splitlines()) < 200


def test_demo_full_prints_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    from provisiond.cli import main as cli

    assert cli.main(["demo", "--accounts", "40", "--full"]) == 0
    out = capsys.readouterr().out
    assert "more (demo --full" not in out
    first_plan = out.split("=== provisiond plan ===")[1].split("=== plan:")[0]
    creates = int(re.search(r"^Plan: (\d+) to create", first_plan, re.M).group(1))  # type: ignore[union-attr]
    assert sum(1 for ln in first_plan.splitlines() if ln.startswith("    + ") and "lease" not in ln) == creates


def test_demo_digest_cuts_each_block_to_a_count_and_samples() -> None:
    from provisiond.cli.demo import digest

    text = "\n".join([
        "core-1 (routeros): 5 to create, 1 to update, 1 to delete, 1 conflict(s)",
        "  tower-hosts",
        *[f"    + tower-hosts 10.0.0.{i}  acct {i}" for i in range(5)],
        "    ~ tower-hosts 10.0.0.9  acct 9  (comment: \"a\" -> \"b\")",
        "    - tower-hosts 10.0.0.8  acct 8",
        "    ! tower-hosts 10.0.0.7  acct 7: conflict: entry not created by provisiond",
        "  legacy",
        "    + legacy 10.0.1.1  acct 11",
        "  > disconnect u1 session 1", "  > disconnect u2 session 2", "  > disconnect u3 session 3",
        "  > disconnect u4 session 4", "  > disconnect u5 session 5",
        "Plan: 6 to create, 1 to update, 1 to delete on 1 of 1 target(s); 1 conflict(s).",
    ]) + "\n"
    assert digest(text, sample=2).splitlines() == [
        "core-1 (routeros): 5 to create, 1 to update, 1 to delete, 1 conflict(s)",
        "  tower-hosts: 5 to create, 1 to update, 1 to delete, 1 conflict(s)",
        "    + tower-hosts 10.0.0.0  acct 0",
        "    + tower-hosts 10.0.0.1  acct 1",
        "    … 6 more (demo --full shows every line)",
        "  legacy: 1 to create",
        "    + legacy 10.0.1.1  acct 11",
        "  > disconnect u1 session 1", "  > disconnect u2 session 2",
        "  … 3 more (demo --full shows every line)",
        "Plan: 6 to create, 1 to update, 1 to delete on 1 of 1 target(s); 1 conflict(s).",
    ]


def test_saved_plan_with_allocations_records_the_same_leases_or_is_refused(world: World, radius_db: str) -> None:
    world.router("core-1")
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], usernames=["ridge"])
    world.write_config(extra=POOL_AND_RADIUS.format(radius_url=radius_db))
    plan_file = world.tmp / "plan.json"
    assert world.run("plan", "--out", str(plan_file))[0] == 2
    world.account(1041, "Earlier Tower", groups=["Tower Hosts"])  # would take 100.64.99.2 first
    code, out, err = world.run("apply", "--plan", str(plan_file))
    assert code == 1
    assert "ipam: leases or billing changed since the plan was made" in err
    assert world.entries() == {}
    world.remove_account(1041)
    code, out, err = world.run("apply", "--plan", str(plan_file))
    assert code == 0, out + err
    code, out, _ = world.run("ipam", "show", "1042", "--format", "json")
    assert "100.64.99.2" in out
    assert "100.64.99.2" in world.entries("core-1", "tower-hosts")
    world.assert_converged()


def test_explain_shows_radius_rows_and_a_hand_made_framed_ip_conflict(world: World, radius_db: str) -> None:
    world.router("core-1")
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], usernames=["ridge"])
    world.account(1043, "Crête Farm", groups=["Tower Hosts"], usernames=["crete"])
    world.write_config(extra=POOL_AND_RADIUS.format(radius_url=radius_db))
    assert world.run("apply")[0] == 0
    code, out, err = world.run("explain", "1042", "--format", "json")
    assert code == 0, out + err
    doc = json.loads(out)
    assert doc["ipam"]["leases"] == [{"account_id": "1042", "pool": "tower-hosts",
                                      "address": "100.64.99.2", "state": "leased"}]
    radius = next(t for t in doc["targets"] if t["target"] == "radius")
    assert sorted((e["state"], e["line"]) for e in radius["entries"]) == [
        ("present", 'ridge Framed-IP-Address = 100.64.99.2  acct 1042 "Ridge Tower"'),
        ("present", 'tower ridge  priority 1  acct 1042 "Ridge Tower"'),
    ]
    # Someone writes crete's address by hand after it left the pool's group and came back.
    world.account(1043, "Crête Farm", usernames=["crete"])
    assert world.run("apply")[0] == 0
    with sa.create_engine(radius_db).begin() as c:
        c.execute(sa.text("INSERT INTO radreply (username, attribute, op, value) "
                          "VALUES ('crete', 'Framed-IP-Address', '=', '10.9.9.9')"))
    world.account(1043, "Crête Farm", groups=["Tower Hosts"], usernames=["crete"])
    code, text, err = world.run("explain", "1043")
    assert code == 2, text + err
    assert re.search(r"^  ! crete Framed-IP-Address = 100\.64\.99\.3  acct 1043 \"Crête Farm\"  "
                     r"conflict: .*10\.9\.9\.9", text, re.M), text
    assert "  + tower crete  priority 1" in text
    assert "held tower-hosts 100.64.99.3" in text


@pytest.mark.parametrize("on_exhausted", ["withhold", "assign-group"])
def test_an_account_a_full_pool_cannot_serve_gets_its_radius_group_as_the_pool_says(
    world: World, radius_db: str, on_exhausted: str
) -> None:
    """A /30 with .1 excluded has one usable address: two accounts wait for one. With
    ``withhold`` (the default) it has no RADIUS rows until then; with ``assign-group`` it
    is in its group without a Framed-IP-Address."""
    world.router("core-1")
    for aid, user in ((1, "a"), (2, "b"), (3, "c")):
        world.account(aid, f"Tower {aid}", groups=["Tower Hosts"], usernames=[user])
    world.write_config(extra=POOL_AND_RADIUS.format(radius_url=radius_db).replace(
        'networks = ["100.64.99.0/29"]', f'networks = ["100.64.99.0/30"]\non_exhausted = "{on_exhausted}"'))
    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert "pool tower-hosts exhausted: 2 account(s) got no address: 2, 3" in out
    engine = sa.create_engine(radius_db)
    with engine.connect() as c:
        groups = sorted(tuple(r) for r in c.exec_driver_sql("SELECT username, groupname FROM radusergroup"))
        framed = sorted(r[0] for r in c.exec_driver_sql("SELECT username FROM radreply WHERE attribute = 'Framed-IP-Address'"))
    engine.dispose()
    assert framed == ["a"]
    assert groups == ([("a", "tower")] if on_exhausted == "withhold"
                      else [("a", "tower"), ("b", "tower"), ("c", "tower")])
    world.assert_converged()


def test_a_pool_whose_group_matches_nobody_keeps_its_leases_and_addresses_while_the_rest_is_written(
    world: World, radius_db: str
) -> None:
    """A typo in a pool's group: its leases stay, so do the addresses they put in the
    lists and RADIUS; every other change of the pass is written; --force releases."""
    world.router("core-1")
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], usernames=["ridge"])
    pool = POOL_AND_RADIUS.format(radius_url=radius_db)
    world.write_config(extra=pool)
    assert world.run("apply")[0] == 0
    assert "100.64.99.2" in world.entries("core-1", "tower-hosts")
    world.write_config(extra=pool.replace('group = "Tower Hosts"\nnetworks', 'group = "Tower Host"\nnetworks', 1))
    world.account(1043, "Other", groups=["Credit Card Pending"], ips=["100.64.5.5"])
    code, out, err = world.run("apply")
    assert code == 1, out + err
    assert ('ipam: REFUSED: pool tower-hosts: 1 releases would empty it, but pool[0].group '
            '"Tower Host" matches no account in billing (held back: the pool keeps its leases') in out
    assert "100.64.99.2" in world.entries("core-1", "tower-hosts")  # kept with its lease
    assert "100.64.5.5" in world.entries("core-1", "cc-pending")  # the rest is written
    code, out, _ = world.run("ipam", "list", "--format", "json")
    assert [(x["account_id"], x["state"]) for x in json.loads(out)["leases"]] == [("1042", "leased")]
    code, out, err = world.run("plan")
    assert "- tower-hosts 100.64.99.2" not in out and "cc-pending" not in out, out
    assert world.run("apply", "--force")[0] == 0
    assert "100.64.99.2" not in world.entries("core-1", "tower-hosts")
    code, out, _ = world.run("ipam", "list", "--format", "json")
    assert [(x["account_id"], x["state"]) for x in json.loads(out)["leases"]] == [("1042", "held")]
