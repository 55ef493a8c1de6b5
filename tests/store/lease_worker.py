"""One racing process for test_leases.test_processes_never_double_lease.

Usage: python lease_worker.py URL WORKER COUNT BATCH BARRIER WORKERS [prefix]. Its accounts join
a few at a time; each step re-reads the leases, allocates lowest-free and reserves only
its own new leases, retrying when another process got there first. Prints the retry
count. Before its first reserve every worker waits for all WORKERS to have allocated
(files in the BARRIER directory), so the first step is a real race for the same
addresses: all but one must lose it and retry. With ``prefix`` the pool hands out /56s
from a /44 (issue #24) instead of addresses from a /22.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from provisiond.core.ipam import Pool, allocate
from provisiond.core.model import Account
from provisiond.errors import LeaseConflict
from provisiond.state.store import StateStore


def _barrier(directory: Path, worker: int, workers: int) -> None:
    (directory / f"w{worker}").touch()
    deadline = time.monotonic() + 120
    while len(list(directory.iterdir())) < workers:
        if time.monotonic() > deadline:
            raise SystemExit("barrier: the other workers never arrived")
        time.sleep(0.01)


def main(url: str, worker: int, count: int, batch: int, barrier: Path, workers: int, kind: str) -> None:
    if kind == "prefix":
        pool = Pool.build("race", "race", ["2001:db8::/44"], prefix_length=56)
    else:
        pool = Pool.build("race", "race", ["10.9.0.0/22"])
    mine = [Account(f"w{worker}-{i}", groups=frozenset({"race"})) for i in range(count)]
    retries = 0
    store = StateStore.open(url)
    try:
        for end in range(batch, count + batch, batch):
            while True:
                now = datetime.now(UTC)
                allocation = allocate(mine[:end], [pool], store.leases(), now)
                # The other processes' accounts look "gone" to this one: record only ours.
                own = dataclasses.replace(allocation, releases=(), returns=(), expired=())
                if end == batch and retries == 0:
                    _barrier(barrier, worker, workers)
                try:
                    store.reserve(own, now)
                    break
                except LeaseConflict:
                    retries += 1
    finally:
        store.close()
    print(retries)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6]),
         sys.argv[7] if len(sys.argv) > 7 else "address")
