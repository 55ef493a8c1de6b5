"""A daemon's side of ``[daemon] members = "shared"``: every daemon on one PostgreSQL
state store is active, and each writes only what it holds the claim of
(``daemon.members``): its routers, and with the ``global`` claim the global work
(billing-read bookkeeping, IP allocation, RADIUS rows, CoA).

``Sharing`` wraps the ``Membership`` thread for the loop and the passes:

- ``fit(rec)`` before every pass: the Reconciler decides leases only with the global
  claim (``Reconciler.global_work``; without it, leases are read as they stand), the
  state store fences its writes with this member's tokens (``StateStore.fences``), and
  every target gets a ``gate``: its claim, asked before any write and before each
  pipelined window of writes; a claim lost mid-apply sends no more.
- ``skip(name)``: a pass plans only the targets this member may write now.
- ``busy(resource)``: the Membership hands a resource over only once the write under
  way on it has ended (the gate's ``done``), so two members' writes to one router never
  interleave; a member that is cut off stops on its own clock instead.
- the relay: a billing event heard by one member only (a Sonar webhook, a ``provisiond
  pass`` request), and the accounts the global member just leased addresses to, are
  NOTIFYed on the state store (``EVENTS``) so every member runs the same pass for its
  own routers. Billing NOTIFYs need no relay: every member listens itself. Without
  NOTIFY (PgBouncer in transaction mode) the full passes still converge.
- ``ChildShare`` and ``fit_child``: the same for a full pass in its own process, whose
  gates ask the daemon (``daemon.worker``).

Every member reads billing itself and plans only its own routers: a router's plan
needs the whole billing read either way (its lists come from every account's groups),
and one read per member costs the billing database far less than shipping 100,000
accounts' desired entries through the state store on every pass; only the leases,
which one member decides, travel through the store (they are read as they stand).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from provisiond.core.scope import parse_payload
from provisiond.daemon.listen import IGNORE, BillingListener
from provisiond.daemon.members import GLOBAL, Membership
from provisiond.daemon.metrics import Health, Metrics, target_names
from provisiond.daemon.mirrors import Mirrors
from provisiond.daemon.pg import close_quietly, connect_kwargs, first_line
from provisiond.settings import Settings
from provisiond.errors import ProvisiondError
from provisiond.state.claims import Fence, resource_of
from provisiond.state.store import StateStore

if TYPE_CHECKING:
    from provisiond.engine import Reconciler

log = logging.getLogger(__name__)

EVENTS = "provisiond_events"  # the state store's NOTIFY channel between members
SETTLE = 0.3  # seconds between gaining a claim and the pass that reads it
PAYLOAD_MAX = 7000  # bytes of ids per NOTIFY (PostgreSQL's limit is 8000)

# (accounts or None for a full pass, target names or None)
Event = tuple[frozenset[str] | None, frozenset[str] | None]


class Requests(Protocol):
    """The daemon's pass requests (``daemon.loop.Daemon``)."""

    def request_pass(self, accounts: frozenset[str] | None = None, *, reason: str = "",
                     asked: str | None = None) -> None: ...

    def request_targets(self, names: frozenset[str], *, asked: str | None = None) -> None: ...


def member_id(settings: Settings) -> str:
    return settings.daemon.member_id or socket.gethostname()


def resources(settings: Settings) -> list[str]:
    """What the members share: the claims of the targets a pass writes (every router
    some list mapping covers; RADIUS is the global work), and ``global``."""
    return sorted({*(resource_of(n) for n in target_names(settings)), GLOBAL})


class Gate:
    """One target's claim, asked by its writes: ``__call__`` before each window, ``done``
    when its apply ended (the Applier calls it)."""

    def __init__(self, ask: Callable[[str], bool], done: Callable[[str], None], name: str) -> None:
        self._ask, self._done, self.name = ask, done, name

    def __call__(self) -> bool:
        return self._ask(self.name)

    def done(self) -> None:
        self._done(self.name)


@dataclass(frozen=True, slots=True)
class ChildShare:
    """What a full pass in its own process needs of the membership (picklable)."""

    member_id: str
    tokens: dict[str, int]  # resource -> token, as owned when the pass began
    global_work: bool
    idle_timeout: float  # the fences' (``state.claims.Fence``)


