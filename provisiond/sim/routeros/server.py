"""``RouterSim``: a simulated RouterOS API service on a loopback TCP port.

The outermost layer of the simulator. ``start`` binds a listener (plain, or
TLS like api-ssl when a certificate is configured) and serves every
connection in its own pair of threads: the reader reads a sentence with
``codec`` and hands it to a ``Session`` at once (commands run in arrival
order, one at a time, as on a router); the writer sends each ``Reply``
``command_latency`` after its command arrived (plus the router's own work),
so pipelined commands overlap like on a WAN link, and writes every reply
that is due in one ``sendall``. A malformed stream
(control byte, over-long pre-login word) closes that connection only.

Changes streamed to listeners (``listen``) go into the listening
connection's outbox from whichever thread made them; a ticker thread expires
timed-out entries every ``expiry_poll`` seconds so listeners hear of those
too. A reply leaves no sooner than the router's one CPU queue
(``load.RouterCpu``) is done with its command.

The methods below the socket code are for tests and the demo: inspect and
seed the tables, inject traps, drop or stall connections (all of them, or
those with a listen open), reboot the router, take it "down" (connections
refused), read what commands arrived and what work it did. The fault hooks
(``cut_after``, ``stall_after``, ``rewrite_next``, ``on_sentence``) count
every non-empty sentence received on any connection, login included, so a
test can break one apply at an exact point.
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
from types import TracebackType

from .codec import PeerClosed, ProtocolViolation, encode_reply, read_sentence
from .errors import Trap
from .load import RouterLoad
from .session import Session
from .settings import SimSettings
from .state import MENUS, Drop, ReceivedCommand, RouterState

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sentences = tuple[tuple[str, ...], ...]
Rewrite = Callable[[Sentences], Sentences]
_ACCEPT_POLL = 0.1
_HANDSHAKE_TIMEOUT = 10.0


class RouterSim:
    """One simulated router. Use as a context manager or call start/stop."""

    def __init__(self, settings: SimSettings | None = None, *, clock: Clock | None = None) -> None:
        self.settings = settings or SimSettings()
        self.state = RouterState(self.settings, clock or time.time)
        self._tls = self._tls_context()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._port = self.settings.port
        self._running = False
        self._guard = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._sessions: dict[socket.socket, Session] = {}
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unstalled = threading.Event()
        self._unstalled.set()
        # Fault hooks, under _guard: sentence number -> what to do with it.
        self._received = 0
        self._cuts: dict[int, bool] = {}  # -> run the command before cutting?
        self._stalls: dict[int, bool] = {}  # -> send half of the reply before stalling?
        self._rewrites: list[tuple[str, Rewrite]] = []
        self._observer: Callable[[int, list[str]], None] | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> RouterSim:
        """Bind and listen; returns once connections are accepted."""
        self._running = True
        self._stopping.clear()
        self._listen()
        if self.settings.expiry_poll > 0:
            self._ticker = threading.Thread(target=self._tick, name=f"sim-expiry-{self._port}", daemon=True)
            self._ticker.start()
        return self

    def stop(self) -> None:
        self._running = False
        self._stopping.set()
        self._unstalled.set()
        self._close_listener()
        self.drop_connections()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._threads.clear()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.join(timeout=5)

    def __enter__(self) -> RouterSim:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        return self._port

    # -- state for tests and the demo --------------------------------------

    def add_entry(
        self,
        menu: str = "ip",
        *,
        list_name: str,
        address: str,
        comment: str | None = None,
        dynamic: bool = True,
        disabled: bool = False,
        timeout: str | None = None,
        allow_duplicate: bool = False,
    ) -> str:
        """Create an entry as the router itself would (e.g. from a firewall
        ``add-src-to-address-list`` rule: ``dynamic`` by default); returns its
        ``.id``. Raises ``Trap`` exactly where an API ``add`` would trap, except
        that ``allow_duplicate`` lets a (list, address) pair occur twice, as in
        configs imported from older RouterOS versions."""
        attrs = {"list": list_name, "address": address, "disabled": "yes" if disabled else "no"}
        if comment is not None:
            attrs["comment"] = comment
        if timeout is not None:
            attrs["timeout"] = timeout
        with self.state.lock:
            table = self.state.tables[_menu(menu)]
            return table.add(attrs, dynamic=dynamic, allow_duplicate=allow_duplicate).id_text

    def entries(self, menu: str = "ip", list_name: str | None = None) -> list[dict[str, str]]:
        """Rows as a full ``print`` would show them, in print order."""
        with self.state.lock:
            table = self.state.tables[_menu(menu)]
            return [table.render(entry) for entry in table.entries(list_name)]

    def remove_entry(self, menu: str, entry_id: str) -> None:
        """Delete one entry by ``.id`` behind the client's back."""
        with self.state.lock:
            table = self.state.tables[_menu(menu)]
            table.remove(table.resolve(entry_id))

    def fail_next(self, command_path: str, message: str, category: int | None = None,
                  *, after: int = 0) -> None:
        """The next ``command_path`` command (e.g. ``/ip/firewall/address-list/add``)
        from any connection, once ``after`` more have run, traps with ``message``
        instead of running."""
        with self.state.lock:
            self.state.add_fault(command_path, Trap(message, category), after)

    def drop_after(self, command_path: str, count: int) -> None:
        """Cut the connection that runs the ``count``-th next ``command_path`` command
        right after running it: neither its reply nor any later one is sent, and
        commands already sent behind it are not run (a link lost mid-window)."""
        with self.state.lock:
            self.state.add_fault(command_path, Drop(), count - 1)

    @property
    def command_counts(self) -> dict[str, int]:
        with self.state.lock:
            return dict(self.state.counts)

    @property
    def history(self) -> list[ReceivedCommand]:
        with self.state.lock:
            return list(self.state.history)

    def reset_history(self) -> None:
        with self.state.lock:
            self.state.counts.clear()
            self.state.history.clear()

    @property
    def connection_count(self) -> int:
        with self._guard:
            return len(self._connections)

    def drop_connections(self) -> None:
        """Close every client connection abruptly (no ``!fatal``)."""
        with self._guard:
            connections = list(self._connections)
        for conn in connections:
            _shut(conn)

    def drop_listening(self) -> int:
        """Close abruptly every connection with a listen/follow open (the others stay);
        returns how many were closed."""
        with self._guard:
            chosen = [conn for conn, session in self._sessions.items() if session.listening]
        for conn in chosen:
            _shut(conn)
        return len(chosen)

    @property
    def listening(self) -> int:
        """Listens/follows open on all connections."""
        with self.state.lock:
            return len(self.state.listeners)

    def reboot(self, *, next_id: int | None = None, down_for: float = 0.0) -> None:
        """Reboot the router: every connection drops (listeners with them), entries with a
        timeout and dynamic ones are gone, the rest are renumbered (from ``next_id``;
        default past every id used, so no old id is valid), ``/system/resource``'s
        ``uptime`` starts again from 0. ``down_for`` seconds: connections are refused
        meanwhile (this call returns at once)."""
        with self.state.lock:
            self.state.reboot(next_id)
        if down_for > 0:
            self.set_down(True)
            timer = threading.Timer(down_for, self.set_down, args=(False,))
            timer.daemon = True
            timer.start()
        else:
            self.drop_connections()

    @property
    def load(self) -> RouterLoad:
        """The router's work so far: scans and rows scanned per menu, entries written,
        events streamed, CPU seconds charged by ``scan_cost_us``/``add_cost_ms``."""
        with self.state.lock:
            return self.state.cpu.snapshot()

    def reset_load(self) -> None:
        with self.state.lock:
            self.state.cpu.reset()

    def expire(self) -> None:
        """Expire timed-out entries now (the ticker does it every ``expiry_poll`` s)."""
        with self.state.lock:
            self.state.expire()

    def set_down(self, down: bool) -> None:
        """Down: drop connections and stop listening (connection refused).
        Up again: listen on the same port."""
        if down:
            self._close_listener()
            self.drop_connections()
        elif self._listener is None and self._running:
            self._listen()

    def set_stalled(self, stalled: bool) -> None:
        """Stalled: read commands but hold every reply until un-stalled
        (a client's read timeout fires; replies then arrive late)."""
        if stalled:
            self._unstalled.clear()
        else:
            self._unstalled.set()

    def cut_after(self, n: int, *, run: bool = False) -> None:
        """The ``n``-th sentence received from now on (1 = the next one, on any
        connection; 0 = the one an ``on_sentence`` observer is looking at) is the last
        on its connection: it is closed without an answer.
        ``run`` runs the command first, as when the reply is lost on its way back."""
        with self._guard:
            self._cuts[self._received + n] = run

    def stall_after(self, n: int, *, half: bool = False) -> None:
        """The reply to the ``n``-th sentence from now on is held until
        ``set_stalled(False)``; ``half`` sends the first half of its bytes first.
        Takes effect by stalling the whole router (every later reply waits too)."""
        with self._guard:
            self._stalls[self._received + n] = half

    def rewrite_next(self, command_path: str, rewrite: Rewrite) -> None:
        """The next reply to ``command_path`` passes through ``rewrite`` (sentences in,
        sentences out) before it is sent; a ``!fatal`` among them closes the connection
        after sending, as RouterOS does."""
        with self._guard:
            self._rewrites.append((command_path, rewrite))

    def on_sentence(self, observer: Callable[[int, list[str]], None] | None) -> None:
        """Call ``observer(number, words)`` for every sentence received, before it runs
        (number counts from the router's start); it may call ``cut_after(0)`` or
        ``stall_after(0)`` to break that very sentence."""
        with self._guard:
            self._observer = observer

    @property
    def sentences_received(self) -> int:
        with self._guard:
            return self._received

    # -- sockets -----------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_cert is None or self.settings.tls_key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    def _listen(self) -> None:
        listener = socket.create_server((self.settings.host, self._port), backlog=64)
        listener.settimeout(_ACCEPT_POLL)
        self._port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, args=(listener,), name=f"sim-accept-{self._port}", daemon=True)
        thread.start()
        self._accept_thread = thread
        log.info("sim listening host=%s port=%s tls=%s", self.host, self._port, self._tls is not None)

    def _close_listener(self) -> None:
        # shutdown() stops a listening socket at once on Linux, even while the
        # accept thread sits in poll() on it; close() alone would leave it
        # listening (and completing handshakes) until that poll returns.
        listener, self._listener = self._listener, None
        if listener is None:
            return
        _shut(listener)
        accept_thread, self._accept_thread = self._accept_thread, None
        if accept_thread is not None and accept_thread is not threading.current_thread():
            accept_thread.join(timeout=5)

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._running and self._listener is listener:
            try:
                conn, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            peer = f"{address[0]}:{address[1]}"
            with self._guard:  # registered before its thread runs, so a drop can't miss it
                self._connections.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn, peer), name=f"sim-conn-{peer}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        log.info("sim connection open peer=%s", peer)
        stream, reason = conn, "closed by server"
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = self._secure(conn)
            reason = self._converse(stream, peer)
        except (PeerClosed, ConnectionError):
            reason = "closed by peer"
        except ProtocolViolation as exc:
            reason = f"protocol violation: {exc}"
        except (ssl.SSLError, OSError) as exc:
            reason = f"socket error: {exc}"
        finally:
            with self._guard:
                self._connections.discard(conn)
                self._connections.discard(stream)
            _shut(stream)
            log.info("sim connection closed peer=%s reason=%s", peer, reason)

    def _secure(self, conn: socket.socket) -> socket.socket:
        """The TLS layer over ``conn`` (api-ssl), or ``conn`` itself."""
        if self._tls is None:
            conn.settimeout(None)
            return conn
        conn.settimeout(_HANDSHAKE_TIMEOUT)
        stream = self._tls.wrap_socket(conn, server_side=True)  # detaches conn
        stream.settimeout(None)
        with self._guard:
            self._connections.discard(conn)
            self._connections.add(stream)
        return stream

    def _converse(self, stream: socket.socket, peer: str) -> str:
        outbox: queue.SimpleQueue[_Outgoing | None] = queue.SimpleQueue()
        latency = self.settings.command_latency

        def deliver(sentences: Sentences, ready: float) -> None:  # streamed changes, any thread
            outbox.put(_Outgoing(max(time.monotonic(), ready) + latency, encode_reply(sentences), False, None))

        session = Session(self.state, peer=peer, deliver=deliver)
        with self._guard:
            self._sessions[stream] = session
        writer = threading.Thread(target=self._write_replies, args=(stream, outbox),
                                  name=f"sim-write-{peer}", daemon=True)
        writer.start()
        busy_until = 0.0  # when the router finishes the work queued so far
        try:
            with stream.makefile("rb") as reader:
                while True:
                    limit = None if session.logged_in else self.settings.max_pre_login_word
                    words = read_sentence(reader.read, max_word=limit)
                    arrived = time.monotonic()
                    cut, stall, rewrite = self._faults_for(words)
                    if cut is False:
                        return "cut by a test before running the command"
                    reply = session.handle(words)
                    if reply is None:
                        continue
                    if cut is True or reply.drop:
                        return "cut by a test after running the command"
                    sentences = rewrite(reply.sentences) if rewrite is not None else reply.sentences
                    busy_until = max(arrived, busy_until, reply.ready) + reply.delay
                    close = reply.close or any(s and s[0] == "!fatal" for s in sentences)
                    outbox.put(_Outgoing(busy_until + latency, encode_reply(sentences), close, stall))
                    if reply.listener is not None:
                        reply.listener.arm()
                    if close:
                        return "fatal sent"
        finally:
            session.close()
            with self._guard:
                self._sessions.pop(stream, None)
            outbox.put(None)  # replies already queued still leave, at their time
            writer.join()

    def _tick(self) -> None:
        while not self._stopping.wait(self.settings.expiry_poll):
            self.expire()

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
                    self._unstalled.clear()
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
                self._unstalled.wait()
                if not self._running:
                    return
                stream.sendall(b"".join(chunks))
                if close or ended:
                    return
                if held is None:
                    held = outbox.get()
        except OSError:
            return


    def _faults_for(self, words: list[str]) -> tuple[bool | None, bool | None, Rewrite | None]:
        """(cut: None / before / after running, stall: None / whole / half, rewrite)."""
        if not words:
            return None, None, None
        with self._guard:
            self._received += 1
            number, observer = self._received, self._observer
        if observer is not None:  # outside the lock: it may call cut_after(0) and the like
            observer(number, words)
        with self._guard:
            cut = self._cuts.pop(number, None)
            stall = self._stalls.pop(number, None)
            rewrite = None
            for index, (path, fn) in enumerate(self._rewrites):
                if path == words[0]:
                    rewrite = fn
                    del self._rewrites[index]
                    break
        return cut, stall, rewrite


@dataclass(frozen=True, slots=True)
class _Outgoing:
    due: float  # monotonic time the reply leaves
    data: bytes
    close: bool  # close the connection after it (``!fatal``)
    stall: bool | None  # a test's stall: None, whole reply, or half of it first


def _menu(menu: str) -> str:
    key = menu.strip("/").split("/")[0]
    if key not in MENUS:
        raise ValueError(f"unknown address-list menu {menu!r}; use 'ip' or 'ipv6'")
    return key


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
