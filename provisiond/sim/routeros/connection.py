"""One client connection of a ``RouterSim``: a reader and a writer thread over its socket.

``RouterSim``'s accept loop registers each accepted socket in its ``Connections`` and
serves it with a ``Connection`` in a thread of its own. The reader reads a sentence with
``codec``, asks the ``FaultHooks`` what a test wants done with it, and hands it to a
``Session`` at once (commands run in arrival order, one at a time, as on a router); the
writer sends each ``Reply`` ``command_latency`` after its command arrived (plus the
router's own work: a reply leaves no sooner than the router's one CPU queue,
``load.RouterCpu``, is done with its command), so pipelined commands overlap like on a
WAN link, and writes every reply that is due in one ``sendall``. Changes streamed to
listeners go into the connection's outbox from whichever thread made them. A malformed
stream (control byte, over-long pre-login word) closes that connection only.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .codec import PeerClosed, ProtocolViolation, encode_reply, read_sentence
from .faults import FaultHooks, Sentences
from .session import Session
from .settings import SimSettings
from .state import RouterState

log = logging.getLogger(__name__)

_HANDSHAKE_TIMEOUT = 10.0


class Connections:
    """The router's open client sockets and their sessions; thread-safe."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._sessions: dict[socket.socket, Session] = {}

    def add(self, conn: socket.socket) -> None:
        with self._guard:
            self._sockets.add(conn)

    def replace(self, old: socket.socket, new: socket.socket) -> None:
        with self._guard:
            self._sockets.discard(old)
            self._sockets.add(new)

    def discard(self, *conns: socket.socket) -> None:
        with self._guard:
            for conn in conns:
                self._sockets.discard(conn)

    def attach(self, stream: socket.socket, session: Session | None) -> None:
        """``stream``'s session (None: it has ended)."""
        with self._guard:
            if session is None:
                self._sessions.pop(stream, None)
            else:
                self._sessions[stream] = session

    def __len__(self) -> int:
        with self._guard:
            return len(self._sockets)

    def drop_all(self) -> None:
        """Close every client connection abruptly (no ``!fatal``)."""
        with self._guard:
            chosen = list(self._sockets)
        for conn in chosen:
            shut(conn)

    def drop_listening(self) -> int:
        """Close abruptly every connection with a listen/follow open; returns how many."""
        with self._guard:
            chosen = [(conn, session) for conn, session in self._sessions.items() if session.listening]
        for conn, session in chosen:
            session.close()  # its listens end with the connection, not when its thread notices
            shut(conn)
        return len(chosen)


class Connection:
    """Serves one accepted socket until it closes (``serve``, in its own thread)."""

    def __init__(self, conn: socket.socket, peer: str, *, state: RouterState, settings: SimSettings,
                 tls: ssl.SSLContext | None, faults: FaultHooks, registry: Connections,
                 running: Callable[[], bool]) -> None:
        self._conn = conn
        self._peer = peer
        self._state = state
        self._settings = settings
        self._tls = tls
        self._faults = faults
        self._registry = registry
        self._running = running

    def serve(self) -> None:
        conn, peer = self._conn, self._peer
        log.info("sim connection open peer=%s", peer)
        stream, reason = conn, "closed by server"
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = self._secure(conn)
            reason = self._converse(stream)
        except (PeerClosed, ConnectionError):
            reason = "closed by peer"
        except ProtocolViolation as exc:
            reason = f"protocol violation: {exc}"
        except (ssl.SSLError, OSError) as exc:
            reason = f"socket error: {exc}"
        finally:
            self._registry.discard(conn, stream)
            shut(stream)
            log.info("sim connection closed peer=%s reason=%s", peer, reason)

    def _secure(self, conn: socket.socket) -> socket.socket:
        """The TLS layer over ``conn`` (api-ssl), or ``conn`` itself."""
        if self._tls is None:
            conn.settimeout(None)
            return conn
        conn.settimeout(_HANDSHAKE_TIMEOUT)
        stream = self._tls.wrap_socket(conn, server_side=True)  # detaches conn
        stream.settimeout(None)
        self._registry.replace(conn, stream)
        return stream

    def _converse(self, stream: socket.socket) -> str:
        outbox: queue.SimpleQueue[_Outgoing | None] = queue.SimpleQueue()
        latency = self._settings.command_latency

        def deliver(sentences: Sentences, ready: float) -> None:  # streamed changes, any thread
            outbox.put(_Outgoing(max(time.monotonic(), ready) + latency, encode_reply(sentences), False, None))

        session = Session(self._state, peer=self._peer, deliver=deliver)
        self._registry.attach(stream, session)
        writer = threading.Thread(target=self._write_replies, args=(stream, outbox),
                                  name=f"sim-write-{self._peer}", daemon=True)
        writer.start()
        busy_until = 0.0  # when the router finishes the work queued so far
        try:
            with stream.makefile("rb") as reader:
                while True:
                    limit = None if session.logged_in else self._settings.max_pre_login_word
                    words = read_sentence(reader.read, max_word=limit)
                    arrived = time.monotonic()
                    faults = self._faults.for_sentence(words)
                    if faults.cut is False:
                        return "cut by a test before running the command"
                    reply = session.handle(words)
                    if reply is None:
                        continue
                    if faults.cut is True or reply.drop:
                        return "cut by a test after running the command"
                    sentences = reply.sentences if faults.rewrite is None else faults.rewrite(reply.sentences)
                    busy_until = max(arrived, busy_until, reply.ready) + reply.delay
                    close = reply.close or any(s and s[0] == "!fatal" for s in sentences)
                    outbox.put(_Outgoing(busy_until + latency, encode_reply(sentences), close, faults.stall))
                    if reply.listener is not None:
                        reply.listener.arm()
                    if close:
                        return "fatal sent"
        finally:
            session.close()
            self._registry.attach(stream, None)
            outbox.put(None)  # replies already queued still leave, at their time
            writer.join()

    def _write_replies(self, stream: socket.socket, outbox: queue.SimpleQueue[_Outgoing | None]) -> None:
        """Send each reply at its time; replies due together go in one ``sendall``."""
        held = outbox.get()  # taken from the outbox, not sent yet
        try:
            while held is not None:
                item, held = held, None
                wait = item.due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                data, close, ended = item.data, item.close, False
                if item.stall is not None:
                    self._faults.set_stalled(True)
                    if item.stall:
                        stream.sendall(data[: len(data) // 2])
                        data = data[len(data) // 2:]
                chunks = [data]
                while item.stall is None and not close:
                    try:
                        nxt = outbox.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        ended = True
                        break
                    if nxt.stall is not None or nxt.due > time.monotonic():
                        held = nxt  # not due yet (or stalls): the next round
                        break
                    chunks.append(nxt.data)
                    close = nxt.close
                self._faults.wait_unstalled()
                if not self._running():
                    return
                stream.sendall(b"".join(chunks))
                if close or ended:
                    return
                if held is None:
                    held = outbox.get()
        except OSError:
            return


@dataclass(frozen=True, slots=True)
class _Outgoing:
    due: float  # monotonic time the reply leaves
    data: bytes
    close: bool  # close the connection after it (``!fatal``)
    stall: bool | None  # a test's stall: None, whole reply, or half of it first


def shut(conn: socket.socket) -> None:
    """Close ``conn`` at once, both ways, ignoring a socket already gone."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
