"""Promises that had no test able to fail: each of these breaks when the promise does.

Billing on PostgreSQL, simulated routers over TCP, the CLI in-process (``world``).
"Writes nothing" is checked where it can be seen: the router's entries (ids included)
and the write commands the simulator received, not the text of an error message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from dbservers import Server, fresh_database, select_only_role
from world import QUERY, World

from provisiond.sim import RouterSim

WRITE_VERBS = ("add", "set", "remove", "enable", "disable", "unset", "comment")


def writes(sim: RouterSim) -> list[str]:
    return [c.path for c in sim.history if c.path.rsplit("/", 1)[-1] in WRITE_VERBS]


def _seed(world: World) -> None:
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], ips=["100.64.10.5"])
    world.account(1043, "Crête Farm", groups=["Credit Card Pending", "Tower Hosts"], ips=["100.64.10.6"])
    world.account(1044, "Zoë's Café", status="delinquent", groups=["Legacy Customers"], ips=["100.64.10.7"])


def test_dynamic_entries_are_never_touched_even_with_provisiond_s_marker(world: World) -> None:
    """A dynamic entry is the router's own, whatever its comment says."""
    sim = world.router("core-1")
    _seed(world)
    assert world.run("apply")[0] == 0
    # Dynamic entries carrying the marker: one billing no longer wants (a delete if it
    # were provisiond's), one billing wants with another name (an update if it were).
    sim.add_entry("ip", list_name="tower-hosts", address="100.64.10.99", comment="provisiond:1099 Gone", dynamic=True)
    sim.add_entry("ip", list_name="cc-pending", address="100.64.10.42", comment="provisiond:1045 Old Name",
                  dynamic=True)
    world.account(1045, "New Name", groups=["Credit Card Pending"], ips=["100.64.10.42"])
    before = {e[".id"]: e for e in sim.entries("ip")}
    code, out, err = world.run("plan")
    assert "100.64.10.99" not in out.replace("! ", "")  # no delete planned
    assert ('! cc-pending 100.64.10.42  acct 1045 "New Name": conflict: dynamic entry '
            "(comment 'provisiond:1045 Old Name')") in out, out
    sim.reset_history()
    code, out, err = world.run("apply")
    assert code == 0, out + err
    after = {e[".id"]: e for e in sim.entries("ip")}
    assert after == before, "dynamic entries untouched"
    assert writes(sim) == []
    world.assert_converged()


FAILURES: dict[str, dict[str, Any]] = {
    "query error": {"query": "SELECT * FROM no_such_table"},
    "missing columns": {"query": "SELECT id AS account_id FROM accounts"},
    "timeout": {"query": QUERY + " WHERE (SELECT count(*) FROM pg_sleep(3)) = 1", "source_extra": 'timeout = "0.3s"'},
}


@pytest.mark.parametrize("failure", ["query error", "missing columns", "timeout", "unreachable"])
def test_a_failed_billing_read_writes_nothing_while_routers_hold_entries(world: World, failure: str) -> None:
    """With the account-drop check off, the failed read alone must stop every write."""
    sim = world.router("core-1")
    _seed(world)
    drop_off = "max_account_drop = 1.0"  # the second line of defence, out of the way
    world.write_config(source_extra=drop_off)
    assert world.run("apply")[0] == 0
    before = world.entries()
    assert len(before) == 3
    history_before = world.run("history", "--format", "json")[1]
    world.account(1046, "New Tower", groups=["Tower Hosts"], ips=["100.64.10.8"])  # a create pending
    kw = dict(FAILURES.get(failure, {}))
    kw["source_extra"] = kw.get("source_extra", "") + "\n" + drop_off
    world.write_config(**kw)
    if failure == "unreachable":
        text = world.config.read_text().replace(world.billing_url.rsplit("@", 1)[1].split("/")[0],
                                                "127.0.0.1:9", 1)
        world.config.write_text(text)
    sim.reset_history()
    code, out, err = world.run("apply")
    assert code == 1, out + err
    assert "nothing written" in err
    assert world.entries() == before, "routers keep every entry, ids included"
    assert writes(sim) == []
    assert world.run("history", "--format", "json")[1] == history_before, "nothing journalled"
    world.write_config(source_extra=drop_off)
    assert world.run("apply")[0] == 0
    assert "100.64.10.8" in world.entries()
    world.assert_converged()


def test_max_update_ratio_refuses_then_force_applies(world: World) -> None:
    sim = world.router("core-1")
    for i in range(12):
        world.account(4000 + i, f"T{i}", groups=["Tower Hosts"], ips=[f"100.64.30.{i + 1}"])
    assert world.run("apply")[0] == 0
    for i in range(4):  # 4 renames of 12 = 33% > 30%; no deletes at all
        world.account(4000 + i, f"Renamed {i}", groups=["Tower Hosts"], ips=[f"100.64.30.{i + 1}"])
    before = world.entries()
    sim.reset_history()
    code, out, _ = world.run("apply")
    assert code == 1
    assert ("REFUSED: tower-hosts: 4 updates of 12 existing entries (33.3%) exceeds "
            "max_update_ratio 30.0%") in out
    assert world.entries() == before and writes(sim) == []
    code, out, _ = world.run("apply", "--force")
    assert code == 0, out
    assert world.entries()["100.64.30.1"]["comment"] == "provisiond:4000 Renamed 0"
    world.assert_converged()


