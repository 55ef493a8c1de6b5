"""``./dev bench`` measurement "notify": billing change -> entry on every router, through
``provisiond run``, and the daemon's resident memory when idle.

Installs config/billing-notify-trigger.sql's function on the scenario's billing table
(one notification per statement, the ids it touched), starts the daemon as its own
process (interval 1 h: every pass after the first is NOTIFY-driven), waits for its first
(full) pass, reads its VmRSS after it has sat idle, then moves ``changes`` accounts to
another group one at a time: each UPDATE is timed from its COMMIT to the end of the pass
that put the entry on every router (the daemon's log line; its clock is this machine's),
and checked on every router afterwards. The floor: one print selecting an address (a
scan of the whole table on a router, as every query is; the simulator answers it from its
address index, as it answers a scoped pass's prints) plus one add, on every router at
once: the least a client that keeps no copy of the routers' lists must do per change.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import librouteros
import psycopg
from librouteros.query import Key

from bench.measure import Row, provisiond
from bench.scenario import USER, Scenario, address, group, list_name, stop_process

REPO = Path(__file__).resolve().parents[1]
TRIGGER_SQL = REPO / "config" / "billing-notify-trigger.sql"
BENCH_TRIGGERS = """
DROP TRIGGER IF EXISTS provisiond_notify_update ON bench_accounts;
CREATE TRIGGER provisiond_notify_update AFTER UPDATE ON bench_accounts
    REFERENCING NEW TABLE AS provisiond_new OLD TABLE AS provisiond_old
    FOR EACH STATEMENT EXECUTE FUNCTION provisiond_notify('id');
"""
IDLE = 5.0  # seconds the daemon sits idle before its RSS is read


def _vmrss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait(log: Path, proc: subprocess.Popen[bytes], needle: str, after: int, timeout: float) -> tuple[int, str]:
    """The first log line containing ``needle`` past offset ``after``: (offset, line)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        at = text.find(needle, after)
        if at >= 0:
            end = text.find("\n", at)
            if end >= 0:
                start = text.rfind("\n", 0, at) + 1
                return end, text[start:end]
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited {proc.returncode}:\n{text[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {needle!r} within {timeout}s:\n{text[-2000:]}")
        time.sleep(0.01)


def _stamp(line: str) -> float:
    """The epoch time of a log line (``2026-11-26 10:12:29,371 …``)."""
    when = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return when.timestamp()


def _apis(scenario: Scenario) -> list[object]:
    return [librouteros.connect("127.0.0.1", USER, scenario.password, port=s.port, timeout=300)
            for s in scenario.sims]


def _present(api: object, list_: str, addr: str) -> bool:
    path = api.path("ip", "firewall", "address-list")  # type: ignore[attr-defined]
    return any(True for _ in path.select(Key(".id")).where(Key("list") == list_, Key("address") == addr))


def _floor(scenario: Scenario, runs: int) -> float:
    """p50 of: a print selecting one address (a router scans its whole table for it; the
    simulator looks it up) and an add of one entry, on every router at once."""
    apis = _apis(scenario)
    times = []
    try:
        with ThreadPoolExecutor(len(apis)) as pool:
            for k in range(runs):
                addr = f"198.18.{k // 250}.{k % 250 + 1}"

                def one(api: object, addr: str = addr) -> None:
                    path = api.path("ip", "firewall", "address-list")  # type: ignore[attr-defined]
                    list(path.select(Key(".id")).where(Key("address") == addr))
                    ref = path.add(list="floor", address=addr, comment="bench floor")
                    path.remove(ref)

                started = time.monotonic()
                list(pool.map(one, apis))
                times.append(time.monotonic() - started)
    finally:
        for api in apis:
            api.close()  # type: ignore[attr-defined]
    return statistics.median(times)


def notify_latency(scenario: Scenario, *, changes: int = 30) -> list[Row]:
    if not scenario.sims:
        scenario.start_routers()
    config = scenario.write_config()
    if not (scenario.workdir / "state.db").exists():
        provisiond(config, "apply")  # the routers hold what billing says before we start
    with psycopg.connect(scenario.dsn, autocommit=True) as conn:
        conn.execute(TRIGGER_SQL.read_text())
        conn.execute(BENCH_TRIGGERS)
    with config.open("a", encoding="utf-8") as fh:
        fh.write('\n[daemon]\ninterval = "3600s"\njitter = "0s"\nnotify_channel = "provisiond"\n')
    log = scenario.workdir / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "provisiond.cli", "--config", str(config), "run"],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    try:
        mark, first = _wait(log, proc, "pass=1 result=", 0, timeout=3600)
        time.sleep(IDLE)
        idle_rss = _vmrss_mib(proc.pid)
        latencies: list[float] = []
        apis = _apis(scenario)
        missing = 0
        with psycopg.connect(scenario.dsn, autocommit=True) as conn:
            for k in range(changes):
                i = (k * 7919) % scenario.accounts  # spread over the table
                new = (i + k + 1) % scenario.lists or (i + 1) % scenario.lists
                conn.execute("UPDATE bench_accounts SET grp = %s WHERE id = %s", (group(new), i + 1))
                committed = time.time()
                mark, line = _wait(log, proc, " scope=", mark, timeout=600)
                latencies.append(_stamp(line) - committed)
                missing += sum(not _present(api, list_name(new), address(i)) for api in apis)
                time.sleep(0.3)  # a quiet spell: each change is the first after one
        for api in apis:
            api.close()  # type: ignore[attr-defined]
        peak_rss = _vmrss_mib(proc.pid)
    finally:
        stop_process(proc, 60)
    floor = _floor(scenario, 20)
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    note = f"{changes} changes, {missing} entries missing afterwards"
    return [
        Row("floor: one ?address= print + one add, all routers", floor),
        Row("notify: billing change -> every router, p50", p50, floor, None, note),
        Row("notify: billing change -> every router, p95", p95, floor, None,
            f"max {latencies[-1]:.2f} s"),
        Row("daemon idle after its first pass (VmRSS)", 0.0, None, idle_rss,
            f"first pass: {first.split('pass=1 ', 1)[-1][:60]}; after the changes {peak_rss:.0f} MiB"),
    ]
