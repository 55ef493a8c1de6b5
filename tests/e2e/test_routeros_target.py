"""RouterTarget against the simulator over TCP: the apply paths a whole pass rarely hits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import pytest

from provisiond.core.changes import Create, Delete, Key, Observed, Resource, Update
from provisiond.core.desire import address_list_entry
from provisiond.core.diff import diff
from provisiond.errors import SourceError
from provisiond.core.model import Account
from provisiond.core.plan import Plan
from provisiond.settings import RouterSettings
from provisiond.sim import RouterSim, SimSettings
from provisiond.targets import routeros
from provisiond.targets.base import ApplyResult
from provisiond.targets.routeros import RouterTarget, reader, writer
from provisiond.targets.routeros.reader import ListReader


@pytest.fixture(params=[True, False], ids=["atomic-remove", "partial-remove"])
def sim(request: pytest.FixtureRequest) -> Iterator[RouterSim]:
    s = RouterSim(SimSettings(username="u", password="p", log_commands=False,
                              atomic_remove=request.param)).start()
    yield s
    s.stop()


def _target(sim: RouterSim, **kw: object) -> RouterTarget:
    settings = RouterSettings(name="core-1", host="127.0.0.1", port=sim.port, username="u",
                              password="p", timeout=5, connect_timeout=2, **kw)  # type: ignore[arg-type]
    return RouterTarget(settings, lists=["l"], marker="provisiond")


def _creates(n: int, start: int = 0) -> tuple[Create, ...]:
    return tuple(Create(address_list_entry("l", f"10.1.{i >> 8}.{i & 255}", Account(str(i), f"A{i}"),
                                           "provisiond")) for i in range(start, start + n))


def test_batched_remove_falls_back_when_an_id_is_already_gone(sim: RouterSim) -> None:
    t = _target(sim)
    assert t.apply(Plan("core-1", "routeros", _creates(5))).ok
    owned = list(t.observe().owned.values())
    sim.remove_entry("ip", owned[2].ref)  # gone behind our back
    result = t.apply(Plan("core-1", "routeros", tuple(Delete(r) for r in owned)))
    assert result.ok and len(result.applied) == 5
    assert sim.entries("ip", "l") == []
    t.close()


def test_removing_both_families_at_once_removes_exactly_those(sim: RouterSim) -> None:
    t = _target(sim)
    v6 = tuple(Create(address_list_entry("l", f"2001:db8::{i:x}", Account(str(100 + i), "B"),
                                         "provisiond")) for i in range(1, 4))
    assert t.apply(Plan("core-1", "routeros", _creates(6) + v6)).ok
    owned = sorted(t.observe().owned.values(), key=lambda r: r.get("address"))
    gone = [r for r in owned if r.get("address") in ("10.1.0.1", "10.1.0.4", "2001:db8::2/128")]
    result = t.apply(Plan("core-1", "routeros", tuple(Delete(r) for r in gone)))
    assert result.ok and len(result.applied) == 3
    # Each family's ids go to its own menu: an IPv6 entry's id never removes an IPv4 entry.
    assert {e["address"] for e in sim.entries("ip", "l")} == {"10.1.0.0", "10.1.0.2", "10.1.0.3", "10.1.0.5"}
    assert {e["address"] for e in sim.entries("ipv6", "l")} == {"2001:db8::1/128", "2001:db8::3/128"}
    t.close()


def test_set_on_a_vanished_entry_fails_that_change_only(sim: RouterSim) -> None:
    t = _target(sim)
    assert t.apply(Plan("core-1", "routeros", _creates(2))).ok
    a, b = sorted(t.observe().owned.values(), key=lambda r: r.get("address"))
    sim.remove_entry("ip", a.ref)
    renamed = [address_list_entry("l", r.get("address"), Account(r.account_id, "New"), "provisiond")
               for r in (a, b)]
    result = t.apply(Plan("core-1", "routeros", (Update(a, renamed[0]), Update(b, renamed[1]))))
    assert [m for _, m in result.failed] == ["core-1: set l 10.1.0.0 refused: no such item (4)"]
    assert [c.resource.get("address") for c in result.applied] == ["10.1.0.1"]
    assert sim.entries("ip", "l")[0]["comment"] == "provisiond:1 New"
    t.close()


@pytest.mark.parametrize("connections", [1, 3])
def test_large_batches_of_adds_over_several_sessions(sim: RouterSim, connections: int) -> None:
    t = _target(sim, connections=connections)
    result = t.apply(Plan("core-1", "routeros", _creates(1600)))
    assert result.ok and len(result.applied) == 1600
    assert len(sim.entries("ip", "l")) == 1600
    assert sim.connection_count <= connections
    t.close()


def test_connection_lost_mid_apply_fails_the_rest_and_reconnects_next_time(sim: RouterSim) -> None:
    t = _target(sim)
    sim.fail_next("/ip/firewall/address-list/add", "failure: out of memory")
    result = t.apply(Plan("core-1", "routeros", _creates(3)))
    assert [m for _, m in result.failed] == ["core-1: add l 10.1.0.0 refused: failure: out of memory"]
    assert len(result.applied) == 2
    sim.drop_connections()
    result = t.apply(Plan("core-1", "routeros", _creates(2, start=10)))
    assert result.error is not None and "connection lost" in result.error
    assert len(result.failed) == 2 and all("not applied" in m for _, m in result.failed)
    # The next pass opens a new session.
    assert len(t.observe().owned) == 2
    t.close()


@pytest.mark.parametrize("connections", [1, 2])
def test_report_gets_every_finished_change_once_in_parts(
    sim: RouterSim, connections: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``apply`` reports (the journal) is its result, change for change: applied,
    failed, collided and, after a lost connection, not applied; in parts, each once."""
    monkeypatch.setattr(writer, "REPORT_EVERY", 40)
    monkeypatch.setattr(writer, "ADDS_PER_SESSION", 100)
    t = _target(sim, connections=connections)
    sim.add_entry("ip", list_name="l", address="10.1.0.7", comment="raced", dynamic=False)
    sim.fail_next("/ip/firewall/address-list/add", "failure: out of memory", after=20)
    sim.cut_after(300)
    parts: list[ApplyResult] = []
    result = t.apply(Plan("core-1", "routeros", _creates(400)), report=parts.append)
    assert result.error is not None and "connection lost" in result.error
    assert len(parts) > 3 and all(p.target == "core-1" for p in parts)

    assert sorted(id(c) for p in parts for c in p.applied) == sorted(id(c) for c in result.applied)
    assert sorted((id(c), m) for p in parts for c, m in p.failed) == sorted(
        (id(c), m) for c, m in result.failed)
    assert [x.resource for p in parts for x in p.conflicts] == [x.resource for x in result.conflicts]
    assert len(result.applied) + len(result.failed) + len(result.conflicts) == 400
    assert any("out of memory" in m for _, m in result.failed)
    assert any("not applied" in m for _, m in result.failed)
    t.close()


