"""Settings of one simulated router, and the clock it reads.

``SimSettings`` is built by the CLI (``python -m provisiond.sim``), by the
product's demo and by tests, and handed to ``RouterSim``. Behaviour that the
reference material leaves open (../shared/ROUTEROS.md marks it [inf]) is a setting
here, so a client can be tested against both answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .values import parse_version

DEFAULT_VERSION = "7.18.2 (stable)"
DEFAULT_IDENTITY = "MikroTik"


@dataclass(frozen=True, slots=True)
class SimSettings:
    username: str = "admin"
    password: str = ""
    #: More logins, name -> password, beside ``username``/``password`` (several clients
    #: that a test tells apart in ``RouterSim.history`` by the user they logged in as).
    users: Mapping[str, str] = field(default_factory=dict)
    #: As ``/system/resource/print`` shows it; drives ``!empty`` and date format.
    version: str = DEFAULT_VERSION
    #: ``/system/identity`` name.
    identity: str = DEFAULT_IDENTITY
    host: str = "127.0.0.1"
    port: int = 0
    #: Pre-6.43 login: ``/login`` always answers with an MD5 challenge.
    legacy_login: bool = False
    #: Fixed hex challenge for legacy login (tests); None: random per login.
    login_challenge: str | None = None
    #: Multi-id remove with an unknown id: True removes nothing, False removes
    #: the known ids; both then trap ``no such item (4)``.
    atomic_remove: bool = True
    #: Report entries that have a timeout as ``dynamic=true`` (RouterOS 6
    #: behaviour); by default only ``dynamic=yes`` / injected entries are.
    timeout_marks_dynamic: bool = False
    #: A WAN link: each reply leaves this many seconds after its own command
    #: arrived, so pipelined (tagged) commands overlap as on a real link.
    command_latency: float = 0.0
    #: Seconds per table row scanned by a print (a router scans every row);
    #: the router's work, done one command at a time per connection.
    row_latency: float = 0.0
    #: The router's CPU, one queue for all connections (``load``): microseconds per
    #: row of the whole table for every address-list print, whatever its query...
    scan_cost_us: float = 0.0
    #: ...and milliseconds per entry an add/set/remove/enable/disable writes.
    add_cost_ms: float = 0.0
    #: ``listen`` and ``print =follow=``/``=follow-only=`` are known. False: a router
    #: without them (``listen`` traps ``no such command``, category 0, as any unknown
    #: command does; ``follow`` traps ``unknown parameter follow``, category 1).
    listen: bool = True
    #: An entry whose timeout runs out is reported to listeners as ``.dead``
    #: (../shared/ROUTEROS.md 8 [inf]); False: expiries are not streamed at all.
    report_expiry: bool = True
    #: A removal reaches every listen of its menu, not only those whose query
    #: selected the entry (../shared/ROUTEROS.md 8 [inf]).
    dead_to_all_listeners: bool = False
    #: The value of ``.dead`` on a removal; None: ``yes`` before v7, ``true`` from v7
    #: (v7 prints booleans as ``true``/``false``; ../shared/ROUTEROS.md 8).
    dead_value: str | None = None
    #: Seconds between the router's checks for expired entries (so listeners hear
    #: of expiries without a client touching the table); 0: only when touched.
    expiry_poll: float = 0.2
    #: Where a reply's ``.tag`` goes: right after the reply word, or last, after
    #: the attributes (seen from real routers: Trakkasure/mikronode#26).
    tag_last: bool = False
    #: Sentences accepted before a successful login; more gets ``!fatal``.
    max_pre_login_sentences: int = 10
    #: Largest word accepted before login, in bytes.
    max_pre_login_word: int = 4096
    #: First ``.id`` number handed out (``*1`` on a fresh router).
    first_id: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Log every command at INFO (path and tag only, never attribute values).
    log_commands: bool = True
    #: How many received commands ``RouterSim.history`` keeps.
    history_size: int = 10_000

    def __post_init__(self) -> None:
        parse_version(self.version)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        for name in ("scan_cost_us", "add_cost_ms", "expiry_poll", "row_latency", "command_latency"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def password_of(self, user: str | None) -> str | None:
        """The password ``user`` logs in with, or None for an unknown user."""
        if user == self.username:
            return self.password
        return None if user is None else self.users.get(user)

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return parse_version(self.version)

    @property
    def sends_empty(self) -> bool:
        """7.18 added ``!empty`` before ``!done`` on prints that find nothing."""
        return self.version_tuple >= (7, 18)

    @property
    def dead_word(self) -> str:
        if self.dead_value is not None:
            return self.dead_value
        return "true" if self.version_tuple >= (7,) else "yes"

    @property
    def iso_dates(self) -> bool:
        """7.10 switched printed dates to ``2026-11-25 18:00:00``."""
        return self.version_tuple >= (7, 10)


class ManualClock:
    """A wall clock that only moves when told to (timeouts in tests)."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
