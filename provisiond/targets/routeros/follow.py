"""One router's ``listen``: a thread with its own API session that keeps a ``Mirror``.

On connecting, the follower sends, on one session and in this order: a tagged
``listen`` per family scoped to the managed lists, then one print per family over the
same lists (the fill: one table scan each), so no change falls between the read and
the stream (../shared/ROUTEROS.md §8: ids reported dead during the print are dropped
from its rows, ``Mirror.fill``). Then it reads reports for as long as the session
lasts, and every ``HEARTBEAT`` seconds asks the router's uptime
(``/system/resource/print``: no table scan), which also finds a half-open
connection and a reboot (uptime gone backwards: ids renumbered).

What it tells the daemon (``on_drift(router, accounts)``):
- the accounts of entries someone else changed (``Mirror.event``), gathered for
  ``DEBOUNCE`` seconds into one call;
- ``None`` after a fill that follows a lost session (the reports missed meanwhile
  are unknown: the daemon gives that router, and only it, a full pass).

A lost session, a refused ``listen`` (an old RouterOS, a missing policy) and a
reboot leave the mirror untrusted (``Mirror.lost``) so scoped passes print as
before; the follower reconnects with a growing pause, and after a refusal tries
again only every ``REFUSED_RETRY`` seconds (logged once per router).
"""

from __future__ import annotations

import ctypes
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from provisiond.settings import RouterSettings
from provisiond.targets.routeros.commands import PRINT_PROPLIST_WORD, list_prints, lists_query, menu_path
from provisiond.targets.routeros.mirror import Mirror, parse_uptime
from provisiond.targets.routeros.wire import WIRE_ERRORS, ApiWire, login, quietly_close
from provisiond.targets.routeros.wire import connect as connect_librouteros

log = logging.getLogger(__package__)

HEARTBEAT = 15.0  # seconds between uptime questions on the listen session
DEBOUNCE = 0.2  # seconds drift reports gather before the daemon hears of them
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # reconnect pauses after a lost session
REFUSED_RETRY = 900.0  # seconds before a refused listen is tried again
WAKE = 1.0  # seconds the thread waits for reports at most before looking at the mirror

OnDrift = Callable[[str, "frozenset[str] | None"], None]


class Refused(Exception):
    """The router refused the ``listen`` (or the fill's print)."""


class Rebooted(Exception):
    """The router's uptime went backwards."""


def listen_query(lists: Sequence[str], head: str) -> list[str]:
    """A listen's query words: entries of any of ``lists``, or with provisiond's marker
    (``head``) on any list. Whether a ``set`` that moves an entry out of a listen's query
    is reported is not documented; with the marker in the query, one of provisiond's
    entries moved to another list by hand is still heard of (and leaves the mirror), so
    no remove is ever sent for an entry that now sits on a list provisiond does not
    manage. ``head`` < comment < ``head`` with its last character's successor: the
    marker's range, as the scoped prints query it."""
    words = lists_query(lists)
    after = head[:-1] + chr(ord(head[-1]) + 1)
    return words + [f"?>comment={head}", f"?<comment={after}", "?#&", "?#|"]


