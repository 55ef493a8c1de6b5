"""journal_parts rows: format 2 (column by column, ``state/parts.py``) reads back as
exactly what format 1 (a list of rows, the first) read back as, for any part; format 1
rows already in a database still read back."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisiond.core.changes import IDENT_FIELDS, Change, Conflict, Create, Delete, Resource, Update
from provisiond.state import journal as store_mod
from provisiond.state.parts import encode_part, part_entries, part_rows
from provisiond.state.store import StateStore, journal_parts

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
KINDS = frozenset(IDENT_FIELDS)  # address-list and the RADIUS kinds
Failed = list[tuple[Change, str]]


def format_1(applied: Sequence[Change], failed: Failed, conflicts: Sequence[Conflict]) -> str:
    """A part's ``rows`` as the store wrote them before format 2 (its ``_part_rows``
    and ``_PART_ENCODER``, as they were)."""
    def row(c: Change, result: str, message: str) -> tuple[Any, ...]:
        r = c.resource
        if isinstance(c, Update):
            return (c.action, r.kind, r.group, r.account_id, r.account_name, r.ident, r.attrs,
                    c.old.ref, c.old.attrs, result, message)
        return (c.action, r.kind, r.group, r.account_id, r.account_name, r.ident, r.attrs,
                r.ref, None, result, message)

    rows = ([row(c, "ok", "") for c in applied] + [row(c, "failed", m) for c, m in failed]
            + [row(Create(x.resource), "conflict", x.reason) for x in conflicts])
    return json.JSONEncoder(separators=(",", ":"), check_circular=False).encode(rows)


# Strings a journal meets, and the ones the encoder must escape: quotes, backslashes,
# control characters, DEL, characters beyond ASCII and beyond the BMP, separators.
_ODD = ["", "tower-hosts", "100.64.1.1", "2001:db8::1", 'Łukasz "Ridge"', "a,b", "50%_off",
        "x\\y", "tab\there", "nl\n", "del\x7f", "😀 emoji", "\u00e9", '","', "\\u0000", "*1A"]


@st.composite
def parts(draw: st.DrawFn) -> tuple[list[Change], Failed, list[Conflict]]:
    """Creates, updates and deletes (applied and failed) and conflicts of any kinds. A
    part's values come mostly from a small pool of its own, so that columns are often
    the same for every change, sometimes not; keys likewise."""
    pool = draw(st.lists(st.one_of(st.sampled_from(_ODD), st.text(max_size=8)), min_size=1, max_size=4))
    value = st.one_of(st.sampled_from(pool), st.sampled_from(pool), st.text(max_size=10))
    key = st.sampled_from(["list", "address", "comment", "disabled", "username", "k"])
    shape = draw(st.lists(key, max_size=3))  # the part's keys, unless a resource draws its own
    kind = st.sampled_from(sorted(KINDS)) if draw(st.booleans()) else st.just(draw(st.sampled_from(sorted(KINDS))))

    def pairs() -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
        keys = st.just(shape) if draw(st.integers(0, 3)) else st.lists(key, max_size=3)
        return keys.flatmap(lambda ks: st.tuples(*(st.tuples(st.just(k), value) for k in ks)))

    ident, attrs = pairs(), pairs()
    resource = st.builds(Resource, kind=kind, group=value, ident=ident, attrs=attrs,
                         account_id=value, account_name=value, ref=value)
    update = st.builds(lambda old, new, ref: Update(Resource(new.kind, new.group, new.ident, old.attrs,
                                                             new.account_id, new.account_name, ref), new),
                       resource, resource, value)
    by_action: dict[str, st.SearchStrategy[Change]] = {
        "create": st.builds(Create, resource), "delete": st.builds(Delete, resource), "update": update}
    change = (by_action[draw(st.sampled_from(sorted(by_action)))] if draw(st.booleans())  # one action,
              else st.one_of(*by_action.values()))  # as most large parts are; or any
    applied = draw(st.lists(change, max_size=12))
    failed = draw(st.lists(st.tuples(change, value), max_size=4))
    conflicts = draw(st.lists(st.builds(Conflict, resource, value), max_size=3))
    return applied, failed, conflicts


def _plain(rows: Any) -> Any:
    """Rows as JSON has them (pairs as lists)."""
    return json.loads(json.dumps(rows))


@settings(max_examples=200, deadline=None)
@given(parts())
def test_a_part_reads_back_as_format_1_read_it(part: tuple[list[Change], Failed, list[Conflict]]) -> None:
    applied, failed, conflicts = part
    encoded = encode_part(applied, failed, conflicts, KINDS)
    assert encoded is not None
    text, accounts = encoded
    old = format_1(applied, failed, conflicts)
    assert json.loads(text)["v"] == 2
    assert part_entries(text) == part_entries(old)
    assert _plain(part_rows(text)) == json.loads(old)
    assert accounts == [row[3] for row in json.loads(old)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_ODD), st.text()), max_size=6))
def test_a_column_of_strings_is_what_the_json_module_writes(values: list[str]) -> None:
    """Byte for byte: the column's shortcut writes what the json module would have."""
    from provisiond.state.parts import _strings_json

    assert _strings_json(values) == json.dumps(values, separators=(",", ":"))


def test_a_part_with_a_kind_not_asked_for_is_not_encoded() -> None:
    def entry(kind: str) -> Create:
        return Create(Resource(kind, "g", (("username", "u"),), account_id="1"))

    assert encode_part([entry("address-list")] * 3, [], [], frozenset({"address-list"})) is not None
    assert encode_part([entry("address-list"), entry("radreply")], [], [], frozenset({"address-list"})) is None


# -- through the store: history reads both formats -----------------------------------