def test_add_colliding_at_apply_time_is_a_reported_conflict(sim: RouterSim) -> None:
    """The router answers ``failure: already have such entry``: reported, not a failure."""
    t = _target(sim)
    sim.add_entry("ip", list_name="l", address="10.1.0.1", comment="raced", dynamic=False)
    result = t.apply(Plan("core-1", "routeros", _creates(3)))
    assert result.ok and len(result.applied) == 2
    assert [(c.resource.get("address"), c.reason) for c in result.conflicts] == [
        ("10.1.0.1", "failure: already have such entry (not provisiond's)")]
    assert {e["address"]: e.get("comment") for e in sim.entries("ip", "l")}["10.1.0.1"] == "raced"
    t.close()


class _BillingDoneAfter(Future[Mapping[str, Mapping[Key, Resource]]]):
    """The desired state of a billing read that is done the ``looks``-th time a reader
    asks whether it is, or when it waits for it (with its error, when ``fails``): no
    clock, no race."""

    def __init__(self, desired: Mapping[str, Mapping[Key, Resource]], looks: int,
                 fails: bool = False) -> None:
        super().__init__()
        self._value, self._looks, self._fails = desired, looks, fails

    def _finish(self) -> None:
        if not super().done():
            if self._fails:
                self.set_exception(SourceError("billing read failed"))
            else:
                self.set_result(self._value)

    def done(self) -> bool:
        self._looks -= 1
        if self._looks <= 0:
            self._finish()
        return super().done()

    def result(self, timeout: float | None = None) -> Mapping[str, Mapping[Key, Resource]]:
        self._finish()
        return super().result(timeout)


def _summary(o: Observed) -> tuple[object, ...]:
    return (sorted((k, r.attrs, r.ref) for k, r in o.owned.items()), sorted(o.foreign.items()),
            sorted((r.key, r.ref) for r in o.surplus), o.checksum, dict(o.existing or {}),
            sorted(k for k in _keys() if k in o.in_step))


def _keys() -> list[Key]:
    return [("address-list", (("list", "l"), ("address", f"10.1.0.{i}"))) for i in range(8)]


