"""One function per measurement of ``./dev bench``; each returns rows for the one table.

A row is a job provisiond does (run as its own process, timed, peak RSS from
``wait4``) or a floor / reference measured in the same run. Ratios are to the floor of
the same job, because the machine is shared and absolute times wander.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import floors
from bench.scenario import USER, Scenario, Sim, address, list_name, start_sim, stop_sim


@dataclass(frozen=True, slots=True)
class Row:
    job: str
    wall: float
    floor: float | None = None  # the floor this job is compared with
    rss_mib: float | None = None  # peak RSS of the provisiond process
    note: str = ""
    ratio: float | None = None  # given: the median of paired ratios; else wall / floor

    def __post_init__(self) -> None:
        if self.ratio is None and self.floor:
            object.__setattr__(self, "ratio", self.wall / self.floor)


def provisiond(config: Path, *args: str) -> tuple[int, float, float]:
    """``provisiond --config CONFIG ARGS`` as a process: exit code, wall seconds, peak RSS MiB."""
    code, wall, usage = run_provisiond(config, *args)
    return code, wall, usage.ru_maxrss / 1024


def run_provisiond(config: Path, *args: str) -> tuple[int, float, Any]:
    """``provisiond --config CONFIG ARGS`` as a process: exit code, wall seconds, its
    ``rusage`` (its stderr shown when it fails)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "provisiond.cli", "--config", str(config), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 1:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return code, time.monotonic() - started, usage


def adds(scenario: Scenario, start: int = 0, count: int | None = None,
         *, lists: int | None = None) -> Iterator[tuple[str, ...]]:
    """The add sentences provisiond sends for accounts ``start`` … (same bytes)."""
    n = scenario.accounts if count is None else count
    k = scenario.lists if lists is None else lists
    for i in range(start, start + n):
        yield ("/ip/firewall/address-list/add", f"=list={list_name(i % k)}", f"=address={address(i)}",
               f"=comment=provisiond:{i + 1} Account {i + 1}")


def _pairs(repeat: int, floor: Callable[[], float],
           job: Callable[[], tuple[int, float, float]]) -> tuple[list[float], list[tuple[int, float, float]]]:
    """``repeat`` pairs of (floor, job), the floor first in odd pairs and last in even
    ones: a machine whose speed drifts during the run moves both alike."""
    floors_: list[float] = []
    jobs: list[tuple[int, float, float]] = []
    for i in range(repeat):
        if i % 2 == 0:
            floors_.append(floor())
            jobs.append(job())
        else:
            jobs.append(job())
            floors_.append(floor())
    return floors_, jobs


def _paired(job: str, floor_job: str, floors_: list[float],
            jobs: list[tuple[int, float, float]], expected_exit: int = 0,
            why_expected: str = "") -> list[Row]:
    """A floor row and a job row: median wall times, the median of the ratios of each
    pair (the spread in the note when there are several), the worst peak RSS."""
    ratios = sorted(wall / floor for floor, (_, wall, _) in zip(floors_, jobs))
    codes = sorted({code for code, _, _ in jobs})
    note = "exit " + "/".join(str(c) for c in codes)
    if codes != [expected_exit]:
        note += f" (expected {expected_exit}{why_expected})"
    if len(ratios) > 1:
        note += f"; {len(ratios)} pairs, ratios {ratios[0]:.2f}-{ratios[-1]:.2f}"
    wall = statistics.median(w for _, w, _ in jobs)
    floor = statistics.median(floors_)
    return [Row(floor_job, floor),
            Row(job, wall, floor, max(r for _, _, r in jobs), note, ratio=statistics.median(ratios))]


def cold_apply(scenario: Scenario, repeat: int = 1) -> list[Row]:
    """``provisiond apply`` on empty routers, against a raw pipelined writer on fresh ones."""

    def floor() -> float:
        scenario.start_routers()
        return floors.writers([s.port for s in scenario.sims], scenario.password, lambda: adds(scenario))

    def job() -> tuple[int, float, float]:
        scenario.start_routers()
        config = scenario.write_config()
        (scenario.workdir / "state.db").unlink(missing_ok=True)
        return provisiond(config, "apply")

    floors_, jobs = _pairs(repeat, floor, job)
    return _paired("cold apply (provisiond apply)", "floor: raw pipelined writer, all routers",
                   floors_, jobs)


def noop_plan(scenario: Scenario, repeat: int = 1) -> list[Row]:
    """``provisiond plan`` with nothing to do, against billing read + prints all at once.

    Run alone (``--only noop-plan``), the routers are started and filled first with the
    raw writer: the same adds provisiond sends, so they are converged without an apply.
    """
    if not scenario.sims:
        scenario.start_routers()
        floors.writers([s.port for s in scenario.sims], scenario.password, lambda: adds(scenario))
    config = scenario.write_config()
    lists = [list_name(i) for i in range(scenario.lists)]
    parts: list[dict[str, float]] = []

    def floor() -> float:
        parts.append(floors.plan_floor(scenario.dsn, [s.port for s in scenario.sims], lists,
                                       scenario.password))
        return parts[-1]["total"]

    floors_, jobs = _pairs(repeat, floor, lambda: provisiond(config, "plan"))
    return [
        Row("floor: raw billing read", statistics.median(p["billing"] for p in parts)),
        Row("floor: raw filtered prints, all at once", statistics.median(p["prints"] for p in parts)),
        *_paired("no-op plan (provisiond plan)", "floor: both at once", floors_, jobs,
                 why_expected=": nothing to do"),
    ]


def churn(scenario: Scenario, *, count: int = 2000, rtt: float = 0.020) -> list[Row]:
    """``count`` adds on one router at ``rtt``: raw pipelined, librouteros one at a time, provisiond."""
    from provisiond.core.changes import Create
    from provisiond.core.desire import address_list_entry
    from provisiond.core.model import Account
    from provisiond.core.plan import Plan
    from provisiond.settings import RouterSettings
    from provisiond.targets.routeros import RouterTarget

    def fresh() -> Sim:
        return start_sim(rtt=rtt, password=scenario.password, name="churn")

    sim = fresh()
    try:
        floor = floors.writer(sim.port, scenario.password, adds(scenario, count=count, lists=1))
    finally:
        stop_sim(sim)
    sim = fresh()
    try:
        sequential = floors.sequential_librouteros(sim.port, scenario.password,
                                                   adds(scenario, count=count, lists=1))
    finally:
        stop_sim(sim)
    sim = fresh()
    try:
        settings = RouterSettings(name="churn", host="127.0.0.1", port=sim.port, username=USER,
                                  password=scenario.password, timeout=60)
        target = RouterTarget(settings, lists=[list_name(0)], marker="provisiond")
        plan = Plan("churn", "routeros", tuple(
            Create(address_list_entry(list_name(0), address(i), Account(str(i + 1), f"Account {i + 1}"),
                                      "provisiond")) for i in range(count)))
        started = time.monotonic()
        result = target.apply(plan)
        wall = time.monotonic() - started
        target.close()
    finally:
        stop_sim(sim)
    ms = f"{rtt * 1000:.0f} ms"
    return [
        Row(f"floor: raw pipelined writer, {count} adds at {ms}", floor),
        Row(f"reference: librouteros one at a time, {count} adds", sequential, floor,
            note=f"provisiond is {sequential / wall:.1f}x faster"),
        Row(f"churn: RouterTarget.apply, {count} adds at {ms}", wall, floor,
            note=f"{len(result.applied)} applied, {len(result.failed)} failed"),
    ]



