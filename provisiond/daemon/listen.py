"""``LISTEN`` on the billing database: a NOTIFY asks for a pass now instead of at the
next interval, scoped to the accounts its payload names.

Runs in its own thread, on its own autocommit psycopg connection (the billing source's
SQLAlchemy pool is for reads). The payload is account ids separated by commas
(``core.scope.parse_payload``); an empty or unreadable one means a full pass. Every
notification goes to ``on_change`` as it arrives: the daemon starts a pass at once
when it is idle and gathers what arrives during a pass into the next one, so a burst
of billing edits gives a few passes, not one per row, and no change waits for a timer.
A lost connection is logged, the daemon keeps its interval passes, and the thread
reconnects with exponential back-off; after a reconnect it asks for a full pass, since
changes may have gone unheard meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from provisiond.core.scope import ids_text, parse_payload
from provisiond.daemon.pg import close_quietly, connect_kwargs, display, first_line, is_postgresql
from provisiond.errors import ConfigError
from provisiond.settings import Settings

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between checks of the stop flag
PING_EVERY = 30.0  # a cheap query now and then notices a half-dead connection
FIRST_RETRY = 1.0
IGNORE = object()  # what a ``parse`` returns for a notification to pass over


class BillingListener:
    def __init__(
        self,
        url: str,
        channel: str,
        *,
        on_change: Callable[[Any], None],
        retry_max: float = 60.0,
        what: str = "billing",
        parse: Callable[[str], Any] = parse_payload,
    ) -> None:
        """``parse(payload)`` -> what ``on_change`` is given (``IGNORE``: nothing);
        after a reconnect ``on_change(None)``. ``what`` names the listener in logs."""
        self._url = url
        self.channel = channel
        self._on_change = on_change
        self._what = what
        self._heard = "billing changes" if what == "billing" else f"{what} events"
        self._parse = parse
        self._retry_max = max(FIRST_RETRY, retry_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.notifications = 0

    def start(self) -> BillingListener:
        self._thread = threading.Thread(target=self._run, name=f"{self._what}-listen", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = FIRST_RETRY
        first = True
        while not self._stop.is_set():
            conn: psycopg.Connection[tuple[object, ...]] | None = None
            try:
                conn = psycopg.connect(**connect_kwargs(self._url, connect_timeout=10))
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.connected = True
                log.info("listening for %s channel=%s db=%s", self._heard, self.channel,
                         display(self._url))
                delay = FIRST_RETRY
                if not first:
                    self._on_change(None)  # reconnected: what was missed is unknown
                first = False
                self._listen(conn)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                log.warning(
                    "%s LISTEN connection %s: %s; passes run on the interval only, "
                    "reconnecting in %.0fs", self._what, "lost" if self.connected else "failed",
                    first_line(exc), delay,
                )
            except Exception:  # the thread must outlive any surprise (logged with traceback)
                log.exception("%s LISTEN failed unexpectedly; retrying in %.0fs", self._what, delay)
            finally:
                self.connected = False
                if conn is not None:
                    close_quietly(conn)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._retry_max)

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        last_ping = time.monotonic()
        while not self._stop.is_set():
            for note in conn.notifies(timeout=POLL):
                event = self._parse(note.payload)
                if event is IGNORE:
                    continue
                self.notifications += 1
                log.debug("%s notify channel=%s payload=%.200s", self._what, note.channel, note.payload)
                if self._parse is parse_payload:
                    log.info("billing notify channel=%s accounts=%s", note.channel, ids_text(event))
                self._on_change(event)
            now = time.monotonic()
            if now - last_ping >= PING_EVERY:
                conn.execute("SELECT 1")
                last_ping = now



def start_listener(settings: Settings,
                   on_change: Callable[[frozenset[str] | None], None]) -> BillingListener | None:
    """The LISTEN thread ``daemon.notify_channel`` asks for, started; None when it is not
    set or cannot work here (said once: the interval passes go on)."""
    d = settings.daemon
    if not d.notify_channel:
        return None
    try:
        url = settings.source.resolved_url()
    except ConfigError as exc:
        log.warning("daemon.notify_channel: %s; interval passes only", exc)
        return None
    if not is_postgresql(url):
        log.warning("daemon.notify_channel is set but the billing database is not "
                    "PostgreSQL: interval passes only")
        return None
    return BillingListener(url, d.notify_channel, on_change=on_change,
                           retry_max=min(d.retry_max, 60.0)).start()
