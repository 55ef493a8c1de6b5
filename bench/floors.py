"""The floors: the least any client could take for each job, measured in the same run.

Raw clients with no provisiond code: the billing query fetched with psycopg and thrown
away; one print per family over every list (an OR query, as provisiond's full read)
sent to every router at once (tagged, pipelined) and its reply bytes read without
decoding them; a pipelined writer that sends tagged adds in
a window and only counts the ``!done`` replies. They use librouteros only to log in and
to encode sentences. Each returns its wall time in seconds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import librouteros
import psycopg
from librouteros.protocol import encode_sentence

from bench.scenario import BILLING_QUERY, USER

MENUS = ("/ip/firewall/address-list", "/ipv6/firewall/address-list")
# The same properties provisiond asks for in a full read (targets.routeros.commands.PRINT_PROPLIST_WORD).
PROPLIST = "=.proplist=.id,list,address,comment,dynamic,disabled"
DONE = b"\x05!done"


def _login(port: int, password: str) -> socket.socket:
    api = librouteros.connect("127.0.0.1", USER, password, port=port, timeout=600)
    sock: socket.socket = api.protocol.transport.sock
    return sock


def _encode(*words: str) -> bytes:
    return encode_sentence(*words, encoding="utf-8")


def billing_read(dsn: str) -> float:
    started = time.monotonic()
    with psycopg.connect(dsn) as conn, conn.cursor(name="floor") as cur:
        cur.itersize = 5000
        cur.execute(BILLING_QUERY)
        for _ in cur:
            pass
    return time.monotonic() - started


def _read_until(sock: socket.socket, marker: bytes) -> None:
    tail = b""
    while True:
        got = sock.recv(1 << 20)
        if not got:
            raise ConnectionError("router closed the connection")
        if marker in tail + got[:len(marker)] or marker in got:
            return
        tail = got[-len(marker):]


def prints(ports: Sequence[int], lists: Sequence[str], password: str) -> float:
    """One print per family over every list, on every router, all at once."""
    query = [f"?list={name}" for name in lists] + ["?#|"] * (len(lists) - 1)

    def one(port: int) -> None:
        sock = _login(port, password)
        out = [_encode(f"{menu}/print", PROPLIST, *query, f".tag={i}") for i, menu in enumerate(MENUS)]
        # The simulator answers in order: the last reply ends the stream.
        out.append(_encode("/system/identity/print", ".tag=end"))
        sock.sendall(b"".join(out))
        _read_until(sock, DONE + b"\x08.tag=end\x00")
        sock.close()

    return _parallel(one, ports)


def plan_floor(dsn: str, ports: Sequence[int], lists: Sequence[str], password: str) -> dict[str, float]:
    """The billing read and every print, all at once: what a no-op plan cannot beat."""
    times: dict[str, float] = {}
    started = time.monotonic()
    reader = threading.Thread(target=lambda: times.__setitem__("billing", billing_read(dsn)))
    reader.start()
    times["prints"] = prints(ports, lists, password)
    reader.join()
    times["total"] = time.monotonic() - started
    return times


def writer(port: int, password: str, sentences: Iterable[tuple[str, ...]], *, window: int = 256) -> float:
    """Tagged commands, at most ``window`` in flight, counting ``!done`` replies."""
    started = time.monotonic()
    sock = _login(port, password)
    sent = done = 0
    tail = b""
    pending = iter(sentences)
    exhausted = False
    while not exhausted or done < sent:
        batch = []
        while not exhausted and sent - done + len(batch) < window:
            words = next(pending, None)
            if words is None:
                exhausted = True
                break
            batch.append(_encode(*words, f".tag={sent + len(batch)}"))
        if batch:
            sock.sendall(b"".join(batch))
            sent += len(batch)
        if done < sent:
            got = sock.recv(1 << 20)
            if not got:
                raise ConnectionError("router closed the connection")
            chunk = tail + got
            done += chunk.count(DONE) - tail.count(DONE)
            tail = chunk[-(len(DONE) - 1):]
    sock.close()
    return time.monotonic() - started


def writers(ports: Sequence[int], password: str, make: Callable[[], Iterable[tuple[str, ...]]]) -> float:
    """``writer`` on every router at once."""
    started = time.monotonic()
    _parallel(lambda port: writer(port, password, make()), ports)
    return time.monotonic() - started


def sequential_librouteros(port: int, password: str, sentences: Iterable[tuple[str, ...]]) -> float:
    """What librouteros alone does: one ``add`` at a time, a round trip each."""
    started = time.monotonic()
    api = librouteros.connect("127.0.0.1", USER, password, port=port, timeout=60)
    for words in sentences:
        attrs = dict(w[1:].split("=", 1) for w in words[1:])
        tuple(api(words[0], **attrs))
    api.close()
    return time.monotonic() - started


def _parallel(fn: Callable[[int], object], items: Sequence[int]) -> float:
    started = time.monotonic()
    errors: list[BaseException] = []

    def guarded(item: int) -> None:
        try:
            fn(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - started
