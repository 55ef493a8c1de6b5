"""RadiusTarget against FreeRADIUS's own schema on PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import pytest
from helpers import LEGACY, TOWER, MemoryLedger, account, execute, make_plan, rows, sync

from provisiond.core.changes import Update, change_from_json
from provisiond.errors import TargetUnavailable
from provisiond.core.plan import Plan
from provisiond.targets.radius import RadiusTarget

UG = ("username", "groupname", "priority")
RR = ("username", "attribute", "op", "value")
FIP = "Framed-IP-Address"


def test_sync_writes_rows_and_a_second_pass_plans_nothing(target: RadiusTarget, radius_url: str, ledger: MemoryLedger) -> None:
    accounts = [
        account("1", "alice", addresses=["10.64.0.10"]),
        account("2", "bob"),
        account("3", "carol", groups=["Other"], addresses=["10.64.0.30"]),
        account("4", "dave", groups=["Tower Hosts"], addresses=["10.64.0.40"]),
    ]
    plan, result = sync(target, accounts, [LEGACY, TOWER])
    assert result.ok, result.error
    assert plan.counts() == {"create": 5, "update": 0, "delete": 0}
    assert rows(radius_url, "radusergroup", *UG) == [("alice", "legacy", "1"), ("bob", "legacy", "1"), ("dave", "tower", "2")]
    assert rows(radius_url, "radreply", *RR) == [("alice", FIP, "=", "10.64.0.10"), ("dave", FIP, "=", "10.64.0.40")]
    assert ledger.rows == {("alice", FIP): "1", ("dave", FIP): "4"}
    again, _ = make_plan(target, accounts, [LEGACY, TOWER])
    assert again.changes == ()


def test_leaving_the_group_removes_only_provisiond_rows(target: RadiusTarget, radius_url: str, ledger: MemoryLedger) -> None:
    execute(
        radius_url,
        "INSERT INTO radusergroup (username, groupname, priority) VALUES ('alice', 'vip', 5)",
        "INSERT INTO radreply (username, attribute, op, value) VALUES ('alice', 'Mikrotik-Address-List', '+=', 'vip')",
        "INSERT INTO radcheck (username, attribute, op, value) VALUES ('alice', 'Cleartext-Password', ':=', 's3cret')",
    )
    alice = account("1", "alice", addresses=["10.64.0.10"])
    assert sync(target, [alice])[1].ok
    assert rows(radius_url, "radusergroup", *UG) == [("alice", "legacy", "1"), ("alice", "vip", "5")]
    plan, result = sync(target, [account("1", "alice", groups=[], addresses=["10.64.0.10"])])
    assert result.ok, result.error
    assert sorted((c.action, c.resource.kind) for c in plan.changes) == [("delete", "radreply"), ("delete", "radusergroup")]
    assert rows(radius_url, "radusergroup", *UG) == [("alice", "vip", "5")]
    assert rows(radius_url, "radreply", *RR) == [("alice", "Mikrotik-Address-List", "+=", "vip")]
    assert rows(radius_url, "radcheck", "username", "value") == [("alice", "s3cret")]
    assert ledger.rows == {}


def test_hand_made_framed_ip_is_a_conflict_and_never_touched(target: RadiusTarget, radius_url: str, ledger: MemoryLedger) -> None:
    execute(radius_url, "INSERT INTO radreply (username, attribute, op, value) VALUES ('bob', 'Framed-IP-Address', '=', '10.9.9.9')")
    accounts = [account("2", "bob", addresses=["10.64.0.20"])]
    plan, conflicts = make_plan(target, accounts)
    assert [(c.resource.get("username"), c.resource.get("value")) for c in conflicts] == [("bob", "10.64.0.20")]
    assert "hand-made Framed-IP-Address row" in conflicts[0].reason and "10.9.9.9" in conflicts[0].reason
    result = target.apply(plan)
    assert result.ok
    assert rows(radius_url, "radreply", *RR) == [("bob", FIP, "=", "10.9.9.9")]
    assert ("bob", FIP) not in ledger.rows
    # and when bob leaves billing, the hand-made row still stays
    assert sync(target, [])[1].ok
    assert rows(radius_url, "radreply", *RR) == [("bob", FIP, "=", "10.9.9.9")]
    assert rows(radius_url, "radusergroup", *UG) == []


def test_address_and_priority_changes_are_updates_in_place(target: RadiusTarget, radius_url: str) -> None:
    assert sync(target, [account("1", "alice", addresses=["10.64.0.10"])])[1].ok
    before = rows(radius_url, "radreply", "id", "username")
    moved = [account("1", "alice", addresses=["10.64.0.11"])]
    plan, result = sync(target, moved, [LEGACY.__class__("legacy", group="Legacy Customers", priority=3)])
    assert result.ok, result.error
    assert [(c.action, c.resource.kind) for c in plan.changes] == [("update", "radreply"), ("update", "radusergroup")]
    assert rows(radius_url, "radreply", "id", "username") == before  # same row
    assert rows(radius_url, "radreply", *RR) == [("alice", FIP, "=", "10.64.0.11")]
    assert rows(radius_url, "radusergroup", *UG) == [("alice", "legacy", "3")]


def test_duplicate_rows_in_a_managed_group_are_surplus(target: RadiusTarget, radius_url: str) -> None:
    execute(
        radius_url,
        "INSERT INTO radusergroup (username, groupname, priority) VALUES ('alice', 'legacy', 1)",
        "INSERT INTO radusergroup (username, groupname, priority) VALUES ('alice', 'legacy', 1)",
        "INSERT INTO radusergroup (username, groupname, priority) VALUES ('ghost', 'tower', 1)",
    )
    observed = target.observe()
    assert len(observed.owned) == 2 and len(observed.surplus) == 1
    plan, result = sync(target, [account("1", "alice")])
    assert result.ok
    assert plan.counts() == {"create": 0, "update": 0, "delete": 2}
    assert rows(radius_url, "radusergroup", *UG) == [("alice", "legacy", "1")]


def test_a_failing_row_rolls_back_the_whole_apply(target: RadiusTarget, radius_url: str) -> None:
    assert sync(target, [account("1", "alice"), account("2", "bob")])[1].ok
    before = (rows(radius_url, "radusergroup", *UG), rows(radius_url, "radreply", *RR))
    if radius_url.startswith("sqlite"):
        execute(radius_url, "CREATE TRIGGER no_mallory BEFORE INSERT ON radusergroup "
                "WHEN NEW.username = 'mallory' BEGIN SELECT RAISE(ABORT, 'no mallory'); END")
    else:
        execute(radius_url, "ALTER TABLE radusergroup ADD CONSTRAINT no_mallory CHECK (username <> 'mallory')")
    # bob leaves (a delete), three join (creates, one of them refused), alice gets an address
    accounts = [account("1", "alice", addresses=["10.64.0.10"]), account("3", "carol"),
                account("4", "mallory"), account("5", "zed")]
    plan, result = sync(target, accounts)
    assert plan.counts() == {"create": 4, "update": 0, "delete": 1}
    assert result.error is not None
    assert result.error.startswith("radius: create radusergroup mallory/legacy failed: ")
    assert result.error.endswith("(rolled back, nothing written)")
    assert result.applied == []
    assert (rows(radius_url, "radusergroup", *UG), rows(radius_url, "radreply", *RR)) == before


def test_a_row_changed_since_observe_rolls_back(target: RadiusTarget, radius_url: str, ledger: MemoryLedger) -> None:
    assert sync(target, [account("1", "alice"), account("2", "bob")])[1].ok
    plan, _ = make_plan(target, [account("3", "carol")])  # deletes alice and bob, creates carol
    execute(radius_url, "UPDATE radusergroup SET groupname = 'hand-moved' WHERE username = 'bob'")
    result = target.apply(plan)
    assert result.error is not None
    assert "delete radusergroup bob/legacy" in result.error and "row changed or gone since observe" in result.error
    assert rows(radius_url, "radusergroup", *UG) == [("alice", "legacy", "1"), ("bob", "hand-moved", "1")]


def test_a_saved_plan_rebuilt_from_json_applies(target: RadiusTarget, radius_url: str) -> None:
    assert sync(target, [account("1", "alice", addresses=["10.64.0.10"])])[1].ok
    plan, _ = make_plan(target, [account("1", "alice", addresses=["10.64.0.12"])])
    rebuilt = Plan(target=plan.target, kind=plan.kind,
                   changes=tuple(change_from_json(c) for c in plan.changes_json()),
                   observed_checksum=plan.observed_checksum)
    assert rebuilt.checksum() == plan.checksum()
    assert isinstance(rebuilt.changes[0], Update)
    assert target.apply(rebuilt).ok
    assert rows(radius_url, "radreply", *RR) == [("alice", FIP, "=", "10.64.0.12")]


def test_observed_checksum_changes_with_the_rows(target: RadiusTarget, radius_url: str) -> None:
    first = target.observe().checksum
    assert target.observe().checksum == first
    execute(radius_url, "INSERT INTO radusergroup (username, groupname, priority) VALUES ('x', 'legacy', 1)")
    assert target.observe().checksum != first


def test_ownership_is_claimed_before_the_commit(target: RadiusTarget, radius_url: str, ledger: MemoryLedger) -> None:
    """The ledger lives in another database: a failed claim writes nothing at all."""
    ledger.fail = True
    _, result = sync(target, [account("1", "alice", addresses=["10.64.0.10"])])
    assert result.error is not None and "cannot record ownership in the state store" in result.error
    assert "nothing written" in result.error
    assert rows(radius_url, "radreply", *RR) == []
    assert rows(radius_url, "radusergroup", "username") == []
    ledger.fail = False
    assert sync(target, [account("1", "alice", addresses=["10.64.0.10"])])[1].ok
    assert ledger.radreply_owned() == {("alice", FIP)}
    assert rows(radius_url, "radreply", *RR) == [("alice", FIP, "=", "10.64.0.10")]


def test_unreachable_database_is_unavailable_and_hides_the_password(ledger: MemoryLedger) -> None:
    t = RadiusTarget("postgresql+psycopg://radius:hunter2@127.0.0.1:1/radius", groups=["legacy"], ledger=ledger, timeout=2)
    with pytest.raises(TargetUnavailable) as err:
        t.observe()
    assert str(err.value).startswith("radius: observe on postgresql+psycopg://radius:***@127.0.0.1:1/radius failed: ")
    assert "hunter2" not in str(err.value) and "hunter2" not in repr(t)
    t.close()


def test_connection_lost_mid_apply_rolls_back_and_is_reported(radius_pg: str) -> None:
    """PostgreSQL kills the session while the transaction is half written."""
    ledger = MemoryLedger()
    target = RadiusTarget(radius_pg, groups=["legacy"], ledger=ledger, timeout=10)
    assert sync(target, [account("1", "alice")])[1].ok
    execute(
        radius_pg,
        "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.username = 'crash' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
        "RETURN NEW; END $$",
        "CREATE TRIGGER die BEFORE INSERT ON radusergroup FOR EACH ROW EXECUTE FUNCTION die()",
    )
    plan, result = sync(target, [account("2", "bob", addresses=["10.64.0.2"]), account("3", "crash")])
    assert plan.counts() == {"create": 3, "update": 0, "delete": 1}
    assert result.error is not None and result.error.startswith(f"radius: apply on {radius_pg} failed: ")
    assert result.error.endswith("(rolled back, nothing written)") and result.applied == []
    assert rows(radius_pg, "radusergroup", *UG) == [("alice", "legacy", "1")]
    assert rows(radius_pg, "radreply", *RR) == [] and ledger.rows == {}
    target.close()


def test_creates_roll_back_when_a_later_update_fails(target: RadiusTarget, radius_url: str) -> None:
    # No delete runs first, so the inserts open the transaction (SQLite: via a SAVEPOINT).
    assert sync(target, [account("1", "alice", addresses=["10.64.0.10"])])[1].ok
    plan, _ = make_plan(target, [account("1", "alice", addresses=["10.64.0.12"]), account("2", "bob")])
    assert plan.counts() == {"create": 1, "update": 1, "delete": 0}
    execute(radius_url, "DELETE FROM radreply WHERE username = 'alice'")
    result = target.apply(plan)
    assert result.error is not None and "rolled back" in result.error
    assert rows(radius_url, "radusergroup", *UG) == [("alice", "legacy", "1")]


def test_a_second_hand_made_framed_ip_row_is_never_deleted(target: RadiusTarget, radius_url: str, ledger: MemoryLedger) -> None:
    # provisiond's row, then an operator's own row for the same user: the ledger (keyed by
    # username and attribute) must not make the operator's row provisiond's surplus.
    assert sync(target, [account("1", "alice", addresses=["10.64.0.10"])])[1].ok
    execute(radius_url, "INSERT INTO radreply (username, attribute, op, value) VALUES ('alice', 'Framed-IP-Address', ':=', '10.9.9.9')")
    plan, conflicts = make_plan(target, [account("1", "alice", addresses=["10.64.0.12"])])
    assert plan.changes == ()
    assert [c.resource.get("username") for c in conflicts] == ["alice"] and "10.9.9.9" in conflicts[0].reason
    assert target.apply(plan).ok
    assert sync(target, [])[1].ok  # alice leaves: her groups go, both address rows stay
    assert rows(radius_url, "radreply", *RR) == [("alice", FIP, ":=", "10.9.9.9"), ("alice", FIP, "=", "10.64.0.10")]


def test_a_framed_ip_row_spelt_in_lower_case_is_hand_made(target: RadiusTarget, radius_url: str) -> None:
    # FreeRADIUS attribute names are case-insensitive: this row gives bob an address.
    execute(radius_url, "INSERT INTO radreply (username, attribute, op, value) VALUES ('bob', 'framed-ip-address', '=', '10.9.9.9')")
    plan, conflicts = make_plan(target, [account("2", "bob", addresses=["10.64.0.20"])])
    assert [c.resource.get("username") for c in conflicts] == ["bob"]
    assert [c.resource.kind for c in plan.changes] == ["radusergroup"]
    assert target.apply(plan).ok
    assert rows(radius_url, "radreply", *RR) == [("bob", "framed-ip-address", "=", "10.9.9.9")]


def test_a_group_differing_only_in_case_is_not_managed(target: RadiusTarget, radius_url: str) -> None:
    # MySQL's default collation matches 'Legacy' for 'legacy'; the row is still not provisiond's.
    execute(radius_url, "INSERT INTO radusergroup (username, groupname, priority) VALUES ('carol', 'Legacy', 5)")
    assert sync(target, [account("1", "alice")])[1].ok
    assert rows(radius_url, "radusergroup", *UG) == [("alice", "legacy", "1"), ("carol", "Legacy", "5")]


def test_progress_reports_every_change_at_the_commit(target: RadiusTarget) -> None:
    plan, _ = make_plan(target, [account("1", "alice", addresses=["10.64.0.10"]), account("2", "bob")])
    seen: list[int] = []
    assert target.apply(plan, progress=seen.append).ok
    assert seen == [len(plan.changes)] == [3]
