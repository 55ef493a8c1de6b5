"""Pipelined writes end to end: ``provisiond apply`` as a real process against a router on a
slow link (the simulator's WAN model), with a trap or a cut connection in the middle of a
window of tagged commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from world import World

REPO = Path(__file__).resolve().parents[2]
ADD = "/ip/firewall/address-list/add"
N = 40


def apply(world: World) -> tuple[int, str]:
    """``provisiond apply`` as its own process: (exit code, stdout + stderr)."""
    proc = subprocess.run([sys.executable, "-m", "provisiond.cli", "--config", str(world.config), "apply"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _world(world: World) -> None:
    world.router("core-1", command_latency=0.02)
    for i in range(N):
        world.account(100 + i, f"Site {i}", groups=["Tower Hosts"], ips=[f"100.64.0.{i + 1}"])
    world.write_config()


def _adds(world: World) -> list[dict[str, str]]:
    return [dict(c.attributes) | {"tag": c.tag or ""} for c in world.sims["core-1"].history if c.path == ADD]


def test_a_trap_in_the_middle_of_a_window_fails_only_that_entry(world: World) -> None:
    _world(world)
    sim = world.sims["core-1"]
    sim.fail_next(ADD, "failure: out of memory", after=N // 2)
    code, out = apply(world)
    assert code == 1, out
    adds = _adds(world)
    assert len(adds) == N and all(a["tag"] for a in adds)  # every add went out tagged
    bad = adds[N // 2]["address"]
    assert f"core-1: add tower-hosts {bad} refused: failure: out of memory" in out
    assert set(world.entries("core-1", "tower-hosts")) == {a["address"] for a in adds} - {bad}
    # The next pass adds just that one, and then there is nothing left to do.
    sim.reset_history()
    code, out = apply(world)
    assert code == 0, out
    assert [a["address"] for a in _adds(world)] == [bad]
    assert len(world.entries("core-1", "tower-hosts")) == N
    world.assert_converged()


def test_a_connection_cut_mid_window_fails_the_rest_and_the_next_pass_adds_no_duplicate(world: World) -> None:
    _world(world)
    sim = world.sims["core-1"]
    sim.drop_after(ADD, 15)  # the 15th add runs, then the link goes: its reply never comes
    code, out = apply(world)
    assert code == 1, out
    assert "core-1: connection lost" in out
    landed = set(world.entries("core-1", "tower-hosts"))
    assert len(landed) == 15
    sim.reset_history()
    code, out = apply(world)
    assert code == 0, out
    again = [a["address"] for a in _adds(world)]
    assert len(again) == N - 15 and not set(again) & landed  # nothing that landed is sent again
    assert "already have such entry" not in out
    assert len(world.entries("core-1", "tower-hosts")) == N
    world.assert_converged()
