"""Only one provisiond writes to one state store at a time.

Called by the daemon before its first pass and before every pass after it:

- PostgreSQL state store: a session-level ``pg_try_advisory_lock`` on a dedicated
  connection. The holder is the leader; the others stand by and try again every few
  seconds. When the leader dies its connection drops and PostgreSQL releases the lock,
  so a standby takes over on its next try. The leader checks its connection before each
  pass: a lost connection means a lost lock, and it stops writing.
- SQLite state store: an exclusive ``flock`` on ``<database>.lock``. A second daemon on
  the same file refuses to start (``AlreadyRunning``); there is no standby on one host.
- Anything else (no file, another backend): no election, with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from provisiond.errors import ProvisiondError
from provisiond.state.store import create_private_file, make_private_dirs
from provisiond.daemon.pg import connect_kwargs, display, is_postgresql

log = logging.getLogger(__name__)

# "prov" + 0x0010: provisiond's own advisory lock key space (state.store uses 0x0001, 0x0002).
LEADER_KEY = 0x70726F76_0010


class AlreadyRunning(ProvisiondError):
    """Another provisiond holds this SQLite state store: give up, do not retry."""


class Leadership(Protocol):
    description: str
    #: True: a refused lock means "stand by and retry"; False: acquire raises instead.
    standby_possible: bool

    def acquire(self) -> bool: ...

    def still_held(self) -> bool: ...

    def release(self) -> None: ...

    def holder(self) -> str | None:
        """Who holds the lock now (``host … pid … since …``), when the lock can tell."""
        ...


class NoElection:
    standby_possible = False

    def __init__(self, description: str) -> None:
        self.description = description

    def acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def holder(self) -> str | None:
        return None


class FileLock:
    """An exclusive flock on a file next to the SQLite database."""

    standby_possible = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"lock file {path}"
        self._fh: IO[str] | None = None

    def acquire(self) -> bool:
        try:
            make_private_dirs(self.path.parent)
            create_private_file(self.path)  # 0600 like the store it guards
            fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        except OSError as exc:
            raise AlreadyRunning(f"cannot open the lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = (fh.read().strip().splitlines() or ["unknown"])[0]
            fh.close()
            raise AlreadyRunning(
                f"another provisiond (pid {holder}) already runs on this state store: "
                f"{self.path} is locked; stop it first, or give this one its own [state] url"
            ) from None
        fh.truncate(0)
        fh.write(f"{os.getpid()}\n{identity()}\n")
        fh.flush()
        self._fh = fh
        return True

    def still_held(self) -> bool:
        return self._fh is not None

    def holder(self) -> str | None:
        return file_holder(self.path)

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class PgAdvisoryLock:
    """A session-level advisory lock held by one dedicated autocommit connection."""

    standby_possible = True

    def __init__(self, url: str, *, key: int = LEADER_KEY) -> None:
        self._url = url
        self._key = key
        self.description = f"advisory lock {key:#x} on {display(url)}"
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._held = False
        self._guard = threading.Lock()

    def acquire(self) -> bool:
        with self._guard:
            if self._held and self._alive():
                return True
            self._held = False
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(**connect_kwargs(self._url, connect_timeout=5))
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            except psycopg.Error as exc:
                log.warning("leader election: cannot reach the state store: %s", _first_line(exc))
                self._drop()
                return False
            self._held = bool(row and row[0])
            if self._held:  # who leads, for the standbys and `provisiond status`
                try:
                    self._conn.execute(sql.SQL("SET application_name = {}").format(
                        sql.Literal(f"provisiond leader {identity()}"[:63])))
                except psycopg.Error as exc:
                    log.warning("leader election: cannot reach the state store: %s", _first_line(exc))
                    self._held = False
                    self._drop()
            return self._held

    def still_held(self) -> bool:
        with self._guard:
            if not self._held:
                return False
            if self._alive():
                return True
            self._held = False
            log.error("leader election: lost the connection holding the leader lock; "
                      "writing stops until it is won again")
            return False

    def holder(self) -> str | None:
        with self._guard:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(**connect_kwargs(self._url, connect_timeout=5))
                return pg_holder(self._conn, self._key)
            except psycopg.Error:
                self._drop()
                return None

    def release(self) -> None:
        with self._guard:
            if self._conn is not None and not self._conn.closed and self._held:
                try:
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
                except psycopg.Error:
                    pass  # closing the connection releases it anyway
            self._held = False
            self._drop()

    def _alive(self) -> bool:
        if self._conn is None or self._conn.closed:
            return False
        try:
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            self._drop()
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None


def for_store(url: str) -> Leadership:
    """The election that fits the state store at ``url``."""
    if is_postgresql(url):
        return PgAdvisoryLock(url)
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - the store itself reports a bad URL
        return NoElection("no leader election: unparsable state store URL")
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") \
            and not database.startswith("file:"):
        return FileLock(Path(database + ".lock"))
    return NoElection(f"no leader election for a {parsed.get_backend_name()} state store")


def identity() -> str:
    """This process, as the leader lock shows it: ``pid=… since=… host=…`` (host last:
    PostgreSQL keeps 63 bytes of an application_name)."""
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"pid={os.getpid()} since={since} host={socket.gethostname()}"


def pg_holder(conn: psycopg.Connection[Any], key: int = LEADER_KEY) -> str | None:
    """The leader lock's holder on a PostgreSQL state store, from its application_name.
    Advisory locks are per database: another store on the same server has its own."""
    row = conn.execute(
        "SELECT a.application_name, host(a.client_addr) FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = %s AND l.objid = %s AND l.granted", (key >> 32, key & 0xFFFFFFFF)).fetchone()
    if row is None:
        return None
    name, addr = str(row[0] or ""), row[1]
    told = name.removeprefix("provisiond leader ") if name.startswith("provisiond leader ") else None
    return told or f"a session from {addr or 'a local socket'}"


def file_holder(path: Path) -> str | None:
    """The leader of a SQLite state store: what its lock file says, while it is locked."""
    try:
        with open(path, encoding="utf-8") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                lines = fh.read().strip().splitlines()
                return lines[1] if len(lines) > 1 else f"pid={lines[0]}" if lines else "unknown"
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return None
    except OSError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
