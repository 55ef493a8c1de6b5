"""Shared membership: several daemons on one PostgreSQL state store, all active, each
router (and ``global``) written by one of them at a time.

A ``Membership`` runs in its own thread on its own connection, never behind router
work. Every ttl/3 (at once on a NOTIFY, and when a member it waits on is due to be
declared dead) it:

1. renews its member row and its live claims in one statement, on the database clock
   (``expires_at = now() + ttl``), remembering when on its own clock the renewal was
   sent. It fences itself at that send time + ttl − margin unless a later renewal came
   back first: a claim it holds expires on the database no earlier than that plus the
   margin, so no other member can be granted it before this one stopped writing.
2. reads both tables and asks ``shares.decide`` what to do: claim (free, released or
   expired claims proposed to it; each grant raises the claim's fencing token), ask
   for (a live claim of another member proposed to it), release (a claim it holds
   that the live member it is proposed to asked for; once ``busy`` says the resource's
   current batch is done).
3. NOTIFYs ``channel`` when it joined, released or asked, so the others act at once;
   without NOTIFY (PgBouncer in transaction mode) the polling alone converges.

Members expired for less than one more ttl are "uncertain": their resources stay
proposed to them, and they hold nothing (their claims expired with their row). Member
ids are stable names: a restarted member takes its row over once the old process's
lease ran out, and gets its own resources back. ``state.claims`` makes state-store
writes carry the claim (``Membership.fence``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from provisiond.daemon import membersql
from provisiond.daemon.holdings import Holdings, Tenure
from provisiond.daemon.membersql import still_owner
from provisiond.daemon.pg import close_quietly, first_line
from provisiond.daemon.shares import (DEAD, GLOBAL, STOPPED, UNCERTAIN, MemberRow, View, decide, owners,
                                      rendezvous)
from provisiond.state.claims import Fence

__all__ = ["CHANNEL", "GLOBAL", "MemberInfo", "Membership", "Status", "Tenure", "rendezvous", "still_owner"]

log = logging.getLogger(__name__)

CHANNEL = "provisiond_members"
RECONNECT_PAUSE = 0.5  # seconds between connection attempts
TICK = 0.1  # the longest the thread waits without looking at its stop and wake flags
DEBOUNCE = 0.02  # after a NOTIFY, gather the others of the same burst
DRAIN_POLL = 0.25  # how often to ask ``busy`` about a resource being handed over
FORGET_TTLS = 30  # a member stopped or dead this many ttl is dropped from the roster

OnChange = Callable[[dict[str, int]], None]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    member_id: str
    host: str
    pid: int
    state: str  # live, uncertain, dead, stopped
    renewed_at: datetime
    expires_at: datetime | None
    owned: Mapping[str, int]  # resource -> token of its live claims


@dataclass(frozen=True, slots=True)
class Status:
    """One member's view for ``provisiond status`` and the metrics."""

    member_id: str
    fenced: bool
    owned: Mapping[str, int]
    claim_ages: Mapping[str, float]  # seconds since it began writing each resource
    handovers: int
    self_fences: int
    members: tuple[MemberInfo, ...]  # every member as last read (empty before the first read)
    read_at: datetime | None  # the database clock at that read


