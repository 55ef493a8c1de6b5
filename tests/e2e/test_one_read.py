"""A full read of a router costs one table scan per family, however many lists it
manages (a router scans its whole table for every print, whatever the query:
../shared/ROUTEROS.md 6, 8), and observes what every row of those lists says.

The routers here hold their lists interleaved (entries added account by account, as
billing changes over time), with hand-made, dynamic, disabled, duplicate and renamed
entries among them, an address in two lists, long comments, and an unmanaged list
holding provisiond's marker: the observation is checked against what the router's
table says, row by row (its digest, its counts, what diff plans), whichever way the
rows are read (taken undecoded in runs, one by one, or word by word).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future

import pytest

from provisiond.core.addresses import routeros_form
from provisiond.core.changes import Key, Observed, Resource
from provisiond.core.desire import address_list_entry
from provisiond.core.diff import diff
from provisiond.core.model import Account
from provisiond.core.plan import DigestSum
from provisiond.core.scope import Scope
from provisiond.errors import TargetError
from provisiond.settings import RouterSettings
from provisiond.sim import RouterSim, SimSettings
from provisiond.targets.routeros import RouterTarget
from provisiond.targets.routeros.reader import ListReader

MARK = "provisiond"


@pytest.fixture(params=[False, True], ids=["tag-first", "tag-last"])
def sim(request: pytest.FixtureRequest) -> Iterator[RouterSim]:
    s = RouterSim(SimSettings(username="u", password="p", log_commands=False, tag_last=request.param)).start()
    yield s
    s.stop()


def _target(sim: RouterSim, lists: list[str]) -> RouterTarget:
    settings = RouterSettings(name="core-1", host="127.0.0.1", port=sim.port, username="u",
                              password="p", timeout=5, connect_timeout=2)
    return RouterTarget(settings, lists=lists, marker=MARK)


def _v4(i: int) -> str:
    return f"10.3.{i >> 8}.{i & 255}"


def _account(i: int) -> Account:
    return Account(str(i), f"Tower {i}" + ("x" * 130 if i % 17 == 0 else ""))


def _fill(sim: RouterSim, lists: list[str]) -> dict[Key, Resource]:
    """The router as a converged one drifted: returns what billing wants of it."""
    n = len(lists)
    placed: list[tuple[str, str, Account]] = []  # (list, address, account), in the order added
    for i in range(120):
        placed.append((lists[i % n], _v4(i), _account(i)))
        if i % 10 == 0 and n > 1:
            placed.append((lists[(i + 1) % n], _v4(i), _account(i)))  # one address, two lists
        if i < 30:
            placed.append((lists[(i + 2) % n], f"2001:db8::{i:x}/128", _account(i)))
        if i % 40 == 0:
            sim.add_entry("ip", list_name="other", address=_v4(i), comment=f"{MARK}:{i} Tower {i}",
                          dynamic=False)  # an unmanaged list: never read
    wanted: dict[Key, Resource] = {}
    for name, address, account in placed:
        e = address_list_entry(name, address, account, MARK)
        sim.add_entry("ipv6" if ":" in address else "ip", list_name=name, address=address,
                      comment=e.get("comment"), dynamic=False)
        if int(account.id) >= 5:  # 0-4 are surplus
            wanted[e.key] = e
    first = lists[0]
    renamed = address_list_entry(lists[7 % n], _v4(7), Account("7", "Renamed"), MARK)
    wanted[renamed.key] = renamed
    for address, comment, dynamic, disabled in [
            (_v4(9), f"{MARK}:9 Tower 9", False, False),  # a second own entry on one key
            (_v4(11), f"{MARK}:11 Tower 11", True, False),  # dynamic, marked
            (_v4(200), "hand-made", False, False),  # on a key billing wants
            (_v4(201), f"{MARK}:201 Tower 201", False, True)]:  # disabled, billing wants
        name = lists[int(address.rsplit(".", 1)[1]) % n] if address != _v4(200) else first
        sim.add_entry("ip", list_name=name, address=address, comment=comment, dynamic=dynamic,
                      disabled=disabled, allow_duplicate=True)
    for i, name in ((200, first), (201, lists[201 % n]), (202, lists[-1])):  # 202: missing
        e = address_list_entry(name, _v4(i), _account(i), MARK)
        wanted[e.key] = e
    return wanted


def _rows(sim: RouterSim, lists: list[str]) -> list[dict[str, str]]:
    managed = set(lists)
    return [row for menu in ("ip", "ipv6") for row in sim.entries(menu) if row["list"] in managed]


def _digest(rows: list[dict[str, str]]) -> str:
    """The digest of a full read, from the router's table: one item per row of the
    managed lists, whatever order they are read in."""
    d = DigestSum()
    for row in rows:
        d.add(f"{row['.id']}\0{row['list']}\0{routeros_form(row['address'])}\0{row.get('comment', '')}"
              f"\0{row['disabled']}\0{row['dynamic'] == 'true'}")
    return d.hexdigest()


def _own_keys(rows: list[dict[str, str]]) -> dict[str, int]:
    """Own entries per list, one per (list, address): what a full read counts as existing."""
    keys = {(r["list"], routeros_form(r["address"])) for r in rows
            if r["dynamic"] == "false" and r.get("comment", "").startswith(f"{MARK}:")}
    counts: dict[str, int] = {}
    for name, _ in keys:
        counts[name] = counts.get(name, 0) + 1
    return counts


def _plan(observed: Observed, wanted: Mapping[Key, Resource]) -> tuple[list[tuple[str, str, str]], list[str]]:
    changes, conflicts = diff(observed, wanted)
    return (sorted((c.action, c.resource.group, c.resource.get("address")) for c in changes),
            sorted(c.resource.get("address") for c in conflicts))


def _summary(o: Observed, wanted: Mapping[Key, Resource]) -> tuple[object, ...]:
    return (sorted((k, r.attrs, r.ref) for k, r in o.owned.items()), sorted(o.foreign.items()),
            sorted((r.key, r.ref) for r in o.surplus), o.checksum, dict(o.existing or {}),
            sorted(k for k in wanted if k in o.in_step))


@pytest.mark.parametrize("count", [1, 2, 7])
def test_a_full_read_scans_each_table_once_and_observes_every_row(
        sim: RouterSim, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    lists = [f"list-{chr(ord('a') + i)}" for i in range(count)]
    wanted = _fill(sim, lists)
    t = _target(sim, lists)
    known: Future[Mapping[str, Mapping[Key, Resource]]] = Future()
    known.set_result({"core-1": wanted})
    sim.reset_load()
    sim.reset_history()
    fast = t.observe_against(known)
    # One print per family over every managed list, one table scan each.
    load = sim.load
    assert dict(load.scans) == {"ip": 1, "ipv6": 1}
    assert dict(load.rows_scanned) == {"ip": len(sim.entries("ip")), "ipv6": len(sim.entries("ipv6"))}
    query = [f"?list={lists[0]}"] + [w for name in lists[1:] for w in (f"?list={name}", "?#|")]
    assert [(c.path, dict(c.attributes)[".proplist"], c.queries) for c in sim.history
            if c.path.endswith("/print")] == [
        (f"/{menu}/firewall/address-list/print", ".id,list,address,comment,dynamic,disabled", tuple(query))
        for menu in ("ip", "ipv6")]

    # The observation is the table's: its digest, its own entries, what diff plans.
    rows = _rows(sim, lists)
    assert fast.checksum == _digest(rows)
    assert dict(fast.existing or {}) == _own_keys(rows)
    n = len(lists)
    first = lists[0]
    expected = sorted(
        [("create", lists[-1], _v4(202)), ("update", lists[7 % n], _v4(7)),
         ("update", lists[201 % n], _v4(201)), ("delete", lists[9 % n], _v4(9))]
        + [("delete", name, address) for name, address, _ in (
            (r["list"], r["address"], 0) for r in rows
            if r.get("comment", "").split(" ")[0] in {f"{MARK}:{i}" for i in range(5)})])
    assert _plan(fast, wanted) == (expected, [_v4(200)])
    assert sum(1 for k in wanted if k in fast.in_step) == len(wanted) - 4
    # Without the desired state (``observe``): the same digest, everything own is owned.
    sim.reset_load()
    alone = t.observe()
    assert alone.checksum == fast.checksum and dict(sim.load.scans) == {"ip": 1, "ipv6": 1}
    assert {k[1] for k in alone.owned} | {r.ident for r in alone.surplus} == {
        (("list", r["list"]), ("address", routeros_form(r["address"]))) for r in rows
        if r["dynamic"] == "false" and r.get("comment", "").startswith(f"{MARK}:")}

    # Rows taken undecoded (in runs, or one by one) observe what reading every word does.
    in_runs: list[int] = []
    take_run = ListReader.take_run

    def counted(self: ListReader, buf: bytes, pos: int) -> int:
        end = take_run(self, buf, pos)
        in_runs.append(buf.count(b"\x03!re", pos, end))
        return end

    monkeypatch.setattr(ListReader, "take_run", counted)
    assert _summary(t.observe_against(known), wanted) == _summary(fast, wanted)
    assert sum(in_runs) >= 100
    monkeypatch.setattr(ListReader, "take_run", lambda self, buf, pos: pos)
    one_by_one = t.observe_against(known)
    monkeypatch.setattr(ListReader, "_learn", lambda self, words: None)
    slow = t.observe_against(known)
    for seen in (fast, one_by_one):
        assert _summary(seen, wanted) == _summary(slow, wanted)
        assert diff(seen, wanted) == diff(slow, wanted)
    t.close()


def test_a_scoped_read_counts_the_lists_with_one_scan_per_family(sim: RouterSim) -> None:
    """With no counts remembered, a scoped read counts every managed list's entries
    (hand-made and dynamic ones too; a list with none is 0) in one print per family."""
    lists = ["list-a", "list-b", "list-c", "list-empty"]
    _fill(sim, lists[:3])
    t = _target(sim, lists)
    sim.reset_load()
    sim.reset_history()
    observed = t.observe(Scope(frozenset({"42"})))
    rows = _rows(sim, lists)
    assert dict(observed.existing or {}) == {name: sum(1 for r in rows if r["list"] == name) for name in lists}
    counting = [c for c in sim.history if dict(c.attributes).get(".proplist") == "list"]
    assert len(counting) == 2
    # The scoped prints (one per family: one chunk of accounts) and the counts.
    assert dict(sim.load.scans) == {"ip": 2, "ipv6": 2}
    t.close()


def test_a_refused_count_fails_the_scoped_read_and_the_next_one_counts(sim: RouterSim) -> None:
    lists = ["list-a", "list-b"]
    _fill(sim, lists)
    t = _target(sim, lists)
    # The scoped read's two prints go through; the first count is refused.
    sim.fail_next("/ip/firewall/address-list/print", "failure: busy", after=1)
    with pytest.raises(TargetError) as refused:
        t.observe(Scope(frozenset({"42"})))
    assert str(refused.value) == "core-1: count /ip/firewall/address-list refused: failure: busy"
    rows = _rows(sim, lists)
    assert dict(t.observe(Scope(frozenset({"42"}))).existing or {}) == {
        name: sum(1 for r in rows if r["list"] == name) for name in lists}
    t.close()
