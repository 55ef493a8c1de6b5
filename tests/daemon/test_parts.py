"""The daemon's pure parts: back-off, health, listen address, leader choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisiond.daemon.leader import (
    AlreadyRunning,
    FileLock,
    NoElection,
    PgAdvisoryLock,
    for_store,
)
from provisiond.daemon.metrics import Health, parse_listen
from provisiond.daemon.passes import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_to_the_ceiling_and_resets() -> None:
    clock = Clock()
    b = Backoff(10.0, clock=clock)
    assert [b.failed("r") for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.skip("r") and not b.skip("other")
    clock.now += 10.0
    assert not b.skip("r")
    assert b.succeeded("r") and not b.succeeded("r")
    assert b.failed("r") == 2.0


@pytest.mark.parametrize(("last", "now", "ok", "why"), [
    (None, 0.0, False, "no successful pass yet"),
    (100.0, 150.0, True, "ok"),
    (100.0, 300.0, False, "last successful pass 200s ago"),
])
def test_health(last: float | None, now: float, ok: bool, why: str) -> None:
    result = Health(max_age=180.0, last_success=last).check(now)
    assert result[0] is ok and result[1].startswith(why)
    assert Health(max_age=1.0, standby=True).check(now)[0]


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:9100", ("::1", 9100)),
    (":9100", ("0.0.0.0", 9100)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


def test_election_follows_the_store(tmp_path: Path) -> None:
    assert isinstance(for_store("postgresql+psycopg://u@h/db"), PgAdvisoryLock)
    assert isinstance(for_store("sqlite://"), NoElection)
    lock = for_store(f"sqlite:///{tmp_path / 'state.db'}")
    assert isinstance(lock, FileLock) and lock.path == tmp_path / "state.db.lock"
    assert lock.acquire()
    with pytest.raises(AlreadyRunning, match="already runs on this state store"):
        FileLock(lock.path).acquire()
    lock.release()
    assert FileLock(lock.path).acquire()


def test_a_leader_lock_lost_while_planning_writes_nothing() -> None:
    from types import SimpleNamespace
    from typing import Any

    from provisiond.daemon.metrics import Health, Metrics
    from provisiond.daemon.passes import PassRunner

    calls: list[str] = []

    class Rec:
        targets: list[Any] = []
        store = None

        def plan(self, skip: Any, checksums: bool = True) -> Any:
            calls.append("plan")
            return SimpleNamespace(plans=[], errors={}, unavailable=set(), kinds={}, notes=[], accounts=None,
                                   allocation=None)

        def apply(self, pp: Any, **kw: Any) -> Any:
            calls.append("apply")
            return SimpleNamespace(results=[], refused={}, held={}, ok=True)

        def close(self) -> None:
            pass

    settings: Any = SimpleNamespace(daemon=SimpleNamespace(retry_max=60.0, dry_run=False, interval=60.0,
                                                           healthz_max_age=None, members="standby",
                                                           model_fields_set={"interval"}), pool=[],
                                    router=[], address_list=[], radius=None)
    runner = PassRunner(settings, metrics=Metrics(), health=Health(max_age=60),
                        factory=lambda s, ro, memory: Rec())
    outcome = runner.run_once(may_write=lambda: False)
    assert calls == ["plan"] and outcome.result == "error" and "leader lock" in outcome.status
    assert runner.run_once(may_write=lambda: True).result == "ok"
    assert calls == ["plan", "plan", "apply"]


def test_a_refusal_leaves_healthz_once_a_full_pass_no_longer_refuses_it() -> None:
    from provisiond.daemon.metrics import Health, Metrics
    from provisiond.daemon.notes import note_refusals
    from provisiond.daemon.summary import PassSummary, TargetSummary

    health, metrics = Health(max_age=60), Metrics()
    refused = PassSummary(["core-1"], {"core-1": TargetSummary(planned=True)}, "", 0, False,
                          refused={"ipam": "ipam: pool p: 1 releases would empty it",
                                   "core-1": "core-1: a: too many"},
                          held={"core-1": ("a",)})
    note_refusals(refused, health, metrics)
    assert set(health.degraded) == {"refused ipam (all)", "refused core-1 a"}
    # The next full pass holds b instead of a, and IPAM is clear: only b is listed.
    moved = PassSummary(["core-1"], {"core-1": TargetSummary(planned=True)}, "", 0, False,
                        refused={"core-1": "core-1: b: too many"}, held={"core-1": ("b",)})
    note_refusals(moved, health, metrics)
    assert set(health.degraded) == {"refused core-1 b"}
    clear = PassSummary(["core-1"], {"core-1": TargetSummary(planned=True)}, "", 0, True)
    note_refusals(clear, health, metrics)
    assert health.degraded == {}


def test_a_full_pass_taken_from_pending_covers_the_targets_waiting_too() -> None:
    from provisiond.core.scope import Pending

    pending = Pending()
    pending.add_targets({"core-2"})
    pending.add(None)
    assert pending.take(500) is None  # a full pass
    assert pending.empty and pending.take_targets() is None