class Membership:
    """One daemon's membership; ``may_write``, ``owned``, ``fence`` and ``status`` may be
    called from any thread and never touch the database. ``on_change(owned)`` is called
    from the membership thread (and from ``stop``) whenever ``owned()`` changed: keep it
    short. It may come late (a renewal hanging until its timeout); ``may_write`` never
    does, so ask it before every batch."""

    def __init__(self, url: str, *, member_id: str, resources: Callable[[], Sequence[str]],
                 host: str | None = None, ttl: float = 10.0, margin: float = 2.0,
                 on_change: OnChange | None = None, busy: Callable[[str], bool] | None = None,
                 channel: str = CHANNEL, forget_after: float | None = None) -> None:
        if not 0 < margin <= ttl / 2:  # renewals every ttl/3: at least one may be late
            raise ValueError(f"members: margin {margin} must be above 0 and at most half the ttl {ttl}")
        self._url = url
        self.member_id = member_id
        self.host = host or socket.gethostname()
        self.ttl, self.margin = ttl, margin
        self.channel = channel
        self.forget_after = forget_after if forget_after is not None else FORGET_TTLS * ttl
        self._resources = resources
        self._on_change = on_change
        self._busy = busy
        self._incarnation = secrets.token_hex(8)
        self._holdings = Holdings(ttl=ttl, margin=margin)
        self._view: View | None = None
        self._last_resources: list[str] = [GLOBAL]
        self._joined = False
        self._waiting_told = False
        self._graceful, self._leave = True, False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self._told: dict[str, int] = {}  # what on_change was last given
        self._telling = threading.RLock()

    # -- the daemon's side (any thread) ------------------------------------------------

    def start(self, *, wait: float | None = None) -> Membership:
        """Start the thread; return after its first try to join (at most ``wait``, by
        default one ttl), joined or not: it keeps trying."""
        self._thread = threading.Thread(target=self._run, name=f"member-{self.member_id}", daemon=True)
        self._thread.start()
        self._first.wait(self.ttl if wait is None else wait)
        return self

    def stop(self, graceful: bool = True, *, leave: bool = False, timeout: float | None = None) -> None:
        """Stop writing at once. ``graceful``: release every claim and NOTIFY, so the
        others take over within a second; the row stays as "stopped" (its resources come
        back when this member id returns), or is deleted with ``leave``. Not graceful:
        the claims run out on their own (a crash, as the others see it)."""
        self._graceful, self._leave = graceful, leave
        self._holdings.shut(time.monotonic())
        self._tell()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.ttl if timeout is None else timeout)

    def wake(self) -> None:
        """Look again now (a batch finished: a resource being handed over may go)."""
        self._wake.set()

    @property
    def fenced(self) -> bool:
        return time.monotonic() >= self._holdings.deadline

    @property
    def deadline(self) -> float:
        """The ``time.monotonic()`` at which this member stops writing, unless renewed."""
        return self._holdings.deadline

    def may_write(self, resource: str) -> int | None:
        """The fencing token while this member may write ``resource``, else None. Ask
        before every batch; carry ``fence(resource)`` into the state-store writes."""
        return self._holdings.may_write(resource, time.monotonic())

    def fence(self, resource: str) -> Fence | None:
        token = self.may_write(resource)
        return None if token is None else Fence(resource, self.member_id, token)

    def owned(self) -> dict[str, int]:
        return self._holdings.owned(time.monotonic())

    def tenures(self) -> list[Tenure]:
        return self._holdings.tenures()

    @property
    def handovers(self) -> int:
        return self._holdings.handovers

    @property
    def self_fences(self) -> int:
        return self._holdings.self_fences

    def status(self) -> Status:
        now = time.monotonic()
        owned = self._holdings.owned(now)
        ages = {t.resource: now - t.start for t in self._holdings.tenures() if t.end is None}
        view = self._view
        members: tuple[MemberInfo, ...] = ()
        if view is not None:
            by_owner = owners(view)
            members = tuple(MemberInfo(m.member_id, m.host, m.pid, m.state, m.renewed_at, m.expires_at,
                                       by_owner.get(m.member_id, {})) for m in view.members)
        return Status(self.member_id, now >= self._holdings.deadline, owned,
                      {r: ages.get(r, 0.0) for r in owned}, self.handovers, self.self_fences,
                      members, None if view is None else view.now)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        conn: membersql.Conn | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = membersql.connect(self._url, member_id=self.member_id, ttl=self.ttl,
                                             margin=self.margin)
                    membersql.listen(conn, self.channel)
                due = self._cycle(conn)
                self._first.set()
                self._idle(conn, due)
            except Exception as exc:  # the thread outlives anything; psycopg's errors are expected
                if isinstance(exc, psycopg.Error):
                    log.warning("member=%s connection failed error=%s; retrying in %.1fs",
                                self.member_id, first_line(exc), RECONNECT_PAUSE)
                else:
                    log.exception("member=%s failed unexpectedly; retrying in %.1fs",
                                  self.member_id, RECONNECT_PAUSE)
                close_quietly(conn)
                conn = None
                self._first.set()
                self._notice_lapse()
                self._tell()  # a claim granted before the failure, say
                self._stop.wait(RECONNECT_PAUSE)
        if self._graceful:
            conn = self._farewell(conn)
        close_quietly(conn)

    def _cycle(self, conn: membersql.Conn) -> float:
        """Renew, read, act; when to come back (``time.monotonic()``)."""
        self._notice_lapse()
        me, inc = self.member_id, self._incarnation
        sent = time.monotonic()
        held = membersql.renew(conn, me=me, inc=inc, ttl=self.ttl) if self._joined else None
        joined = False
        if held is None:
            if self._joined:
                log.error("member=%s lost its member row (deleted, or taken over by another "
                          "process with this id); writing stopped", me)
                self._joined = False
            if membersql.register(conn, me=me, inc=inc, host=self.host, pid=os.getpid(), ttl=self.ttl):
                sent = time.monotonic()
                held = membersql.renew(conn, me=me, inc=inc, ttl=self.ttl)
                self._joined = joined = held is not None
                self._waiting_told = False
                log.info("member=%s joined host=%s pid=%d ttl=%s margin=%s", me, self.host,
                         os.getpid(), self.ttl, self.margin)
            elif not self._waiting_told:
                log.warning("member=%s is held by another process (%s); waiting for its lease "
                            "to run out", me, membersql.holder(conn, me))
                self._waiting_told = True
        if held is not None:
            self._holdings.renewed(sent, held, time.monotonic())
        view = self._view = membersql.read_view(conn, ttl=self.ttl)
        events = ["join"] if joined else []
        if held is not None:
            self._act(conn, view, held, events)
            if any(self._forgettable(view, m) for m in view.members):
                membersql.forget(conn, me=me, after=self.forget_after)
        if events:
            membersql.notify(conn, self.channel, f"{events[0]} {me}")
        self._tell()
        return self._due(sent, view)

    def _act(self, conn: membersql.Conn, view: View, held: Mapping[str, int], events: list[str]) -> None:
        me, inc = self.member_id, self._incarnation
        moves = decide(view, me=me, resources=self._resource_list(), held=held.keys())
        if moves.claim:
            asked = time.monotonic()
            granted = membersql.claim(conn, moves.claim, me=me, inc=inc)
            if granted:
                log.info("member=%s claimed resources=%s tokens=%s", me, membersql.ids(granted),
                         ",".join(str(t) for t in granted.values()))
                self._holdings.granted(asked, granted, time.monotonic())
            held_back = set(moves.claim) - granted.keys()
            for resource, pid in membersql.evict(conn, held_back, grace=self.margin):
                log.warning("member=%s ended backend pid=%d: it held the fencing lock of %s past "
                            "its claim's expiry (a writer cut off mid-transaction)", me, pid, resource)
        self._holdings.drain(moves.release, time.monotonic())
        self._tell()  # before the release: the worker hears it stopped writing first
        draining = self._holdings.draining()
        ready = sorted(r for r in draining if self._busy is None or not self._busy(r))
        if ready:
            membersql.release(conn, ready, me=me)
            log.info("member=%s released resources=%s", me, membersql.ids(ready))
            self._holdings.released(ready, time.monotonic())
            events.append("release")
        asked_for = {r for r, row in view.claims.items() if row.wanted_by == me}
        if set(moves.want) != asked_for:
            membersql.want(conn, moves.want, me=me)
            if set(moves.want) - asked_for:
                log.info("member=%s asks for resources=%s", me, membersql.ids(moves.want))
                events.append("want")

    def _idle(self, conn: membersql.Conn, due: float) -> None:
        """Wait for ``due``, a NOTIFY from another member, ``wake`` or ``stop``."""
        mine = conn.info.backend_pid
        while not self._stop.is_set():
            if self._wake.is_set():
                self._wake.clear()
                return
            left = due - time.monotonic()
            if left <= 0:
                return
            heard = [n for n in conn.notifies(timeout=min(left, TICK), stop_after=1) if n.pid != mine]
            if heard:
                for n in conn.notifies(timeout=DEBOUNCE):
                    heard.append(n)
                log.debug("member=%s heard=%s", self.member_id, ";".join(n.payload for n in heard))
                return
            self._notice_lapse()

    def _due(self, sent: float, view: View) -> float:
        now = time.monotonic()
        due = sent + self.ttl / 3
        for m in view.members:  # an uncertain member's resources move once it is dead
            if m.state == UNCERTAIN and m.expires_at is not None:
                dies = (m.expires_at - view.now).total_seconds() + self.ttl
                due = min(due, now + max(0.0, dies) + 0.05)
        if self._holdings.draining():
            due = min(due, now + DRAIN_POLL)
        if self._holdings.deadline > now:
            due = min(due, self._holdings.deadline)
        return due

    def _farewell(self, conn: membersql.Conn | None) -> membersql.Conn | None:
        try:
            if conn is None:
                conn = membersql.connect(self._url, member_id=self.member_id, ttl=self.ttl, margin=self.margin)
            released = membersql.stop(conn, me=self.member_id, inc=self._incarnation, leave=self._leave)
            membersql.notify(conn, self.channel, f"{'leave' if self._leave else 'stop'} {self.member_id}")
            log.info("member=%s stopped released=%d left=%s", self.member_id, released,
                     str(self._leave).lower())
        except psycopg.Error as exc:
            log.warning("member=%s could not release its claims on stop error=%s; they run out "
                        "within %ss", self.member_id, first_line(exc), self.ttl)
        return conn

    def _notice_lapse(self) -> None:
        if self._holdings.lapse(time.monotonic()):
            log.error("member=%s fenced: no renewal came back within ttl-margin=%.1fs; writing "
                      "stopped until one does", self.member_id, self.ttl - self.margin)
            self._tell()

    def _tell(self) -> None:
        """``on_change(owned)`` when it differs from what it was last given."""
        if self._on_change is None:
            return
        with self._telling:
            owned = self.owned()
            if owned == self._told:
                return
            self._told = owned
            try:
                self._on_change(owned)
            except Exception:  # noqa: BLE001 - a callback must not stop the renewals
                log.exception("member=%s on_change failed", self.member_id)

    def _resource_list(self) -> list[str]:
        try:
            names = [str(r) for r in self._resources()]
        except Exception:  # noqa: BLE001 - keep serving the last list
            log.exception("member=%s resources() failed; keeping the last list", self.member_id)
            return self._last_resources
        self._last_resources = sorted({*names, GLOBAL})
        return self._last_resources

    def _forgettable(self, view: View, m: MemberRow) -> bool:
        if m.state not in (DEAD, STOPPED) or m.member_id == self.member_id:
            return False
        since = m.expires_at or m.renewed_at
        return view.now - since > timedelta(seconds=self.forget_after)
