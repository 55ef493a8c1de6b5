"""A router's mirror kept by ``listen`` (``follow.Follower``, ``mirror.Mirror``), against
the simulator over TCP, with hand edits made from another client (librouteros)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import librouteros
import pytest

from provisiond.core.changes import Create, Key, Resource
from provisiond.core.desire import address_list_entry
from provisiond.core.model import Account
from provisiond.core.plan import Plan
from provisiond.core.scope import Scope
from provisiond.settings import RouterSettings
from provisiond.sim import RouterSim, SimSettings
from provisiond.targets.routeros import RouterTarget
from provisiond.targets.routeros.follow import Follower, parse_uptime
from provisiond.targets.routeros.mirror import Mirror, written_digest

AL = "/ip/firewall/address-list"


class Drift:
    """What the follower told the daemon, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, frozenset[str] | None]] = []
        self.lock = threading.Lock()

    def __call__(self, router: str, accounts: frozenset[str] | None) -> None:
        with self.lock:
            self.calls.append((router, accounts))

    def accounts(self) -> set[str]:
        with self.lock:
            return {a for _, acc in self.calls if acc for a in acc}

    def refills(self) -> int:
        with self.lock:
            return sum(1 for _, acc in self.calls if acc is None)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def sim() -> Iterator[RouterSim]:
    s = RouterSim(SimSettings(username="u", password="p", log_commands=False)).start()
    yield s
    s.stop()


def _settings(sim: RouterSim) -> RouterSettings:
    return RouterSettings(name="core-1", host="127.0.0.1", port=sim.port, username="u",
                          password="p", timeout=5, connect_timeout=2)  # type: ignore[arg-type]


@pytest.fixture
def target(sim: RouterSim) -> Iterator[RouterTarget]:
    t = RouterTarget(_settings(sim), lists=["l", "m"], marker="provisiond")
    yield t
    t.close()


@pytest.fixture
def followed(sim: RouterSim, target: RouterTarget) -> Iterator[tuple[Follower, Drift]]:
    drift = Drift()
    mirror = Mirror(target.name, target.lists, "provisiond:")
    follower = Follower(target.settings, mirror, on_drift=drift).start()
    target.mirror = mirror
    wait_for(lambda: mirror.trusted)
    yield follower, drift
    follower.stop()


def _entry(list_name: str, address: str, account: int) -> Resource:
    return address_list_entry(list_name, address, Account(str(account), f"A{account}"), "provisiond")


def _scope(accounts: list[int], wanted: list[Resource]) -> Scope:
    keyed: dict[Key, Resource] = {("address-list", r.ident): r for r in wanted}
    return Scope(accounts=frozenset(map(str, accounts)), wanted=keyed)


def _hand(sim: RouterSim) -> librouteros.api.Api:
    return librouteros.connect("127.0.0.1", "u", "p", port=sim.port, timeout=5)


def _rows(sim: RouterSim) -> dict[tuple[int, str], tuple[str, str, str, str]]:
    """The router's entries on the managed lists, as the mirror keeps them."""
    out = {}
    for fam, menu in ((4, "ip"), (6, "ipv6")):
        for r in sim.entries(menu):
            if r["list"] in ("l", "m"):
                out[fam, r[".id"]] = (r["list"], r["address"], r.get("comment", ""), r["disabled"])
    return out


def _mirrored(mirror: Mirror) -> dict[tuple[int, str], tuple[str, str, str, str]]:
    return {key: (name, address, comment, "true" if disabled else "false")
            for key, (name, address, comment, disabled, _) in mirror.entries().items()}


def test_the_fill_reads_each_family_once_and_mirrors_the_router(sim: RouterSim,
                                                                target: RouterTarget) -> None:
    entries = [_entry("l", f"10.0.0.{i}", i) for i in range(1, 40)] + [_entry("m", "2001:db8::1", 1)]
    assert target.apply(Plan("core-1", "routeros", tuple(Create(r) for r in entries))).ok
    sim.add_entry(list_name="l", address="192.0.2.9", comment="by hand", dynamic=False)
    sim.add_entry(list_name="other", address="192.0.2.10", dynamic=False)
    before = sim.load.scans
    mirror = Mirror("core-1", ["l", "m"], "provisiond:")
    follower = Follower(target.settings, mirror, on_drift=Drift()).start()
    try:
        wait_for(lambda: mirror.trusted)
        scans = {menu: sim.load.scans.get(menu, 0) - before.get(menu, 0) for menu in ("ip", "ipv6")}
        assert scans == {"ip": 1, "ipv6": 1}
        assert _mirrored(mirror) == _rows(sim)
        assert len(mirror) == 41
        assert mirror.counts() == {"l": 40, "m": 1}
    finally:
        follower.stop()
    assert mirror.state == "off"


