"""The leading daemon's side of ``provisiond pass``: pending requests taken from the
state store (``state.requests``) and answered with the pass that served them.

Polled from the main loop at most every ``POLL`` seconds; a store that cannot be
reached is said once, then retried quietly (the passes report the store's health).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from provisiond.core.scope import ids_text
from provisiond.errors import ProvisiondError

log = logging.getLogger(__name__)

POLL = 1.0  # seconds between looks at the store


class Requests:
    def __init__(self, url: str) -> None:
        self._url = url
        self._store: Any = None
        self._lock = threading.Lock()
        self._next = 0.0
        self._failing = False
        # Requests taken and not answered yet: (id, a pass of targets only), oldest first.
        self._asked: list[tuple[str, bool]] = []

    def _open(self) -> Any:
        if self._store is None:
            from provisiond.state.store import StateStore

            self._store = StateStore.open(self._url, readonly=False)
        return self._store

    def poll(self) -> list[dict[str, Any]]:
        """The pending requests, now taken; [] between polls or when the store fails."""
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + POLL
        with self._lock:
            try:
                taken: list[dict[str, Any]] = self._open().take_pass_requests()
            except ProvisiondError as exc:
                if not self._failing:
                    log.warning("pass requests: cannot read the state store: %s", exc)
                self._failing = True
                self._close()
                return []
        self._failing = False
        return taken

    def take(self) -> list[tuple[str, frozenset[str] | None, frozenset[str] | None]]:
        """The pending requests as passes to ask for: (id, accounts, targets), None for
        all; the caller records each with ``ask`` as it gathers it."""
        out = []
        for request in self.poll():
            targets, accounts = request["targets"], request["accounts"]
            log.info("pass requested by %s: targets=%s accounts=%s", request["requested_by"],
                     ",".join(targets) if targets else "all", ids_text(accounts))
            out.append((str(request["id"]), None if accounts is None else frozenset(accounts),
                        None if targets is None or accounts is not None else frozenset(targets)))
        return out

    def ask(self, request_id: str, *, of_targets: bool) -> None:
        """Record a taken request as gathered for the next pass of its kind."""
        with self._lock:
            self._asked.append((request_id, of_targets))

    def served(self, *, full: bool, of_targets: bool) -> list[str]:
        """The taken requests the pass starting now serves: a full pass every one; a pass
        of targets those of targets; a scoped pass those of accounts."""
        with self._lock:
            if full:
                served, self._asked = self._asked, []
            else:
                served = [a for a in self._asked if a[1] == of_targets]
                self._asked = [a for a in self._asked if a[1] != of_targets]
        return [request_id for request_id, _ in served]

    def answer(self, ids: Sequence[str], *, number: int, result: str, status: str) -> None:
        if not ids:
            return
        with self._lock:
            try:
                self._open().finish_pass_requests(ids, number=number, result=result, status=status)
            except ProvisiondError as exc:
                log.warning("pass requests: cannot record the answer to %d request(s): %s",
                            len(ids), exc)
                self._close()

    def _close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except ProvisiondError:
                pass
            self._store = None

    def close(self) -> None:
        with self._lock:
            self._close()
