"""One RouterOS API session on the wire: TLS, login, a buffered transport, the
``pipeline.Wire`` adapter, and the one place library and socket errors become
provisiond's (``session_errors``).

The bottom of the RouterOS target, and the only module of provisiond that imports
librouteros: librouteros logs in and supplies the word codec and the socket transport;
this module swaps in a transport that receives 64 KiB at a time and cuts sentences
(and runs of plain ``!done`` replies, and rows) straight from its buffer.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import librouteros
import librouteros.login
from librouteros.connections import SocketTransport
from librouteros.exceptions import ConnectionClosed, FatalError, LibRouterosError, TrapError
from librouteros.protocol import decode_length, determine_length, encode_sentence, encode_word

from provisiond.errors import TargetError, TargetUnavailable
from provisiond.settings import RouterSettings
from provisiond.targets.routeros.pipeline import UnexpectedReply

# librouteros logs every word it sends at DEBUG, /login's password included.
logging.getLogger("librouteros").setLevel(logging.INFO)

# What librouteros raises on a reply it cannot parse (a ``!trap`` without a message, a
# ``!fatal`` without one, a word without ``=``): the connection's state is then
# unknown, so the router fails like a lost connection, never the whole pass.
MALFORMED = (TypeError, ValueError, IndexError, KeyError, UnicodeError)
# What a logged-in session raises when it cannot go on: the connection lost (or closed
# by a ``!fatal``), or a reply that cannot be read.
WIRE_ERRORS = (OSError, LibRouterosError, UnexpectedReply, *MALFORMED)


def tls_wrapper(settings: RouterSettings) -> Callable[[socket.socket], socket.socket]:
    """A socket wrapper for API-SSL: CA verification and/or SHA-256 fingerprint pinning."""
    ctx = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file is not None else None
    )
    if settings.fingerprint is not None or not settings.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if not settings.tls_verify and settings.fingerprint is None:
        # API-SSL on a router without a certificate offers only anonymous DH.
        ctx.set_ciphers("DEFAULT:ADH:@SECLEVEL=0")

    def wrap(sock: socket.socket) -> socket.socket:
        wrapped = ctx.wrap_socket(sock, server_hostname=settings.host)
        if settings.fingerprint is not None:
            der = wrapped.getpeercert(binary_form=True) or b""
            seen = hashlib.sha256(der).hexdigest()
            if seen != settings.fingerprint:
                wrapped.close()
                raise ssl.SSLError(f"certificate fingerprint {seen} does not match the pinned one")
        return wrapped

    return wrap


class BufferedTransport(SocketTransport):  # type: ignore[misc]
    """librouteros's socket transport, receiving 64 KiB at a time.

    The stock transport calls ``recv`` for every length byte and every word; this one
    cuts them from its buffer. Swapped in after login, at the transport layer
    librouteros is built to take.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._buf = b""
        self._pos = 0

    def buffered(self) -> int:
        """Bytes received and not yet read (the pipeline batches its writes while > 0)."""
        return len(self._buf) - self._pos

    def _fill(self, need: int) -> None:
        """At least ``need`` unread bytes in the buffer."""
        if len(self._buf) - self._pos >= need:
            return
        chunks = [self._buf[self._pos:]]
        have = len(chunks[0])
        while have < need:
            got = self.sock.recv(65536)
            if not got:
                raise ConnectionClosed("Connection unexpectedly closed.")
            chunks.append(got)
            have += len(got)
        self._buf = b"".join(chunks)
        self._pos = 0

    def read_sentence(self, encoding: str) -> list[str]:
        """One sentence's words, the same ``ApiProtocol.readWord`` returns, cut from the
        buffer: a word shorter than 128 bytes that is wholly buffered (nearly every word
        of a print) inline, anything else by ``_word`` with librouteros's length codec."""
        words: list[str] = []
        buf, pos = self._buf, self._pos
        end = len(buf)
        while True:
            if pos < end:
                length = buf[pos]
                if length < 0x80:
                    if length == 0:
                        self._pos = pos + 1
                        return words
                    stop = pos + 1 + length
                    if stop <= end:
                        words.append(buf[pos + 1:stop].decode(encoding, "ignore"))
                        pos = stop
                        continue
            self._pos = pos
            if not self._word(encoding, words):
                return words
            buf, pos = self._buf, self._pos
            end = len(buf)

    def _word(self, encoding: str, words: list[str]) -> bool:
        """The next word onto ``words``, filling the buffer as needed; False at the
        sentence's end (the empty word)."""
        self._fill(1)
        first = self._buf[self._pos]
        if first == 0:
            self._pos += 1
            return False
        if first < 0x80:
            length, head = first, 1
        else:
            head = determine_length(self._buf[self._pos:self._pos + 1]) + 1
            self._fill(head)
            length = decode_length(self._buf[self._pos:self._pos + head])
        self._fill(head + length)
        start = self._pos + head
        self._pos = start + length
        words.append(self._buf[start:self._pos].decode(encoding, "ignore"))
        return True

    def read_dones(self, encoding: str, most: int) -> list[tuple[bytes, str]]:
        """Waits for a reply if none is buffered, then takes the run of plain ``!done``
        replies wholly in the buffer, at most ``most``: (tag, ``=ret=``'s value or ""),
        each the sentence ``read_sentence`` would read, decoded alike. Plain: ``.tag=``
        and digits, maybe ``=ret=``, in either order, words shorter than 128 bytes. It
        stops at anything else (a ``!trap``, a row, another word, a long word, an
        unfinished sentence), which is left for ``read_sentence``. Each reply is one
        compiled match; the length byte of each word must agree with what it cut."""
        if self._pos >= len(self._buf):
            self._fill(1)
        buf, pos = self._buf, self._pos
        out: list[tuple[bytes, str]] = []
        while len(out) < most and (m := _DONE(buf, pos)) is not None:
            tl, tag, rl, ret, rl2, ret2, tl2, tag2 = m.groups()
            if tag is None:
                tl, tag, rl, ret = tl2, tag2, rl2, ret2
            if tl[0] != len(tag) + 5:
                break
            if rl is None:
                out.append((tag, ""))
            elif rl[0] == len(ret) + 5:
                out.append((tag, ret.decode(encoding, "ignore")))
            else:
                break
            pos = m.end()
        self._pos = pos
        return out

    def skim(self, take: Callable[[bytes, bytes, bytes], bool]) -> bool:
        """Offer the next sentence, undecoded, to ``take(tag, id, rest)`` and drop it if
        ``take`` returns True; False (nothing read) unless it is wholly buffered and a
        ``!re`` of words shorter than 128 bytes: one ``.tag=``, one ``=.id=``, and the
        rest one run of ``=`` words (``rest``: those words as sent, lengths included).
        Anything else is left for ``read_sentence``.

        ``take`` accepts only a ``rest`` that is whole words without a NUL byte, so when
        the tag and the id come first, the rest runs to the first NUL (the sentence's
        end, if ``take`` accepts it) and its words need no walking."""
        buf, pos = self._buf, self._pos
        if buf[pos:pos + 4] != b"\x03!re":
            return False
        end = len(buf)
        p = pos + 4
        tag = ref = b""
        for _ in range(2):  # the tag and the id, when they come first
            length = buf[p] if p < end else 0
            stop = p + 1 + length
            if not 5 < length < 0x80 or stop > end:
                break
            head = buf[p + 1:p + 6]
            if head == b".tag=" and not tag:
                tag = buf[p + 6:stop]
            elif head == b"=.id=" and not ref:
                ref = buf[p + 6:stop]
            else:
                break
            p = stop
        else:
            nul = buf.find(b"\x00", p, end)
            if nul > p and tag and ref:
                if not take(tag, ref, buf[p:nul]):
                    return False
                self._pos = nul + 1
                return True
        p = pos + 4
        tag = ref = b""
        first = last = -1  # where the run of other words starts and ends
        while True:
            if p >= end:
                return False
            length = buf[p]
            if length == 0:
                break
            stop = p + 1 + length
            if length >= 0x80 or stop > end:
                return False
            if buf[p + 1:p + 6] == b".tag=":
                if tag:
                    return False
                tag = buf[p + 6:stop]
            elif buf[p + 1:p + 6] == b"=.id=":
                if ref:
                    return False
                ref = buf[p + 6:stop]
            elif buf[p + 1] == 0x3D and (first < 0 or last == p):
                if first < 0:
                    first = p
                last = stop
            else:
                return False
            p = stop
        if not (tag and ref and first >= 0) or not take(tag, ref, buf[first:last]):
            return False
        self._pos = p + 1
        return True

    def skim_run(self, run: Callable[[bytes, int], int]) -> None:
        """Let ``run(buffer, position)`` take whole sentences from the buffer at once; it
        returns the position after the last one it took."""
        self._pos = run(self._buf, self._pos)

    def prefetch(self, until: Callable[[], bool], *, limit: int, poll: float) -> None:
        """Receive what the router sends, unparsed, until ``until()`` is true or ``limit``
        bytes wait in the buffer; looks at ``until`` at least every ``poll`` seconds.

        A closed connection ends it quietly: the next read raises, as without it."""
        chunks: list[bytes] = []
        have = len(self._buf) - self._pos
        timeout = self.sock.gettimeout()
        self.sock.settimeout(poll)
        try:
            while have < limit and not until():
                try:
                    got = self.sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not got:
                    break
                chunks.append(got)
                have += len(got)
        finally:
            self.sock.settimeout(timeout)
            if chunks:
                chunks.insert(0, self._buf[self._pos:])
                self._buf = b"".join(chunks)
                self._pos = 0

    def read(self, length: int) -> bytes:
        self._fill(length)
        start = self._pos
        self._pos = start + length
        return self._buf[start:self._pos]


