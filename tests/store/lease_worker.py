"""One racing process for test_leases.test_processes_never_double_lease.

Usage: python lease_worker.py URL WORKER COUNT BATCH. Its accounts join a few at a time;
each step re-reads the leases, allocates lowest-free and reserves only its own new
leases, retrying when another process got there first. Prints the retry count.
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime

from provisiond.core.ipam import Pool, allocate
from provisiond.core.model import Account
from provisiond.state.store import LeaseConflict, StateStore


def main(url: str, worker: int, count: int, batch: int) -> None:
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
                try:
                    store.reserve(own, now)
                    break
                except LeaseConflict:
                    retries += 1
    finally:
        store.close()
    print(retries)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
