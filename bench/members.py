"""``./dev bench`` measurement "members": three ``provisiond run`` members sharing the
scenario's routers through one PostgreSQL state store (issue 25), each figure next to
its goal.

The world is router_load's: the scenario's routers with the simulator's CPU cost model
(``--scan-cost-us`` per row of the whole table for every print, ``--add-cost-ms`` per
entry written), the billing NOTIFY trigger, every router watched from the bench through
an API ``listen`` opened before any member starts (``router_load.Watcher``: each
change is timed when the router sends it, never from a log). The members are ``a``,
``b`` and ``c`` (``[daemon] members = "shared"``, the daemon's default ttl unless
``--member-ttl``), each its own process with its own config on a state store database
of its own (``bench.cluster``). Phases:

* cold start: the three started together on empty routers, until every router holds
  every entry, every router and ``global`` is claimed, and the members' logs are quiet;
* events: ``--events`` billing changes one at a time, each from its COMMIT to its
  entry heard from every router (router_load's R2), against the floor measured in the
  same run before the members start: one add on every router at once, through the same
  cost model (with it a print costs the router a whole-table scan, 8 s at 100,000 rows,
  so notify's print-and-add floor would sit far above what a mirror-fed member does);
* takeover, ``--trials`` times: ``kill -9`` of the member owning the most routers, and
  a billing change committed right after; from the kill to (a) each of its claims held
  live by another member (the claims table, polled every 50 ms) and (b) that change
  heard from each of its routers. Then the member is started again under the same id,
  takes its own routers back, and a probe change heard from every router ends the trial.
  These are protocol figures bound by the ttl (an expired lease, then one more ttl
  "uncertain"): reported as they are, with the goal 2 x ttl + 1 s.

Every router's entries are checked against billing after each phase (missing, stray,
doubled). The billing changes are undone and the routers, members and the state store
database removed afterwards.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import librouteros
import psycopg

from bench.cluster import GLOBAL, Cluster, Member, Mover, Passes
from bench.measure import Row
from bench.notify import BENCH_TRIGGERS, TRIGGER_SQL
from bench.router_load import GOAL_EVENT_P95, LOST, Watcher, load, percentile
from bench.scenario import USER, Scenario
from provisiond.settings import DaemonSettings

MEMBER_IDS = ("a", "b", "c")
QUIET = 3.0  # seconds without a pass line, member CPU or router work: settled (Cluster.wait_quiet)


@dataclass(frozen=True, slots=True)
class Options:
    events: int = 20
    trials: int = 10
    scan_cost_us: float = 80.0
    add_cost_ms: float = 1.2
    ttl: float | None = None  # the daemon's default when None
    interval: float | None = None  # likewise
    event_timeout: float = 120.0
    event_gap: float = 0.5
    takeover_timeout: float = 180.0
    cold_timeout: float = 1800.0
    poll: float = 0.05  # seconds between reads of the claims table
    logs: Path | None = None  # where the members' logs are copied at the end


@dataclass(slots=True)
class Trial:
    victim: str
    routers: list[str]
    had_global: bool
    claimed: float = LOST  # kill -> every claim of the victim's held live by another
    converged: float = LOST  # kill -> the change heard from every router of the victim
    elsewhere: float = LOST  # kill -> the change heard from every other router
    back: float = LOST  # restart -> its claims back to it
    rejoined: float = LOST  # restart -> a probe change heard from every router
    new_owners: dict[str, str] = field(default_factory=dict)
    orphans: int = 0  # the killed member's full-pass processes alive 2 s after the kill
    scans_taken: int = 0  # table scans on a router of the victim's, from the kill to its restart
    scans_back: int = 0  # and from its restart to the end of the trial (the most on one router)
    check: str = ""


def _seconds(value: float) -> str:
    return "lost" if value == LOST else f"{value:.2f} s"


def _spread(values: list[float]) -> str:
    return (f"p50 {_seconds(percentile(values, 50))}, p95 {_seconds(percentile(values, 95))}, "
            f"max {_seconds(max(values))}")


def add_floor(scenario: Scenario, runs: int = 20) -> float:
    """p50 of one add on every router at once (removed again, untimed): the least a
    client that keeps a copy of each router's list sends per billing change."""
    apis = [librouteros.connect("127.0.0.1", USER, scenario.password, port=s.port, timeout=60)
            for s in scenario.sims]
    times = []
    try:
        with ThreadPoolExecutor(len(apis)) as pool:
            for k in range(runs):
                def one(api: Any, addr: str = f"198.18.{k // 250}.{k % 250 + 1}") -> Any:
                    path = api.path("ip", "firewall", "address-list")
                    return path, path.add(list="bench-floor", address=addr, comment="bench floor")

                started = time.monotonic()
                added = list(pool.map(one, apis))
                times.append(time.monotonic() - started)
                for path, ref in added:
                    path.remove(ref)
    finally:
        for api in apis:
            api.close()
    return statistics.median(times)