@pytest.mark.parametrize(("looks", "limit"), [(1, 1 << 20), (3, 1), (3, 1 << 20), (40, 1 << 20)])
def test_answers_received_while_billing_is_read_are_compared_as_if_it_had_been_done(
        sim: RouterSim, monkeypatch: pytest.MonkeyPatch, looks: int, limit: int) -> None:
    """A reader receives its answers while billing is read (up to a limit) and parses
    them once it is done; whenever that is, the observation is the same."""
    t = _target(sim)
    assert t.apply(Plan("core-1", "routeros", _creates(6))).ok
    sim.add_entry("ip", list_name="l", address="10.1.0.1", comment="provisiond:1 A1",
                  dynamic=False, allow_duplicate=True)  # a second own entry on one key
    sim.add_entry("ip", list_name="l", address="10.1.0.6", comment="hand-made", dynamic=False)
    want = {e.key: e for e in (
        *(c.new for c in _creates(4)),  # 10.1.0.0-3 as they are; 4 and 5 are surplus
        address_list_entry("l", "10.1.0.2", Account("2", "Renamed"), "provisiond"),  # replaces 2
        address_list_entry("l", "10.1.0.6", Account("6", "A6"), "provisiond"),  # hand-made
        address_list_entry("l", "10.1.0.7", Account("7", "A7"), "provisiond"),  # missing
    )}
    known: Future[Mapping[str, Mapping[Key, Resource]]] = Future()
    known.set_result({"core-1": want})
    first = t.observe_against(known)
    monkeypatch.setattr(reader, "PREFETCH_BYTES", limit)
    monkeypatch.setattr(reader, "PREFETCH_POLL", 0.001)
    late = t.observe_against(_BillingDoneAfter({"core-1": want}, looks))
    assert _summary(late) == _summary(first)
    changes, conflicts = diff(late, want)
    assert sorted((c.action, c.resource.get("address")) for c in changes) == [
        ("create", "10.1.0.7"), ("delete", "10.1.0.1"), ("delete", "10.1.0.4"),
        ("delete", "10.1.0.5"), ("update", "10.1.0.2")]
    assert [(c.resource.get("address"), c.reason) for c in conflicts] == [
        ("10.1.0.6", "entry not created by provisiond (comment 'hand-made')")]
    # Billing fails while the answers are received: the observation fails with it, and
    # the next one starts on a clean connection.
    with pytest.raises(SourceError):
        t.observe_against(_BillingDoneAfter({"core-1": want}, looks, fails=True))
    assert _summary(t.observe_against(known)) == _summary(first)
    t.close()


@pytest.mark.parametrize("tag_last", [False, True], ids=["tag-first", "tag-last"])
def test_rows_taken_as_they_are_on_the_wire_observe_what_reading_every_word_observes(
        monkeypatch: pytest.MonkeyPatch, tag_last: bool) -> None:
    """Once a row showed the router's property order, rows that are byte for byte a
    desired entry are taken undecoded, in runs (``take_run``) or one by one (``take``),
    wherever the router puts the tag; the observation (digest, counts, owned, surplus,
    foreign, what diff plans) is the one reading every row word by word gives."""
    sim = RouterSim(SimSettings(username="u", password="p", log_commands=False, tag_last=tag_last)).start()
    try:
        _taken_rows_observe_what_every_word_observes(sim, monkeypatch)
    finally:
        sim.stop()