# A plain ``!done`` (``BufferedTransport.read_dones``): the tag first, then maybe
# ``=ret=`` (groups 1-4: the tag word's length byte, the tag, the ret word's length
# byte, ret), or ``=ret=`` first and the tag last, as some routers send it (groups 5-8).
_DONE = re.compile(rb"\x05!done(?:([\x06-\x7f])\.tag=([0-9]+)(?:([\x05-\x7f])=ret=([^\x00]*))?"
                   rb"|([\x05-\x7f])=ret=([^\x00]*)([\x06-\x7f])\.tag=([0-9]+))\x00").match




class ApiWire:
    """A logged-in librouteros session as a ``pipeline.Wire``: its encoder, its decoder,
    its transport. librouteros's own reader cannot take ``.tag`` words (its
    ``parse_word`` splits every word at ``=``), so replies are read a sentence at a
    time (``BufferedTransport.read_sentence``, or ``ApiProtocol.readWord`` on another
    transport) and handed over unparsed; runs of plain ``!done`` as (tag, ret)
    (``BufferedTransport.read_dones``)."""

    def __init__(self, api: Any) -> None:
        self._protocol = api.protocol
        self._transport = api.protocol.transport
        self._encoding: str = api.protocol.encoding
        self.encoding = self._encoding
        self._buffered = self._transport if isinstance(self._transport, BufferedTransport) else None
        # Set by a full read once it knows the desired state: rows it takes as they are
        # on the wire (``BufferedTransport.skim``) never reach the pipeline.
        self.rows: Callable[[bytes, bytes, bytes], bool] | None = None
        # Set with ``rows``: takes every such row in a run at once (``reader.ListReader.take_run``).
        self.run: Callable[[bytes, int], int] | None = None

    def encode(self, words: Sequence[str]) -> bytes:
        data: bytes = encode_sentence(*words, encoding=self.encoding)
        return data

    def send(self, data: bytes) -> None:
        self._transport.write(data)

    def read_sentence(self) -> Sequence[str]:
        if self._buffered is not None:
            if self.rows is not None:
                while True:
                    if self.run is not None:
                        self._buffered.skim_run(self.run)
                    if not self._buffered.skim(self.rows):
                        break
            words: Sequence[str] = self._buffered.read_sentence(self._encoding)
        else:
            words = tuple(iter(self._protocol.readWord, ""))
        if not words:
            raise UnexpectedReply("an empty sentence")
        if words[0] == "!fatal":
            self._protocol.close()
            raise FatalError(words[1] if len(words) > 1 else "")
        return words

    def read_dones(self, most: int) -> Sequence[tuple[bytes, str]]:
        if self._buffered is None:
            return ()
        return self._buffered.read_dones(self._encoding, most)

    def buffered(self) -> int:
        return self._buffered.buffered() if self._buffered is not None else 0

    def prefetch(self, until: Callable[[], bool], *, limit: int, poll: float) -> None:
        """Receive replies unparsed until ``until()`` (see ``BufferedTransport.prefetch``)."""
        if self._buffered is not None:
            self._buffered.prefetch(until, limit=limit, poll=poll)


