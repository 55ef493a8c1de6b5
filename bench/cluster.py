"""The members bench's world (``bench.members``): shared ``provisiond run`` processes on a
state store database of their own, the claims table read from outside, and the billing
changes the bench makes.

``Cluster`` makes the state store database next to the scenario's billing one, one
config per member (``[daemon] members = "shared"``, its ``member_id``, the billing
NOTIFY channel), starts, kills and restarts members (``Member``: one log file per
start) and reads who holds which claim live, on the database's clock. ``Passes``
reads a member's logs back: its pass lines and claim moves. ``Mover`` moves accounts
to another billing group, one statement each, knows what every router should hold
afterwards, and puts them back at the end.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.router_load import PASS_LINE
from bench.scenario import PG, Scenario, address, group, list_name, stop_process

REPO = Path(__file__).resolve().parents[1]
GLOBAL = "global"  # the claim of the billing bookkeeping, IPAM and RADIUS work
IDLE_CPU = 0.15  # CPU seconds per second below which a member is idle (renewals, timers)
TICK = 1 / os.sysconf("SC_CLK_TCK")

_PASS = re.compile(r"pass=\d+ result=")
_LIVE = ("SELECT resource, owner FROM provisiond_claims "
         "WHERE owner IS NOT NULL AND expires_at >= now()")


class Member:
    """One member id's ``provisiond run`` processes, one at a time."""

    def __init__(self, member_id: str, config: Path, workdir: Path) -> None:
        self.member_id = member_id
        self.config = config
        self.workdir = workdir
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False  # by the bench: not running is expected

    def start(self) -> None:
        log = self.workdir / f"member-{self.member_id}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "provisiond.cli", "--config", str(self.config), "run"],
                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        self.killed = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9``: no release, no farewell; its claims run out on their own."""
        assert self.proc is not None
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if not self.running:
            return
        assert self.proc is not None
        stop_process(self.proc, 60)

    def children(self) -> list[int]:
        """The process's children now (its full-pass process, when one runs)."""
        if not self.running:
            return []
        assert self.proc is not None
        kids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                kids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        return kids

    def cpu_seconds(self) -> float:
        """CPU seconds of the running process and its children (0 when not running)."""
        if not self.running:
            return 0.0
        assert self.proc is not None
        total = 0.0
        for pid in (self.proc.pid, *self.children()):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) * TICK
        return total

    @staticmethod
    def alive(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"

    def peak_rss(self) -> float:
        """VmHWM of the running process, MiB (its full-pass processes not counted)."""
        if not self.running:
            return math.nan
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def tail(self, lines: int = 30) -> str:
        if not self.logs:
            return ""
        return "\n".join(self.logs[-1].read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True, slots=True)
class Passes:
    """What one member's logs (every start) say it did."""

    full: int
    targets: int
    scoped: int
    not_ok: int
    claimed: int  # "claimed resources=" lines
    released: int
    warnings: int  # WARNING and ERROR lines
    first_fill: str  # its first pass line that wrote something
    durations: dict[str, list[float]]  # full, targets, scoped -> seconds of each pass, in order

    @classmethod
    def read(cls, text: str) -> Passes:
        durations: dict[str, list[float]] = {"full": [], "targets": [], "scoped": []}
        not_ok = 0
        first = ""
        for line in text.splitlines():
            m = PASS_LINE.search(line)
            if m is None:
                continue
            rest = m.group(5)
            durations["targets" if " targets=" in rest else "scoped" if " scope=" in rest else "full"].append(
                float(m.group(3)))
            not_ok += m.group(2) != "ok"
            if not first and int(m.group(4)) > 0:
                first = line[line.index("pass="):].split(" conflicts=")[0]
        return cls(len(durations["full"]), len(durations["targets"]), len(durations["scoped"]), not_ok,
                   text.count(" claimed resources="), text.count(" released resources="),
                   len(re.findall(r"^\S+ \S+ (?:WARNING|ERROR|CRITICAL) ", text, re.M)), first,
                   durations)

    @property
    def count(self) -> int:
        return self.full + self.targets + self.scoped

    def summary(self) -> str:
        return (f"{self.count} passes ({self.full} full, {self.targets} targets, {self.scoped} "
                f"scoped, {self.not_ok} not ok), {self.claimed} claims, {self.released} releases, "
                f"{self.warnings} warnings/errors")


class Cluster:
    """The members on one state store, and the claims table as the bench reads it."""

    def __init__(self, scenario: Scenario, member_ids: tuple[str, ...], *, ttl: float | None,
                 interval: float | None) -> None:
        self.database = f"{scenario.database}_state"
        self.routers = [f"core-{i + 1}" for i in range(scenario.routers)]
        with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.database}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}"
        self._members: dict[str, Member] = {}
        for m in member_ids:
            config = scenario.write_config(state_url=url, name=f"member-{m}.toml")
            daemon = (f'\n[daemon]\nnotify_channel = "provisiond"\nmembers = "shared"\n'
                      f'member_id = "{m}"\n')
            if ttl is not None:
                daemon += f'member_ttl = "{ttl:g}s"\n'
            if interval is not None:
                daemon += f'interval = "{interval:g}s"\n'
            with config.open("a", encoding="utf-8") as fh:
                fh.write(daemon)
            self._members[m] = Member(m, config, scenario.workdir)
        self._conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
            f"{PG} dbname={self.database}", autocommit=True)

    def member(self, member_id: str) -> Member:
        return self._members[member_id]

    def start(self, member_id: str) -> None:
        self._members[member_id].start()

    def owners(self) -> dict[str, str]:
        """resource -> the member holding its claim live now ({} before the schema)."""
        try:
            return {r: o for r, o in self._conn.execute(_LIVE).fetchall()}
        except psycopg.errors.UndefinedTable:
            return {}

    def check_alive(self) -> None:
        for m in self._members.values():
            if m.proc is not None and not m.killed and not m.running:
                raise RuntimeError(f"member {m.member_id} exited {m.proc.returncode}:\n{m.tail()}")

    def wait_owned(self, deadline: float) -> None:
        """Until every router and ``global`` is held live by a running member."""
        want = [*self.routers, GLOBAL]
        while True:
            self.check_alive()
            live = self.owners()
            if all(live.get(r) in self._members and self._members[live[r]].running for r in want):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every router claimed: {live}\n{self.tails()}")
            time.sleep(0.1)

    def wait_quiet(self, quiet: float, deadline: float, routers: Callable[[], list[float]]) -> None:
        """Until for ``quiet`` seconds no member logged a pass line, none used more than a
        sliver of CPU (its full-pass process included), and no router had work queued.

        No pass logs its start, and one can sit silent for seconds (waiting on a router's
        scan, then planning): the CPU of the members and the routers' charged work
        (``routers()``: each router's busy seconds so far; a jump of X leaves it busy for
        the next X seconds) show it is under way."""
        last_lines, since = -1, time.monotonic()
        cpu = {m: m.cpu_seconds() for m in self._members.values()}
        busy, busy_until = routers(), 0.0
        while True:
            time.sleep(0.25)
            self.check_alive()
            now = time.monotonic()
            lines = sum(len(_PASS.findall(m.text())) for m in self._members.values())
            cpu_now = {m: m.cpu_seconds() for m in self._members.values()}
            working = any(cpu_now[m] - cpu.get(m, 0.0) > IDLE_CPU * 0.25 for m in cpu_now)
            busy_now = routers()
            busy_until = max([busy_until, *(now + b - a for a, b in zip(busy, busy_now) if b > a)])
            if lines != last_lines or working or now < busy_until:
                since = now
            last_lines, cpu, busy = lines, cpu_now, busy_now
            if now - since >= quiet:
                return
            if now > deadline:
                raise RuntimeError(f"the members did not settle within the wait:\n{self.tails()}")

    def passes(self, member_id: str, *, restarts: bool = False) -> Passes:
        """What ``member_id``'s logs say; ``restarts``: only those of its second start on."""
        m = self._members[member_id]
        logs = m.logs[1:] if restarts else m.logs
        return Passes.read("".join(p.read_text(errors="replace") for p in logs if p.exists()))

    def tails(self) -> str:
        return "\n".join(f"==== member {m.member_id}\n{m.tail()}" for m in self._members.values())

    def close(self, logs: Path | None) -> None:
        for m in self._members.values():
            m.stop()
        self._conn.close()
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            for m in self._members.values():
                for p in m.logs:
                    if p.exists():
                        shutil.copy(p, logs / p.name)
        with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