def test_a_scoped_read_with_a_live_mirror_prints_nothing_and_finds_what_a_print_finds(
        sim: RouterSim, target: RouterTarget, followed: tuple[Follower, Drift]) -> None:
    entries = [_entry("l", f"10.0.1.{i}", i) for i in range(1, 30)]
    assert target.apply(Plan("core-1", "routeros", tuple(Create(r) for r in entries))).ok
    sim.add_entry(list_name="l", address="10.9.9.9", comment="by hand", dynamic=False)
    wanted = [_entry("l", "10.0.1.3", 3), _entry("m", "10.0.1.4", 3), _entry("l", "10.9.9.9", 5)]
    scope = _scope([3, 5, 7], wanted)
    wait_for(lambda: len(followed[0].mirror) == 30)
    sim.reset_history()
    from_mirror = target.observe(scope)
    assert not [c for c in sim.history if c.path.endswith("/print")]
    target.mirror = None
    printed = target.observe(scope)
    assert [c for c in sim.history if c.path.endswith("/print")]
    assert from_mirror.owned == printed.owned
    assert from_mirror.foreign == printed.foreign
    assert from_mirror.others == printed.others
    assert set(from_mirror.owned) == {("address-list", (("list", "l"), ("address", f"10.0.1.{i}")))
                                      for i in (3, 5, 7)}


def test_own_writes_are_not_drift_and_hand_edits_are(sim: RouterSim, target: RouterTarget,
                                                     followed: tuple[Follower, Drift]) -> None:
    follower, drift = followed
    entries = [_entry("l", f"10.0.2.{i}", i) for i in range(1, 6)]
    assert target.apply(Plan("core-1", "routeros", tuple(Create(r) for r in entries))).ok
    wait_for(lambda: len(follower.mirror) == 5)
    time.sleep(0.4)  # past the debounce
    assert drift.calls == []
    api = _hand(sim)
    try:
        ids = {r["address"]: r[".id"] for r in api.path("ip", "firewall", "address-list")}
        path = api.path("ip", "firewall", "address-list")
        path.remove(ids["10.0.2.1"])  # deleted
        path.update(**{".id": ids["10.0.2.2"], "disabled": True})  # disabled
        path.update(**{".id": ids["10.0.2.3"], "comment": "provisiond:3 renamed"})  # re-commented
        path.update(**{".id": ids["10.0.2.4"], "address": "10.0.9.4"})  # moved
        path.add(list="l", address="10.0.2.99", comment="by hand")  # hand-made: not ours
    finally:
        api.close()
    wait_for(lambda: drift.accounts() == {"1", "2", "3", "4"})
    assert len(drift.calls) == 1  # gathered within the debounce
    assert follower.mirror.drift_events == 4
    assert _mirrored(follower.mirror) == _rows(sim)


def test_a_pass_in_another_process_holds_its_reports_and_releases_only_drift(
        sim: RouterSim, target: RouterTarget, followed: tuple[Follower, Drift]) -> None:
    follower, drift = followed
    mirror = follower.mirror
    other = RouterTarget(target.settings, lists=["l", "m"], marker="provisiond")  # no mirror
    try:
        mirror.hold()
        entries = [_entry("l", f"10.0.3.{i}", i) for i in range(1, 4)]
        result = other.apply(Plan("core-1", "routeros", tuple(Create(r) for r in entries)))
        assert result.ok
        api = _hand(sim)
        api.path("ip", "firewall", "address-list").add(list="l", address="10.0.3.50",
                                                       comment="provisiond:50 hand")
        api.close()
        wait_for(lambda: len(mirror) == 4)
        time.sleep(0.3)
        assert drift.calls == []  # held
        written = written_digest((c.resource.group, c.resource.get("address")) for c in result.applied)
        assert mirror.release(written) == frozenset({"50"})
    finally:
        other.close()


def test_a_lost_listen_and_a_reboot_each_refill_that_router_and_ask_for_its_full_pass(
        sim: RouterSim, target: RouterTarget, followed: tuple[Follower, Drift]) -> None:
    follower, drift = followed
    entries = [_entry("l", f"10.0.4.{i}", i) for i in range(1, 6)]
    assert target.apply(Plan("core-1", "routeros", tuple(Create(r) for r in entries))).ok
    wait_for(lambda: len(follower.mirror) == 5)
    fills = follower.mirror.fills
    assert sim.drop_listening() == 1
    # The refill's full-pass request follows its end: wait for both.
    wait_for(lambda: follower.mirror.fills == fills + 1 and follower.mirror.trusted
             and drift.refills() >= 1, timeout=10)
    assert drift.refills() == 1
    sim.reboot()  # every id renumbered
    wait_for(lambda: follower.mirror.fills == fills + 2 and follower.mirror.trusted
             and drift.refills() >= 2, timeout=10)
    assert drift.refills() == 2
    assert _mirrored(follower.mirror) == _rows(sim)