@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[tuple[StateStore, str]]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    s = StateStore.open(url)
    yield s, url
    s.close()


def _insert_format_1(url: str, run_id: str, target: str, text: str) -> None:
    """A journal_parts row as the store wrote it before format 2."""
    rows = json.loads(text)
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(journal_parts.insert().values(run_id=run_id, at=T0, target=target, changes=len(rows),
                                                accounts="," + ",".join(r[3] for r in rows) + ",",
                                                rows=text))
    engine.dispose()


def _of_run(entries: list[dict[str, Any]], run: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "run_id"} for e in entries if e["run_id"] == run]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(part=parts())
def test_history_of_a_part_is_what_format_1_gave(sqlite_store: tuple[StateStore, str],
                                                 part: tuple[list[Change], Failed, list[Conflict]]) -> None:
    """Any changes journalled as a part (every kind a part's here): ``history``, all and
    by account, shows what a format 1 row of the same changes shows."""
    applied, failed, conflicts = part
    if not applied and not failed and not conflicts:
        return
    store, url = sqlite_store
    new, old = store.start_run("apply"), store.start_run("apply")
    with mock.patch.object(store_mod, "PART_ROWS", 1), mock.patch.object(store_mod, "_PART_KINDS", KINDS):
        store.journal_changes(new, "core-1", applied=applied, failed=failed, conflicts=conflicts, at=T0)
    _insert_format_1(url, old, "core-1", format_1(applied, failed, conflicts))
    everything = store.history(limit=100_000)
    assert _of_run(everything, new) == _of_run(everything, old)
    assert len(_of_run(everything, new)) == len(applied) + len(failed) + len(conflicts)
    accounts = {e["account_id"] for e in _of_run(everything, new)}
    for account in accounts:
        mine = store.history(account=account, limit=100_000)
        assert _of_run(mine, new) == _of_run(mine, old)
        if not any("\x00" in a for a in accounts):  # SQLite's LIKE reads the accounts column up to a NUL
            assert _of_run(mine, new) == [e for e in _of_run(everything, new) if e["account_id"] == account]


# A part as the store wrote it before format 2 (taken from that store): a create whose
# name is beyond ASCII and quoted, an update, a failed delete, a conflict.
FORMAT_1_ROW = (
    '[["create","address-list","tower-hosts","1","\\u0141ukasz \\"Ridge\\"",[["list","tower-hosts"],'
    '["address","100.64.1.1"]],[["comment","provisiond:1 \\u0141ukasz \\"Ridge\\""],["disabled","false"]],'
    '"",null,"ok",""],["update","address-list","tower-hosts","2","Renamed",[["list","tower-hosts"],'
    '["address","100.64.1.2"]],[["comment","provisiond:2 Renamed"],["disabled","false"]],"*2",'
    '[["comment","provisiond:2 Tower 2"],["disabled","false"]],"ok",""],["delete","address-list",'
    '"tower-hosts","3","Tower 3",[["list","tower-hosts"],["address","100.64.1.3"]],[["comment",'
    '"provisiond:3 Tower 3"],["disabled","false"]],"*3",null,"failed","core-1: remove tower-hosts '
    '100.64.1.3 refused: no such item"],["create","address-list","tower-hosts","4","Tower 4",'
    '[["list","tower-hosts"],["address","100.64.1.4"]],[["comment","provisiond:4 Tower 4"],'
    '["disabled","false"]],"",null,"conflict","already have such entry (not provisiond\'s)"]]'
)


def _entry(action: str, i: int, name: str, result: str = "ok", message: str = "",
           **detail: Any) -> dict[str, Any]:
    return {"at": T0, "target": "core-1", "action": action, "kind": "address-list",
            "group": "tower-hosts", "account_id": str(i), "result": result, "message": message,
            "detail": {"account_name": name, "address": f"100.64.1.{i}", "comment": f"provisiond:{i} {name}",
                       "disabled": "false", "list": "tower-hosts", **detail}}


def test_a_format_1_row_already_written_still_reads_back(store: StateStore, store_url: str) -> None:
    run = store.start_run("apply")
    _insert_format_1(store_url, run, "core-1", FORMAT_1_ROW)
    refused = "core-1: remove tower-hosts 100.64.1.3 refused: no such item"
    reason = "already have such entry (not provisiond's)"
    expected = [
        _entry("create", 4, "Tower 4", "conflict", reason, reason=reason),
        _entry("delete", 3, "Tower 3", "failed", refused, id="*3"),
        _entry("update", 2, "Renamed", id="*2", before={"comment": "provisiond:2 Tower 2", "disabled": "false"}),
        _entry("create", 1, 'Łukasz "Ridge"'),
    ]
    assert _of_run(store.history(), run) == expected  # newest first: the part's last change first
    assert _of_run(store.history(account="3"), run) == [expected[1]]
    assert [{k: v for k, v in e.items() if k not in ("at", "target")} for e in reversed(expected)] == (
        part_entries(FORMAT_1_ROW))


def test_a_part_of_a_format_this_provisiond_does_not_know_is_an_error(store: StateStore, store_url: str) -> None:
    """A row a later provisiond wrote: history names the row and the format, it does not
    guess."""
    from provisiond.errors import StoreError

    run = store.start_run("apply")
    engine = sa.create_engine(store_url)
    with engine.begin() as c:
        c.execute(journal_parts.insert().values(run_id=run, at=T0, target="core-1", changes=1,
                                                accounts=",1,", rows='{"v":3,"n":1}'))
    engine.dispose()
    with pytest.raises(StoreError, match=r"journal_parts \d+: a journal part of format 3"):
        store.history()
    with pytest.raises(ValueError, match="format 3"):
        part_rows('{"v":3,"n":1}')