def _taken_rows_observe_what_every_word_observes(sim: RouterSim, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _target(sim)
    accounts = [Account(str(i), f"Tower {i}" + ("x" * 130 if i % 17 == 0 else "")) for i in range(120)]
    entries = [address_list_entry("l", f"10.2.{i >> 8}.{i & 255}", a, "provisiond")
               for i, a in enumerate(accounts)]
    entries += [address_list_entry("l", f"2001:db8::{i:x}/128", a, "provisiond")
                for i, a in enumerate(accounts[:30])]
    assert t.apply(Plan("core-1", "routeros", tuple(Create(e) for e in entries))).ok
    want = {e.key: e for e in entries[5:]}  # 0-4 surplus
    want[entries[7].key] = address_list_entry("l", "10.2.0.7", Account("7", "Renamed"), "provisiond")
    for address, comment, dynamic, disabled in [
            ("10.2.0.9", "provisiond:9 Tower 9", False, False),  # a second own entry on one key
            ("10.2.0.11", "provisiond:11 Tower 11", True, False),  # dynamic, marked
            ("10.2.0.200", "hand-made", False, False),  # on a key billing wants
            ("10.2.0.201", "provisiond:201 Tower 201", False, True)]:  # disabled, billing wants
        sim.add_entry("ip", list_name="l", address=address, comment=comment, dynamic=dynamic,
                      disabled=disabled, allow_duplicate=True)
    for i in (200, 201):
        e = address_list_entry("l", f"10.2.0.{i}", Account(str(i), f"Tower {i}"), "provisiond")
        want[e.key] = e
    known: Future[Mapping[str, Mapping[Key, Resource]]] = Future()
    known.set_result({"core-1": want})
    in_runs: list[int] = []
    take_run = ListReader.take_run

    def counted(self: ListReader, buf: bytes, pos: int) -> int:
        end = take_run(self, buf, pos)
        in_runs.append(buf.count(b"\x03!re", pos, end))
        return end

    monkeypatch.setattr(ListReader, "take_run", counted)
    fast = t.observe_against(known)
    # Most rows are desired entries exactly, and come in runs.
    assert sum(in_runs) >= 100
    monkeypatch.setattr(ListReader, "take_run", lambda self, buf, pos: pos)
    one_by_one = t.observe_against(known)
    monkeypatch.setattr(ListReader, "_learn", lambda self, words: None)
    slow = t.observe_against(known)
    for seen in (fast, one_by_one):
        assert _summary(seen) == _summary(slow)
        assert [k for k in want if k in seen.in_step] == [k for k in want if k in slow.in_step]
        assert diff(seen, want) == diff(slow, want)
    assert dict(fast.existing or {}) == {"l": 151}  # 150 made, the disabled one; not the duplicate
    # Without a checksum (a plan nobody saves) the same observation, digest left out.
    monkeypatch.undo()
    unsummed = t.observe_against(known, checksum=False)
    assert unsummed.checksum == "" and slow.checksum
    assert _summary(unsummed)[:3] + _summary(unsummed)[4:] == _summary(slow)[:3] + _summary(slow)[4:]
    t.close()


def _apply_outcome(result: ApplyResult) -> dict[str, Any]:
    return {"applied": [(c.action, c.resource.get("address")) for c in result.applied],
            "failed": [(c.resource.get("address"), m) for c, m in result.failed],
            "conflicts": [(c.resource.get("address"), c.reason) for c in result.conflicts],
            "error": result.error}


def _answered_scenario(tag_last: bool) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Adds (a collision, a trap, both families, long comments), then removes and sets
    (one on an entry gone meanwhile): every apply's outcome, and the table left."""
    sim = RouterSim(SimSettings(username="u", password="p", log_commands=False, tag_last=tag_last)).start()
    try:
        t = _target(sim, pipeline=64)
        sim.add_entry("ip", list_name="l", address="10.1.0.9", comment="hand-made", dynamic=False)
        sim.fail_next("/ip/firewall/address-list/add", "failure: out of memory", after=40)
        creates = _creates(300) + tuple(
            Create(address_list_entry("l", f"2001:db8::{i:x}/128", Account(str(1000 + i), "x" * 130), "provisiond"))
            for i in range(1, 20))
        outcomes = [_apply_outcome(t.apply(Plan("core-1", "routeros", creates)))]
        owned = sorted(t.observe().owned.values(), key=lambda r: r.get("address"))
        sim.remove_entry("ip", owned[3].ref)
        renamed = [address_list_entry("l", r.get("address"), Account(r.account_id, "New"), "provisiond")
                   for r in owned[:10]]
        plan = Plan("core-1", "routeros", tuple(Delete(r) for r in owned[10:30])
                    + tuple(Update(r, n) for r, n in zip(owned, renamed)))
        outcomes.append(_apply_outcome(t.apply(plan)))
        t.close()
        table = [{k: v for k, v in row.items() if k != "creation-time"}
                 for menu in ("ip", "ipv6") for row in sim.entries(menu)]
        return outcomes, table
    finally:
        sim.stop()


@pytest.mark.parametrize("tag_last", [False, True], ids=["tag-first", "tag-last"])
def test_answers_read_in_runs_apply_what_reading_every_word_applies(
        monkeypatch: pytest.MonkeyPatch, tag_last: bool) -> None:
    """Plain ``!done`` answers are taken in runs (``read_dones``), wherever the router puts
    the tag; traps, collisions and everything an apply does come out as reading every
    answer word by word makes them."""
    taken: list[int] = []
    read_dones = routeros.BufferedTransport.read_dones

    def counted(self: routeros.BufferedTransport, encoding: str, most: int) -> list[tuple[bytes, str]]:
        got = read_dones(self, encoding, most)
        taken.append(len(got))
        return got

    monkeypatch.setattr(routeros.BufferedTransport, "read_dones", counted)
    fast = _answered_scenario(tag_last)
    assert sum(taken) > 300  # nearly every add, remove and set
    monkeypatch.setattr(routeros.BufferedTransport, "read_dones", lambda self, encoding, most: [])
    assert _answered_scenario(tag_last) == fast
    outcomes, _ = fast
    assert ("10.1.0.9", "failure: already have such entry (not provisiond's)") in outcomes[0]["conflicts"]
    assert [m for _, m in outcomes[0]["failed"]] == ["core-1: add l 10.1.0.40 refused: failure: out of memory"]
    assert [m for _, m in outcomes[1]["failed"]] == ["core-1: set l 10.1.0.100 refused: no such item (4)"]