def word(text: str, encoding: str) -> bytes:
    """A word as sent (librouteros's encoder: its length, then its bytes)."""
    data: bytes = encode_word(text, encoding=encoding)
    return data


def connect(settings: RouterSettings) -> Any:
    """A logged-in librouteros session to one router, on a ``BufferedTransport``."""
    s = settings
    api = librouteros.connect(
        s.host,
        s.username,
        s.secret(),
        port=s.api_port,
        timeout=s.connect_timeout,
        encoding="utf-8",
        ssl_wrapper=tls_wrapper(s) if s.tls else None,
        login_method=librouteros.login.token if s.legacy_login else librouteros.login.plain,
    )
    sock = api.protocol.transport.sock
    sock.settimeout(s.timeout)
    api.protocol.transport = BufferedTransport(sock)
    return api


def login(router: str, where: str, connect: Callable[[], Any]) -> Any:
    """``connect()``, its failure as provisiond's: a refused login is a ``TargetError``,
    an unreachable router (or a timeout) a ``TargetUnavailable``."""
    try:
        return connect()
    except TrapError as exc:
        raise TargetError(router, f"login to {where} refused: {exc.message}") from exc
    except (OSError, LibRouterosError) as exc:
        raise TargetUnavailable(router, f"cannot connect to {where}: {_why(exc)}") from exc


