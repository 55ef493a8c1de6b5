"""The ISP-sized world ``./dev bench`` measures: PostgreSQL billing, simulated routers, a config.

``Scenario`` seeds a throwaway database on the PostgreSQL server at 127.0.0.1:5432
(``accounts`` accounts spread over ``lists`` billing groups, one IPv4 address each),
starts ``routers`` RouterOS simulators as separate processes on loopback with a reply
latency of ``rtt`` seconds (the WAN model of ``--command-latency``), and writes a
provisiond config that maps every group to a list on every router. Everything is
removed on ``close``. Nothing leaves loopback.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

PG = "host=127.0.0.1 port=5432 user=postgres"
USER = "bench"
BILLING_QUERY = (
    "SELECT id AS account_id, name AS account_name, status, grp AS group_name, "
    "ip AS ip_address, NULL AS radius_username FROM bench_accounts"
)


def address(i: int) -> str:
    """The i-th address of 100.64.0.0/10 (4 million of them)."""
    n = (100 << 24) + (64 << 16) + i
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def group(i: int) -> str:
    return f"group-{i}"


def list_name(i: int) -> str:
    return f"list-{i}"


@dataclass(slots=True)
class Sim:
    proc: subprocess.Popen[str]
    port: int


def start_sim(*, rtt: float, password: str, name: str, scan_cost_us: float = 0.0,
              add_cost_ms: float = 0.0) -> Sim:
    """A simulator process; ``scan_cost_us``/``add_cost_ms``: its router CPU cost model."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisiond.sim", "--listen", "127.0.0.1:0", "--user", USER,
         f"--password={password}", "--name", name, "--quiet", "--command-latency", str(rtt),
         "--scan-cost-us", str(scan_cost_us), "--add-cost-ms", str(add_cost_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"listening on [\d.]+:(\d+)", line)
        if m:
            return Sim(proc, int(m.group(1)))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the RouterOS simulator did not start")


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_sim(sim: Sim) -> None:
    stop_process(sim.proc, 10)


@dataclass
class Scenario:
    accounts: int
    routers: int
    lists: int
    rtt: float
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="provisiond-bench-")))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    database: str = field(default_factory=lambda: f"provisiond_bench_{os.getpid()}")
    sims: list[Sim] = field(default_factory=list)

    # -- billing ----------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return f"{PG} dbname={self.database}"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}"

    def seed(self) -> None:
        with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}"')
            conn.execute(f'CREATE DATABASE "{self.database}"')
        with psycopg.connect(self.dsn) as conn:
            conn.execute("CREATE TABLE bench_accounts (id int PRIMARY KEY, name text NOT NULL, "
                         "status text NOT NULL, grp text NOT NULL, ip text NOT NULL)")
            self.add_accounts(conn, 0, self.accounts)
            conn.execute("ANALYZE bench_accounts")

    def add_accounts(self, conn: psycopg.Connection, start: int, count: int) -> None:
        buf = io.StringIO()
        for i in range(start, start + count):
            buf.write(f"{i + 1}\tAccount {i + 1}\tactive\t{group(i % self.lists)}\t{address(i)}\n")
        with conn.cursor().copy("COPY bench_accounts FROM STDIN") as copy:
            copy.write(buf.getvalue())

    def churn(self, count: int) -> None:
        """``count`` new accounts, all in the first group (list-0)."""
        with psycopg.connect(self.dsn) as conn:
            first = conn.execute("SELECT coalesce(max(id), 0) FROM bench_accounts").fetchone()
            assert first is not None
            start = int(first[0])
            buf = io.StringIO()
            for i in range(start, start + count):
                buf.write(f"{i + 1}\tAccount {i + 1}\tactive\t{group(0)}\t{address(i)}\n")
            with conn.cursor().copy("COPY bench_accounts FROM STDIN") as copy:
                copy.write(buf.getvalue())

    # -- routers ----------------------------------------------------------------------

    def start_routers(self, *, scan_cost_us: float = 0.0, add_cost_ms: float = 0.0) -> None:
        """Fresh (empty) simulators; any running ones are stopped first. The costs are the
        router CPU model of ``provisiond.sim`` (0: free, only the counters move)."""
        self.stop_routers()
        self.sims = [start_sim(rtt=self.rtt, password=self.password, name=f"core-{i + 1}",
                               scan_cost_us=scan_cost_us, add_cost_ms=add_cost_ms)
                     for i in range(self.routers)]

    def stop_routers(self) -> None:
        for sim in self.sims:
            stop_sim(sim)
        self.sims = []

    # -- provisiond -------------------------------------------------------------------

    def write_config(self, *, state_url: str | None = None, name: str = "provisiond.toml") -> Path:
        """The config file ``name`` in the workdir; its state store ``state_url`` (default:
        an SQLite file in the workdir)."""
        pw = self.workdir / "router-password"
        pw.write_text(self.password)
        state = state_url or f"sqlite:///{self.workdir / 'state.db'}"
        parts = [f'[source]\nurl = "{self.url}"\nquery = """\n{BILLING_QUERY}\n"""\n'
                 f"max_account_drop = 0.9\n\n[state]\nurl = \"{state}\"\n"]
        for i, sim in enumerate(self.sims):
            parts.append(f'[[router]]\nname = "core-{i + 1}"\nhost = "127.0.0.1"\nport = {sim.port}\n'
                         f'username = "{USER}"\npassword_file = "{pw}"\ntimeout = "300s"\n')
        for i in range(self.lists):
            parts.append(f'[[address_list]]\ngroup = "{group(i)}"\nlist = "{list_name(i)}"\n')
        config = self.workdir / name
        config.write_text("\n".join(parts), encoding="utf-8")
        return config

    def close(self) -> None:
        self.stop_routers()
        with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.workdir, ignore_errors=True)