def members(scenario: Scenario, options: Options) -> list[Row]:
    if scenario.lists < 2:
        raise SystemExit("members moves accounts between groups: --lists must be at least 2")
    ttl = options.ttl if options.ttl is not None else DaemonSettings().member_ttl
    scenario.stop_routers()
    scenario.start_routers(scan_cost_us=options.scan_cost_us, add_cost_ms=options.add_cost_ms)
    floor = add_floor(scenario)
    with psycopg.connect(scenario.dsn, autocommit=True) as conn:
        conn.execute(TRIGGER_SQL.read_text())
        conn.execute(BENCH_TRIGGERS)
    cluster = Cluster(scenario, MEMBER_IDS, ttl=options.ttl, interval=options.interval)
    watchers = [Watcher(s.port, scenario.password) for s in scenario.sims]
    routers = Routers(scenario)
    mover = Mover(scenario)
    began = time.monotonic()
    try:
        say("cold start: three members on empty routers …")
        cold = _cold_start(cluster, watchers, routers, mover, options)
        say(f"events: {options.events} billing changes …")
        owners = cluster.owners()
        latencies = _events(watchers, mover, options)
        events_check = _check(watchers, mover)
        trials: list[Trial] = []
        for n in range(options.trials):
            say(f"takeover: trial {n + 1} of {options.trials} …")
            trials.append(_takeover(cluster, watchers, routers, mover, options))
        passes = {m: cluster.passes(m) for m in MEMBER_IDS}
        restarts = {m: cluster.passes(m, restarts=True) for m in MEMBER_IDS}
        rss = {m: cluster.member(m).peak_rss() for m in MEMBER_IDS}
    finally:
        for w in watchers:
            w.close()
        routers.close()
        cluster.close(options.logs)
        mover.undo()
        scenario.stop_routers()
    total = time.monotonic() - began
    return _rows(floor, ttl, cold, owners, latencies, events_check, trials, passes, restarts, rss, total)


def say(text: str) -> None:
    print(f"members: {text}", file=sys.stderr, flush=True)


# -- phases -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cold:
    wall: float  # start -> every router full, everything claimed, logs quiet
    filled: dict[str, float]  # router -> start -> its last entry heard
    first_pass: dict[str, str]  # member -> its first pass line holding changes (the fill)
    check: str


class Routers:
    """The routers' own counters (``/sim/load/print``, free: no scan), for the bench."""

    def __init__(self, scenario: Scenario) -> None:
        self._apis = [librouteros.connect("127.0.0.1", USER, scenario.password, port=s.port, timeout=60)
                      for s in scenario.sims]

    def busy(self) -> list[float]:
        return [load(api).busy for api in self._apis]

    def scans(self) -> list[int]:
        return [load(api).scans_ip for api in self._apis]  # the ipv6 tables stay empty here

    def close(self) -> None:
        for api in self._apis:
            api.close()


def _cold_start(cluster: Cluster, watchers: list[Watcher], routers: Routers, mover: Mover,
                options: Options) -> Cold:
    started = time.monotonic()
    for m in MEMBER_IDS:
        cluster.start(m)
    deadline = started + options.cold_timeout
    filled: dict[str, float] = {}
    names = cluster.routers
    while len(filled) < len(names):
        cluster.check_alive()
        for name, w in zip(names, watchers):
            if name not in filled and w.count() >= mover.accounts:
                filled[name] = time.monotonic() - started
        if time.monotonic() > deadline:
            raise RuntimeError(f"cold start: routers not full after {options.cold_timeout:g} s "
                               f"({dict(zip(names, (w.count() for w in watchers)))})\n{cluster.tails()}")
        time.sleep(0.2)
    cluster.wait_owned(deadline)
    cluster.wait_quiet(QUIET, deadline, routers.busy)
    wall = time.monotonic() - started - QUIET
    first = {m: cluster.passes(m).first_fill for m in MEMBER_IDS}
    return Cold(wall, filled, first, _check(watchers, mover))


