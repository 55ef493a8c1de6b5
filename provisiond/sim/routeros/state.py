"""Everything one simulated router remembers, shared by its connections.

``RouterSim`` owns one ``RouterState``; every ``Session`` (one per client
connection) runs its commands against it while holding ``lock``. Tests and
the demo reach it through ``RouterSim``'s methods: table contents, injected
faults, and the record of commands received.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from .addresslist import AddressTable, TableOptions
from .errors import Trap
from .settings import SimSettings

Clock = Callable[[], float]

MENUS = {"ip": "/ip/firewall/address-list", "ipv6": "/ipv6/firewall/address-list"}
_FAMILIES = {"ip": 4, "ipv6": 6}


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """One command as the router saw it; login secrets are redacted."""

    path: str
    attributes: tuple[tuple[str, str], ...]
    queries: tuple[str, ...]
    tag: str | None


class RouterState:
    def __init__(self, settings: SimSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.lock = threading.RLock()
        self.booted = clock()
        self.tables = {
            menu: AddressTable(
                TableOptions(
                    family=family,
                    first_id=settings.first_id,
                    iso_dates=settings.iso_dates,
                    timeout_marks_dynamic=settings.timeout_marks_dynamic,
                ),
                clock,
            )
            for menu, family in _FAMILIES.items()
        }
        self.counts: Counter[str] = Counter()
        self.history: deque[ReceivedCommand] = deque(maxlen=settings.history_size)
        self._faults: list[_Fault] = []

    def table_for_path(self, menu_path: str) -> AddressTable | None:
        for menu, path in MENUS.items():
            if path == menu_path:
                return self.tables[menu]
        return None

    def record(self, command: ReceivedCommand) -> None:
        self.counts[command.path] += 1
        self.history.append(command)

    def add_fault(self, path: str, fault: Trap | Drop, after: int = 0) -> None:
        self._faults.append(_Fault(path, fault, after))

    def take_fault(self, path: str) -> Trap | Drop | None:
        """The fault for this command, if one is due; counts down the ones waiting."""
        for index, entry in enumerate(self._faults):
            if entry.path != path:
                continue
            if entry.after:
                entry.after -= 1
                return None
            del self._faults[index]
            return entry.fault
        return None


@dataclass(frozen=True, slots=True)
class Drop:
    """Run the command, then close the connection before its reply (or any later one) leaves."""


@dataclass(slots=True)
class _Fault:
    path: str
    fault: Trap | Drop
    after: int  # matching commands to let through first
