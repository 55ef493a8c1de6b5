"""Passes owed to targets that a scoped pass could not reach: asked for again later.

A scoped pass (a NOTIFY, a webhook) that left a target out (back-off) or could not
reach it would otherwise reach that target only at the next full pass: the event must
not wait that long. ``Owed`` gathers those accounts and asks for one pass for all of
them once the soonest of those targets may be tried again. Called by ``daemon.loop``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

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
