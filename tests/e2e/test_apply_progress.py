"""``Target.apply(plan, progress=...)``: every change completes exactly once, whatever its fate."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from provisiond.core.changes import Create, Delete, Update
from provisiond.core.desire import address_list_entry
from provisiond.core.model import Account
from provisiond.core.plan import Plan
from provisiond.settings import RouterSettings
from provisiond.sim import RouterSim, SimSettings
from provisiond.targets.routeros import RouterTarget


class Counter:
    def __init__(self) -> None:
        self.total = 0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n
            self.calls += 1


@pytest.fixture
def sim() -> Iterator[RouterSim]:
    s = RouterSim(SimSettings(username="u", password="p", log_commands=False)).start()
    yield s
    s.stop()


def _target(sim: RouterSim, connections: int = 1) -> RouterTarget:
    settings = RouterSettings(name="core-1", host="127.0.0.1", port=sim.port, username="u",
                              password="p", timeout=5, connect_timeout=2, connections=connections)
    return RouterTarget(settings, lists=["l"], marker="provisiond")


def _creates(n: int, start: int = 0) -> tuple[Create, ...]:
    return tuple(Create(address_list_entry("l", f"10.1.{i >> 8}.{i & 255}", Account(str(i), f"A{i}"),
                                           "provisiond")) for i in range(start, start + n))


@pytest.mark.parametrize("connections", [1, 3])
def test_routeros_reports_every_change_once(sim: RouterSim, connections: int) -> None:
    t = _target(sim, connections)
    seen = Counter()
    result = t.apply(Plan("core-1", "routeros", _creates(1200)), progress=seen)
    assert result.ok and seen.total == 1200 and seen.calls >= 1200 // 100
    owned = sorted(t.observe().owned.values(), key=lambda r: r.get("address"))
    sim.add_entry("ip", list_name="l", address="10.9.0.1", comment="hand", dynamic=False)
    sim.remove_entry("ip", owned[1].ref)  # the update of this one fails
    changes = (
        *(Delete(r) for r in owned[2:300]),
        Create(address_list_entry("l", "10.9.0.1", Account("9", "Raced"), "provisiond")),  # collides
        *(Update(r, address_list_entry("l", r.get("address"), Account(r.account_id, "New"),
                                       "provisiond")) for r in owned[:2]),
    )
    seen = Counter()
    result = t.apply(Plan("core-1", "routeros", changes), progress=seen)
    assert len(result.failed) == 1 and len(result.conflicts) == 1
    assert seen.total == len(changes) == len(result.applied) + 2
    # Without a callback nothing changes.
    assert t.apply(Plan("core-1", "routeros", _creates(3, start=3000))).ok
    t.close()


@pytest.mark.parametrize("connections", [1, 3])
def test_a_gate_that_closes_stops_the_writes_within_one_window(sim: RouterSim, connections: int) -> None:
    """Shared members: the target's gate (its claim) is asked before the first write and
    once per window sent; from the moment it says no, at most one more window goes out
    per session, and every change not sent fails, reported once."""
    t = _target(sim, connections)
    window = t.settings.pipeline
    asked = 0
    lock = threading.Lock()

    def gate() -> bool:
        nonlocal asked
        with lock:
            asked += 1
            return asked <= 3  # open for three windows, then the claim is gone

    t.gate = gate
    seen = Counter()
    total = 60_000 if connections > 1 else 3000
    result = t.apply(Plan("core-1", "routeros", _creates(total)), progress=seen)
    added = sim.state.counts["/ip/firewall/address-list/add"]
    assert 0 < added <= (3 + connections) * window
    assert len(result.applied) == added == seen.total  # the rest is no progress: the bar stops
    assert len(result.failed) == total - added
    assert "no longer holds its claim" in result.failed[-1][1] and result.error
    assert not result.unavailable
    t.gate = None  # the claim back: the rest goes out as usual
    t.close()
