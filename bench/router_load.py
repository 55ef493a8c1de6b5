"""``./dev bench`` measurement "router-load": what ``provisiond run`` costs the routers
(issue 22), each figure next to its goal.

Starts the scenario's routers with the simulator's CPU cost model (``--scan-cost-us``
per row of the whole table for every print, ``--add-cost-ms`` per entry written;
RB5009-class by default), installs the billing NOTIFY trigger
(config/billing-notify-trigger.sql) and runs the real daemon as its own process
(``[daemon] notify_channel``; its default interval unless ``--interval`` is given).
Every router is watched from the bench through an API ``listen`` on its address
list, opened before the daemon starts, so the bench knows every entry's ``.id`` and
when each change left the router without ever printing (a print would cost the router
a scan). The router's counters are read with ``/sim/load/print`` (free). Phases:

* after the daemon's first (full) pass, a quiet spell up to the end of its next full
  pass: R1 = table scans (``ip`` + ``ipv6``) per router in it;
* ``--events`` billing changes, one at a time (an account moved to another group):
  R2 = COMMIT -> the entry's ``!re`` heard from every router, p50/p95 (a change not
  heard within ``--event-timeout`` counts as lost);
* ``--deletes`` managed entries removed by hand over the API, one every
  ``Options.delete_gap`` seconds over the routers in turn: R3 = remove -> the
  entry's ``!re`` again, p50/p95, and how many are not back ``--restore-wait``
  seconds after their removal;
* R4 = router CPU seconds charged (``busy-seconds``) over wall seconds, per router,
  from the end of the first full pass to the end of the first full pass after the
  deletes: whole intervals, the full passes and every event above amortised in them
  (the bench's own removes subtracted).

The billing changes are undone and the routers stopped afterwards.
"""

from __future__ import annotations

import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import librouteros
import psycopg

from bench.measure import Row
from bench.notify import BENCH_TRIGGERS, TRIGGER_SQL
from bench.scenario import USER, Scenario, address, group, list_name, stop_process
from provisiond.sim.routeros.codec import PeerClosed, encode_sentence, read_sentence

REPO = Path(__file__).resolve().parents[1]
AL = "/ip/firewall/address-list"
PASS_LINE = re.compile(r"pass=(\d+) result=(\S+) duration=([\d.]+)s changes=(\d+)(.*)$")

#: Issue 22's goals: R1 scans per full pass, R2 and R3 p95 seconds, R4 percent of a router.
GOAL_SCANS = 2.0
GOAL_EVENT_P95 = 1.0
GOAL_RESTORE_P95 = 3.0
GOAL_CPU_PERCENT = 2.0
#: A change not heard of, an entry not back, within the bounded wait: ``inf`` in the table.
LOST = float("inf")


@dataclass(frozen=True, slots=True)
class Options:
    scan_cost_us: float = 80.0
    add_cost_ms: float = 1.2
    events: int = 20
    event_timeout: float = 120.0
    event_gap: float = 0.5
    deletes: int = 20
    delete_gap: float = 0.5
    restore_wait: float = 10.0
    interval: float | None = None  # the daemon's own default when None
    pass_timeout: float = 1800.0


