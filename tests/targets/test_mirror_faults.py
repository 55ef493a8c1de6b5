"""The mirror's hard cases, each a defect a review found (and a test that failed before
its fix): a reboot the listen has not noticed yet, a late heartbeat answer, a scoped
read racing its own write's report, a fill slower than the heartbeat."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from provisiond.core.changes import Create, Delete
from provisiond.core.plan import Plan
from provisiond.sim import RouterSim, SimSettings
from provisiond.targets.routeros import RouterTarget
from provisiond.targets.routeros.follow import Follower
from provisiond.targets.routeros.mirror import Mirror

from test_mirror_follow import Drift, _entry, _scope, _settings, wait_for


@pytest.fixture
def sim() -> Iterator[RouterSim]:
    s = RouterSim(SimSettings(username="u", password="p", log_commands=False)).start()
    yield s
    s.stop()


def _thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds (user + system) a thread has used, from /proc."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_reboot_not_yet_noticed_by_the_follower_makes_a_scoped_remove_hit_another_entry(
        sim: RouterSim) -> None:
    """A power-cut reboot: the listen's TCP session is half-open until the heartbeat
    fails (up to heartbeat + timeout = 75 s by default); the mirror stays "live" with
    pre-reboot ids while a scoped pass's fresh connection writes by those ids."""
    with sim.state.lock:
        sim.state.booted -= 3600  # a router up for an hour
    sim.add_entry(list_name="blocklist", address="198.51.100.7", comment="by hand", dynamic=False)
    t = RouterTarget(_settings(sim), lists=["l"], marker="provisiond")
    mine = _entry("l", "10.0.0.1", 1)
    assert t.apply(Plan("core-1", "routeros", (Create(mine),))).ok
    hand_id = sim.entries("ip", "blocklist")[0][".id"]
    own_id = sim.entries("ip", "l")[0][".id"]
    mirror = Mirror("core-1", ["l"], "provisiond:")
    follower = Follower(t.settings, mirror, on_drift=Drift()).start()
    t.mirror = mirror
    try:
        wait_for(lambda: mirror.trusted and mirror.booted is not None)
        # The router reboots; its ids are renumbered: the hand-made entry now has the id
        # provisiond's entry had. (Connections are not dropped: a power cut sends no FIN.)
        with sim.state.lock:
            sim.state.reboot(next_id=int(own_id[1:], 16))
        t.close()  # the kept session died with the router: the next pass logs in again
        assert sim.entries("ip", "blocklist")[0][".id"] == own_id != hand_id
        # Account 1 leaves: a scoped pass from the mirror removes its entry by id.
        seen = t.observe(_scope([1], []))
        plan = Plan("core-1", "routeros", tuple(Delete(r) for r in seen.owned.values()))
        t.apply(plan)
        assert sim.entries("ip", "blocklist"), "the hand-made entry on an unmanaged list was removed"
    finally:
        follower.stop()
        t.close()


def test_a_stalled_heartbeat_answer_busy_loops_the_follower(sim: RouterSim) -> None:
    """Once the uptime question is older than ``heartbeat``, ``next_beat - now`` < 0 makes
    the select timeout 0 until ``heartbeat + timeout``: a busy loop."""
    t = RouterTarget(_settings(sim).model_copy(update={"timeout": 4.0}), lists=["l"],
                     marker="provisiond")
    mirror = Mirror("core-1", ["l"], "provisiond:")
    follower = Follower(t.settings, mirror, on_drift=Drift(), heartbeat=0.5).start()
    try:
        wait_for(lambda: mirror.trusted)
        assert follower._thread is not None
        sim.set_stalled(True)
        time.sleep(1.0)  # past one heartbeat: the question is unanswered
        before = _thread_cpu(follower._thread)
        time.sleep(2.0)
        used = _thread_cpu(follower._thread) - before
        sim.set_stalled(False)
        assert used < 0.5, f"the listen thread used {used:.2f} s of CPU in 2 s waiting"
    finally:
        follower.stop()
        t.close()


def test_a_scoped_read_does_not_wait_for_its_accounts_own_unreported_add(sim: RouterSim) -> None:
    """Pass 1 adds account 1's entry at X; pass 2 (account 1 now wants Y) reads the
    mirror before the add's report is in: X is not seen, so it is never removed."""
    t = RouterTarget(_settings(sim), lists=["l"], marker="provisiond")
    mirror = Mirror("core-1", ["l"], "provisiond:")
    follower = Follower(t.settings, mirror, on_drift=Drift()).start()
    t.mirror = mirror
    real_event = mirror.event

    def slow_event(words, fam):  # type: ignore[no-untyped-def]
        time.sleep(0.3)  # a follower a little behind (GIL, a busy router, a long link)
        return real_event(words, fam)

    try:
        wait_for(lambda: mirror.trusted and mirror.booted is not None)
        mirror.event = slow_event  # type: ignore[method-assign]
        x, y = _entry("l", "10.0.0.1", 1), _entry("l", "10.0.0.2", 1)
        assert t.apply(Plan("core-1", "routeros", (Create(x),))).ok
        seen = t.observe(_scope([1], [y]))  # what pass 2 plans from
        wait_for(lambda: len(mirror) == 1)
        assert set(seen.owned) == {("address-list", x.ident)}, \
            "pass 2 did not see account 1's entry at X: its plan leaves X on the router"
    finally:
        follower.stop()
        t.close()


def test_a_slow_fill_is_not_cut_by_the_heartbeat_which_starts_after_it() -> None:
    """A router that answers the uptime question only after the fill's scan (one CPU, as
    the simulator's cost model charges it) made every fill longer than heartbeat +
    timeout fail, and the router was scanned again and again. The heartbeat now starts
    once the fill is in; during the fill, rows arriving within ``timeout`` are its sign
    of life (as for any print)."""
    sim = RouterSim(SimSettings(username="u", password="p", log_commands=False,
                                scan_cost_us=1000.0)).start()  # a 2,000-row print: 2 s
    try:
        t = RouterTarget(_settings(sim), lists=["l"], marker="provisiond")
        entries = [_entry("l", f"10.1.{i >> 8}.{i & 255}", i) for i in range(2000)]
        assert t.apply(Plan("core-1", "routeros", tuple(Create(r) for r in entries))).ok
        t.close()
        sim.reset_history()
        mirror = Mirror("core-1", ["l"], "provisiond:")
        settings = t.settings.model_copy(update={"timeout": 3.0})  # heartbeat + timeout: 3.3 s
        follower = Follower(settings, mirror, on_drift=Drift(), heartbeat=0.3).start()
        try:
            wait_for(lambda: mirror.trusted and mirror.booted is not None, timeout=15)
            assert mirror.fills == 1 and len(mirror) == 2000
            paths = [c.path for c in sim.history]
            prints = [i for i, p in enumerate(paths) if p.endswith("address-list/print")]
            asked = [i for i, p in enumerate(paths) if p == "/system/resource/print"]
            assert len(prints) == 2 and asked and asked[0] > max(prints)
            assert sum(sim.load.scans.values()) == 2  # read once, not again and again
        finally:
            follower.stop()
    finally:
        sim.stop()