def quietly_close(api: Any) -> None:
    """Log out if the connection still takes it; a session already lost is closed anyway."""
    try:
        api.close()
    except (OSError, LibRouterosError):
        pass


def closed(exc: BaseException | None) -> bool:
    """The peer closed or reset the connection (not a timeout, not a refused login)."""
    return isinstance(exc, (ConnectionClosed, ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError))


@contextmanager
def session_errors(router: str, close: Callable[[], None], *, lost: str | Callable[[], str],
                   command: str = "", refused: str | None = None,
                   nothing_planned: bool = False) -> Iterator[None]:
    """Work on a session whose failures leave as provisiond's errors, and without it.

    Any exception closes the connection (answers may be left unread on it, which the
    next command would take for its own), except a trap when ``refused`` is given (a
    refused command leaves the session in step): that is a ``TargetError``
    ``"<refused>: <message>"``. A lost connection is a ``TargetUnavailable``
    ``"<lost>: <why>"`` (``lost`` may be a function, asked only then); a reply that
    cannot be read a ``TargetError`` ``"<command>: malformed reply from the router
    (...)"``, ending ``"; nothing planned"`` with ``nothing_planned``. provisiond's
    own errors and anything else leave as they are.
    """
    refusable: type[TrapError] | tuple[()] = TrapError if refused is not None else ()
    try:
        yield
    except refusable as exc:
        raise TargetError(router, f"{refused}: {exc.message}") from exc
    except TargetError:
        close()
        raise
    except (OSError, LibRouterosError) as exc:
        close()
        doing = lost if isinstance(lost, str) else lost()
        raise TargetUnavailable(router, f"{doing}: {_why(exc)}") from exc
    except (UnexpectedReply, *MALFORMED) as exc:
        close()
        head = f"{command}: " if command else ""
        tail = "; nothing planned" if nothing_planned else ""
        raise TargetError(router, f"{head}malformed reply from the router ({_malformed(exc)}){tail}") from exc
    except BaseException:
        close()
        raise


def _malformed(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _why(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text
