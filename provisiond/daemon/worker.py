"""The daemon's full passes, each in a process of its own.

A full pass at ISP size builds hundreds of MiB of short-lived objects (billing rows,
desired state, every router's entries, the plans), and CPython's allocator keeps most
of that memory once the pass is over: run in the daemon, a pass's peak stays resident
between passes. So the daemon (``PassRunner(isolate=True)``) runs each full pass in a
fresh process (``python -m provisiond.daemon.worker``; a threaded daemon is never
forked) and keeps only the pass's ``PassSummary``: the few numbers its bookkeeping and
later scoped passes need (its ``ScopedMemory``). Scoped passes (NOTIFY, webhooks) stay in the daemon, on its
kept connections.

The full-pass process talks to the daemon over one socket pair (multiprocessing's
``Connection``, pickled messages): its log records (written by the daemon's own
handlers, so format and redaction are the daemon's), its progress ticks (the first
pass's bars), the leader question before every write (``may_write``), and at the end
the PassSummary or the error (by its class name in ``provisiond.errors``). It blocks SIGTERM as the daemon does, so a SIGTERM lets the
pass in flight finish. If the daemon dies (the watchdog's SIGABRT, a
kill -9), the process exits within PARENT_POLL: a standby may lead by now.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from provisiond import errors
from provisiond.daemon.sharing import ChildShare, Sharing, fit_child
from provisiond.daemon.summary import Display, PassSummary, summarise
from provisiond.errors import ConfigError, ProvisiondError, WorkerCrashed, WorkerDied
from provisiond.settings import Settings

log = logging.getLogger(__name__)

TICK_EVERY = 0.1  # seconds between progress messages of one target
PARENT_POLL = 0.5  # seconds between checks that the daemon is still there
EXIT_ORPHANED = 3

def full_pass(
    settings: Settings,
    *,
    skip: frozenset[str],
    may_write: Callable[[], bool] | None,
    display: Display | None = None,
    number: int = 0,
    sharing: Sharing | None = None,
) -> PassSummary:
    """Run one full pass in a new process and return its PassSummary (with ``memory``).
    ``sharing`` (shared members): the pass writes what this member owns as it begins,
    and its targets' gates ask ``sharing`` before each window of writes.

    Raises what the pass raised (SourceError, ConfigError, …), ``WorkerDied`` when the
    process ended without an answer, ``WorkerCrashed`` for an unexpected exception."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = subprocess.Popen(
            # -P: the working directory (the state directory, under systemd) is not
            # put on the module path.
            [sys.executable, "-P", "-m", "provisiond.daemon.worker", str(theirs.fileno()),
             str(os.getpid())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
        )
        theirs.close()
        conn = Connection(ours.detach())
    log.debug("full pass: process pid=%d", proc.pid)
    ticks: dict[str, Callable[[int], None]] = {}
    try:
        conn.send((settings, skip, _levels(), display is not None, number,
                   None if sharing is None else sharing.child()))
        if display is not None:
            with display:
                return _serve(conn, proc, may_write, display, ticks, sharing)
        return _serve(conn, proc, may_write, None, ticks, sharing)
    except OSError:  # it died before it took its work
        raise _died(proc) from None
    finally:
        conn.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # it answered, then hung on the way out
            proc.kill()
            proc.wait()


def _serve(
    conn: Connection,
    proc: subprocess.Popen[bytes],
    may_write: Callable[[], bool] | None,
    display: Display | None,
    ticks: dict[str, Callable[[int], None]],
    sharing: Sharing | None = None,
) -> PassSummary:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            raise _died(proc) from None
        kind = message[0]
        if kind == "log":
            record = logging.makeLogRecord(message[1])
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        elif kind == "may_write":
            conn.send(True if may_write is None else bool(may_write()))
        elif kind == "gate":
            conn.send(sharing is not None and sharing.ask(message[1]))
        elif kind == "gate_done" and sharing is not None:
            sharing.done(message[1])
        elif kind == "progress" and display is not None:
            ticks[message[1]] = display.factory(message[1], message[2])
        elif kind == "tick" and message[1] in ticks:
            ticks[message[1]](message[2])
        elif kind == "done":
            summary: PassSummary = message[1]
            return summary
        elif kind == "error":
            raise _rebuilt(message[1], message[2], message[3])
        elif kind == "crash":
            raise WorkerCrashed(f"the full-pass process crashed:\n{message[1]}")


def _rebuilt(names: list[str], text: str, problems: list[str]) -> ProvisiondError:
    """The child's error as the same class of ``provisiond.errors`` (the nearest one its
    class derives from), with the same message."""
    cls: type[ProvisiondError] = ProvisiondError
    for name in names:
        found = getattr(errors, name, None)
        if isinstance(found, type) and issubclass(found, ProvisiondError):
            cls = found
            break
    if issubclass(cls, ConfigError):
        return cls(problems)
    exc = cls.__new__(cls)
    Exception.__init__(exc, text)
    return exc