class Sharing:
    def __init__(self, settings: Settings, daemon: Requests) -> None:
        d = settings.daemon
        self.settings = settings
        self.member_id = member_id(settings)
        self._url = settings.state.url.get_secret_value()
        self._daemon = daemon
        self._attached: frozenset[str] | None = None  # what the mirrors were last given
        # Claimed, and not yet read by a pass of this member (monotonic time of the claim):
        # a router's listen starts once its first pass read it, so the two full reads
        # a takeover needs (the pass's, the mirror's fill) never compete on its CPU.
        self._unread: dict[str, float] = {}
        self._reading: set[str] = set()  # what the pass in flight reads whole
        self._mirrors: Mirrors | None = None
        self._lock = threading.Lock()
        # Resources with an apply under way that a gate let in -> the token it began under.
        self._writing: dict[str, int] = {}
        self._owned: frozenset[str] = frozenset()
        self._sender: psycopg.Connection[tuple[Any, ...]] | None = None  # the relay thread's
        # Relayed events go out from a thread of their own: a store that hangs (a cut
        # cable) must not hold up the pass, the webhook or the loop that relays.
        self._outbox: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self.membership = Membership(self._url, member_id=self.member_id,
                                     resources=lambda: resources(self.settings), ttl=d.member_ttl,
                                     margin=d.member_margin, on_change=self._changed, busy=self.busy)
        self._relay = BillingListener(self._url, EVENTS, on_change=self._heard, what="members",
                                      parse=self._parse, retry_max=min(d.retry_max, 30.0))

    # -- lifecycle ------------------------------------------------------------------

    def watch(self, mirrors: Mirrors, health: Health) -> None:
        """Mirrors follow the routers this member owns; /healthz fails while it is fenced."""
        mirrors.only = self.follows
        self._mirrors = mirrors
        health.member = self.membership

    def start(self) -> Sharing:
        """The state store's schema first (its tables hold the claims), then the threads."""
        try:
            StateStore.open(self._url).close()
        except ProvisiondError as exc:  # the membership thread keeps trying meanwhile
            log.error("member=%s state store: %s", self.member_id, exc)
        self._relay.start()
        threading.Thread(target=self._sending, name="relay-send", daemon=True).start()
        ttl = self.settings.daemon.member_ttl
        self.membership.start(wait=min(2.0, ttl))
        # Members starting together claim, then hand back, within tens of milliseconds:
        # the first pass waits until what this one owns has held still for SETTLE.
        deadline = time.monotonic() + ttl / 3
        before = self.owned()
        while time.monotonic() < deadline:
            time.sleep(SETTLE)
            now = self.owned()
            if now == before:
                break
            before = now
        return self

    def stop(self) -> None:
        """Release every claim (the others take over within a second) and stop."""
        self.membership.stop(graceful=True)
        self._relay.stop()
        self._outbox.put(None)

    # -- what this member may write -----------------------------------------------------

    def owned(self) -> frozenset[str]:
        return frozenset(self.membership.owned())

    @property
    def global_work(self) -> bool:
        return self.membership.may_write(GLOBAL) is not None

    def may_write(self) -> bool:
        """Anything at all (the engine's ``may_write``): not fenced."""
        return not self.membership.fenced

    def skip(self, name: str) -> bool:
        """A target this member does not write now: left out of its passes."""
        return self.membership.may_write(resource_of(name)) is None

    def fences(self, resource: str) -> Fence | None:
        """The claim a state-store write on behalf of ``resource`` carries: the token its
        apply under way began with (rows applied under a claim since lost are refused,
        even if the claim came back since), else the token held now."""
        with self._lock:
            token = self._writing.get(resource)
        if token is None:
            token = self.membership.may_write(resource)
        idle = self.settings.daemon.member_ttl - self.settings.daemon.member_margin
        return None if token is None else Fence(resource, self.member_id, token, idle)

    def ask(self, name: str) -> bool:
        """A target's gate: may its writes go on? Counts the apply as under way, under the
        token it began with: a claim lost and won back meanwhile (another member wrote in
        between) ends the apply, whose plan is no longer this tenure's."""
        resource = resource_of(name)
        with self._lock:
            token = self.membership.may_write(resource)
            if token is None or self._writing.setdefault(resource, token) != token:
                return False
            return True

    def done(self, name: str) -> None:
        """A target's apply ended: its writes are answered; a handover may go."""
        resource = resource_of(name)
        with self._lock:
            self._writing.pop(resource, None)
        self.membership.wake()

    def writes_ended(self) -> None:
        """A pass ended: nothing of it writes any more (a full pass's process that died
        mid-apply never said ``done``)."""
        with self._lock:
            self._writing.clear()
        self.membership.wake()

    def busy(self, resource: str) -> bool:
        with self._lock:
            return resource in self._writing

    def follows(self, name: str) -> bool:
        """Whether this member keeps ``name``'s mirror (its ``listen``): owned, and read
        since it was claimed."""
        with self._lock:
            unread = resource_of(name) in self._unread
        return not unread and not self.skip(name)

    def prepare(self, rec: Reconciler, mirrors: Mirrors, reads: Iterable[str] = (), *,
                full: bool = False) -> None:
        """Before a pass: ``fit``, and the mirrors (their listens) follow what it owns.
        ``reads``: the targets the pass reads whole (``full``: and the global work); no
        pass is asked for a claim on them, and their listens start once it ended
        (``after``). A reload's routers are claimed from here on (``resources``)."""
        self.settings = rec.settings
        self.fit(rec)
        with self._lock:
            self._reading = {resource_of(n) for n in reads} | ({GLOBAL} if full else set())
        self._follow(rec, mirrors)

    def after(self, rec: Reconciler, mirrors: Mirrors) -> None:
        """After a pass: what it read whole is read; those listens start now."""
        with self._lock:
            for r in self._reading:
                self._unread.pop(r, None)
            self._reading = set()
        self._follow(rec, mirrors)

    def _follow(self, rec: Reconciler, mirrors: Mirrors) -> None:
        owned = self.owned()
        with self._lock:
            followed = owned - self._unread.keys()
        if followed != self._attached:
            self._attached = followed
            mirrors.attach(rec.targets)

    def fit(self, rec: Reconciler) -> None:
        """What the pass may decide and write."""
        rec.global_work = self.global_work
        setattr(rec.store, "fences", self.fences)
        for t in rec.targets:
            if hasattr(t, "gate"):
                t.gate = Gate(self.ask, self.done, t.name)

    def child(self) -> ChildShare:
        owned = self.membership.owned()
        d = self.settings.daemon
        return ChildShare(self.member_id, owned, GLOBAL in owned, d.member_ttl - d.member_margin)

    def claim_lost(self) -> None:
        """A pass stopped on a state-store write refused (the global claim moved while it
        ran): the routers this member still owns get a new pass at once."""
        log.warning("member=%s a pass stopped on a claim that moved; passing again", self.member_id)
        self._daemon.request_pass(None, reason="claim moved")

    # -- ownership changes (from the membership thread) ------------------------------

    def _changed(self, owned: dict[str, int]) -> None:
        now = frozenset(owned)
        with self._lock:
            before, self._owned = self._owned, now
        gained, lost = now - before, before - now
        if not gained and not lost:
            return
        log.info("member=%s owns routers=%d global=%s gained=%s lost=%s", self.member_id,
                 len(now - {GLOBAL}), str(GLOBAL in now).lower(), ",".join(sorted(gained)) or "-",
                 ",".join(sorted(lost)) or "-")
        if lost and self._mirrors is not None:
            self._mirrors.drop(lost)  # their new owner listens now
        with self._lock:
            for r in lost:
                self._unread.pop(r, None)
            at = time.monotonic()
            self._unread.update(dict.fromkeys(gained, at))
        if gained:
            # Claims settle in a few tens of milliseconds when several members start
            # together: the pass waits that long, and covers what is still owned then.
            timer = threading.Timer(SETTLE, self._claimed, args=(gained,))
            timer.daemon = True
            timer.start()

    def _claimed(self, gained: frozenset[str]) -> None:
        """A new owner inherits no plan: it reads what it gained afresh; the global work
        gained, a full pass (leases, RADIUS rows, CoA)."""
        with self._lock:  # what a pass begun since has read needs no pass of its own
            gained = frozenset(r for r in gained & self.owned()
                               if r in self._unread and r not in self._reading)
        if GLOBAL in gained:
            self._daemon.request_pass(None, reason="claimed")
        elif gained:
            self._daemon.request_targets(gained)

    # -- the relay ------------------------------------------------------------------

    def relay(self, accounts: frozenset[str] | None, targets: frozenset[str] | None = None) -> None:
        """Tell the other members of an event only this one heard (accounts None: a full
        pass); a long list goes as several NOTIFYs."""
        if targets is not None:
            payloads = [f"{self.member_id}|t|{','.join(sorted(targets))}"]
        elif accounts is None:
            payloads = [f"{self.member_id}|f|"]
        else:
            payloads = [f"{self.member_id}|a|{chunk}" for chunk in _chunks(sorted(accounts))]
        self._outbox.put(payloads)

    def _sending(self) -> None:
        while (payloads := self._outbox.get()) is not None:
            self._send(payloads)
        close_quietly(self._sender)

    def _send(self, payloads: list[str]) -> None:
        try:
            if self._sender is None:
                self._sender = psycopg.connect(**connect_kwargs(self._url, connect_timeout=5))
            for p in payloads:
                self._sender.execute("SELECT pg_notify(%s, %s)", (EVENTS, p))
        except psycopg.Error as exc:
            log.warning("member=%s could not relay an event to the other members error=%s; "
                        "their next full pass converges", self.member_id, first_line(exc))
            close_quietly(self._sender)
            self._sender = None

    def webhook(self, accounts: frozenset[str] | None) -> None:
        """A Sonar webhook reached this member: its pass here, and the others'."""
        self._daemon.request_pass(accounts, reason="webhook")
        self.relay(accounts)

    def passed(self, leased: frozenset[str], metrics: Metrics) -> None:
        """After a pass: the accounts it leased addresses to go to the others (too many:
        a full pass), and the member metrics."""
        if leased:
            many = len(leased) > self.settings.daemon.scope_max_accounts
            self.relay(None if many else leased)
        metrics.members(self.membership.status())

    def _parse(self, payload: str) -> Event | object:
        sender, _, rest = payload.partition("|")
        kind, _, items = rest.partition("|")
        if sender == self.member_id:
            return IGNORE  # its own
        if kind == "t":
            return None, frozenset(i for i in items.split(",") if i)
        if kind == "a":
            accounts = parse_payload(items)
            return (accounts, None) if accounts else (None, None)
        return None, None

    def _heard(self, event: Event | None) -> None:
        """Another member's event: the same pass here, for this member's routers. None:
        the relay reconnected (events may have been missed): a full pass."""
        accounts, targets = event if event is not None else (None, None)
        if targets is not None:
            self._daemon.request_targets(targets)
        else:
            self._daemon.request_pass(accounts, reason="member")


def _chunks(ids: Iterable[str]) -> Iterable[str]:
    chunk: list[str] = []
    size = 0
    for i in ids:
        if chunk and size + len(i) + 1 > PAYLOAD_MAX:
            yield ",".join(chunk)
            chunk, size = [], 0
        chunk.append(i)
        size += len(i) + 1
    if chunk:
        yield ",".join(chunk)


def fit_child(rec: Reconciler, share: ChildShare, ask: Callable[[str], bool],
              done: Callable[[str], None]) -> None:
    """``Sharing.fit`` in a full pass's own process: the tokens it was given, the gates
    asked of the daemon."""
    rec.global_work = share.global_work

    def fences(resource: str) -> Fence | None:
        token = share.tokens.get(resource)
        return None if token is None else Fence(resource, share.member_id, token, share.idle_timeout)

    setattr(rec.store, "fences", fences)
    for t in rec.targets:
        if hasattr(t, "gate"):
            t.gate = Gate(ask, done, t.name)