def test_an_entry_removed_during_the_fill_stays_removed(target: RouterTarget) -> None:
    sim = RouterSim(SimSettings(username="u", password="p", log_commands=False,
                                scan_cost_us=300.0)).start()  # a 2,000-row print: 0.6 s
    try:
        t = RouterTarget(_settings(sim), lists=["l", "m"], marker="provisiond")
        entries = [_entry("l", f"10.1.{i >> 8}.{i & 255}", i) for i in range(2000)]
        assert t.apply(Plan("core-1", "routeros", tuple(Create(r) for r in entries))).ok
        t.close()
        victim = sim.entries("ip", "l")[1500][".id"]
        mirror = Mirror("core-1", ["l", "m"], "provisiond:")
        follower = Follower(t.settings, mirror, on_drift=Drift()).start()
        try:
            wait_for(lambda: mirror.state == "filling")
            sim.remove_entry("ip", victim)
            # Its report may come after the print's last row (the router's one CPU queue):
            # the mirror is trusted then, and takes it as it comes.
            wait_for(lambda: mirror.trusted and len(mirror) == 1999, timeout=10)
            assert _mirrored(mirror) == _rows(sim)
        finally:
            follower.stop()
    finally:
        sim.stop()


def test_a_refused_listen_leaves_the_mirror_untrusted_and_scoped_reads_print(
        target: RouterTarget) -> None:
    sim = RouterSim(SimSettings(username="u", password="p", log_commands=False, listen=False)).start()
    try:
        t = RouterTarget(_settings(sim), lists=["l"], marker="provisiond")
        mirror = Mirror("core-1", ["l"], "provisiond:")
        follower = Follower(t.settings, mirror, on_drift=Drift()).start()
        t.mirror = mirror
        try:
            wait_for(lambda: mirror.state == "refused")
            assert "listen refused" in follower.reason
            assert t.apply(Plan("core-1", "routeros", (Create(_entry("l", "10.2.0.1", 1)),))).ok
            sim.reset_history()
            seen = t.observe(_scope([1], [_entry("l", "10.2.0.1", 1)]))
            assert len(seen.owned) == 1
            assert [c for c in sim.history if c.path.endswith("/print")]
        finally:
            follower.stop()
            t.close()
    finally:
        sim.stop()


@pytest.mark.parametrize(("text", "seconds"), [
    ("1w2d03:04:05", 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
    ("3h4m5s", 3 * 3600 + 4 * 60 + 5), ("5d10h", 5 * 86400 + 36000), ("00:00:07", 7),
    ("1s200ms", 1.2)])
def test_uptime_as_routeros_prints_it(text: str, seconds: float) -> None:
    assert parse_uptime(text) == pytest.approx(seconds)


def test_an_add_that_finds_an_entry_the_mirror_missed_reads_the_router_again(
        sim: RouterSim, target: RouterTarget, followed: tuple[Follower, Drift]) -> None:
    follower, drift = followed
    entry = _entry("l", "10.0.5.1", 1)
    assert target.apply(Plan("core-1", "routeros", (Create(entry),))).ok
    wait_for(lambda: len(follower.mirror) == 1)
    ref = sim.entries("ip", "l")[0][".id"]
    follower.mirror.forget([(4, ref)])  # as if its report had been lost
    fills = follower.mirror.fills
    seen = target.observe(_scope([1], [entry]))
    assert not seen.owned  # the mirror's (wrong) view: the entry is missing
    result = target.apply(Plan("core-1", "routeros", (Create(entry),)))
    assert not result.failed and len(result.conflicts) == 1  # no failed pass
    wait_for(lambda: follower.mirror.fills == fills + 1 and follower.mirror.trusted
             and drift.refills() >= 1, timeout=10)
    assert drift.refills() == 1  # the daemon gives this router a full pass
    assert set(target.observe(_scope([1], [entry])).owned) == {("address-list", entry.ident)}


def test_a_router_that_stops_answering_is_found_by_the_heartbeat_and_read_again_after(
        sim: RouterSim, target: RouterTarget) -> None:
    drift = Drift()
    mirror = Mirror(target.name, target.lists, "provisiond:")
    settings = target.settings.model_copy(update={"timeout": 1.0})
    follower = Follower(settings, mirror, on_drift=drift, heartbeat=0.5).start()
    try:
        wait_for(lambda: mirror.trusted)
        sim.set_stalled(True)  # the session stays open; nothing is answered any more
        wait_for(lambda: mirror.state == "down" and follower.reason, timeout=5)
        assert "no answer to the heartbeat" in follower.reason or "timed out" in follower.reason
        sim.set_stalled(False)
        wait_for(lambda: mirror.trusted and drift.refills() >= 1, timeout=15)
        assert drift.refills() == 1
    finally:
        follower.stop()


def test_an_own_entry_moved_to_another_list_by_hand_leaves_the_mirror_and_is_drift(
        sim: RouterSim, target: RouterTarget, followed: tuple[Follower, Drift]) -> None:
    follower, drift = followed
    assert target.apply(Plan("core-1", "routeros", (Create(_entry("l", "10.0.6.1", 61)),))).ok
    wait_for(lambda: len(follower.mirror) == 1)
    api = _hand(sim)
    try:
        ref = sim.entries("ip", "l")[0][".id"]
        api.path("ip", "firewall", "address-list").update(**{".id": ref, "list": "x"})
    finally:
        api.close()
    wait_for(lambda: len(follower.mirror) == 0)
    wait_for(lambda: drift.accounts() == {"61"})
    # A scoped read no longer finds it: a repair adds the entry again, and never removes
    # the one now on a list provisiond does not manage.
    assert not target.observe(_scope([61], [_entry("l", "10.0.6.1", 61)])).owned