def test_every_applied_change_is_journalled_and_history_shows_it(world: World) -> None:
    world.router("core-1")
    _seed(world)
    assert world.run("apply")[0] == 0
    world.remove_account(1042)
    world.account(1043, "Crête Farm & Sons", groups=["Credit Card Pending", "Tower Hosts"], ips=["100.64.10.6"])
    assert world.run("apply")[0] == 0
    code, out, err = world.run("history", "--format", "json")
    assert code == 0, err
    entries = json.loads(out)["entries"]
    got = sorted((e["target"], e["action"], e["detail"]["list"], e["detail"]["address"], e["account_id"],
                  e["result"]) for e in entries)
    assert got == sorted([
        ("core-1", "create", "tower-hosts", "100.64.10.5", "1042", "ok"),
        ("core-1", "create", "tower-hosts", "100.64.10.6", "1043", "ok"),
        ("core-1", "create", "cc-pending", "100.64.10.6", "1043", "ok"),
        ("core-1", "create", "delinquent", "100.64.10.7", "1044", "ok"),
        ("core-1", "delete", "tower-hosts", "100.64.10.5", "1042", "ok"),
        ("core-1", "update", "tower-hosts", "100.64.10.6", "1043", "ok"),
        ("core-1", "update", "cc-pending", "100.64.10.6", "1043", "ok"),
    ])
    code, out, _ = world.run("history", "--since", "1h", "--account", "1042")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and all("core-1" in line and "acct 1042" in line for line in lines), out
    assert any("- tower-hosts 100.64.10.5" in line for line in lines)
    assert any("+ tower-hosts 100.64.10.5" in line for line in lines)
    world.assert_converged()


def test_history_and_explain_with_a_role_that_cannot_read_journal_parts(
        world: World, pg_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only role granted the tables of the schema before journal_parts (an
    operator's grant from before the upgrade): ``history`` fails, exit 1, with an error
    naming the table, the privilege and the GRANT (it would otherwise show a journal
    without its parts as if it were whole); ``explain`` explains the account and says
    in its journal section why the journal could not be read."""
    from provisiond.state import journal as store_mod

    monkeypatch.setattr(store_mod, "PART_ROWS", 2)  # the router's four creates: one part
    world.router("core-1")
    _seed(world)
    with fresh_database(pg_server, prefix="state") as state_url:
        world.state_url = state_url
        world.write_config()
        assert world.run("apply")[0] == 0
        engine = sa.create_engine(state_url)
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT sum(changes) FROM journal_parts")).scalar_one() == 4
        engine.dispose()
        tables = ("reads", "runs", "journal", "radreply_ledger", "leases")
        with select_only_role(state_url, tables) as reader_url:
            role = sa.make_url(reader_url).username
            world.state_url = reader_url
            world.write_config()
            grant = f'GRANT SELECT ON journal_parts TO "{role}"'
            for args in (("history",), ("history", "--format", "json", "--account", "1042")):
                code, out, err = world.run(*args)
                assert code == 1 and out == "", out + err
                [line] = err.splitlines()
                assert line.startswith("error: state store ") and "Traceback" not in err
                assert line.endswith(f"permission denied for table journal_parts: the database role "
                                     f"has no SELECT privilege on it ({grant})"), line
            code, out, err = world.run("explain", "1042", "--format", "json")
            assert code == 0, out + err
            doc = json.loads(out)
            assert [t["status"] for t in doc["targets"]] == ["converged"]
            [entry] = doc["journal"]
            assert "permission denied for table journal_parts" in entry["error"] and grant in entry["error"]
            code, out, err = world.run("explain", "1042")
            assert code == 0 and "Traceback" not in err, out + err
            assert "journal (last 1):\n  error: state store " in out and grant in out, out


@pytest.mark.parametrize("tamper", ["address", "action", "checksum"])
def test_a_tampered_saved_plan_writes_nothing_to_the_router(world: World, tamper: str) -> None:
    sim = world.router("core-1")
    _seed(world)
    plan_file = world.tmp / "plan.json"
    assert world.run("plan", "--out", str(plan_file))[0] == 2
    doc = json.loads(plan_file.read_text())
    target = doc["targets"][0]
    if tamper == "address":
        target["changes"][0]["address"] = "192.0.2.99"
    elif tamper == "action":
        target["changes"][0]["action"] = "delete"
    else:
        target["checksum"] = "0" * 64
    plan_file.write_text(json.dumps(doc))
    sim.reset_history()
    code, out, err = world.run("apply", "--plan", str(plan_file))
    assert code == 1, out + err
    assert "core-1" in out
    assert world.entries() == {} and writes(sim) == []
    assert world.run("apply")[0] == 0
    world.assert_converged()


def test_the_account_drop_check_counts_accounts_with_only_bad_rows_and_allows_exactly_the_limit(
    world: World,
) -> None:
    """10 accounts at the last good read; now 3 good ones and 2 whose every row is bad:
    5 accounts seen, exactly the 50 % drop allowed, so the pass goes on (--force for the
    safety threshold, which is another matter). Counting only the good ones (3) or
    refusing at the limit would stop it."""
    world.router("core-1")
    for i in range(10):
        world.account(5000 + i, f"A{i}", groups=["Tower Hosts"], ips=[f"100.64.40.{i + 1}"])
    assert world.run("apply")[0] == 0
    for i in range(5, 10):
        world.remove_account(5000 + i)
    for i in (3, 4):
        world.sql("UPDATE ip_assignments SET address = 'not-an-ip' WHERE account_id = :i", i=5000 + i)
    code, out, err = world.run("apply", "--force")
    assert "billing returned" not in err, err
    assert "account 5003: not an IP address or network: 'not-an-ip'" in out + err
    assert sorted(world.entries("core-1", "tower-hosts")) == [f"100.64.40.{i + 1}" for i in range(5)]
    world.assert_converged()
