"""Passes asked for again later: for accounts a scoped pass could not bring to every
target (``Owed``), and for targets in back-off (``TargetRetries``).

A scoped pass (a NOTIFY, a webhook) that left a target out (back-off) or could not
reach it would otherwise reach that target only at the next full pass: the event must
not wait that long. ``Owed`` gathers those accounts and asks for one pass for all of
them once the soonest of those targets may be tried again. A target that could not be
reached is passed again when its back-off ends, not at the next interval. Called by
``daemon.loop``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from provisiond.core.scope import Pending

log = logging.getLogger(__name__)


class Owed:
    def __init__(self, request: Callable[[frozenset[str] | None], None], *,
                 max_accounts: Callable[[], int]) -> None:
        self._request = request
        self._max_accounts = max_accounts
        self._lock = threading.Lock()
        self._owed = Pending()
        self._timer: threading.Timer | None = None
        self._stopped = False

    def owe(self, accounts: frozenset[str], delay: float) -> None:
        """A pass for ``accounts`` in ``delay`` s (one timer takes every debt until it fires)."""
        with self._lock:
            if self._stopped:
                return
            self._owed.add(accounts)
            if self._timer is not None:
                return
            timer = self._timer = threading.Timer(delay, self._pay)
        timer.daemon = True
        timer.start()
        log.debug("accounts=%d owed to targets in back-off: a pass in %.1fs", len(accounts), delay)

    def _pay(self) -> None:
        with self._lock:
            owed, self._owed, self._timer = self._owed, Pending(), None
            accounts = owed.take(self._max_accounts())
        self._request(accounts)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()


SLACK = 0.05  # seconds past a back-off's end, so the target is no longer skipped


class TargetRetries:
    """Targets in back-off, each passed again when its back-off ends: the ``retry_in``
    the log gives is the real schedule. One timer, armed for the soonest; when it fires,
    one pass for every target then due (a full billing read, those targets only)."""

    def __init__(self, request: Callable[[frozenset[str]], None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._request = request
        self._clock = clock
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}
        self._timer: threading.Timer | None = None
        self._timer_at = 0.0
        self._stopped = False

    def schedule(self, delays: Mapping[str, float]) -> None:
        """Pass each target again ``delays[name]`` seconds from now."""
        with self._lock:
            if self._stopped:
                return
            now = self._clock()
            for name, delay in delays.items():
                self._due[name] = now + delay
            self._arm(now)

    def _arm(self, now: float) -> None:
        if not self._due:
            return
        soonest = min(self._due.values())
        if self._timer is not None and self._timer_at <= soonest:
            return
        if self._timer is not None:
            self._timer.cancel()
        timer = self._timer = threading.Timer(max(0.0, soonest - now) + SLACK, self._fire)
        self._timer_at = soonest
        timer.daemon = True
        timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            now = self._clock()
            ready = frozenset(n for n, t in self._due.items() if t <= now + SLACK)
            for name in ready:
                del self._due[name]
            self._arm(now)
        if ready:
            log.debug("targets=%s: back-off over, passing them again", ",".join(sorted(ready)))
            self._request(ready)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
