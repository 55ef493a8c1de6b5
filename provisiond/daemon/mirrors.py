"""The daemon's per-router mirrors (``targets.routeros.mirror``), each kept by a
``listen`` (``targets.routeros.follow``), and the cadence of full passes they allow.

``PassRunner`` hands every Reconciler it builds to ``Mirrors.attach``: each
RouterTarget gets its router's Mirror (a follower is started once per router and
kept across Reconcilers while the router's settings and lists stay the same), so
its scoped reads print nothing while the mirror is live. Around a full pass run in
its own process, ``hold`` keeps the drift reports and ``release`` takes out those
about the keys that pass wrote.

Cadence (``Cadence``): with every router's ``listen`` up, a full pass is a backstop,
due every ``[daemon] interval`` when the operator set one, else every
``max(BACKSTOP_MIN, BACKSTOP_FACTOR × the slowest router's last full read)``; a router whose
``listen`` is down or refused gets a full pass of its own at the short interval
(``DaemonSettings.interval``'s default) until it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from provisiond.core.scope import Pending
from provisiond.daemon.metrics import Health, Metrics
from provisiond.settings import Settings
from provisiond.targets.routeros import RouterTarget
from provisiond.targets.routeros.follow import Follower
from provisiond.targets.routeros.mirror import Mirror

log = logging.getLogger(__name__)

BACKSTOP_MIN = 900.0  # seconds: a full pass at most this often while every listen is up
BACKSTOP_FACTOR = 50.0  # ... or this many times the slowest router's last full read, if longer

OnDrift = Callable[[str, "frozenset[str] | None"], None]


class Mirrors:
    """Every router's follower and mirror, by router name."""

    def __init__(self, on_drift: OnDrift, *, enabled: bool = True) -> None:
        self._on_drift = on_drift
        self.enabled = enabled
        self._lock = threading.Lock()
        self._followers: dict[str, tuple[Any, Follower]] = {}  # name -> (identity, follower)
        self._warned = False  # about a healthz_max_age shorter than the backstop
        self.only: Callable[[str], bool] | None = None  # routers to follow (None: every one)

    def attach(self, targets: Iterable[Any]) -> None:
        """Give each RouterTarget its router's mirror, starting followers as needed and
        stopping those of routers no longer configured (or configured otherwise)."""
        routers = [t for t in targets if isinstance(t, RouterTarget)]
        for t in routers:
            t.mirror = None  # unless followed below
        if not self.enabled:
            routers = []
        elif self.only is not None:  # shared members: the routers this one writes
            routers = [t for t in routers if self.only(t.name)]
        stale: list[Follower] = []
        with self._lock:
            keep: dict[str, tuple[Any, Follower]] = {}
            for t in routers:
                identity = (t.settings.model_dump_json(), tuple(t.lists), t.marker.prefix)
                found = self._followers.pop(t.name, None)
                if found is not None and found[0] == identity:
                    keep[t.name] = found
                else:
                    if found is not None:
                        stale.append(found[1])
                    mirror = Mirror(t.name, t.lists, f"{t.marker.prefix}:")
                    keep[t.name] = (identity, Follower(t.settings, mirror, on_drift=self._on_drift).start())
                t.mirror = keep[t.name][1].mirror
            stale += [f for _, f in self._followers.values()]
            self._followers = keep
        for f in stale:
            f.stop()

    def drop(self, names: Iterable[str]) -> None:
        """Stop following these routers (shared members: their claims went elsewhere);
        their targets keep an untrusted mirror until the next ``attach``."""
        with self._lock:
            gone = [found[1] for n in names if (found := self._followers.pop(n, None)) is not None]
        for f in gone:
            f.stop(0)

    def mirrors(self) -> dict[str, Mirror]:
        with self._lock:
            return {name: f.mirror for name, (_, f) in self._followers.items()}

    def followers(self) -> dict[str, Follower]:
        with self._lock:
            return {name: f for name, (_, f) in self._followers.items()}

    def not_live(self) -> list[str]:
        """Routers whose mirror cannot be trusted now (listen down, refused, filling)."""
        return sorted(name for name, m in self.mirrors().items() if not m.trusted)

    @contextmanager
    def holding(self, skip: frozenset[str] = frozenset()) -> Iterator[dict[str, bytes]]:
        """Around a full pass in its own process: the drift reports of its routers (not
        those in ``skip``) wait; the caller fills the dict it gets with the keys that
        pass wrote, by router (``release``)."""
        written: dict[str, bytes] = {}
        held = {name: m for name, m in self.mirrors().items() if name not in skip}
        for m in held.values():
            m.hold()
        try:
            yield written
        finally:
            for name, m in held.items():
                accounts = m.release(written.get(name, b""))
                if accounts:
                    self._on_drift(name, accounts)

    def publish(self, metrics: Metrics, health: Health, cadence: Cadence) -> None:
        """The mirrors' gauges, the full-pass interval in effect, and /healthz's age
        limit (three of those intervals, unless ``healthz_max_age`` says otherwise)."""
        status = self.status()
        cadence.last_read = max((s["fill_seconds"] for s in status.values()), default=0.0)
        backstop = cadence.backstop(any(s["state"] == "live" for s in status.values()))
        metrics.full_pass_interval.set(backstop)
        limit = cadence.settings.daemon.healthz_max_age
        if limit is None:
            health.max_age = 3 * backstop
        elif limit < backstop and not self._warned:
            self._warned = True
            log.warning("daemon.healthz_max_age (%.0fs) is shorter than the full-pass interval in "
                        "effect (%.0fs): /healthz will fail between full passes; unset it (three "
                        "intervals) or set daemon.interval", limit, backstop)
        metrics.mirrors(status)

    def stop(self, timeout: float = 5.0) -> None:
        """Every follower told at once, then waited for together (a follower stuck in a
        login to an unreachable router cannot hold up the others' stop)."""
        with self._lock:
            followers, self._followers = [f for _, f in self._followers.values()], {}
        for f in followers:
            f.stop(0)
        deadline = time.monotonic() + timeout
        for f in followers:
            f.stop(max(0.0, deadline - time.monotonic()))

    def status(self) -> dict[str, dict[str, Any]]:
        """Per router: listen state, entries mirrored, last fill, drift heard, why not live."""
        out = {}
        for name, f in self.followers().items():
            m = f.mirror
            out[name] = {"state": m.state, "entries": len(m), "confirmed": m.confirmed,
                         "drift_events": m.drift_events, "fills": m.fills, "reason": f.reason,
                         "fill_seconds": f.fill_seconds}
        return out


