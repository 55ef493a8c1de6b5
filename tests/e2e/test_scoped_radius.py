"""Scoped passes and RADIUS (and the emptying rule) end to end: real PostgreSQL billing,
a FreeRADIUS SQLite schema, a simulated router, the CLI and the reconciler in-process.

A scoped read returns only its accounts, so a scoped pass cannot tell on its own that a
username is also another account's, nor that a mapping now matches nobody: both widen
it to a full pass, which decides as it always does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sqlalchemy as sa
from world import World

sys.path.insert(0, str(Path(__file__).parent.parent / "radius"))

from freeradius import load_schema  # noqa: E402

from provisiond import settings as settings_mod  # noqa: E402
from provisiond.engine import Reconciler  # noqa: E402


def _radius_world(world: World) -> str:
    url = f"sqlite:///{world.tmp / 'radius.db'}"
    load_schema(url)
    world.router("core-1")
    world.write_config(extra=f'[radius]\nurl = "{url}"\n\n'
                             '[[radius_group]]\ngroup = "Tower Hosts"\nradius_group = "tower"\n'
                             'priority = 1\n')
    return url


def _rows(url: str) -> list[tuple[str, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            ug = c.exec_driver_sql("SELECT username, groupname FROM radusergroup").all()
            rr = c.exec_driver_sql("SELECT username, attribute, value FROM radreply").all()
        return sorted(tuple(r) for r in (*ug, *rr))
    finally:
        engine.dispose()


def test_a_username_shared_with_an_account_outside_the_scope_widens_the_pass(
    world: World,
) -> None:
    url = _radius_world(world)
    # Billing lists "ridge" on two accounts: 1 (Tower Hosts) keeps it (lowest id);
    # 2 is in no mapped group. Three more towers so no group is emptied by accident.
    world.account(1, "Ridge", groups=["Tower Hosts"], ips=["100.64.1.1"], usernames=["ridge"])
    world.account(2, "Ridge Too", usernames=["ridge"])
    for i in (3, 4, 5):
        world.account(i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.1.{i}"],
                      usernames=[f"t{i}"])
    code, out, err = world.run("apply")
    assert code == 0, out + err
    full = _rows(url)
    assert ("ridge", "tower") in full and ("ridge", "Framed-IP-Address", "100.64.1.1") in full

    # The daemon's way: a full pass, then scoped ones (a NOTIFY for account 2) in the
    # same reconciler, which remembers who holds which username from the full pass.
    rec = Reconciler(settings_mod.load(world.config), readonly=False)
    try:
        rec.apply(rec.plan())
        pp = rec.plan(accounts={"2"})
        assert pp.accounts is None  # widened to a full pass
        assert all(p.empty and not p.followups for p in pp.plans)
        # Account 2 joins Tower Hosts: still account 1's username, nothing to do.
        world.account(2, "Ridge Too", groups=["Tower Hosts"], usernames=["ridge"])
        pp = rec.plan(accounts={"2"})
        assert pp.accounts is None and all(p.empty for p in pp.plans)
        # Account 1 lets go of it: now a scoped pass of 1 may delete, 2 gets it.
        world.account(1, "Ridge", groups=["Tower Hosts"], ips=["100.64.1.1"])
        rec.apply(rec.plan(accounts={"1", "2"}))
    finally:
        rec.close()
    now = _rows(url)
    assert ("ridge", "tower") in now
    assert not [r for r in now if r[0] == "ridge" and r[1] == "Framed-IP-Address"]
    world.assert_converged()


def test_a_scoped_pass_never_empties_a_list_it_cannot_judge(world: World) -> None:
    url = _radius_world(world)
    for i in range(1, 9):
        world.account(i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.1.{i}"],
                      usernames=[f"t{i}"])
    code, out, err = world.run("apply")
    assert code == 0, out + err
    # One UPDATE moves every member of Tower Hosts to a misspelt group; the trigger
    # names all eight accounts in one scoped pass.
    world.sql("INSERT INTO groups (name) VALUES ('Tower Host')")
    world.sql("UPDATE account_groups SET group_id = (SELECT id FROM groups WHERE name = 'Tower Host')")
    ids = ",".join(str(i) for i in range(1, 9))
    code, out, err = world.run("apply", "--account", ids)
    assert code != 0, out + err
    assert "matches no account in billing" in out + err
    assert len(world.entries("core-1", "tower-hosts")) == 8
    assert len(_rows(url)) == 16

    # Scoped passes one by one in the daemon's reconciler: the last one would empty
    # the list (counting the seven before it) and widens; the full pass refuses.
    rec = Reconciler(settings_mod.load(world.config), readonly=False)
    try:
        world.sql("UPDATE account_groups SET group_id = (SELECT id FROM groups WHERE name = 'Tower Hosts')")
        assert all(p.empty for p in rec.plan().plans)
        world.sql("UPDATE account_groups SET group_id = (SELECT id FROM groups WHERE name = 'Tower Host')")
        for i in range(1, 8):
            pp = rec.plan(accounts={str(i)})
            assert pp.accounts == frozenset({str(i)})
            result = rec.apply(pp)
            assert not result.refused, result.refused
        pp = rec.plan(accounts={"8"})
        assert pp.accounts is None  # widened
        refused = rec.apply(pp).refused
        assert sorted(refused) == ["core-1", "radius"], refused
        assert "matches no account in billing" in refused["core-1"]
    finally:
        rec.close()
    assert list(world.entries("core-1", "tower-hosts")) == ["100.64.1.8"]
    assert [r[0] for r in _rows(url)] == ["t8", "t8"]
    code, out, err = world.run("apply", "--account", "8")  # refused again: nothing moves
    assert code != 0 and list(world.entries("core-1", "tower-hosts")) == ["100.64.1.8"]


def test_a_bad_billing_row_keeps_the_accounts_radius_rows(world: World) -> None:
    url = _radius_world(world)
    for i in (1, 2, 3):
        world.account(i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.1.{i}"],
                      usernames=[f"t{i}"])
    code, out, err = world.run("apply")
    assert code == 0, out + err
    before = _rows(url)
    # A typo in account 1's only billing row: skipped, so billing names no username for
    # it; its rows are known by what provisiond wrote for it (the journal).
    world.account(1, "Tower 1", groups=["Tower Hosts"], ips=["100.64.1.1x"], usernames=["t1"])
    for args in (("plan",), ("plan", "--account", "1")):
        code, out, err = world.run(*args)
        assert code == 0, out + err
        assert "skipped billing row: account 1" in out
        assert "Plan: 0 to create, 0 to update, 0 to delete" in out
    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert _rows(url) == before and "100.64.1.1" in world.entries("core-1", "tower-hosts")
    # Billing fixed: nothing to do either.
    world.account(1, "Tower 1", groups=["Tower Hosts"], ips=["100.64.1.1"], usernames=["t1"])
    world.assert_converged()
