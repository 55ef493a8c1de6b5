"""Everything one simulated router remembers, shared by its connections.

``RouterSim`` owns one ``RouterState``; every ``Session`` (one per client
connection) runs its commands against it while holding ``lock``. Tests and
the demo reach it through ``RouterSim``'s methods: table contents, injected
faults, the record of commands received, the router's load (``load``) and
its open listens (``listen``), and a reboot.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from .addresslist import AddressTable
from .entry import Entry, TableOptions
from .errors import Trap
from .listen import Listener, Listeners
from .load import RouterCpu
from .settings import SimSettings

Clock = Callable[[], float]

MENUS = {"ip": "/ip/firewall/address-list", "ipv6": "/ipv6/firewall/address-list"}
_FAMILIES = {"ip": 4, "ipv6": 6}


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """One command as the router saw it; login secrets are redacted. ``user``: the login
    of the session that sent it (None before login), ``peer``: its HOST:PORT, ``at``:
    ``time.monotonic()`` when it arrived (system-wide on Linux: comparable with another
    process's clock), so a test can tell who wrote what, and when."""

    path: str
    attributes: tuple[tuple[str, str], ...]
    queries: tuple[str, ...]
    tag: str | None
    user: str | None = None
    peer: str = ""
    at: float = 0.0


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
        self.cpu = RouterCpu(scan_cost_us=settings.scan_cost_us, add_cost_ms=settings.add_cost_ms)
        self.listeners = Listeners(dead_value=settings.dead_word, report_expiry=settings.report_expiry,
                                   dead_to_all=settings.dead_to_all_listeners, count=self.cpu.streamed)

    def table_for_path(self, menu_path: str) -> AddressTable | None:
        menu = menu_for_path(menu_path)
        return None if menu is None else self.tables[menu]

    def listen(self, listener: Listener) -> None:
        """Stream ``listener``'s menu's changes to it from now on."""
        menu = listener.watch.menu
        self.listeners.add(listener)
        table = self.tables[menu]
        if table.observer is None:
            def observe(old: Entry | None, new: Entry | None, expired: bool) -> None:
                self.listeners.changed(menu, table, old, new, expired=expired)

            table.observer = observe

    def unlisten(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        menu = listener.watch.menu
        if not self.listeners.listening(menu):
            self.tables[menu].observer = None

    def expire(self) -> None:
        """Drop the entries whose timeout has run out (listeners hear of it)."""
        for table in self.tables.values():
            table.expire()

    def reboot(self, next_id: int | None = None) -> None:
        """Tables as a reboot leaves them (``AddressTable.reboot``), uptime from zero,
        no listeners (the caller drops their connections)."""
        self.listeners.clear()
        for table in self.tables.values():
            table.observer = None
            table.reboot(next_id)
        self.booted = self.clock()

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


def menu_for_path(menu_path: str) -> str | None:
    """``ip`` for ``/ip/firewall/address-list``, ``ipv6`` for the IPv6 one, else None."""
    for menu, path in MENUS.items():
        if path == menu_path:
            return menu
    return None


@dataclass(frozen=True, slots=True)
class Drop:
    """Run the command, then close the connection before its reply (or any later one) leaves."""


@dataclass(slots=True)
class _Fault:
    path: str
    fault: Trap | Drop
    after: int  # matching commands to let through first
