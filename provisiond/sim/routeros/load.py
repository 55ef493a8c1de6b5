"""The router's CPU as one queue: what each command costs it, and counters of that work.

``session`` asks ``RouterCpu.charge`` for every address-list command while
holding the state lock, so commands from all connections pass through it in
arrival order, as through a router's one API process. A print of an address
table costs ``scan_cost_us`` per row of the *whole* table whether or not a
query narrows it (a router scans every row; ../shared/ROUTEROS.md 6, 8), a write
``add_cost_ms`` per entry written; ``listen`` and the streaming part of
``follow`` cost nothing. The charge moves ``busy_until`` (monotonic seconds)
and the command's reply leaves no earlier than that, so a client's
read waits behind another client's scan. With both costs 0 nothing is
delayed and only the counters move.

``RouterLoad`` is the counters' snapshot that tests and benches read
(``RouterSim.load``, or ``/sim/load/print`` from another process).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class RouterLoad:
    """Work done since the router started (or since ``reset_load``)."""

    #: Prints (``count-only`` included) per menu (``ip``, ``ipv6``): one table scan each.
    scans: Mapping[str, int]
    #: Rows those scans went over: the table's size at each print, not the rows returned.
    rows_scanned: Mapping[str, int]
    #: Entries written (added, changed, removed) by commands, per menu.
    writes: Mapping[str, int]
    #: ``!re`` sentences streamed to listeners (listen, follow), per menu.
    events: Mapping[str, int]
    #: Seconds of router CPU charged by the cost model.
    busy_seconds: float

    def as_row(self) -> dict[str, str]:
        """One ``!re`` row of ``/sim/load/print``: ``scans-ip=3``, ``busy-seconds=0.25``..."""
        row: dict[str, str] = {}
        for name, counts in (("scans", self.scans), ("rows-scanned", self.rows_scanned),
                             ("writes", self.writes), ("events", self.events)):
            for menu in ("ip", "ipv6"):
                row[f"{name}-{menu}"] = str(counts.get(menu, 0))
        row["busy-seconds"] = f"{self.busy_seconds:.6f}"
        return row


class RouterCpu:
    """Charges and counts; not thread-safe (the caller holds the state lock)."""

    def __init__(self, *, scan_cost_us: float = 0.0, add_cost_ms: float = 0.0) -> None:
        self._row_cost = scan_cost_us / 1e6
        self._write_cost = add_cost_ms / 1e3
        self.busy_until = 0.0
        self._scans: Counter[str] = Counter()
        self._rows: Counter[str] = Counter()
        self._writes: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._busy = 0.0

    def scan(self, menu: str, rows: int) -> float:
        """A print of ``menu``'s table of ``rows`` rows; returns when the router is done
        with it (monotonic; 0.0 when it costs nothing)."""
        self._scans[menu] += 1
        self._rows[menu] += rows
        return self._charge(self._row_cost * rows)

    def write(self, menu: str, entries: int) -> float:
        self._writes[menu] += entries
        return self._charge(self._write_cost * entries)

    def streamed(self, menu: str, count: int = 1) -> None:
        self._events[menu] += count

    def _charge(self, cost: float) -> float:
        if cost <= 0:
            return 0.0
        self._busy += cost
        self.busy_until = max(self.busy_until, time.monotonic()) + cost
        return self.busy_until

    def snapshot(self) -> RouterLoad:
        return RouterLoad(
            scans=MappingProxyType(dict(self._scans)),
            rows_scanned=MappingProxyType(dict(self._rows)),
            writes=MappingProxyType(dict(self._writes)),
            events=MappingProxyType(dict(self._events)),
            busy_seconds=self._busy,
        )

    def reset(self) -> None:
        """Zero the counters (the queue of work already charged stays)."""
        for counter in (self._scans, self._rows, self._writes, self._events):
            counter.clear()
        self._busy = 0.0
