"""Scoped passes end to end (``plan --account`` / ``apply --account``): real PostgreSQL
billing, simulated routers over the API, the CLI in-process.

What a scoped pass may touch: only the named accounts' entries; never another
account's, not even one whose id starts with the same digits; it widens to a full pass
when another account's entry sits where a scoped account wants one.
"""

from __future__ import annotations

import json

import pytest
from world import World


def _towers(world: World, ids: range) -> None:
    for i in ids:
        world.account(i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.1.{i}"])


def _owners(world: World, router: str = "core-1") -> dict[str, str]:
    """address -> comment on a router's tower-hosts list."""
    return {a: e.get("comment", "") for a, e in world.entries(router, "tower-hosts").items()}


@pytest.fixture
def towers(world: World) -> World:
    world.router("core-1")
    world.router("core-2")
    _towers(world, range(1, 25))
    world.write_config(safety={"max_delete_ratio": 0.3, "max_update_ratio": 0.3,
                               "min_existing": 10})
    code, out, err = world.run("apply")
    assert code == 0, out + err
    world.assert_converged()
    return world


def test_scoped_apply_changes_only_the_named_accounts(towers: World) -> None:
    w = towers
    w.account(5, "Tower Five", groups=["Tower Hosts"], ips=["100.64.2.5"])  # moved
    w.account(6, "Tower 6", groups=["Tower Hosts"], ips=["100.64.2.6"])    # moved, not named
    w.remove_account(1)  # gone from billing; 10..19 share its leading digit
    before = _owners(w, "core-2")

    code, out, err = w.run("plan", "--account", "5", "--account", "1")
    assert code == 2, out + err
    assert "Plan: 2 to create, 0 to update, 4 to delete on 2 of 2 target(s)" in out

    code, out, err = w.run("apply", "--account", "5,1")
    assert code == 0, out + err
    for router in ("core-1", "core-2"):
        now = _owners(w, router)
        assert "100.64.1.1" not in now and "100.64.1.5" not in now
        assert now["100.64.2.5"] == "provisiond:5 Tower Five"
        # Account 6 was not named: its old entry stays until its own pass.
        assert now["100.64.1.6"] == "provisiond:6 Tower 6" and "100.64.2.6" not in now
        for i in range(10, 20):
            assert now[f"100.64.1.{i}"] == f"provisiond:{i} Tower {i}"
    assert len(_owners(w, "core-2")) == len(before) - 1

    # Idempotent: the same scoped pass again plans nothing.
    code, out, err = w.run("plan", "--account", "5", "--account", "1")
    assert code == 0, out + err
    # The full pass finds only what the scoped pass was not told about: account 6.
    code, doc = w.plan_json()
    changed = {c["account_id"] for t in doc["targets"] for c in t["changes"]}
    assert code == 2 and changed == {"6"}
    code, out, err = w.run("apply")
    assert code == 0, out + err
    w.assert_converged()


def test_scoped_pass_never_deletes_another_accounts_entry(towers: World) -> None:
    w = towers
    for i in (1, 2, 12, 21):
        w.remove_account(i)
    code, out, err = w.run("apply", "--account", "2")
    assert code == 0, out + err
    now = _owners(w)
    assert "100.64.1.2" not in now
    for i in (1, 12, 21):  # gone from billing too, but not in this pass's scope
        assert now[f"100.64.1.{i}"] == f"provisiond:{i} Tower {i}"


def test_scoped_pass_leaves_hand_made_entries_and_reports_the_conflict(towers: World) -> None:
    w = towers
    w.sims["core-1"].add_entry(list_name="tower-hosts", address="100.64.3.3", comment="NOC",
                               dynamic=False)
    w.account(3, "Tower 3", groups=["Tower Hosts"], ips=["100.64.3.3"])
    code, out, err = w.run("apply", "--account", "3")
    assert code == 0, out + err
    assert "conflict: entry not created by provisiond (comment 'NOC')" in out
    assert _owners(w)["100.64.3.3"] == "NOC"
    assert _owners(w, "core-2")["100.64.3.3"] == "provisiond:3 Tower 3"


def test_scoped_pass_widens_when_another_account_holds_the_address(towers: World) -> None:
    w = towers
    # Account 8 takes account 9's address, and 9 moves away: only a full pass can tell
    # the old holder is done with it.
    w.account(8, "Tower 8", groups=["Tower Hosts"], ips=["100.64.1.9"])
    w.account(9, "Tower 9", groups=["Tower Hosts"], ips=["100.64.2.9"])
    code, out, err = w.run("apply", "--account", "8")
    assert code == 0, out + err
    now = _owners(w)
    assert now["100.64.1.9"] == "provisiond:8 Tower 8"
    assert now["100.64.2.9"] == "provisiond:9 Tower 9"  # the widened pass did 9 too
    w.assert_converged()


LEGACY_POOL = '[[pool]]\nname = "legacy"\ngroup = "Legacy Customers"\nnetworks = ["10.98.0.0/29"]\n'


def test_a_scoped_pass_never_empties_a_pool(world: World) -> None:
    """The pool's last member leaves (or its group is typo'd in billing): like a list, a
    scoped pass cannot tell, so it widens, and the full pass refuses unforced."""
    world.router("core-1")
    world.account(1, "Tower 1", groups=["Tower Hosts"], ips=["100.64.1.1"])
    # In a group mapped to a pool only (no list): no billing address, one from the pool.
    world.account(50, "Legacy 50", groups=["Legacy Customers"])
    world.write_config(extra=LEGACY_POOL)
    code, out, err = world.run("apply")
    assert code == 0, out + err
    world.account(50, "Legacy 50", groups=[])
    code, out, err = world.run("apply", "--account", "50")
    assert code == 1, out + err
    assert "ipam: REFUSED: pool legacy: 1 releases would empty it" in out
    code, out, _ = world.run("ipam", "list", "--format", "json")
    leases = json.loads(out)["leases"]
    assert [(x["account_id"], x["state"]) for x in leases] == [("50", "leased")]
    code, out, err = world.run("apply", "--force")
    assert code == 0, out + err
    code, out, _ = world.run("ipam", "list", "--format", "json")
    assert [(x["account_id"], x["state"]) for x in json.loads(out)["leases"]] == [("50", "held")]
    world.assert_converged()


def test_a_pool_emptied_while_its_group_still_matches_stays_scoped(world: World) -> None:
    """What the daemon remembers from its full pass: the pool's group still has a member
    (with a billing address, so no lease), so releasing the last lease is no typo."""
    from provisiond import settings as settings_mod
    from provisiond.engine import Reconciler

    world.router("core-1")
    world.account(1, "Tower 1", groups=["Tower Hosts"], ips=["100.64.1.1"])
    world.account(50, "Legacy 50", groups=["Legacy Customers"])
    world.account(51, "Legacy 51", groups=["Legacy Customers"], ips=["100.64.5.1"])
    world.write_config(extra=LEGACY_POOL)
    code, out, err = world.run("apply")
    assert code == 0, out + err
    rec = Reconciler(settings_mod.load(world.config), readonly=False)
    try:
        assert rec.plan().accounts is None  # a full plan, as the daemon's first pass
        world.account(50, "Legacy 50", groups=[])
        pp = rec.plan(accounts=["50"])
        assert pp.accounts == frozenset({"50"}), "widened although 51 is still in the group"
        assert [x.address for x in pp.allocation.releases] == ["10.98.0.1"]
        world.account(50, "Legacy 50", groups=["Legacy Customers"])
        assert rec.plan(accounts=["50"]).accounts == frozenset({"50"})
        world.account(51, "Legacy 51", groups=[])  # the group's other member leaves first
        assert rec.plan(accounts=["51"]).accounts == frozenset({"51"})
        world.account(50, "Legacy 50", groups=[])  # now the group matches nobody
        assert rec.plan(accounts=["50"]).accounts is None, "a possible typo: widened"
    finally:
        rec.close()
