"""One function per measurement of ``./dev bench``; each returns rows for the one table.

A row is a job provisiond does (run as its own process, timed, peak RSS from
``wait4``) or a floor / reference measured in the same run. Ratios are to the floor of
the same job, because the machine is shared and absolute times wander.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import floors
from bench.scenario import USER, Scenario, Sim, address, list_name, start_sim, stop_sim


@dataclass(frozen=True, slots=True)
class Row:
    job: str
    wall: float
    floor: float | None = None  # the floor this job is compared with
    rss_mib: float | None = None  # peak RSS of the provisiond process
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.wall / self.floor if self.floor else None


def provisiond(config: Path, *args: str) -> tuple[int, float, float]:
    """``provisiond --config CONFIG ARGS`` as a process: exit code, wall seconds, peak RSS MiB."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "provisiond.cli", "--config", str(config), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 1:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return code, time.monotonic() - started, usage.ru_maxrss / 1024


def adds(scenario: Scenario, start: int = 0, count: int | None = None,
         *, lists: int | None = None) -> Iterator[tuple[str, ...]]:
    """The add sentences provisiond sends for accounts ``start`` … (same bytes)."""
    n = scenario.accounts if count is None else count
    k = scenario.lists if lists is None else lists
    for i in range(start, start + n):
        yield ("/ip/firewall/address-list/add", f"=list={list_name(i % k)}", f"=address={address(i)}",
               f"=comment=provisiond:{i + 1} Account {i + 1}")


def cold_apply(scenario: Scenario) -> list[Row]:
    """``provisiond apply`` on empty routers, against a raw pipelined writer on fresh ones."""
    scenario.start_routers()
    floor = floors.writers([s.port for s in scenario.sims], scenario.password, lambda: adds(scenario))
    scenario.start_routers()
    config = scenario.write_config()
    (scenario.workdir / "state.db").unlink(missing_ok=True)
    code, wall, rss = provisiond(config, "apply")
    rows = [Row("floor: raw pipelined writer, all routers", floor),
            Row("cold apply (provisiond apply)", wall, floor, rss, f"exit {code}")]
    return rows


def noop_plan(scenario: Scenario) -> list[Row]:
    """``provisiond plan`` with nothing to do, against billing read + prints all at once.

    Run alone (``--only noop-plan``), the routers are started and filled first with the
    raw writer: the same adds provisiond sends, so they are converged without an apply.
    """
    if not scenario.sims:
        scenario.start_routers()
        floors.writers([s.port for s in scenario.sims], scenario.password, lambda: adds(scenario))
    config = scenario.write_config()
    code, wall, rss = provisiond(config, "plan")
    lists = [list_name(i) for i in range(scenario.lists)]
    floor = floors.plan_floor(scenario.dsn, [s.port for s in scenario.sims], lists, scenario.password)
    return [
        Row("floor: raw billing read", floor["billing"]),
        Row("floor: raw filtered prints, all at once", floor["prints"]),
        Row("floor: both at once", floor["total"]),
        Row("no-op plan (provisiond plan)", wall, floor["total"], rss,
            f"exit {code}" + ("" if code == 0 else " (expected 0: nothing to do)")),
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



