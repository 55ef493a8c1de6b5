"""What one member may write, and since when: its belief about its own claims, kept
apart from the thread that talks to PostgreSQL (``daemon.members``) so that readers on
other threads never wait for the database.

A resource is writable while three things hold: the last renewal or claim confirmed
it (``held``), the member is not handing it over (``draining``), and the member's own
clock has not reached its ``deadline`` (the last successful renewal's send time + ttl −
margin). The deadline is checked on every read, so a member whose thread is stuck in
a renewal is fenced on time all the same. Each stretch of writability is a ``Tenure``;
the closed ones are kept for ``status`` and for tests that check no two members ever
wrote one resource at the same moment. Times are ``time.monotonic()`` seconds, passed
in by the caller.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

HISTORY = 1000  # closed tenures kept


@dataclass(frozen=True, slots=True)
class Tenure:
    """``may_write(resource)`` gave ``token`` from ``start`` to ``end`` (None: still
    does); ``asked`` is when the renewal or claim that granted it was sent."""

    resource: str
    token: int
    asked: float
    start: float
    end: float | None = None


class Holdings:
    def __init__(self, *, ttl: float, margin: float) -> None:
        self.ttl, self.margin = ttl, margin
        self._lock = threading.Lock()
        self._deadline = float("-inf")
        self._held: dict[str, int] = {}
        self._draining: set[str] = set()
        self._open: dict[str, Tenure] = {}
        self._closed: deque[Tenure] = deque(maxlen=HISTORY)
        self._leased = False  # a deadline ahead that has not been seen to pass yet
        self._shut = False
        self.handovers = 0  # tenures begun on a resource that had an earlier owner (token > 1)
        self.self_fences = 0  # leases seen to run out before a renewal came back

    @property
    def deadline(self) -> float:
        return self._deadline

    def may_write(self, resource: str, now: float) -> int | None:
        with self._lock:
            if now >= self._deadline or resource in self._draining:
                return None
            return self._held.get(resource)

    def owned(self, now: float) -> dict[str, int]:
        with self._lock:
            return self._writable(now)

    def held(self) -> dict[str, int]:
        """Every claim the database confirmed, those being handed over included."""
        with self._lock:
            return dict(self._held)

    def draining(self) -> set[str]:
        with self._lock:
            return set(self._draining)

    def tenures(self) -> list[Tenure]:
        with self._lock:
            return [*self._closed, *self._open.values()]

    def renewed(self, sent: float, held: Mapping[str, int], now: float) -> bool:
        """A renewal sent at ``sent`` came back with these live claims. True when what
        is writable changed."""
        with self._lock:
            if self._shut:
                return False
            if self._leased and now >= self._deadline:  # ran out before this came back
                self.self_fences += 1
            changed = self._sync(now)  # ... and its tenures end at its deadline
            self._deadline = sent + self.ttl - self.margin
            self._leased = now < self._deadline
            self._held = dict(held)
            self._draining &= self._held.keys()
            return self._sync(now, asked=sent) or changed

    def granted(self, asked: float, granted: Mapping[str, int], now: float) -> bool:
        with self._lock:
            if self._shut:
                return False
            self._held.update(granted)
            self.handovers += sum(1 for token in granted.values() if token > 1)
            return self._sync(now, asked=asked)

    def drain(self, resources: Collection[str], now: float) -> bool:
        """Hand these over (no more writes from now); the others stay or come back."""
        with self._lock:
            self._draining = set(resources) & self._held.keys()
            return self._sync(now)

    def released(self, resources: Collection[str], now: float) -> bool:
        with self._lock:
            for r in resources:
                self._held.pop(r, None)
                self._draining.discard(r)
            return self._sync(now)

    def lapse(self, now: float) -> bool:
        """True once per lease that ran out: the caller logs and counts the self-fence."""
        with self._lock:
            if not self._leased or now < self._deadline:
                return False
            self._leased = False
            self.self_fences += 1
            self._sync(now)
            return True

    def shut(self, now: float) -> bool:
        """Stopping: nothing is writable from now on, whatever comes back later."""
        with self._lock:
            self._shut = True
            self._leased = False
            self._deadline = min(self._deadline, now)
            self._held.clear()
            self._draining.clear()
            return self._sync(now)

    def _writable(self, now: float) -> dict[str, int]:
        if now >= self._deadline:
            return {}
        return {r: t for r, t in self._held.items() if r not in self._draining}

    def _sync(self, now: float, *, asked: float | None = None) -> bool:
        """Close the tenures that are no longer writable (at the deadline if that is what
        ended them) and open the new ones."""
        writable = self._writable(now)
        changed = False
        for r, tenure in list(self._open.items()):
            if writable.get(r) != tenure.token:
                self._closed.append(replace(tenure, end=min(now, self._deadline)))
                del self._open[r]
                changed = True
        for r, token in writable.items():
            if r not in self._open:
                self._open[r] = Tenure(r, token, now if asked is None else asked, now)
                changed = True
        return changed
