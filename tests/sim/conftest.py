"""Fixtures for the RouterOS simulator tests: a running sim, its clock, clients.

Every fixture talks real TCP on loopback; nothing is mocked. ``raw`` opens a
byte-level client (``RawClient``) for framing tests, ``lr`` a logged-in
librouteros ``Api``, ``ros_api`` a logged-in ``routeros_api`` API object.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import librouteros
import pytest
import routeros_api

from provisiond.sim import ManualClock, RouterSim, SimSettings
from provisiond.sim.routeros.codec import encode_sentence, read_sentence

USER = "sim-user"
PASSWORD = "sim-pass"
AL = "/ip/firewall/address-list"
AL6 = "/ipv6/firewall/address-list"


class RawClient:
    """A byte-level API client: send words, read sentences exactly as sent."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def send(self, *words: str) -> None:
        self.sock.sendall(encode_sentence(words))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def sentence(self) -> list[str]:
        return read_sentence(self.reader.read)

    def reply(self) -> list[list[str]]:
        """Sentences up to and including ``!done`` (or ``!fatal``)."""
        out: list[list[str]] = []
        while True:
            sentence = self.sentence()
            out.append(sentence)
            if sentence[0] in ("!done", "!fatal"):
                return out

    def call(self, *words: str) -> list[list[str]]:
        self.send(*words)
        return self.reply()

    def login(self, user: str = USER, password: str = PASSWORD) -> None:
        assert self.call("/login", f"=name={user}", f"=password={password}") == [["!done"]]

    def is_closed(self) -> bool:
        """True when the server has closed the connection (EOF or reset)."""
        try:
            return self.reader.read(1) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_795_600_800.0)  # 2026-11-25 in any timezone


@pytest.fixture
def make_sim(clock: ManualClock) -> Iterator[Callable[..., RouterSim]]:
    """``make_sim(**settings)`` starts a sim with these settings (stopped after)."""
    started: list[RouterSim] = []

    def make(**overrides: Any) -> RouterSim:
        values: dict[str, Any] = {"username": USER, "password": PASSWORD, "log_commands": False}
        values.update(overrides)
        sim = RouterSim(SimSettings(**values), clock=clock).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., RouterSim]) -> RouterSim:
    return make_sim()


@pytest.fixture
def raw(sim: RouterSim) -> Iterator[Callable[..., RawClient]]:
    """``raw()`` connects to ``sim``; ``raw(port)`` to another one."""
    clients: list[RawClient] = []

    def connect(port: int | None = None) -> RawClient:
        client = RawClient(sim.port if port is None else port)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def lr(sim: RouterSim) -> Iterator[librouteros.api.Api]:
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port, encoding="utf-8")
    yield api
    api.close()


@pytest.fixture
def ros_api(sim: RouterSim) -> Iterator[Any]:
    pool = routeros_api.RouterOsApiPool(
        sim.host, username=USER, password=PASSWORD, port=sim.port, plaintext_login=True
    )
    yield pool.get_api()
    pool.disconnect()
