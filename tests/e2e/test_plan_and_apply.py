"""``apply`` writes each router as soon as its own plan is made (``plan_and_apply``).

A cold apply's routers are written while the others are still read and diffed; every
rule of ``plan`` then ``apply`` still holds: the safety check per router, nothing
written when billing fails, and a second pass plans nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import pytest
from world import World

from provisiond import settings as settings_mod
from provisiond.core.changes import Key, Observed, Resource
from provisiond.engine import Reconciler
from provisiond.errors import StoreError
from provisiond.state.store import StateStore
from provisiond.targets.routeros import RouterTarget

WAIT = 30.0  # seconds the slow router's read waits for the fast one's writes


def _accounts(world: World) -> None:
    for i in range(1, 13):
        world.account(i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.1.{i}"])


def test_a_router_is_written_while_another_is_still_read(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.router("core-1")
    world.router("core-2")
    _accounts(world)
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")])
    written = threading.Event()
    waited: dict[str, float] = {}
    observe, apply = RouterTarget.observe_against, RouterTarget.apply

    def slow_core2(self: RouterTarget, desired: Future[Mapping[str, Mapping[Key, Resource]]],
                   **kw: Any) -> Observed:
        if self.name == "core-2":  # answers only once core-1 is being written
            started = time.monotonic()
            written.wait(WAIT)
            waited["core-2"] = time.monotonic() - started
        return observe(self, desired, **kw)

    def noted(self: RouterTarget, plan: Any, **kw: Any) -> Any:
        if self.name == "core-1":
            written.set()
        return apply(self, plan, **kw)

    monkeypatch.setattr(RouterTarget, "observe_against", slow_core2)
    monkeypatch.setattr(RouterTarget, "apply", noted)
    rec = Reconciler(settings_mod.load(world.config), readonly=False)
    try:
        result = rec.plan_and_apply()
    finally:
        rec.close()
    assert result.ok, result
    assert waited["core-2"] < WAIT, "core-1 was written only after core-2 had been read"
    for router in ("core-1", "core-2"):
        assert sorted(world.entries(router, "tower-hosts")) == sorted(f"100.64.1.{i}" for i in range(1, 13))
    monkeypatch.undo()
    code, out, err = world.run("plan")
    assert code == 0, out + err  # idempotent: nothing left to do


def test_the_safety_check_holds_per_router_and_the_others_are_written(world: World) -> None:
    world.router("core-1")
    world.router("core-2")
    _accounts(world)
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")])
    assert world.run("apply")[0] == 0
    # Hand-deleting on core-2 only makes core-2 need re-creates; billing loses 11 of 12
    # accounts: a delete ratio over the limit on both routers.
    world.sql("DELETE FROM account_groups WHERE account_id > 1")
    code, out, _ = world.run("apply")
    assert code == 1
    assert "refused" in out and "core-1" in out and "core-2" in out
    assert len(world.entries("core-1", "tower-hosts")) == 12
    assert len(world.entries("core-2", "tower-hosts")) == 12
    code, out, _ = world.run("apply", "--force")
    assert code == 0, out
    assert sorted(world.entries("core-2", "tower-hosts")) == ["100.64.1.1"]
    assert world.run("plan")[0] == 0


def test_a_run_that_cannot_record_its_read_is_finished_as_failed(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that stops on an error of its own before any write (here: the billing read
    cannot be recorded) is finished, failed, with the error; nothing is written."""
    world.router("core-1")
    _accounts(world)
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")])

    def broken(self: StateStore, *args: Any) -> None:
        raise StoreError("state store: disk full")

    monkeypatch.setattr(StateStore, "record_read", broken)
    code, out, err = world.run("apply")
    assert code == 1 and "disk full" in out + err
    assert world.entries("core-1", "tower-hosts") == {}
    monkeypatch.undo()
    with StateStore.open(world.state_url, readonly=True) as store:
        run = store.runs(limit=1)[0]
    assert run["result"] == "failed" and run["finished_at"] is not None, run
    assert "disk full" in str(run["summary"])


