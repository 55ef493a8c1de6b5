"""``RouterSim``: a simulated RouterOS API service on a loopback TCP port.

The outermost layer of the simulator. ``start`` binds a listener (plain, or
TLS like api-ssl when a certificate is configured) and serves every accepted
socket with a ``connection.Connection`` in a thread of its own; a ticker
thread expires timed-out entries every ``expiry_poll`` seconds so listeners
hear of those too.

The methods below the lifecycle are for tests and the demo: inspect and
seed the tables, inject traps, drop or stall connections (all of them, or
those with a listen open), reboot the router, take it "down" (connections
refused), read what commands arrived and what work it did. The fault hooks
(``cut_after``, ``stall_after``, ``rewrite_next``, ``on_sentence``) are those
of its ``faults.FaultHooks``, reachable here too.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType

from .connection import Connection, Connections, shut
from .errors import Trap
from .faults import FaultHooks, Observer, Rewrite
from .load import RouterLoad
from .settings import SimSettings
from .state import MENUS, Drop, ReceivedCommand, RouterState

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_ACCEPT_POLL = 0.1


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
        self._connections = Connections()
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        #: A test's faults: cut, stall or rewrite at an exact sentence.
        self.faults = FaultHooks()

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
        self.faults.set_stalled(False)
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
        return len(self._connections)

    def drop_connections(self) -> None:
        """Close every client connection abruptly (no ``!fatal``)."""
        self._connections.drop_all()

    def drop_listening(self) -> int:
        """Close abruptly every connection with a listen/follow open (the others stay);
        returns how many were closed."""
        return self._connections.drop_listening()

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
        self.faults.set_stalled(stalled)

    def cut_after(self, n: int, *, run: bool = False) -> None:
        """``FaultHooks.cut_after``: the ``n``-th sentence from now on closes its connection."""
        self.faults.cut_after(n, run=run)

    def stall_after(self, n: int, *, half: bool = False) -> None:
        """``FaultHooks.stall_after``: the reply to the ``n``-th sentence from now on is held."""
        self.faults.stall_after(n, half=half)

    def rewrite_next(self, command_path: str, rewrite: Rewrite) -> None:
        """``FaultHooks.rewrite_next``: the next reply to ``command_path`` is rewritten."""
        self.faults.rewrite_next(command_path, rewrite)

    def on_sentence(self, observer: Observer | None) -> None:
        """``FaultHooks.on_sentence``: ``observer(number, words)`` for every sentence received."""
        self.faults.on_sentence(observer)

    @property
    def sentences_received(self) -> int:
        return self.faults.received

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
        shut(listener)
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
            self._connections.add(conn)  # registered before its thread runs, so a drop can't miss it
            connection = Connection(conn, peer, state=self.state, settings=self.settings, tls=self._tls,
                                    faults=self.faults, registry=self._connections,
                                    running=lambda: self._running)
            thread = threading.Thread(target=connection.serve, name=f"sim-conn-{peer}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _tick(self) -> None:
        while not self._stopping.wait(self.settings.expiry_poll):
            self.expire()


def _menu(menu: str) -> str:
    key = menu.strip("/").split("/")[0]
    if key not in MENUS:
        raise ValueError(f"unknown address-list menu {menu!r}; use 'ip' or 'ipv6'")
    return key