class Watcher:
    """One router's address-list changes as the router sends them (an API ``listen``):
    each entry's ``.id`` and when each (list, address) was last added or changed."""

    def __init__(self, port: int, password: str) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._sock.settimeout(None)
        self._reader = self._sock.makefile("rb")
        self._send("/login", f"=name={USER}", f"=password={password}")
        reply = read_sentence(self._reader.read)
        if reply[0] != "!done":
            raise RuntimeError(f"router on port {port} refused the bench's login: {reply}")
        self._send(f"{AL}/listen", ".tag=bench")
        self._changed = threading.Condition()
        self.ids: dict[tuple[str, str], str] = {}  # (list, address) -> .id
        self._keys: dict[str, tuple[str, str]] = {}
        self.seen: dict[tuple[str, str], float] = {}  # -> monotonic time of its last !re
        self.events = 0
        self._thread = threading.Thread(target=self._run, name=f"bench-listen-{port}", daemon=True)
        self._thread.start()

    def _send(self, *words: str) -> None:
        self._sock.sendall(encode_sentence(words))

    def _run(self) -> None:
        try:
            while True:
                words = read_sentence(self._reader.read)
                now = time.monotonic()
                if not words or words[0] != "!re":
                    continue
                attrs = dict(w[1:].split("=", 1) for w in words[1:] if w.startswith("="))
                with self._changed:
                    self.events += 1
                    ident = attrs.get(".id", "")
                    if ".dead" in attrs:
                        key = self._keys.pop(ident, None)
                        if key is not None and self.ids.get(key) == ident:
                            del self.ids[key]
                        continue
                    key = (attrs.get("list", ""), attrs.get("address", ""))
                    old = self._keys.get(ident)
                    if old is not None and old != key and self.ids.get(old) == ident:
                        del self.ids[old]
                    self._keys[ident] = key
                    self.ids[key] = ident
                    self.seen[key] = now
                    self._changed.notify_all()
        except (PeerClosed, OSError, ValueError):
            return

    def wait_seen(self, key: tuple[str, str], since: float, deadline: float) -> float | None:
        """When ``key`` was heard at or after ``since``; None if not by ``deadline``."""
        with self._changed:
            while True:
                at = self.seen.get(key)
                if at is not None and at >= since:
                    return at
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def wait_count(self, count: int, deadline: float) -> bool:
        with self._changed:
            while len(self.ids) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def count(self) -> int:
        """How many (list, address) pairs the router holds now."""
        with self._changed:
            return len(self.ids)

    def snapshot(self) -> tuple[set[tuple[str, str]], int]:
        """The (list, address) pairs on the router now, and how many entries hold them
        (more entries than pairs: some pair is there twice)."""
        with self._changed:
            return set(self.ids), len(self._keys)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)


@dataclass(frozen=True, slots=True)
class Load:
    scans_ip: int
    scans_ipv6: int
    busy: float
    at: float  # monotonic

    @property
    def scans(self) -> int:
        return self.scans_ip + self.scans_ipv6


def load(api: librouteros.api.Api) -> Load:
    (row,) = tuple(api("/sim/load/print"))
    return Load(int(row["scans-ip"]), int(row["scans-ipv6"]), float(str(row["busy-seconds"])),
                time.monotonic())


