"""A target that has finished has its journal on disk while slower targets still apply:
a crash then loses none of what the finished router did (``history`` shows it)."""

from __future__ import annotations

import sqlite3
import threading
import time

from world import World

from provisiond.state.parts import part_entries


def journalled(world: World, target: str) -> int:
    """Changes the state store's journal holds for ``target`` (rows and parts)."""
    path = world.state_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT count(*) FROM journal WHERE target = ?", (target,)).fetchone()[0]
        parts = db.execute("SELECT rows FROM journal_parts WHERE target = ?", (target,)).fetchall()
    return int(rows) + sum(len(part_entries(p[0])) for p in parts)


def test_a_finished_routers_journal_is_written_before_the_run_ends(world: World) -> None:
    world.router("core-1")
    world.router("core-2")
    for i in range(1, 31):
        world.account(i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.1.{i}"])
    world.write_config()  # a router's reply timeout: 5 s
    sim = world.sims["core-2"]
    # core-2's first add runs; its answer (and every later one) waits until released.
    held: list[int] = []

    def hold_first_add(n: int, words: list[str]) -> None:
        if words[0].endswith("/add") and not held:
            held.append(n)
            sim.stall_after(0)

    sim.on_sentence(hold_first_add)
    result: list[tuple[int, str, str]] = []
    apply = threading.Thread(target=lambda: result.append(world.run("apply")))
    apply.start()
    try:
        deadline = time.monotonic() + 4  # within core-2's 5 s reply timeout
        while time.monotonic() < deadline and (len(world.entries("core-1", "tower-hosts")) < 30
                                               or journalled(world, "core-1") < 30):
            time.sleep(0.05)
        assert apply.is_alive(), "core-2 is stalled: the run must still be going"
        assert journalled(world, "core-1") == 30
    finally:
        sim.on_sentence(None)
        sim.set_stalled(False)
        apply.join(60)
    code, out, err = result[0]
    assert code == 0, out + err  # released within its reply timeout: core-2 completes
    assert journalled(world, "core-2") == 30
    world.assert_converged()  # a second pass plans nothing
