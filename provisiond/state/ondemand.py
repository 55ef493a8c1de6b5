"""The state store as a pass opens it: when first used, and read-only until the first write.

``apply`` reads the store (last good read, leases, the RADIUS ledger) before it knows
whether billing can be trusted; a failed or suspicious read must leave even provisiond's
own store untouched, so the read-write open (which creates and migrates the database)
waits for the first write. ``writable=False`` (``plan``, ``explain``) never opens it
read-write: a write fails as the read-only store fails it. ``fences`` set here (shared
membership, ``daemon.sharing``) is the fences of the stores open now and opened later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from provisiond.settings import Settings
from provisiond.state.base import Store
from provisiond.state.claims import Fence

Fences = Callable[[str], Fence | None]


class WritableOnDemand:
    READS = frozenset({"last_good_read", "leases", "radreply_owned", "history", "runs",
                       "usernames_written", "radius_accounts", "refused_writes"})

    def __init__(self, url: str, *, writable: bool = True) -> None:
        self._url = url
        self._writable = writable
        self._ro: Any = None
        self._rw: Any = None
        self._fences: Fences | None = None
        self._lock = threading.Lock()

    @property
    def fences(self) -> Fences | None:
        return self._fences

    @fences.setter
    def fences(self, fences: Fences | None) -> None:
        with self._lock:
            self._fences = fences
            for store in (self._ro, self._rw):
                if store is not None:
                    store.fences = fences

    def _store(self, write: bool) -> Any:
        if self._rw is not None:
            return self._rw
        with self._lock:
            return self._open(write and self._writable)

    def _open(self, write: bool) -> Any:
        from provisiond.state.store import StateStore

        if self._rw is not None:
            return self._rw
        if write:
            if self._ro is not None:
                self._ro.close()
                self._ro = None
            self._rw = StateStore.open(self._url, readonly=False)
            self._rw.fences = self._fences
            return self._rw
        if self._ro is not None and not self._ro.exists:
            # Opened before the database was there (a daemon's first look, before its first
            # pass made it): look again, or every later read would find it empty.
            self._ro.close()
            self._ro = None
        if self._ro is None:
            self._ro = StateStore.open(self._url, readonly=True)
            self._ro.fences = self._fences
        return self._ro

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store(write=name not in self.READS), name)

    def close(self) -> None:
        for store in (self._ro, self._rw):
            if store is not None:
                store.close()
        self._ro = self._rw = None


def open_store(settings: Settings, *, readonly: bool) -> Store:
    """The settings' state store, opened on demand (``WritableOnDemand``)."""
    return WritableOnDemand(settings.state.url.get_secret_value(), writable=not readonly)
