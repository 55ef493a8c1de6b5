"""Helpers of the Sonar tests (a module of its own: conftest names clash across folders)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from provisiond.sim.sonar import World

TOKEN = "sonar-test-token-0123456789abcdef"


def populate(world: World, count: int, *, first: int = 1000) -> None:
    """``count`` accounts: one address each on the account, every third a Tower Host."""
    for i in range(count):
        account = first + i
        world.account(account, f"Account {i}", groups=["Tower Hosts"] if i % 3 == 0 else [])
        world.ip("Account", account, f"100.64.{i >> 8}.{i & 255}/32")
        world.radius_account(account, f"user{account}")


@contextlib.contextmanager
def canned(answer: Any) -> Iterator[str]:
    """A loopback server answering every POST with ``answer`` (JSON): a Sonar gone odd."""
    payload = json.dumps(answer).encode()

    class Canned(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Recorder:
    """A loopback listener that records every connection's first bytes and closes it: a
    proxy (or anything else) that must never be reached."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.seen.append(conn.recv(4096))
                except OSError:
                    self.seen.append(b"")
                conn.sendall(b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()
