"""IPAM benchmark: 50,000 accounts in a /16, pure ``allocate`` then ``StateStore.reserve``;
then the same accounts as /56 prefixes from a /40 (issue #24), in the same run.

Run: ``python bench/ipam_bench.py [--accounts N] [--network CIDR] [--prefix-network CIDR]
[--prefix-length N] [--url URL]``. Prints the wall time of each step (first allocation,
recording it in SQLite, a second, sticky pass over the recorded leases, which must
change nothing, and the RADIUS rows those leases give; pure steps best of ``--repeat``)
for both cases, the prefix
case's times as a ratio of the address case's, and the peak memory: the Python heap
peak per step (tracemalloc) and the process's max RSS (getrusage).
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
from provisiond.core.radius import GroupMapping, radius
from provisiond.state.store import StateStore

T = TypeVar("T")


def step(name: str, fn: Callable[[], T], took: dict[str, float], repeat: int = 1) -> T:
    """Run ``fn`` (``repeat`` times: a pure step; the best time counts) and print its time."""
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    elapsed = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        out = fn()
        elapsed = min(elapsed, time.perf_counter() - start)
    took[name] = elapsed
    extra = ""
    if tracing:
        extra = f"   heap peak +{(tracemalloc.get_traced_memory()[1] - base) / 2**20:7.1f} MiB"
    print(f"{name:<28} {elapsed:8.3f} s{extra}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=50_000)
    p.add_argument("--network", default="10.32.0.0/16")
    p.add_argument("--prefix-network", default="2001:db8:100::/40")
    p.add_argument("--prefix-length", type=int, default=56)
    p.add_argument("--url", help="state store URL (default: SQLite in a temp dir per case)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each pure step (allocate, RADIUS rows); the best one counts")
    p.add_argument(
        "--tracemalloc", action="store_true",
        help="also trace the Python heap per step (several times slower)",
    )
    args = p.parse_args(argv)

    if args.tracemalloc:
        tracemalloc.start()
    wall = time.perf_counter()
    accounts = [Account(str(i), groups=frozenset({"bench"}), usernames=(f"u{i}",))
                for i in range(1, args.accounts + 1)]
    ok = True
    times: dict[str, dict[str, float]] = {}
    for label, network, pool in (
        ("addresses", args.network, Pool.build("bench", "bench", [args.network])),
        ("prefixes", args.prefix_network,
         Pool.build("bench-pd", "bench", [args.prefix_network], prefix_length=args.prefix_length)),
    ):
        unit = "usable addresses" if pool.step == 1 else f"/{pool.length} prefixes"
        print(f"-- {label}: {args.accounts} accounts, pool {network} ({pool.size} {unit})")
        result, took = case(accounts, pool, args.url, args.repeat)
        ok = ok and result
        times[label] = took
    wall = time.perf_counter() - wall
    print("-- prefixes / addresses, same run:")
    for name in times["addresses"]:
        print(f"{name:<28} {times['prefixes'][name] / times['addresses'][name]:8.2f} x")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    heap = ""
    if args.tracemalloc:
        heap = f", peak Python heap (tracemalloc) {tracemalloc.get_traced_memory()[1] / 2**20:.1f} MiB"
    print(f"wall time {wall:.2f} s (incl. store open), max RSS {maxrss:.1f} MiB{heap}")
    return 0 if ok else 1


def case(accounts: list[Account], pool: Pool, url: str | None, repeat: int) -> tuple[bool, dict[str, float]]:
    """One pool: allocate, reserve, read back, a sticky pass and its RADIUS rows."""
    now = datetime.now(UTC)
    took: dict[str, float] = {}
    mapping = [GroupMapping(radius_group="bench", group="bench")]
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore.open(url or f"sqlite:///{Path(tmp) / 'state.db'}")
        try:
            first = step("allocate (empty pool)", lambda: allocate(accounts, [pool], [], now), took, repeat)
            failed = len(first.failures)
            step("reserve (one transaction)", lambda: store.reserve(first, now), took)
            leases = step("read leases", lambda: store.leases(pool.name), took)
            again = step("allocate (sticky pass)", lambda: allocate(accounts, [pool], leases, now), took, repeat)
            rows = step("radius rows (sticky pass)",
                        lambda: radius(accounts, again.addresses, mapping, pools=[pool])[0], took, repeat)
        finally:
            store.close()
    replies = sum(1 for r in rows.values() if r.kind == "radreply")
    print(f"leases recorded: {len(leases)}, failures: {failed}, second pass changed: {again.changed}, "
          f"radreply rows: {replies}")
    return len(leases) == len(accounts) - failed and not again.changed, took

if __name__ == "__main__":
    sys.exit(main())