class Follower:
    """The thread keeping ``mirror`` true for one router."""

    def __init__(self, settings: RouterSettings, mirror: Mirror, *, on_drift: OnDrift,
                 connect: Callable[[], Any] | None = None, heartbeat: float = HEARTBEAT) -> None:
        self.settings = settings
        self.heartbeat = heartbeat
        self.mirror = mirror
        self._on_drift = on_drift
        self._connect = connect or partial(connect_librouteros, settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: Any = None
        self._lock = threading.Lock()
        self._uptime: float | None = None
        self._pending: set[str] = set()
        self._pending_since = 0.0
        self.reason = ""  # why the listen is not live, for status and logs
        self.fill_seconds = 0.0  # how long the last fill's read took (the router's side)
        self.refusals = 0

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._run, name=f"listen-{self.settings.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            api = self._api
        if api is not None:
            try:  # wake the thread out of its wait
                api.protocol.transport.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self.mirror.lost("off")

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        name = self.settings.name
        pause = RETRY_FIRST
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                # After any earlier fill, what happened while not listening is unknown.
                self._session(refill=self.mirror.fills > 0)
            except Refused as exc:
                self.mirror.lost("refused")
                self.refusals += 1
                self.reason = f"listen refused: {exc}"
                log.warning("router=%s listen refused (%s): scoped passes print, and this router "
                            "is full-passed at the daemon's interval; trying again in %.0fs",
                            name, exc, REFUSED_RETRY)
                self._stop.wait(REFUSED_RETRY)
                continue
            except Rebooted:
                self.mirror.lost()
                self.reason = "router rebooted"
                log.warning("router=%s uptime went backwards (a reboot): reading it again", name)
                continue
            except Exception as exc:  # noqa: BLE001 - whatever ends a session, reconnect
                if self._stop.is_set():
                    break
                self.mirror.lost()
                why = _why(exc)
                if self.reason != why:
                    log.warning("router=%s listen lost (%s): scoped passes print until it is "
                                "back; reconnecting", name, why)
                self.reason = why
            finally:
                self._close()
            if time.monotonic() - started > RETRY_MAX:
                pause = RETRY_FIRST
            self._stop.wait(pause)
            pause = min(RETRY_MAX, pause * 2)

    def _close(self) -> None:
        with self._lock:
            api, self._api = self._api, None
        if api is not None:
            quietly_close(api)

    def _session(self, *, refill: bool) -> None:
        s = self.settings
        api = login(s.name, f"{s.host}:{s.api_port}", self._connect)
        with self._lock:
            self._api = api
        if self._stop.is_set():
            return
        wire = ApiWire(api)
        self._uptime = None  # a new session reads the router afresh: no reboot to find
        sock: socket.socket = api.protocol.transport.sock
        lists = sorted(self.mirror.lists)
        listen = listen_query(lists, self.mirror.head)
        self.mirror.begin_fill()
        # The listens first, then the fill: a full read's own prints (``list_prints``).
        out = [(f"{menu_path(fam)}/listen", PRINT_PROPLIST_WORD, *listen, f".tag=l{fam}") for fam in (4, 6)]
        prints = list_prints(lists)
        out += [(*words, f".tag=p{fam}") for fam, words in prints]
        wire.send(b"".join(wire.encode(w) for w in out))
        filling = {f"p{fam}" for fam, _ in prints}
        if not filling:  # no managed list: nothing to read
            self.mirror.end_fill()
        asked = 0.0  # when the unanswered uptime question went out (0: none)
        next_beat = float("inf")  # the first uptime question goes out once the fill is in
        heard = time.monotonic()  # the last sentence received: a fill proves the link alive
        started = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat and not asked:
                wire.send(wire.encode(("/system/resource/print", "=.proplist=uptime", ".tag=up")))
                asked, next_beat = now, now + self.heartbeat
            if asked and now - asked > self.heartbeat + s.timeout:
                raise TimeoutError("no answer to the heartbeat")
            if filling and now - heard > s.timeout:
                raise TimeoutError("the read stopped")
            self._flush(now)
            if self.mirror.stale:
                raise ConnectionError("the mirror is out of step with the router (a write found "
                                      "an entry it did not know)")
            if not wire.buffered() and not _pending(sock):
                # While the uptime question is out, the next thing due is its deadline (the
                # next beat may be past already: no busy loop while an answer is late).
                beat = asked + self.heartbeat + s.timeout if asked else next_beat
                wait = max(0.0, min(beat - now, self._flush_in(now), WAKE))
                if not select.select([sock], [], [], wait)[0]:
                    continue
            words = wire.read_sentence()
            heard = time.monotonic()
            tag = next((w[5:] for w in words if w.startswith(".tag=")), "")
            kind = words[0]
            if tag in ("l4", "l6"):
                if kind == "!re":
                    self._drifted(self.mirror.event(words, int(tag[1])))
                elif kind == "!trap" and "=category=2" in words:  # interrupted: not a refusal
                    raise ConnectionError(f"listen interrupted: {_message(words)}")
                elif kind == "!trap":
                    raise Refused(_message(words))
                elif kind != "!empty":  # RouterOS 7 may say "nothing yet"; a !done ends it
                    raise ConnectionError(f"listen ended ({kind})")
            elif tag in filling or tag in ("p4", "p6"):
                if kind == "!re":
                    self.mirror.fill(words, int(tag[1]))
                elif kind == "!trap":
                    raise Refused(f"print: {_message(words)}")
                elif kind == "!done":
                    filling.discard(tag)
                    if not filling:
                        self.mirror.end_fill()
                        self.reason = ""
                        self.fill_seconds = time.monotonic() - started
                        _trim()  # what the read's words and the sort left behind
                        next_beat = time.monotonic()  # the boot time, at once
                        log.info("router=%s listen up: %d entries on %d managed list(s) read in "
                                 "%.2fs", s.name, len(self.mirror), len(self.mirror.lists),
                                 self.fill_seconds)
                        if refill:
                            self._on_drift(s.name, None)  # what was missed meanwhile is unknown
            elif tag == "up":
                if kind == "!re":
                    self._check_uptime(words)
                elif kind in ("!done", "!trap"):
                    asked = 0.0

    def _check_uptime(self, words: Sequence[str]) -> None:
        text = next((w[8:] for w in words if w.startswith("=uptime=")), "")
        uptime = parse_uptime(text)
        if uptime is None:
            return
        last, self._uptime = self._uptime, uptime
        self.mirror.booted = time.monotonic() - uptime
        if last is not None and uptime + 1 < last:
            raise Rebooted()

    # -- drift -----------------------------------------------------------------------

    def _drifted(self, accounts: frozenset[str]) -> None:
        if accounts:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending |= accounts

    def _flush_in(self, now: float) -> float:
        return self._pending_since + DEBOUNCE - now if self._pending else self.heartbeat

    def _flush(self, now: float) -> None:
        if self._pending and now >= self._pending_since + DEBOUNCE:
            accounts, self._pending = frozenset(self._pending), set()
            log.info("router=%s drift: entries of %d account(s) changed by someone else", 
                     self.settings.name, len(accounts))
            self._on_drift(self.settings.name, accounts)


def _trim() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``): a fill of
    100,000 rows leaves some 10-20 MiB of freed memory behind in a long-lived daemon."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _pending(sock: socket.socket) -> bool:
    """Bytes a TLS socket has decrypted but not handed out (``select`` cannot see them)."""
    pending = getattr(sock, "pending", None)
    return bool(pending and pending())


def _message(words: Sequence[str]) -> str:
    return next((w[9:] for w in words if w.startswith("=message=")), "no message")


def _why(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, WIRE_ERRORS):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