def _died(proc: subprocess.Popen[bytes]) -> WorkerDied:
    try:
        code: int | None = proc.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    return WorkerDied(f"the full-pass process (pid {proc.pid}) ended with exit code {code} "
                      "before it finished; what it wrote is in the journal, the next pass "
                      "carries on")


def _levels() -> dict[str, int]:
    """The daemon's logger levels (root as ""), for the full-pass process to filter alike."""
    out = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            out[name] = logger.level
    return out


# -- in the full-pass process -------------------------------------------------------


class _Channel:
    """The child's end of the pipe, shared by its threads (apply workers log and ask)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.broken = False

    def send(self, *message: Any) -> None:
        with self.lock:
            if self.broken:
                return
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                self.broken = True

    def may_write(self) -> bool:
        """The daemon's leader check; no answer (the daemon is gone) means no."""
        return self._ask(("may_write",))

    def gate(self, target: str) -> bool:
        """Shared members: may ``target``'s writes go on (``Sharing.ask``)?"""
        return self._ask(("gate", target))

    def gate_done(self, target: str) -> None:
        self.send("gate_done", target)

    def _ask(self, message: tuple[str, ...]) -> bool:
        with self.lock:
            if self.broken:
                return False
            try:
                self.conn.send(message)
                return bool(self.conn.recv())
            except (OSError, EOFError, ValueError):
                self.broken = True
                return False


class _PipeHandler(logging.Handler):
    """Every record to the daemon, as a plain dict (its message already formatted)."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"], fields["args"] = record.getMessage(), None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["exc_info"] = None
            self.channel.send("log", {k: v for k, v in fields.items()
                                      if isinstance(v, (str, int, float, bool, type(None)))})
        except Exception:  # a log line must never break the pass
            self.handleError(record)


class _Ticks:
    """The engine's ProgressFactory, sent to the daemon at most every TICK_EVERY."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.lock = threading.Lock()
        self.pending: dict[str, int] = {}

    def factory(self, target: str, total: int) -> Callable[[int], None]:
        self.channel.send("progress", target, total)
        last = [time.monotonic()]

        def tick(n: int) -> None:
            with self.lock:
                self.pending[target] = self.pending.get(target, 0) + n
                now = time.monotonic()
                if now - last[0] < TICK_EVERY:
                    return
                last[0], n = now, self.pending.pop(target)
            self.channel.send("tick", target, n)

        return tick

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        for target, n in pending.items():
            self.channel.send("tick", target, n)


def main(fd: int, parent: int) -> int:
    """``python -m provisiond.daemon.worker FD PID``: one full pass for the daemon
    ``PID`` on the other end of socket ``FD``."""
    # As in the daemon: a SIGTERM lets the pass in flight finish (the daemon waits for it).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    # But not after the daemon is gone (the watchdog's SIGABRT, a kill -9): a standby may
    # lead by now, so this process's writes must end with the daemon.
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch",
                     daemon=True).start()
    conn = Connection(fd)
    try:
        settings, skip, levels, progress, number, share = conn.recv()
    except (EOFError, OSError):
        return 1
    _child(conn, settings, skip, levels, progress, number, share)
    return 0


def _exit_with_parent(parent: int) -> None:
    """Exit at once when ``parent`` is no longer this process's parent (it died, even
    before this process got going: then it was re-parented already)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(EXIT_ORPHANED)


def _child(conn: Connection, settings: Settings, skip: frozenset[str],
           levels: dict[str, int], progress: bool, number: int, share: ChildShare | None) -> None:
    channel = _Channel(conn)
    logging.raiseExceptions = False  # a record that cannot be sent is dropped, never printed raw
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_PipeHandler(channel))
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    # As the console script does: a pass's many small acyclic objects are not rescanned.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        from provisiond.engine import Reconciler

        ticks = _Ticks(channel) if progress else None
        rec = Reconciler(settings, readonly=settings.daemon.dry_run)
        if share is not None:
            fit_child(rec, share, channel.gate, channel.gate_done)
        try:
            pp = rec.plan(skip=lambda name: name in skip, checksums=False)
            summary = summarise(rec, pp, settings, dry_run=settings.daemon.dry_run,
                                may_write=channel.may_write,
                                progress=ticks.factory if ticks is not None else None,
                                number=number)
            if ticks is not None:
                ticks.flush()
            summary.memory = rec.memory
        finally:
            rec.close()
        channel.send("done", summary)
    except ProvisiondError as exc:
        channel.send("error", [c.__name__ for c in type(exc).__mro__], str(exc),
                     getattr(exc, "problems", []))
    except BaseException:
        channel.send("crash", traceback.format_exc())
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