class Cadence:
    """When a full pass is due, and which routers need one of their own."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        # Seconds the slowest router took to answer its last full read (its mirror's fill:
        # the same prints as a full pass's read, without the billing read beside them).
        self.last_read = 0.0
        self.down_passed = -float("inf")  # when routers whose listen was down last had a pass

    @property
    def explicit(self) -> bool:
        """The operator set ``[daemon] interval``: it is the backstop."""
        return "interval" in self.settings.daemon.model_fields_set

    @property
    def fed(self) -> bool:
        """Billing changes arrive as events (a NOTIFY channel, Sonar webhooks). Without
        them, only a full pass reads billing: it stays at the interval."""
        d = self.settings.daemon
        return d.notify_channel is not None or d.webhook_listen is not None

    def backstop(self, listening: bool) -> float:
        """Seconds between full passes: the configured interval, or with a listen up, a
        billing change feed and no interval configured,
        ``max(BACKSTOP_MIN, BACKSTOP_FACTOR × the last full read)``."""
        interval = self.settings.daemon.interval
        if self.explicit or not listening or not self.fed:
            return interval
        return max(BACKSTOP_MIN, BACKSTOP_FACTOR * self.last_read, interval)

    def down_due(self) -> bool:
        """A pass of the routers whose listen is down is due (every interval, even while
        requests keep every run busy); marks it taken."""
        now = self._clock()
        if now - self.down_passed < self.settings.daemon.interval:
            return False
        self.down_passed = now
        return True


def repair(request_pass: Callable[..., None], request_targets: Callable[..., None],
           max_accounts: Callable[[], int]) -> OnDrift:
    """The daemon's answer to drift: a scoped pass over the accounts whose entries
    someone else changed, or one full pass of that router (None: a refill after a lost
    listen, whose missed reports are unknown; or more than ``max_accounts``: a storm)."""

    def on_drift(router: str, accounts: frozenset[str] | None) -> None:
        if accounts is None or len(accounts) > max_accounts():
            request_targets(frozenset({router}))
        else:
            request_pass(accounts, reason="drift")

    return on_drift


def choose(requested: bool, pending: Pending, since_full: float, cadence: Cadence,
           mirrors: Mirrors, max_accounts: int) -> tuple[frozenset[str] | None, frozenset[str] | None] | None:
    """What the next run covers: (accounts, targets); (None, None) is a full pass, (None,
    names) a pass of those targets only; None: nothing is due.

    A full pass when the backstop is due, or at every interval when no router's listen
    is up (as before mirrors). Otherwise the routers whose listen is not live get a pass
    of their own every interval (requested runs or not), an interval run does nothing
    more, and a requested run takes what was requested (``Pending``)."""
    routers, down = len(mirrors.mirrors()), mirrors.not_live()
    cadence.last_read = max((f.fill_seconds for f in mirrors.followers().values()), default=0.0)
    listening = len(down) < routers  # some listen is up: full passes are a backstop
    if since_full >= cadence.backstop(listening) or (not requested and not listening):
        return None, None
    if down and listening and cadence.down_due():
        return None, frozenset(down)  # requests wait for the next run, right after
    if not requested:
        return None
    targets = pending.take_targets()
    if targets is not None:
        return None, targets
    return pending.take(max_accounts), None
