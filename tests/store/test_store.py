"""StateStore: migrations, read-only opens, reads, runs, journal, the radreply ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from provisiond.errors import StoreError
from provisiond.state.store import SCHEMA_HEAD, VERSION_TABLE, StateStore

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_open_migrates_to_head_and_reopens(store_url: str) -> None:
    StateStore.open(store_url).close()
    StateStore.open(store_url).close()  # a second open is a no-op upgrade
    engine = sa.create_engine(store_url)
    with engine.connect() as c:
        tables = set(sa.inspect(c).get_table_names())
        version = c.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
    engine.dispose()
    assert {"reads", "runs", "journal", "journal_parts", "radreply_ledger", "leases",
            "pass_requests", "provisiond_members", "provisiond_claims"} <= tables
    assert version == SCHEMA_HEAD == "0004"


def test_the_head_a_store_opens_without_alembic_at_is_alembics_head() -> None:
    """``SCHEMA_HEAD`` (a store already there skips alembic) is the newest migration: a
    new migration without it moved would leave stores unmigrated."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "provisiond.state:migrations")
    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_HEAD]


def test_a_store_behind_head_is_migrated_and_one_at_head_is_not(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic import command

    upgrades: list[str] = []
    upgrade = command.upgrade
    monkeypatch.setattr(command, "upgrade", lambda config, rev: (upgrades.append(rev), upgrade(config, rev)))
    StateStore.open(store_url).close()  # made: alembic creates it
    assert upgrades == ["head"]
    StateStore.open(store_url).close()  # at head: alembic is not asked
    assert upgrades == ["head"]
    engine = sa.create_engine(store_url)
    with engine.begin() as c:
        c.execute(sa.text("DROP TABLE journal_parts"))
        c.execute(sa.text("DROP TABLE pass_requests"))
        c.execute(sa.text("DROP TABLE provisiond_claims"))
        c.execute(sa.text("DROP TABLE provisiond_members"))
        c.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0001'"))
    StateStore.open(store_url).close()  # behind: alembic runs 0002 to 0004 again
    assert upgrades == ["head", "head"]
    with engine.connect() as c:
        assert {"journal_parts", "provisiond_members", "provisiond_claims"} <= set(sa.inspect(c).get_table_names())
        assert c.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one() == SCHEMA_HEAD
    engine.dispose()


def test_sqlite_is_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    StateStore.open(url).close()
    engine = sa.create_engine(url)
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    engine.dispose()


def test_readonly_missing_sqlite_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "state.db"
    with StateStore.open(f"sqlite:///{path}", readonly=True) as store:
        assert store.leases() == []
        assert store.last_good_read() is None
        assert store.history() == []
        assert store.radreply_owned() == set()
        with pytest.raises(StoreError, match="read-only"):
            store.record_read(1, 1, T0)
    assert not path.parent.exists()


def test_readonly_leaves_files_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore.open(f"sqlite:///{path}") as store:
        store.record_read(5, 9, T0)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with StateStore.open(f"sqlite:///{path}", readonly=True) as store:
        assert store.last_good_read() == 5
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_readonly_without_schema_is_empty(tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "bare.db"
    sa.create_engine(f"sqlite:///{path}").connect().close()
    for url in (f"sqlite:///{path}", pg_url):
        with StateStore.open(url, readonly=True) as store:
            assert store.leases() == [] and store.runs() == [] and store.last_good_read() is None
    engine = sa.create_engine(pg_url)
    with engine.connect() as c:
        assert sa.inspect(c).get_table_names() == []
    engine.dispose()


def test_readonly_postgres_refuses_writes(pg_url: str) -> None:
    StateStore.open(pg_url).close()
    with StateStore.open(pg_url, readonly=True) as store:
        with pytest.raises(StoreError):
            store.start_run("apply")


def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        StateStore.open("::nonsense::")
    with pytest.raises(StoreError, match="sqlite:// or postgresql://"):
        StateStore.open("mysql+pymysql://u@127.0.0.1/x")


def test_last_good_read(store: StateStore) -> None:
    assert store.last_good_read() is None
    store.record_read(100, 240, T0)
    store.record_read(97, 230, T0 + timedelta(minutes=1))
    assert store.last_good_read() == 97


def test_runs(store: StateStore) -> None:
    run = store.start_run("apply")
    store.finish_run(run, "ok", {"create": 3, "targets": ["core-1"]})
    [latest] = store.runs()
    assert latest["id"] == run and latest["mode"] == "apply" and latest["result"] == "ok"
    assert latest["summary"] == {"create": 3, "targets": ["core-1"]}
    assert latest["finished_at"] >= latest["started_at"]


def _entry(action: str, account: str, address: str, result: str = "ok") -> dict[str, object]:
    return {
        "action": action, "kind": "address-list", "group": "tower-hosts",
        "list": "tower-hosts", "address": address, "account_id": account,
        "account_name": f"acct {account}", "result": result, "message": "",
    }


def test_journal_and_history(store: StateStore) -> None:
    run = store.start_run("apply")
    store.journal(run, "core-1", [_entry("create", "1042", "100.64.0.5")], at=T0)
    store.journal(
        run, "core-1",
        [_entry("delete", "7", "100.64.0.9"), _entry("create", "1042", "100.64.0.6", "failed")],
        at=T0 + timedelta(hours=1),
    )
    store.journal(run, "radius", [], at=T0)  # nothing to record
    everything = store.history()
    assert [h["action"] for h in everything][-1] == "create"
    assert everything[0]["at"] == T0 + timedelta(hours=1)
    assert everything[-1]["at"] == T0
    first = everything[-1]
    assert first == {
        "at": T0, "run_id": run, "target": "core-1", "action": "create", "kind": "address-list",
        "group": "tower-hosts", "account_id": "1042",
        "detail": {"list": "tower-hosts", "address": "100.64.0.5", "account_name": "acct 1042"},
        "result": "ok", "message": "",
    }
    assert [h["detail"]["address"] for h in store.history(account="1042")] == [
        "100.64.0.6", "100.64.0.5",
    ]
    assert len(store.history(since=T0 + timedelta(minutes=30))) == 2
    assert len(store.history(limit=1)) == 1
    assert store.history(account="1042")[0]["result"] == "failed"


def test_radreply_ledger(store: StateStore) -> None:
    assert store.radreply_owned() == set()
    store.radreply_record(
        added=[("alice", "Framed-IP-Address", "1"), ("bob", "Framed-IP-Address", "2")], removed=[]
    )
    assert store.radreply_owned() == {("alice", "Framed-IP-Address"), ("bob", "Framed-IP-Address")}
    store.radreply_record(
        added=[("alice", "Framed-IP-Address", "1"), ("carol", "Mikrotik-Rate-Limit", "3")],
        removed=[("bob", "Framed-IP-Address")],
    )
    assert store.radreply_owned() == {
        ("alice", "Framed-IP-Address"), ("carol", "Mikrotik-Rate-Limit"),
    }
    store.radreply_record(added=[], removed=[("nobody", "X")])  # unknown: fine
    store.radreply_record(added=[], removed=[])


def test_naive_datetimes_are_utc(store: StateStore) -> None:
    run = store.start_run("apply")
    store.journal(run, "core-1", [_entry("create", "1", "100.64.0.1")], at=datetime(2025, 3, 1, 12))
    assert store.history()[0]["at"] == T0


def test_journal_changes_writes_the_rows_journal_writes(store: StateStore) -> None:
    """The engine's fast path (rows straight from the changes) and ``journal`` of each
    change's JSON leave the same history: creates, updates, deletes, failures, conflicts."""
    from provisiond.core.changes import Conflict, Create, Delete, Resource, Update, change_to_json

    def entry(n: int, ref: str = "", comment: str = "provisiond:1 a") -> Resource:
        return Resource("address-list", "tower-hosts",
                        (("list", "tower-hosts"), ("address", f"100.64.0.{n}")),
                        (("comment", comment), ("disabled", "false")),
                        account_id=str(n), account_name=f"acct {n}", ref=ref)

    applied = [Create(entry(1)), Delete(entry(2, "*2")),
               Update(entry(3, "*3", "old"), entry(3, comment="new"))]
    failed = [(Create(entry(4)), "core-1: add refused: failure: out of memory")]
    conflicts = [Conflict(entry(5), "already have such entry (not provisiond's)")]
    fast, slow = store.start_run("apply"), store.start_run("apply")
    store.journal_changes(fast, "core-1", applied=applied, failed=failed, conflicts=conflicts, at=T0)
    store.journal(slow, "core-1", [
        *({**change_to_json(c), "result": "ok", "message": ""} for c in applied),
        *({**change_to_json(c), "result": "failed", "message": m} for c, m in failed),
        *({"action": "create", **c.to_json(), "result": "conflict", "message": c.reason}
          for c in conflicts),
    ], at=T0)

    def rows(run: str) -> list[dict[str, object]]:
        return sorted(({k: v for k, v in h.items() if k != "run_id"}
                       for h in store.history() if h["run_id"] == run),
                      key=lambda h: str(h["account_id"]))

    assert len(rows(fast)) == 5
    assert rows(fast) == rows(slow)
    assert rows(fast)[2]["detail"] == {"list": "tower-hosts", "address": "100.64.0.3",
                                       "comment": "new", "disabled": "false",
                                       "account_name": "acct 3", "id": "*3",
                                       "before": {"comment": "old", "disabled": "false"}}


def _entry_change(n: int, action: str = "create") -> Any:
    from provisiond.core.changes import Create, Delete, Resource

    name = f"list-{n % 3}"
    r = Resource("address-list", name, (("list", name), ("address", f"100.64.{n >> 8}.{n & 255}")),
                 (("comment", f'provisiond:{n} acct "{n}" \u00e9'), ("disabled", "false")),
                 account_id=str(n), account_name=f'acct "{n}" \u00e9',
                 ref=f"*{n:X}" if action == "delete" else "")
    return Create(r) if action == "create" else Delete(r)


def test_a_large_part_is_one_row_and_reads_back_as_its_changes(store: StateStore, store_url: str) -> None:
    """A part of PART_ROWS address-list changes or more is one journal_parts row;
    history (all, by account, since, limit) reads it as the changes one row each would
    have been (creates, updates, a failed delete and update, a conflict), newest first."""
    from provisiond.core.changes import Conflict, Update
    from provisiond.state.store import PART_ROWS, journal_parts

    n = PART_ROWS + 50
    old, new = _entry_change(n + 1, "delete").old, _entry_change(n + 1).new
    renamed = Update(old, type(new)(new.kind, new.group, new.ident, (("comment", "x"), ("disabled", "true")),
                                    account_id=new.account_id, account_name="renamed", ref=old.ref))
    applied = [_entry_change(i) for i in range(n - 2)] + [renamed]
    failed = [(_entry_change(n - 2, "delete"), "core-1: remove refused: no"),
              (Update(old, renamed.new), "core-1: set refused: no")]
    conflicts = [Conflict(_entry_change(n + 2).new, "already have such entry (not provisiond's)")]
    bulk, single = store.start_run("apply"), store.start_run("apply")
    store.journal_changes(bulk, "core-1", applied=applied, failed=failed, conflicts=conflicts, at=T0)
    for i in range(0, len(applied), PART_ROWS // 2):  # the same changes in small parts
        store.journal_changes(single, "core-1", applied=applied[i:i + PART_ROWS // 2], at=T0)
    store.journal_changes(single, "core-1", failed=failed, conflicts=conflicts, at=T0)
    engine = sa.create_engine(store_url)
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(journal_parts)).scalar_one() == 1
        assert c.execute(sa.text("SELECT count(*) FROM journal WHERE run_id = :r"),
                         {"r": bulk}).scalar_one() == 0
    engine.dispose()

    def runs(entries: list[dict[str, Any]], run: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "run_id"} for e in entries if e["run_id"] == run]

    everything = store.history(limit=10 * n)
    assert len(runs(everything, bulk)) == n + 2
    assert sorted(runs(everything, bulk), key=repr) == sorted(runs(everything, single), key=repr)
    assert [e["result"] for e in runs(everything, bulk)[:3]] == ["conflict", "failed", "failed"]
    assert runs(everything, bulk)[1]["detail"]["before"] == {"comment": f'provisiond:{n + 1} acct "{n + 1}" \u00e9',
                                                            "disabled": "false"}
    mine = store.history(account="7")
    assert [(e["detail"]["address"], e["account_id"]) for e in mine if e["run_id"] == bulk] == [
        ("100.64.0.7", "7")]
    assert mine[0]["detail"]["account_name"] == 'acct "7" \u00e9'
    assert store.history(account="70") and all(e["account_id"] == "70" for e in store.history(account="70"))
    assert len(store.history(limit=5)) == 5
    assert store.history(since=T0 + timedelta(seconds=1)) == []


def test_a_role_without_select_on_journal_parts_gets_an_error_naming_the_grant(pg_url: str) -> None:
    """A read-only role granted the tables of the schema before journal_parts: history
    is a StoreError naming the table, the privilege and the GRANT (never a driver error),
    and reads the whole journal once the GRANT is made."""
    from dbservers import select_only_role

    from provisiond.state.store import PART_ROWS

    with StateStore.open(pg_url) as store:
        run = store.start_run("apply")
        store.journal_changes(run, "core-1", applied=[_entry_change(i) for i in range(PART_ROWS)], at=T0)
        store.journal_changes(run, "core-1", applied=[_entry_change(PART_ROWS)], at=T0)
        store.finish_run(run, "ok", {})
    old_tables = ("reads", "runs", "journal", "radreply_ledger", "leases")
    with select_only_role(pg_url, old_tables) as reader_url:
        role = sa.make_url(reader_url).username
        with StateStore.open(reader_url, readonly=True) as reader:
            assert [r["id"] for r in reader.runs()] == [run]
            for account in (None, "7"):
                with pytest.raises(StoreError) as raised:
                    reader.history(account=account)
                message = str(raised.value)
                assert "permission denied for table journal_parts" in message
                assert "no SELECT privilege" in message
                assert f'GRANT SELECT ON journal_parts TO "{role}"' in message
                assert "[SQL:" not in message and "InsufficientPrivilege" not in message
        engine = sa.create_engine(pg_url)
        with engine.begin() as c:
            c.execute(sa.text(f'GRANT SELECT ON journal_parts TO "{role}"'))
        engine.dispose()
        with StateStore.open(reader_url, readonly=True) as reader:
            assert len(reader.history()) == PART_ROWS + 1


def test_queued_journal_is_written_by_finish_run_and_close(store: StateStore, store_url: str) -> None:
    from provisiond.state.store import JOURNAL_CHUNK

    run = store.start_run("apply")
    for i in range(0, 30, 10):
        store.journal_changes(run, "core-1", applied=[_entry_change(j) for j in range(i, i + 10)],
                              wait=False)
    store.finish_run(run, "ok", {})
    assert len([e for e in store.history() if e["run_id"] == run]) == 30
    second = store.start_run("apply")
    store.journal_changes(second, "core-2", applied=[_entry_change(j) for j in range(JOURNAL_CHUNK + 5)],
                          wait=False)
    store.close()
    with StateStore.open(store_url) as again:
        written = again.history(limit=2 * JOURNAL_CHUNK)
    assert len([e for e in written if e["run_id"] == second]) == JOURNAL_CHUNK + 5


def test_a_failed_queued_write_is_raised_by_finish_run(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisiond.state import journal as store_mod

    def broken(*args: object, **kw: object) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    run = store.start_run("apply")
    monkeypatch.setattr(store_mod, "_insert_journal", broken)
    store.journal_changes(run, "core-1", applied=[_entry_change(1)], wait=False)
    with pytest.raises(StoreError, match="disk I/O error"):
        store.finish_run(run, "ok", {})


def test_a_run_whose_journal_failed_is_still_finished_as_failed(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """finish_run records the run (failed, the journal's error in its summary) before it
    raises the writer's error: a run never stays unfinished because its journal failed."""
    from provisiond.state import journal as store_mod

    def broken(*args: object, **kw: object) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    run = store.start_run("apply")
    monkeypatch.setattr(store_mod, "_insert_journal", broken)
    store.journal_changes(run, "core-1", applied=[_entry_change(1)], wait=False)
    with pytest.raises(StoreError, match="disk I/O error"):
        store.finish_run(run, "ok", {"targets": {"core-1": {"applied": 1}}})
    [latest] = store.runs()
    assert latest["id"] == run and latest["result"] == "failed"
    assert latest["finished_at"] is not None and latest["finished_at"] >= latest["started_at"]
    assert latest["summary"]["targets"] == {"core-1": {"applied": 1}}
    assert "journal" in latest["summary"]["journal_error"]
    assert "disk I/O error" in latest["summary"]["journal_error"]
    store.finish_run(store.start_run("apply"), "ok", {})  # the next run's journal is a new writer
    assert [r["result"] for r in store.runs()][0] == "ok"


def test_rows_that_cannot_be_made_fail_the_journal_not_the_caller(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target reporting a part is never stopped half-way by the journal: the error
    comes from finish_run, and nothing more is written."""
    from provisiond.state import journal as store_mod

    def broken(*args: object, **kw: object) -> None:
        raise TypeError("not JSON serializable")

    run = store.start_run("apply")
    store.journal_changes(run, "core-1", applied=[_entry_change(1)], wait=False)
    monkeypatch.setattr(store_mod, "_journal_rows_of", broken)
    store.journal_changes(run, "core-1", applied=[_entry_change(2)], wait=False)  # does not raise
    monkeypatch.undo()
    store.journal_changes(run, "core-1", applied=[_entry_change(3)], wait=False)
    with pytest.raises(StoreError, match="not JSON serializable"):
        store.finish_run(run, "ok", {})
    assert [e for e in store.history() if e["run_id"] == run] == []


@pytest.mark.parametrize("spelling_lookups", [500, 0])  # by spelling, and one read of all
def test_radius_accounts_name_the_account_a_username_was_written_for(
        store: StateStore, monkeypatch: pytest.MonkeyPatch, spelling_lookups: int) -> None:
    from provisiond.core.changes import Create, Delete, Resource
    from provisiond.state import journal as store_mod

    monkeypatch.setattr(store_mod, "SPELLING_LOOKUPS", spelling_lookups)

    def member(username: str, account: str) -> Resource:
        return Resource(kind="radusergroup", group="tower",
                        ident=(("username", username), ("groupname", "tower")),
                        attrs=(("priority", "1"),), account_id=account)

    odd = "o'neil%_x\\é"  # LIKE's wildcards, a quote, a backslash and beyond ASCII
    run = store.start_run("apply")
    store.journal_changes(run, "radius", applied=[Create(member("user1003", "1003")),
                                                  Create(member(odd, "77")),
                                                  Create(member("moved", "1"))], at=T0)
    store.journal_changes(run, "radius", applied=[Create(member("moved", "2")),
                                                  Delete(member("user1003", "9"))],
                          at=T0 + timedelta(minutes=1))
    store.radreply_record(added=[("ledgered", "Framed-IP-Address", "55")], removed=[])
    assert store.radius_accounts(["user1003", odd, "moved", "ledgered", "user100", "nobody"]) == {
        "user1003": "1003", odd: "77", "moved": "2", "ledgered": "55"}
    assert store.radius_accounts([]) == {}


def test_a_store_read_before_its_database_exists_reads_it_once_it_does(tmp_path: Path) -> None:
    """The daemon looks at its store (pass numbers) before its first pass creates it: a
    later read must see what that pass wrote, not the empty store of the first look."""
    from provisiond.core.ipam import Allocation, Lease
    from provisiond.state.ondemand import WritableOnDemand

    url = f"sqlite:///{tmp_path / 'state.db'}"
    kept = WritableOnDemand(url, writable=False)
    assert kept.leases() == [] and kept.runs() == []
    with StateStore.open(url) as other:  # another process makes it and leases
        other.reserve(Allocation(new=(Lease("p", "10.0.0.1", "1"),)), T0)
    assert [x.address for x in kept.leases()] == ["10.0.0.1"]
    kept.close()