def _events(watchers: list[Watcher], mover: Mover, options: Options) -> list[float]:
    """COMMIT -> heard from every router, seconds (LOST: not within ``event_timeout``)."""
    latencies = []
    with mover.connect() as conn:
        for _ in range(options.events):
            key, before, committed = mover.move(conn)
            heard = [w.wait_seen(key, before, committed + options.event_timeout) for w in watchers]
            latencies.append(LOST if any(h is None for h in heard)
                             else max(h for h in heard if h is not None) - committed)
            time.sleep(options.event_gap)
    return latencies


def _takeover(cluster: Cluster, watchers: list[Watcher], routers: Routers, mover: Mover,
              options: Options) -> Trial:
    owners = cluster.owners()
    held = Counter(o for r, o in owners.items() if r != GLOBAL)
    victim = min(held, key=lambda m: (-held[m], m))
    mine = sorted(r for r, o in owners.items() if o == victim and r != GLOBAL)
    trial = Trial(victim, mine, owners.get(GLOBAL) == victim)
    resources = mine + ([GLOBAL] if trial.had_global else [])
    member = cluster.member(victim)
    kids = member.children()
    names = cluster.routers
    scans = routers.scans()
    killed = time.monotonic()
    member.kill()
    with mover.connect() as conn:
        key, before, _ = mover.move(conn)
    heard: dict[str, float] = {}
    deadline = killed + options.takeover_timeout
    orphans_checked = False
    while time.monotonic() < deadline and (trial.claimed == LOST or len(heard) < len(names)):
        now = time.monotonic()
        if trial.claimed == LOST:
            live = cluster.owners()
            if all(live.get(r) not in (None, victim) for r in resources):
                trial.claimed = now - killed
                trial.new_owners = {r: live[r] for r in resources}
        for name, w in zip(names, watchers):
            at = w.wait_seen(key, before, 0.0) if name not in heard else None
            if at is not None:
                heard[name] = at - killed
        if not orphans_checked and now - killed >= 2.0:
            trial.orphans = sum(Member.alive(pid) for pid in kids)
            orphans_checked = True
        time.sleep(options.poll)
    if all(r in heard for r in mine):
        trial.converged = max(heard[r] for r in mine)
    others = [r for r in names if r not in mine]
    if all(r in heard for r in others):
        trial.elsewhere = max((heard[r] for r in others), default=0.0)
    mid = routers.scans()
    trial.scans_taken = max(mid[names.index(r)] - scans[names.index(r)] for r in mine)
    _rejoin(cluster, watchers, routers, mover, options, trial, resources)
    end = routers.scans()
    trial.scans_back = max(end[names.index(r)] - mid[names.index(r)] for r in mine)
    return trial


def _rejoin(cluster: Cluster, watchers: list[Watcher], routers: Routers, mover: Mover,
            options: Options, trial: Trial, resources: list[str]) -> None:
    """The killed member again, same id: its claims back, then a probe change heard from
    every router and the logs quiet (the next trial starts from a settled world)."""
    started = time.monotonic()
    cluster.start(trial.victim)
    deadline = started + options.takeover_timeout
    while time.monotonic() < deadline:
        cluster.check_alive()
        live = cluster.owners()
        if all(live.get(r) == trial.victim for r in resources):
            trial.back = time.monotonic() - started
            break
        time.sleep(options.poll)
    with mover.connect() as conn:
        key, before, committed = mover.move(conn)
    heard = [w.wait_seen(key, before, committed + options.event_timeout) for w in watchers]
    if all(h is not None for h in heard):
        trial.rejoined = max(h for h in heard if h is not None) - started
    cluster.wait_quiet(QUIET, time.monotonic() + options.takeover_timeout, routers.busy)
    trial.check = _check(watchers, mover)


def _check(watchers: list[Watcher], mover: Mover, wait: float = 10.0) -> str:
    """Every router against billing: "ok", or per router what is missing, stray or
    doubled (a change's old entry may still be on its way out: up to ``wait`` s)."""
    expected = mover.expected()
    deadline = time.monotonic() + wait
    while True:
        bad = []
        for i, w in enumerate(watchers):
            have, entries = w.snapshot()
            missing, stray, doubled = len(expected - have), len(have - expected), entries - len(have)
            if missing or stray or doubled:
                bad.append(f"core-{i + 1}: {missing} missing, {stray} stray, {doubled} doubled")
        if not bad or time.monotonic() > deadline:
            return "; ".join(bad) or "ok"
        time.sleep(0.5)


