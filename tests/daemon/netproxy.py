"""A loopback TCP forwarder that a test puts between one client (a member's state store
connections) and PostgreSQL, and then breaks on purpose.

- ``blackhole(True)``: every connection, open or new, stops forwarding both ways; the
  sockets stay open and nothing is read, so what was sent waits in the kernel's buffers
  (the way a pulled cable or a dead NAT entry looks from both ends: no FIN, no RST, no
  answer). ``blackhole(False)``: the bytes held flow on, as after a link comes back.
- ``refuse(True)``: new connections are closed at once (a server that cannot be
  reached); the open ones are left as they are.
- ``upstream_ports()``: the local ports of the proxy's connections to the server, which
  is what ``pg_stat_activity.client_port`` shows for them.
"""

from __future__ import annotations

import select
import socket
import threading
from types import TracebackType

_POLL = 0.05


class Proxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL)
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._closed = threading.Event()
        self._guard = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0

    def start(self) -> Proxy:
        self._spawn(self._accept_loop, "proxy-accept")
        return self

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def blackhole(self, on: bool) -> None:
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    def refuse(self, on: bool) -> None:
        self._refusing = on

    def upstream_ports(self) -> list[int]:
        with self._guard:
            ports = []
            for _, server in self._pairs:
                try:
                    ports.append(int(server.getsockname()[1]))
                except OSError:
                    pass
            return ports

    def stop(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._guard:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _close(a)
            _close(b)
        for t in self._threads:
            t.join(timeout=5)

    # -- threads ---------------------------------------------------------------------

    def _spawn(self, target: object, name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refusing:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._guard:
                self._pairs.append((client, server))
                self.accepted += 1
            self._spawn(self._pump, "proxy-up", client, server)
            self._spawn(self._pump, "proxy-down", server, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Forward ``src`` to ``dst`` while flowing; while blackholed read nothing (and
        hold back what was read just before)."""
        try:
            while not self._closed.is_set():
                if not self._flowing.wait(_POLL):
                    continue
                ready, _, _ = select.select([src], [], [], _POLL)
                if not ready or not self._flowing.is_set():
                    continue
                data = src.recv(65536)
                if not data:
                    break
                while not self._flowing.wait(_POLL):
                    if self._closed.is_set():
                        return
                dst.sendall(data)
        except (OSError, ValueError):
            pass
        try:
            dst.shutdown(socket.SHUT_WR)  # pass an orderly close on
        except OSError:
            pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
