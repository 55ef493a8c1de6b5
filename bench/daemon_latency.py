"""Billing-change-to-router latency of ``provisiond run`` via NOTIFY, and its idle RSS.

Creates a throwaway PostgreSQL billing database (schema of ``provisiond demo``, the
notify trigger from config/billing-notify-trigger.sql), starts a RouterOS simulator in
this process and the daemon as a subprocess (interval 300 s, so every pass after the
first is NOTIFY-driven), then makes N single-account changes one after another, each
timed from COMMIT to the entry being on the router. Prints p50/p95/max and the
daemon's VmRSS after it has sat idle.

    python bench/daemon_latency.py [--changes 50] [--accounts 1000] [--debounce 1s]
        [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "daemon"))

from harness import (
    Billing,
    DaemonProc,
    new_password,
    pg_kwargs,
    wait_until,
    write_config,
)

from provisiond.sim import RouterSim, SimSettings


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--debounce", default="1s", help="daemon.debounce (default: the default, 1s)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds idle before measuring RSS")
    ap.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    if args.changes > args.accounts:
        ap.error("--changes cannot exceed --accounts")

    name = f"pvd_bench_{uuid.uuid4().hex[:10]}"
    admin = pg_kwargs(args.admin_url)
    with psycopg.connect(**admin) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory(prefix="provisiond-bench-") as tmp:
        d: DaemonProc | None = None
        directory = Path(tmp)
        password, password_file = new_password(directory)
        sim = RouterSim(SimSettings(username="admin", password=password, log_commands=False)).start()
        try:
            billing = Billing(url, accounts=args.accounts)
            members = list(range(1000, 1000 + args.accounts, 2))  # half are tower hosts to start
            billing.join("Tower Hosts", *members)
            config = write_config(directory, billing_url=url, router_port=sim.port,
                                  password_file=password_file,
                                  daemon={"interval": "300s", "notify_channel": "provisiond",
                                          "debounce": args.debounce})
            d = DaemonProc(config, log=directory / "daemon.log", verbosity="-v")
            d.wait_log(r"pass=1 result=ok", timeout=120)
            d.wait_log(r"listening for billing changes")

            def on_router(address: str) -> Callable[[], bool]:
                return lambda: any(r["address"] == address
                                   for r in sim.entries("ip", "tower-hosts"))

            latencies: list[float] = []
            candidates = [a for a in range(1000, 1000 + args.accounts) if a not in set(members)]
            for account in candidates[: args.changes]:
                address = Billing.address(account)
                t0 = time.monotonic()
                billing.join("Tower Hosts", account)
                wait_until(on_router(address), timeout=30, what=f"{address} on the router")
                latencies.append(time.monotonic() - t0)
            time.sleep(args.idle)
            rss = rss_kib(d.pid)
            passes = d.text().count(" result=ok duration=")
        finally:
            if d is not None:
                d.stop()
            sim.stop()
            with psycopg.connect(**admin) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"accounts={args.accounts} changes={len(latencies)} debounce={args.debounce} "
          f"passes={passes}")
    print(f"latency p50={percentile(latencies, 50):.3f}s p95={percentile(latencies, 95):.3f}s "
          f"max={max(latencies):.3f}s mean={statistics.fmean(latencies):.3f}s")
    print(f"idle RSS={rss / 1024:.1f} MiB (VmRSS after {args.idle:.0f}s idle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
