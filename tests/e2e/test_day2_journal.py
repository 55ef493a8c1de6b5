"""Every change carries its account in the journal: RADIUS rows provisiond removes
(read back without an account), the leases a pass makes, holds and returns, and a
release by hand; ``history`` says when it shows only the newest entries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from world import World

sys.path.insert(0, str(Path(__file__).parent.parent / "radius"))

from freeradius import load_schema  # noqa: E402

CONFIG = """
[radius]
url = "{url}"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
priority = 1

[[pool]]
name = "towers"
group = "Tower Hosts"
networks = ["10.99.0.0/28"]
hold = "1h"
"""


def history(world: World, *args: str) -> list[dict[str, Any]]:
    code, out, err = world.run("history", "--format", "json", *args)
    assert code == 0, err
    entries: list[dict[str, Any]] = json.loads(out)["entries"]
    return entries


def radius_world(world: World, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'radius.db'}"
    load_schema(url, "INSERT INTO radgroupreply (groupname, attribute, op, value) "
                     "VALUES ('tower', 'Mikrotik-Rate-Limit', ':=', '100M/100M')")
    world.router("core-1")
    world.write_config(safety={"max_delete_ratio": 1, "max_update_ratio": 1, "min_existing": 0},
                       extra=CONFIG.format(url=url))


def test_radius_removals_and_leases_are_journalled_with_their_account(world: World, tmp_path: Path) -> None:
    radius_world(world, tmp_path)
    world.account(1003, "Ridge Tower", groups=["Tower Hosts"], usernames=["user1003"])
    world.account(1004, "Crête Farm", groups=["Tower Hosts"], usernames=["user1004"])
    assert world.run("apply")[0] == 0
    leased = {(e["kind"], e["action"]) for e in history(world, "--account", "1003")}
    assert ("lease", "create") in leased and ("radusergroup", "create") in leased

    # 1003 leaves the group: its RADIUS rows go and its address is held.
    world.sql("DELETE FROM account_groups WHERE account_id = 1003")
    code, out, err = world.run("apply")
    assert code == 0, out + err
    mine = history(world, "--account", "1003")
    got = {(e["target"], e["kind"], e["action"]) for e in mine}
    assert {("radius", "radusergroup", "delete"), ("radius", "radreply", "delete"),
            ("ipam", "lease", "update")} <= got, got
    hold = next(e for e in mine if e["kind"] == "lease" and e["action"] == "update")
    assert hold["detail"]["state"] == "held" and hold["detail"]["before"]["state"] == "leased"
    assert hold["detail"]["pool"] == "towers" and hold["detail"]["held_until"]
    # Nothing of it is journalled without its account.
    assert not [e for e in history(world) if not e["account_id"]]
    code, out, _ = world.run("history", "--account", "1003")
    assert "- tower user1003  acct 1003" in out, out
    assert 'state: "leased" -> "held"' in out, out
    code, out, _ = world.run("explain", "1003")
    assert "delete tower user1003" in out, out

    # A release by hand is journalled too, saying so.
    code, out, err = world.run("ipam", "release", "1004")
    assert code == 0, err
    by_hand = [e for e in history(world, "--account", "1004") if e["message"]]
    assert [(e["target"], e["action"], e["detail"]["state"], e["message"]) for e in by_hand] == [
        ("ipam", "update", "held", "released by hand (provisiond ipam release)")]
    # The next pass gives the address back (1004 is still in the pool's group): a return.
    assert world.run("apply")[0] == 0
    back = history(world, "--account", "1004")[0]
    assert (back["kind"], back["action"], back["detail"]["state"], back["detail"]["before"]["state"]) == (
        "lease", "update", "leased", "held")
    world.assert_converged()


def test_history_says_when_it_shows_only_the_newest(world: World, tmp_path: Path) -> None:
    world.router("core-1")
    for i in range(5):
        world.account(1000 + i, f"Account {i}", groups=["Tower Hosts"], ips=[f"100.64.0.{i + 1}"])
    world.write_config(safety={"max_delete_ratio": 1, "max_update_ratio": 1, "min_existing": 0})
    assert world.run("apply")[0] == 0
    code, out, err = world.run("history", "--limit", "3")
    assert code == 0 and len(out.splitlines()) == 3
    assert "showing the newest 3 entries" in err and "--limit" in err, err
    code, out, err = world.run("history", "--limit", "5")
    assert code == 0 and len(out.splitlines()) == 5 and "newest" not in err, err
    code, out, err = world.run("history", "--limit", "2", "--format", "json")
    doc = json.loads(out)
    assert len(doc["entries"]) == 2 and doc["truncated"] is True and doc["limit"] == 2
    assert json.loads(world.run("history", "--format", "json")[1])["truncated"] is False
    code, _, err = world.run("history", "--limit", "0")
    assert code != 0 and "--limit" in err
    world.assert_converged()


def test_a_refused_drop_says_how_to_accept_it_and_that_works(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.router("core-1")
    for i in range(10):
        world.account(1000 + i, f"Account {i}", groups=["Tower Hosts"], ips=[f"100.64.0.{i + 1}"])
    world.write_config(safety={"max_delete_ratio": 1, "max_update_ratio": 1, "min_existing": 0})
    assert world.run("apply")[0] == 0
    for i in range(6):
        world.remove_account(1000 + i)
    code, out, err = world.run("apply")
    assert code == 1, out + err
    assert "source.max_account_drop" in err and err.count("nothing written") == 1, err
    hint = "PROVISIOND_SOURCE__MAX_ACCOUNT_DROP=1 provisiond apply"
    assert hint in err, err
    # Done as it says: accepted once, and the next read is measured against it.
    with monkeypatch.context() as m:
        m.setenv("PROVISIOND_SOURCE__MAX_ACCOUNT_DROP", "1")
        code, out, err = world.run("apply")
    assert code == 0, out + err
    assert set(world.entries()) == {f"100.64.0.{i + 1}" for i in range(6, 10)}
    world.assert_converged()
