"""StateStore: migrations, read-only opens, reads, runs, journal, the radreply ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from provisiond.errors import StoreError
from provisiond.state.store import VERSION_TABLE, StateStore

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_open_migrates_to_head_and_reopens(store_url: str) -> None:
    StateStore.open(store_url).close()
    StateStore.open(store_url).close()  # a second open is a no-op upgrade
    engine = sa.create_engine(store_url)
    with engine.connect() as c:
        tables = set(sa.inspect(c).get_table_names())
        version = c.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
    engine.dispose()
    assert {"reads", "runs", "journal", "radreply_ledger", "leases"} <= tables
    assert version == "0001"


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