def test_the_plan_is_shown_while_the_routers_are_written(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without progress bars, ``apply`` prints its plan once every router is planned,
    while they are written (a cold apply's 400,000 lines are not a wait at the end);
    the text is the one ``plan`` prints, then what was applied."""
    world.router("core-1")
    world.router("core-2")
    _accounts(world)
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")])
    code, planned, _ = world.run("plan")
    assert code == 2
    seen: dict[str, str] = {}
    apply = RouterTarget.apply

    def watching(self: RouterTarget, plan: Any, **kw: Any) -> Any:
        out: Any = sys.stdout  # world.run's capture
        deadline = time.monotonic() + WAIT
        while "\nPlan: " not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen[self.name] = out.getvalue()
        return apply(self, plan, **kw)

    monkeypatch.setattr(RouterTarget, "apply", watching)
    code, out, err = world.run("apply")
    assert code == 0, out + err
    for router in ("core-1", "core-2"):
        assert seen[router] == planned, f"{router} was written before the plan was shown"
    assert out.startswith(planned)
    assert out[len(planned):].splitlines() == [
        "core-1: ok: 12 created, 0 updated, 0 deleted, 0 failed, 0 conflict(s)",
        "core-2: ok: 12 created, 0 updated, 0 deleted, 0 failed, 0 conflict(s)",
        out.splitlines()[-1]]
    assert out.splitlines()[-1].startswith("Apply: ok in ")
    monkeypatch.undo()
    world.assert_converged()


def test_what_showing_the_plan_raises_comes_after_the_pass_has_ended(world: World) -> None:
    """A broken stdout while the plan is shown does not cut the writes short: the
    routers are written, the run is finished, and then the error is raised."""
    world.router("core-1")
    _accounts(world)
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")])

    def broken(pp: Any, refused: Mapping[str, str]) -> None:
        raise BrokenPipeError("stdout closed")

    rec = Reconciler(settings_mod.load(world.config), readonly=False)
    try:
        with pytest.raises(BrokenPipeError):
            rec.plan_and_apply(while_writing=broken)
    finally:
        rec.close()
    assert sorted(world.entries("core-1", "tower-hosts")) == sorted(f"100.64.1.{i}" for i in range(1, 13))
    with StateStore.open(world.state_url, readonly=True) as store:
        run = store.runs(limit=1)[0]
    assert run["result"] == "ok" and run["finished_at"] is not None, run
    world.assert_converged()


def test_the_console_script_leaves_nothing_unwritten_when_it_exits(world: World, tmp_path: Any) -> None:
    """``plan`` and ``apply`` end with ``os._exit`` (the OS frees the pass): their output
    to a file (block-buffered) is whole, the run and its journal are in the store, and
    the exit codes are those of ``main``."""
    import subprocess

    world.router("core-1")
    _accounts(world)
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")])

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered

    def console(*args: str) -> tuple[int, str]:
        out = tmp_path / "out.txt"
        with out.open("w") as f:
            code = subprocess.run([sys.executable, "-m", "provisiond.cli", "--config", str(world.config), *args],
                                  stdout=f, stderr=subprocess.DEVNULL, timeout=120, env=env).returncode
        return code, out.read_text(encoding="utf-8")

    code, out = console("plan")
    assert code == 2 and out.endswith("Plan: 12 to create, 0 to update, 0 to delete on 1 of 1 target(s).\n"), out
    code, out = console("apply")
    assert code == 0 and out.splitlines()[-1].startswith("Apply: ok in "), out
    with StateStore.open(world.state_url, readonly=True) as store:
        run = store.runs(limit=1)[0]
        journal = store.history()
    assert run["result"] == "ok" and run["finished_at"] is not None, run
    assert len(journal) == 12
    assert console("plan") == (0, "core-1 (routeros): 0 to create, 0 to update, 0 to delete\n"
                                  "Plan: 0 to create, 0 to update, 0 to delete on 0 of 1 target(s).\n")
