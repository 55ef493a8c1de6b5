"""IPAM benchmark: 50,000 accounts in a /16, pure ``allocate`` then ``StateStore.reserve``.

Run: ``python bench/ipam_bench.py [--accounts N] [--network CIDR] [--url URL]``. Prints the
wall time of each step (first allocation, recording it in SQLite, a second, sticky
pass over the recorded leases, which must change nothing) and the peak memory: the
Python heap peak per step (tracemalloc) and the process's max RSS (getrusage).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from provisiond.core.ipam import Pool, allocate
from provisiond.core.model import Account
from provisiond.state.store import StateStore

T = TypeVar("T")


def step(name: str, fn: Callable[[], T]) -> T:
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    out = fn()
    took = time.perf_counter() - start
    extra = ""
    if tracing:
        extra = f"   heap peak +{(tracemalloc.get_traced_memory()[1] - base) / 2**20:7.1f} MiB"
    print(f"{name:<28} {took:8.3f} s{extra}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=50_000)
    p.add_argument("--network", default="10.32.0.0/16")
    p.add_argument("--url", help="state store URL (default: SQLite in a temp dir)")
    p.add_argument(
        "--tracemalloc", action="store_true",
        help="also trace the Python heap per step (several times slower)",
    )
    args = p.parse_args(argv)

    if args.tracemalloc:
        tracemalloc.start()
    wall = time.perf_counter()
    now = datetime.now(UTC)
    pool = Pool.build("bench", "bench", [args.network])
    accounts = [Account(str(i), groups=frozenset({"bench"})) for i in range(1, args.accounts + 1)]
    print(f"{args.accounts} accounts, pool {args.network} ({pool.size} usable addresses)")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'state.db'}"
        store = StateStore.open(url)
        try:
            first = step("allocate (empty pool)", lambda: allocate(accounts, [pool], [], now))
            failed = len(first.failures)
            step("reserve (one transaction)", lambda: store.reserve(first, now))
            leases = step("read leases", store.leases)
            again = step("allocate (sticky pass)", lambda: allocate(accounts, [pool], leases, now))
        finally:
            store.close()
    wall = time.perf_counter() - wall
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"leases recorded: {len(leases)}, failures: {failed}, second pass changed: {again.changed}")
    heap = ""
    if args.tracemalloc:
        heap = f", peak Python heap (tracemalloc) {tracemalloc.get_traced_memory()[1] / 2**20:.1f} MiB"
    print(f"wall time {wall:.2f} s (incl. store open), max RSS {maxrss:.1f} MiB{heap}")
    return 0 if len(leases) == args.accounts - failed and not again.changed else 1


if __name__ == "__main__":
    sys.exit(main())