# -- the table ----------------------------------------------------------------------------


def _rows(floor: float, ttl: float, cold: Cold, owners: dict[str, str], latencies: list[float],
          events_check: str, trials: list[Trial], passes: dict[str, Passes],
          restarts: dict[str, Passes], rss: dict[str, float], total: float) -> list[Row]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    served = "; ".join(f"{m}: {','.join(sorted(r for r, o in owners.items() if o == m)) or '-'}"
                       for m in MEMBER_IDS)
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    lost = sum(x == LOST for x in latencies)
    firsts = "; ".join(f"{m} {line}" for m, line in cold.first_pass.items())
    fills = ", ".join(f"{r} {t:.0f} s" for r, t in sorted(cold.filled.items()))
    rows = [
        Row("floor: one add on every router at once (router cost model)", floor),
        Row("members: cold start, 3 members -> every entry on every router [s]", cold.wall, None,
            max(rss.values()), f"filled {fills}; first passes: {firsts}; entries {cold.check}"),
        Row("members: billing change -> every router, p50 [s]", p50, floor, None,
            f"{len(latencies)} changes, {lost} not heard; owners {served}"),
        Row("members: billing change -> every router, p95 [s]", p95, floor, None,
            f"goal p95 <= {GOAL_EVENT_P95:g} s: {verdict(p95 <= GOAL_EVENT_P95)}; max "
            f"{_seconds(max(latencies))}; entries {events_check}"),
    ]
    if trials:
        rows += _trial_rows(trials, ttl, passes, restarts)
    rows.append(Row("members: whole measurement [s]", total, None, None,
                    "; ".join(f"{m}: {p.summary()}" for m, p in passes.items())))
    return rows


def _trial_rows(trials: list[Trial], ttl: float, passes: dict[str, Passes],
                restarts: dict[str, Passes]) -> list[Row]:
    goal = 2 * ttl + 1
    killed = {t.victim for t in trials}
    victims = Counter(f"{t.victim} ({','.join(t.routers)}{', global' if t.had_global else ''})"
                      for t in trials)
    claimed = [t.claimed for t in trials]
    converged = [t.converged for t in trials]
    rejoined = [t.rejoined for t in trials]
    checks = Counter(t.check for t in trials)
    # The passes that took over (the others' targets passes) and the restarted member's own.
    taking = [d for m, p in passes.items() if m not in killed for d in p.durations["targets"]]
    back = {kind: [d for m in killed for d in restarts[m].durations[kind]] for kind in ("full", "targets")}

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s" if values else "none"

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        Row(f"members: kill -9 -> its routers claimed by others, p95 [s] (ttl {ttl:g} s)",
            percentile(claimed, 95), None, None,
            f"goal <= 2 x ttl + 1 = {goal:g} s: {verdict(percentile(claimed, 95) <= goal)}; "
            f"{_spread(claimed)}; {len(trials)} trials, killed {', '.join(victims)}"),
        Row(f"members: kill -9 -> change on its routers (converged), p95 [s] (ttl {ttl:g} s)",
            percentile(converged, 95), None, None,
            f"goal <= {goal:g} s: {verdict(percentile(converged, 95) <= goal)}; {_spread(converged)}; "
            f"the others' targets passes {len(taking)}, p50 {median(taking)}; ip table scans per router "
            f"taken over: up to {max(t.scans_taken for t in trials)}; the change on the other routers "
            f"{_spread([t.elsewhere for t in trials])}"),
        Row("members: restart (same id) -> its routers back and a probe everywhere, p50 [s]",
            percentile(rejoined, 50), None, None,
            f"claims back {_spread([t.back for t in trials])}; probe {_spread(rejoined)}; the restarted "
            f"member's passes: {len(back['full'])} full p50 {median(back['full'])}, {len(back['targets'])} "
            f"targets p50 {median(back['targets'])}; ip table scans per router up to "
            f"{max(t.scans_back for t in trials)}; orphaned pass processes {sum(t.orphans for t in trials)}; "
            "entries after each trial: " + ", ".join(f"{c} x{n}" for c, n in checks.items())),
    ]