class Mover:
    """The bench's billing changes: an account moved to another group per statement."""

    def __init__(self, scenario: Scenario) -> None:
        self.accounts, self.lists, self.dsn = scenario.accounts, scenario.lists, scenario.dsn
        self.now: dict[int, int] = {}  # account index -> its group, once moved
        self._k = 0

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn, autocommit=True)

    def move(self, conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[tuple[str, str], float, float]:
        """The next account to another group: its (list, address) on the routers from now
        on, and ``time.monotonic()`` before the statement and after its COMMIT."""
        k, self._k = self._k, self._k + 1
        i = (k * 7919 + 13) % self.accounts  # spread over the table
        was = self.now.get(i, i % self.lists)
        new = (was + 1 + k % (self.lists - 1)) % self.lists  # never ``was``
        self.now[i] = new
        before = time.monotonic()
        conn.execute("UPDATE bench_accounts SET grp = %s WHERE id = %s", (group(new), i + 1))
        return (list_name(new), address(i)), before, time.monotonic()

    def expected(self) -> set[tuple[str, str]]:
        """Every (list, address) each router should hold now."""
        return {(list_name(self.now.get(i, i % self.lists)), address(i)) for i in range(self.accounts)}

    def undo(self) -> None:
        if not self.now:
            return
        with self.connect() as conn, conn.cursor() as cur:
            cur.executemany("UPDATE bench_accounts SET grp = %s WHERE id = %s",
                            [(group(i % self.lists), i + 1) for i in self.now])
