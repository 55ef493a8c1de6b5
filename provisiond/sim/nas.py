"""A NAS double: what RouterOS's ``/radius incoming`` does with CoA and Disconnect-Requests.

Listens on a loopback address and UDP port, checks the shared secret and the Request
Authenticator (pyrad 2.6 drops packets that fail), records every request it accepted
(code and decoded attributes) and answers ACK, NAK (``Error-Cause`` =
Session-Context-Not-Found) for configured usernames or sessions, or nothing at all for
configured ones (the daemon then sees a timeout). Used by tests and the demo; part of
the simulator, so it imports nothing from the engine.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from dataclasses import dataclass, field
from importlib import resources
from io import StringIO
from typing import Any

import pyrad.packet
from pyrad.dictionary import Dictionary
from pyrad.server import RemoteHost, Server, ServerPacketError

log = logging.getLogger(__name__)


def sim_dictionary() -> Dictionary:
    text = resources.files("provisiond").joinpath("data/dictionary").read_text(encoding="utf-8")
    return Dictionary(StringIO(text))


def free_udp_port(*addresses: str) -> int:
    """A UDP port free on every one of ``addresses`` (loopback)."""
    addrs = addresses or ("127.0.0.1",)
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((addrs[0], 0))
            port = int(s.getsockname()[1])
        try:
            for a in addrs[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as t:
                    t.bind((a, port))
        except OSError:
            continue
        return port
    raise OSError(f"no UDP port free on all of {addrs}")


@dataclass(frozen=True, slots=True)
class Received:
    """One request the double accepted."""

    code: int
    attributes: dict[str, list[Any]]
    source: str

    @property
    def kind(self) -> str:
        return {pyrad.packet.CoARequest: "coa", pyrad.packet.DisconnectRequest: "disconnect"}.get(
            self.code, str(self.code)
        )

    def first(self, name: str) -> Any:
        values = self.attributes.get(name) or [None]
        return values[0]


@dataclass(slots=True)
class NasBehaviour:
    """Who gets a NAK and who gets silence; by User-Name or Acct-Session-Id."""

    nak: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)


class NasDouble(Server):  # type: ignore[misc]
    """``NasDouble("127.0.0.1", secret=b"s", port=...)``; ``start()``, ``stop()``, ``received``."""

    coafds: list[socket.socket]  # pyrad's, set by BindToAddress

    def __init__(
        self,
        address: str = "127.0.0.1",
        *,
        secret: bytes,
        port: int | None = None,
        clients: tuple[str, ...] = ("0.0.0.0",),  # "0.0.0.0": any client (pyrad)
        dictionary: Dictionary | None = None,
    ) -> None:
        self.address = address
        self.port = port if port is not None else free_udp_port(address)
        hosts = {c: RemoteHost(c, secret, "provisiond") for c in clients}
        super().__init__(
            addresses=[],
            coaport=self.port,
            hosts=hosts,
            dict=dictionary if dictionary is not None else sim_dictionary(),
            auth_enabled=False,
            acct_enabled=False,
            coa_enabled=True,
        )
        self.behaviour = NasBehaviour()
        self.received: list[Received] = []
        self.dropped: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> NasDouble:
        self.BindToAddress(self.address)
        self._realauthfds: list[int] = []
        self._realacctfds: list[int] = []
        sockets: list[socket.socket] = self.coafds
        self._realcoafds = [fd.fileno() for fd in sockets]
        self._thread = threading.Thread(target=self._loop, name=f"nas-{self.address}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        sockets: list[socket.socket] = self.coafds
        for fd in sockets:
            fd.close()
        self.coafds = []

    def __enter__(self) -> NasDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            sockets: list[socket.socket] = self.coafds
            ready, _, _ = select.select(sockets, [], [], 0.05)
            for fd in ready:
                try:
                    self._ProcessInput(fd)
                except (ServerPacketError, pyrad.packet.PacketError, OSError) as exc:
                    with self._lock:
                        self.dropped.append(str(exc))

    # -- recorded packets ----------------------------------------------------------
    def packets(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    # -- pyrad handlers ---------------------------------------------------------------
    def HandleCoaPacket(self, pkt: Any) -> None:  # noqa: N802 - pyrad's name
        self._answer(pkt, pyrad.packet.CoANAK)

    def HandleDisconnectPacket(self, pkt: Any) -> None:  # noqa: N802 - pyrad's name
        self._answer(pkt, pyrad.packet.DisconnectNAK)

    def _answer(self, pkt: Any, nak_code: int) -> None:
        attrs = {str(k): list(pkt[k]) for k in pkt.keys()}
        with self._lock:
            self.received.append(Received(pkt.code, attrs, str(pkt.source[0])))
        who = {*(str(v) for v in attrs.get("User-Name", [])), *(str(v) for v in attrs.get("Acct-Session-Id", []))}
        if who & self.behaviour.silent:
            return
        reply = self.CreateReplyPacket(pkt)
        if who & self.behaviour.nak:
            reply.code = nak_code
            reply["Error-Cause"] = "Session-Context-Not-Found"
        self.SendReplyPacket(pkt.fd, reply)