class DaemonLog:
    """The daemon's log as it grows: waits for its pass lines."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.path = path
        self.proc = proc
        self.offset = 0
        self.full_passes = 0
        self.passes = 0
        self.tail = ""

    def catch_up(self) -> None:
        """Take in every pass line logged so far: the next full pass is one still to come."""
        self._lines()

    def _lines(self) -> str | None:
        """Count the complete lines past the offset; stop after a full pass's (returned)."""
        text = self.path.read_text(errors="replace")
        while (end := text.find("\n", self.offset)) >= 0:
            line, self.offset = text[self.offset:end], end + 1
            m = PASS_LINE.search(line)
            if m is None:
                continue
            self.passes += 1
            if " scope=" not in m.group(5) and " targets=" not in m.group(5):
                self.full_passes += 1
                return line
        self.tail = text[-2000:]
        return None

    def next_full_pass(self, timeout: float) -> str:
        """The next full pass's line (not scoped to accounts or targets) past the offset."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._lines()
            if line is not None:
                return line
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited {self.proc.returncode}:\n{self.tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no full pass within {timeout:g}s:\n{self.tail}")
            time.sleep(0.05)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _seconds(value: float) -> str:
    return "lost" if value == LOST else f"{value:.2f} s"



def router_load(scenario: Scenario, options: Options) -> list[Row]:
    if scenario.lists < 2:
        raise SystemExit("router-load moves accounts between groups: --lists must be at least 2")
    scenario.stop_routers()
    (scenario.workdir / "state.db").unlink(missing_ok=True)
    scenario.start_routers(scan_cost_us=options.scan_cost_us, add_cost_ms=options.add_cost_ms)
    config = scenario.write_config()
    with psycopg.connect(scenario.dsn, autocommit=True) as conn:
        conn.execute(TRIGGER_SQL.read_text())
        conn.execute(BENCH_TRIGGERS)
    daemon = '\n[daemon]\nnotify_channel = "provisiond"\n'
    if options.interval is not None:
        daemon += f'interval = "{options.interval:g}s"\n'
    with config.open("a", encoding="utf-8") as fh:
        fh.write(daemon)
    watchers = [Watcher(s.port, scenario.password) for s in scenario.sims]
    apis = [librouteros.connect("127.0.0.1", USER, scenario.password, port=s.port, timeout=600)
            for s in scenario.sims]
    moved: dict[int, int] = {}  # account index -> its group before the bench moved it
    log_path = scenario.workdir / "router-load-daemon.log"
    with log_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "provisiond.cli", "--config", str(config), "run"],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    try:
        log = DaemonLog(log_path, proc)
        print("router-load: waiting for the daemon's first pass …", file=sys.stderr, flush=True)
        first = log.next_full_pass(options.pass_timeout)
        deadline = time.monotonic() + 60
        if not all(w.wait_count(scenario.accounts, deadline) for w in watchers):
            raise RuntimeError("the routers did not stream every entry of the first pass")
        start = [load(api) for api in apis]
        passes_at_start = log.full_passes

        print("router-load: R1, a quiet spell up to the next full pass …", file=sys.stderr, flush=True)
        log.next_full_pass(options.pass_timeout)
        after_quiet = [load(api) for api in apis]
        scans = [b.scans - a.scans for a, b in zip(start, after_quiet)]
        split = [f"{b.scans_ip - a.scans_ip} ip + {b.scans_ipv6 - a.scans_ipv6} ipv6"
                 for a, b in zip(start, after_quiet)]
        pass_busy = [b.busy - a.busy for a, b in zip(start, after_quiet)]

        print(f"router-load: R2, {options.events} billing changes …", file=sys.stderr, flush=True)
        latencies = _events(scenario, watchers, options, moved)

        print(f"router-load: R3, {options.deletes} entries removed by hand …", file=sys.stderr, flush=True)
        restores, own_removes = _deletes(scenario, watchers, apis, options)

        print("router-load: R4, up to the end of the next full pass …", file=sys.stderr, flush=True)
        log.catch_up()
        log.next_full_pass(options.pass_timeout)
        end = [load(api) for api in apis]
        full_passes = log.full_passes - passes_at_start
    finally:
        stop_process(proc, 60)
        for watcher in watchers:
            watcher.close()
        for api in apis:
            api.close()
        _undo(scenario, moved)
        scenario.stop_routers()
        (scenario.workdir / "state.db").unlink(missing_ok=True)

    own = options.add_cost_ms / 1000
    cpu = [100 * (b.busy - a.busy - own * n) / (b.at - a.at) for a, b, n in zip(start, end, own_removes)]
    window = statistics.mean(b.at - a.at for a, b in zip(start, end))
    r1 = max(scans)
    r2_50, r2_95 = percentile(latencies, 50), percentile(latencies, 95)
    lost_events = sum(x == LOST for x in latencies)
    r3_50, r3_95 = percentile(restores, 50), percentile(restores, 95)
    lost = sum(x == LOST for x in restores)
    r4 = max(cpu)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    first_pass = first[first.find("result="):][:40]
    return [
        Row("router-load R1: table scans per router per full pass [count]", r1, GOAL_SCANS, None,
            f"goal <= {GOAL_SCANS:g}: {verdict(r1 <= GOAL_SCANS)}; per router {', '.join(split)}; "
            f"router CPU per full pass {max(pass_busy):.2f} s; first pass {first_pass}"),
        Row("router-load R2: billing change -> every router, p50 [s]", r2_50, GOAL_EVENT_P95, None,
            f"{len(latencies)} changes, {lost_events} not heard within {options.event_timeout:g} s"),
        Row("router-load R2: billing change -> every router, p95 [s]", r2_95, GOAL_EVENT_P95, None,
            f"goal p95 <= {GOAL_EVENT_P95:g} s: {verdict(r2_95 <= GOAL_EVENT_P95)}; p95 {_seconds(r2_95)}, "
            f"max {_seconds(max(latencies))}"),
        Row("router-load R3: entry removed by hand -> back, p50 [s]", r3_50, GOAL_RESTORE_P95, None,
            f"p50 {_seconds(r3_50)}; {len(restores)} removed"),
        Row("router-load R3: entry removed by hand -> back, p95 [s]", r3_95, GOAL_RESTORE_P95, None,
            f"goal p95 <= {GOAL_RESTORE_P95:g} s, 0 lost: {verdict(r3_95 <= GOAL_RESTORE_P95 and not lost)}; "
            f"p95 {_seconds(r3_95)}; {lost} of {len(restores)} not back within {options.restore_wait:g} s"),
        Row("router-load R4: router CPU on provisiond [% of one router]", r4, GOAL_CPU_PERCENT, None,
            f"goal <= {GOAL_CPU_PERCENT:g} %: {verdict(r4 <= GOAL_CPU_PERCENT)}; per router "
            f"{', '.join(f'{c:.1f}' for c in cpu)} % over {window:.0f} s, {full_passes} full passes, "
            f"{len(latencies)} changes, {len(restores)} repairs"),
    ]


def _events(scenario: Scenario, watchers: list[Watcher], options: Options, moved: dict[int, int]) -> list[float]:
    """COMMIT -> heard from every router, seconds (inf: not within ``event_timeout``)."""
    latencies: list[float] = []
    now: dict[int, int] = {}  # account index -> its group now, once moved
    with psycopg.connect(scenario.dsn, autocommit=True) as conn:
        for k in range(options.events):
            i = (k * 7919 + 13) % scenario.accounts  # spread over the table
            was = now.get(i, i % scenario.lists)
            new = (was + 1 + k % (scenario.lists - 1)) % scenario.lists  # never ``was``
            moved.setdefault(i, i % scenario.lists)
            now[i] = new
            key = (list_name(new), address(i))
            before = time.monotonic()
            conn.execute("UPDATE bench_accounts SET grp = %s WHERE id = %s", (group(new), i + 1))
            committed = time.monotonic()
            deadline = committed + options.event_timeout
            heard = [w.wait_seen(key, before, deadline) for w in watchers]
            if any(h is None for h in heard):
                latencies.append(LOST)
            else:
                latencies.append(max(h for h in heard if h is not None) - committed)
            time.sleep(options.event_gap)
    return latencies


def _deletes(scenario: Scenario, watchers: list[Watcher], apis: list[librouteros.api.Api],
             options: Options) -> tuple[list[float], list[int]]:
    """Remove -> heard again, seconds (inf: not within ``restore_wait``); and how many
    removes the bench made on each router."""
    removed: list[tuple[int, tuple[str, str], float]] = []  # router, key, when
    own = [0] * len(apis)
    for k in range(options.deletes):
        r = k % len(apis)
        i = (k * 104729 + 7) % scenario.accounts
        key = (list_name(i % scenario.lists), address(i))
        ident = watchers[r].ids.get(key)
        if ident is None:  # moved by the billing changes: the next one
            continue
        path = apis[r].path("ip", "firewall", "address-list")
        at = time.monotonic()
        path.remove(ident)
        own[r] += 1
        removed.append((r, key, at))
        time.sleep(options.delete_gap)
    restores = []
    for r, key, at in removed:
        back = watchers[r].wait_seen(key, at, at + options.restore_wait)
        restores.append(LOST if back is None else back - at)
    return restores, own


def _undo(scenario: Scenario, moved: dict[int, int]) -> None:
    """Put the accounts the bench moved back into their groups."""
    if not moved:
        return
    with psycopg.connect(scenario.dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("UPDATE bench_accounts SET grp = %s WHERE id = %s",
                            [(group(g), i + 1) for i, g in moved.items()])
