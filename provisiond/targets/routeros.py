"""RouterOS address lists over the binary API (librouteros), plain or TLS.

One ``RouterTarget`` per ``[[router]]``. ``observe`` reads only the lists provisiond
manages, one filtered print per list and family with ``.proplist``, and sorts what it
finds into provisiond's own entries (comment ``<marker>:<account id> …``) and everything
else (hand-made and dynamic entries: never touched; a desired entry that collides with
one is a conflict). ``apply`` removes (comma-joined ids, in batches), adds, then sets,
each phase as a window of tagged commands (``targets.pipeline``) over librouteros's own
codec and transport. A trap on one entry is reported for that entry; a lost connection
fails the rest of the router. This is the only module that imports librouteros.

A scoped pass (``observe(scope)``) reads only the scope's part: one print per family
over all lists, selecting entries whose comment carries the marker of a scoped account
(a range query: ``provisiond:1042`` <= comment < ``provisiond:1042!``, so ``1042 Name``
but not ``10420``) or whose address a scoped account wants. A router scans its whole
table for every print whatever the query, so fewer, wider prints are cheaper; they go
out together, tagged, like the full read's.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import librouteros
import librouteros.login
from librouteros.connections import SocketTransport
from librouteros.exceptions import ConnectionClosed, FatalError, LibRouterosError, TrapError
from librouteros.protocol import decode_length, determine_length, encode_sentence, encode_word
from librouteros.query import Key as RosKey

from provisiond.core.addresses import family, is_canonical_v4, routeros_form, span
from provisiond.core.changes import Change, Conflict, Create, Delete, Key, Observed, Resource, Update
from provisiond.errors import TargetError, TargetUnavailable
from provisiond.core.desire import Entry, ListEntries, ListSteps
from provisiond.core.model import Account
from provisiond.core.plan import DigestSum, Plan, observed_digest
from provisiond.core.scope import Scope
from provisiond.settings import RouterSettings
from provisiond.targets import pipeline
from provisiond.targets.base import ApplyResult
from provisiond.targets.pipeline import Answer, UnexpectedReply

log = logging.getLogger(__name__)
# librouteros logs every word it sends at DEBUG, /login's password included.
logging.getLogger("librouteros").setLevel(logging.INFO)

MENUS = {4: ("ip", "firewall", "address-list"), 6: ("ipv6", "firewall", "address-list")}
PROPLIST = (".id", "list", "address", "comment", "dynamic", "disabled", "timeout")
SCOPED_PROPLIST_WORD = "=.proplist=" + ",".join(PROPLIST)  # a scoped print spans every list
# A full read's prints are filtered by list: the list is known from the print, and
# nothing reads ``timeout``. Fewer words per row for the router to write and us to read.
PRINT_PROPLIST_WORD = "=.proplist=.id,address,comment,dynamic,disabled"
# While billing is read, a full read only receives its answers, as bytes: the router
# is never held up by a full socket, and billing has the interpreter to itself. Past
# this many bytes (about 280,000 rows) it stops receiving until billing is done.
PREFETCH_BYTES = 32 << 20
PREFETCH_POLL = 0.02  # seconds between looks at whether billing is done, when nothing arrives
REMOVE_BATCH = 200
ADDS_PER_SESSION = 20_000  # a batch of adds this large gets a second session (up to `connections`)
REPORT_EVERY = 2_000  # answered changes per part handed to apply's ``report`` (the journal)
_T = TypeVar("_T")
SCOPE_CHUNK = 50  # accounts (and as many addresses) per scoped print: bounded query words
DUPLICATE = "already have such entry"
# What librouteros raises on a reply it cannot parse (a ``!trap`` without a message, a
# ``!fatal`` without one, a word without ``=``): the connection's state is then
# unknown, so the router fails like a lost connection, never the whole pass.
MALFORMED = (TypeError, ValueError, IndexError, KeyError, UnicodeError)
NO_SUCH_ITEM = "no such item"


def tls_wrapper(settings: RouterSettings) -> Callable[[socket.socket], socket.socket]:
    """A socket wrapper for API-SSL: CA verification and/or SHA-256 fingerprint pinning."""
    ctx = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file is not None else None
    )
    if settings.fingerprint is not None or not settings.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if not settings.tls_verify and settings.fingerprint is None:
        # A router without a certificate offers only anonymous DH (ROUTEROS.md §1.8).
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
    """librouteros's socket transport, reading in 64 KiB chunks.

    The stock transport calls ``recv`` for every length byte and word, which makes a
    100,000-row print cost ~2 million system calls. Swapped in after login, at the
    transport layer librouteros is built to take.
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
        """One sentence's words, cut straight from the buffer with librouteros's length
        codec (``determine_length``/``decode_length``): the same words
        ``ApiProtocol.readWord`` returns, without three calls per word.

        A word shorter than 128 bytes that is already in the buffer (nearly every word
        of a print) is cut without a call; anything else takes ``_word``."""
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
        unfinished sentence), which is left for ``read_sentence``.

        An add's answer on a router's busiest path: one compiled match per reply, no
        word list; the length byte of each word must agree with what the match cut."""
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


@dataclass(frozen=True, slots=True)
class Marker:
    """The comment prefix that marks an entry as provisiond's: ``provisiond:1042 Ridge Tower``."""

    prefix: str

    def owner(self, comment: str) -> str | None:
        head = f"{self.prefix}:"
        if not comment.startswith(head):
            return None
        return comment[len(head):].split(" ", 1)[0]


class RouterTarget:
    kind = "routeros"

    def __init__(
        self,
        settings: RouterSettings,
        *,
        lists: Iterable[str],
        marker: str,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.lists = sorted(set(lists))
        self.marker = Marker(marker)
        self._connect = connect or self._librouteros_connect
        self._api: Any = None
        self._finished = _Finished(self.name)  # the running apply's progress and report
        # Command tags never restart (not per pass, not per connection): an answer left
        # over from an earlier command can never be taken for a new one's.
        self._tags = itertools.count()

    # -- connection -----------------------------------------------------------------

    def _librouteros_connect(self) -> Any:
        s = self.settings
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

    def _api_or_connect(self) -> Any:
        if self._api is None:
            where = f"{self.settings.host}:{self.settings.api_port}"
            try:
                self._api = self._connect()
            except TrapError as exc:
                raise TargetError(self.name, f"login to {where} refused: {exc.message}") from exc
            except (OSError, LibRouterosError) as exc:
                raise TargetUnavailable(self.name, f"cannot connect to {where}: {_why(exc)}") from exc
        return self._api

    def check_connection(self) -> str:
        """Log in and out again, changing nothing (``check-config --connect``). Raises TargetError."""
        self._api_or_connect()
        self.close()
        s = self.settings
        how = "API-SSL" if s.tls else "plain API"
        return f"logged in to {s.host}:{s.api_port} ({how}) as {s.username}"

    def close(self) -> None:
        if self._api is not None:
            try:
                self._api.close()
            except (OSError, LibRouterosError):
                pass
            self._api = None

    # -- observe --------------------------------------------------------------------

    def observe(self, scope: Scope | None = None) -> Observed:
        """Every managed list as it is: all of provisiond's entries in ``owned``; with a
        ``scope``, only what concerns its accounts."""
        return self._reconnecting(lambda: self._observe(scope))

    def _reconnecting(self, read: Callable[[], Observed]) -> Observed:
        kept = self._api is not None
        try:
            return read()
        except TargetUnavailable as exc:
            if not kept or not _closed(exc.__cause__):
                raise
            # The connection kept from the last pass was closed meanwhile (a router
            # reboot, a firewall's idle timeout): one fresh connection before the router
            # counts as down. A timeout is not retried: it would double the wait.
            log.info("%s: connection kept from the last pass was closed; reconnecting", self.name)
            return read()

    def _observe(self, scope: Scope | None) -> Observed:
        if scope is not None:
            return self._observe_scoped(scope)
        nothing: Future[Mapping[str, Mapping[Key, Resource]]] = Future()
        nothing.set_result({})
        return self._observe_against(nothing)

    def observe_against(self, desired: Future[Mapping[str, Mapping[Key, Resource]]], *,
                        checksum: bool = True) -> Observed:
        """Read every managed list, comparing each row with this router's part of
        ``desired`` (every target's desired state, by name, once billing is read).

        All the filtered prints (one per list and family) go out at once, tagged, and
        their answers are received, as bytes, while billing is read (up to
        ``PREFETCH_BYTES``): the router works meanwhile and is never held up by a full
        socket. Then every row is parsed and compared as it comes. An own entry that is
        exactly as desired is only counted (``in_step``), so a converged router of
        100,000 entries leaves nothing behind but a set of addresses. The checksum
        covers every row all the same; ``checksum=False`` (nothing will save the plan)
        leaves it out, and ``Observed.checksum`` empty.
        """
        return self._reconnecting(lambda: self._observe_against(desired, checksum=checksum))

    def _observe_against(self, desired: Future[Mapping[str, Mapping[Key, Resource]]], *,
                         checksum: bool = True) -> Observed:
        wire = self._wire_or_unavailable()
        prints = [((fam, name), (f"/{'/'.join(MENUS[fam])}/print", PRINT_PROPLIST_WORD, f"?list={name}"))
                  for fam in (4, 6) for name in self.lists]
        tags = _Recorded(self._tags)
        reader = _ListReader(self, wire, desired, [token for token, _ in prints], tags.given,
                             checksum=checksum)
        try:
            pipeline.run(wire, prints, window=max(self.settings.pipeline, len(prints)),
                         on_answer=reader.answered, on_row=reader.row, before_reading=reader.start,
                         tags=tags)
        except TargetError:
            self.close()
            raise
        except (OSError, LibRouterosError) as exc:
            self.close()
            raise TargetUnavailable(self.name, f"reading list {reader.reading()} failed: {_why(exc)}") from exc
        except (UnexpectedReply, *MALFORMED) as exc:
            self.close()
            raise TargetError(self.name, f"print: malformed reply from the router "
                                         f"({_malformed(exc)}); nothing planned") from exc
        except BaseException:
            # Anything else (billing failed while the prints were out: the desired
            # state's future raised) leaves their answers unread on the connection, where
            # the next pass would take them for its own. The connection goes with them.
            self.close()
            raise
        observed = reader.observed()
        log.debug("%s: observed owned=%d existing=%d foreign=%d", self.name, len(observed.owned),
                  sum((observed.existing or {}).values()), len(observed.foreign))
        return observed

    def _wire_or_unavailable(self) -> ApiWire:
        return ApiWire(self._api_or_connect())

    def _classify(
        self, row: Mapping[str, Any], list_name: str
    ) -> tuple[Key, Resource | None, str, tuple[Any, ...]]:
        """One printed row -> (key, provisiond's Resource or None, why not, digest item)."""
        address = routeros_form(str(row.get("address", "")))
        comment = str(row.get("comment", ""))
        ref = str(row.get(".id", ""))
        disabled = "true" if row.get("disabled") in (True, "true", "yes") else "false"
        dynamic = row.get("dynamic") in (True, "true", "yes")
        key: Key = ("address-list", (("list", list_name), ("address", address)))
        owner = None if dynamic else self.marker.owner(comment)
        item = (ref, list_name, address, comment, disabled, dynamic)
        if owner is not None and (not ref or not _readable(address)):
            # Without an id it cannot be changed; with an address that is not
            # one, it cannot be compared: either way it is left alone.
            why = "no .id" if not ref else f"an address provisiond cannot read ({address!r})"
            log.warning("%s: %s entry %s (comment %r) has %s: left alone",
                        self.name, list_name, ref or "?", comment, why)
            return key, None, f"provisiond's marker but {why}", item
        if owner is None:
            why = "dynamic entry" if dynamic else "entry not created by provisiond"
            return key, None, f"{why} (comment {comment!r})" if comment else why, item
        entry = Resource(
            kind="address-list",
            group=list_name,
            ident=key[1],
            attrs=(("comment", comment), ("disabled", disabled)),
            account_id=owner,
            account_name=comment.split(" ", 1)[1] if " " in comment else "",
            ref=ref,
        )
        return key, entry, "", item

    def _observe_scoped(self, scope: Scope) -> Observed:
        owned: dict[Key, Resource] = {}
        foreign: dict[Key, str] = {}
        surplus: list[Resource] = []
        others: set[str] = set()
        digest: list[tuple[Any, ...]] = []
        seen: set[tuple[int, str]] = set()
        managed = set(self.lists)
        wanted: dict[int, set[str]] = {4: set(), 6: set()}
        for r in scope.wanted.values():
            if r.kind == "address-list":
                wanted[family(r.get("address"))].add(r.get("address"))
        prints = [((fam, n), (f"/{'/'.join(MENUS[fam])}/print", SCOPED_PROPLIST_WORD, *words))
                  for fam in (4, 6)
                  for n, words in enumerate(self._scope_queries(sorted(scope.accounts), sorted(wanted[fam])))]
        for (fam, _), rows in zip((token for token, _ in prints), self._print_all(prints)):
            for row in rows:
                ref = row.get(".id", "")
                list_name = row.get("list", "")
                if list_name not in managed or (ref and (fam, ref) in seen):
                    continue  # not a managed list, or matched by comment and address
                seen.add((fam, ref))
                key, entry, why, item = self._classify(row, list_name)
                if entry is not None and entry.account_id in scope.accounts:
                    digest.append(item)
                    if key in owned:
                        surplus.append(entry)
                    else:
                        owned[key] = entry
                elif key in scope.wanted:
                    if entry is not None:
                        others.add(entry.account_id)  # only a full pass may decide
                    else:
                        digest.append(item)
                        foreign.setdefault(key, why)
        existing = scope.existing if scope.existing is not None else self._count_lists()
        log.debug("%s: scoped observe accounts=%d owned=%d foreign=%d others=%d", self.name,
                  len(scope.accounts), len(owned), len(foreign), len(others))
        return Observed(owned=owned, foreign=foreign, surplus=tuple(surplus),
                        checksum=observed_digest(digest), others=frozenset(others),
                        existing=existing)

    def _print_all(self, prints: Sequence[tuple[tuple[int, int], Sequence[str]]]) -> list[list[dict[str, str]]]:
        """The rows of every print (as printed: text), each print's in the order sent.

        All go out at once, tagged (one round trip, not one per print); the rows are
        kept per print and handed back in the order of ``prints``, so nothing depends
        on how the router interleaves its answers."""
        rows: dict[tuple[int, int], list[dict[str, str]]] = {token: [] for token, _ in prints}

        def answered(token: tuple[int, int], answer: Answer) -> None:
            if answer.traps:
                raise TargetError(self.name, f"scoped print refused: {answer.traps[0]}")

        def row(token: tuple[int, int], words: Sequence[str]) -> None:
            rows[token].append(dict(word[1:].partition("=")[::2] for word in words if word.startswith("=")))

        if prints:
            try:
                pipeline.run(self._wire_or_unavailable(), prints,
                             window=max(self.settings.pipeline, len(prints)),
                             on_answer=answered, on_row=row, tags=self._tags)
            except TargetError:
                self.close()  # the other prints' answers may still be on the connection
                raise
            except (OSError, LibRouterosError) as exc:
                self.close()
                raise TargetUnavailable(self.name, f"scoped read failed: {_why(exc)}") from exc
            except (UnexpectedReply, *MALFORMED) as exc:
                self.close()
                raise TargetError(self.name, f"scoped print: malformed reply from the router "
                                             f"({_malformed(exc)}); nothing planned") from exc
            except BaseException:
                self.close()  # the rest of the answers are still on the connection
                raise
        return [rows[token] for token, _ in prints]

    def _scope_queries(self, accounts: list[str], addresses: list[str]) -> Iterator[list[str]]:
        """Query words: OR over a chunk of accounts' marker ranges and wanted addresses."""
        head = f"{self.marker.prefix}:"
        for start in range(0, max(len(accounts), len(addresses)), SCOPE_CHUNK):
            words: list[str] = []
            terms = 0
            for account in accounts[start:start + SCOPE_CHUNK]:
                low = f"{head}{account}"
                # low <= comment < low + "!": the id, then a space or nothing.
                words += [f"?=comment={low}", f"?>comment={low}", "?#|",
                          f"?<comment={low}!", "?#&"]
                terms += 1
            for address in addresses[start:start + SCOPE_CHUNK]:
                words.append(f"?=address={address}")
                terms += 1
            if terms:  # no words at all would print the whole table
                words += ["?#|"] * (terms - 1)
                yield words

    def _count_lists(self) -> dict[str, int]:
        """Entries per managed list (``count-only``; hand-made ones included): the safety
        check's base when no full observation has counted provisiond's own."""
        api = self._api_or_connect()
        counts: dict[str, int] = {}
        for fam in (4, 6):
            path = api.path(*MENUS[fam])
            for list_name in self.lists:
                try:
                    for row in api.rawCmd(str(path.join("print")), "=count-only=",
                                          f"?=list={list_name}"):
                        counts[list_name] = counts.get(list_name, 0) + int(row.get("ret", 0))
                except TrapError as exc:
                    raise TargetError(self.name, f"count {list_name} refused: {exc.message}") from exc
                except (OSError, LibRouterosError) as exc:
                    self.close()
                    raise TargetUnavailable(self.name, f"counting {list_name} failed: {_why(exc)}") from exc
                except MALFORMED as exc:
                    self.close()
                    raise TargetError(self.name, f"count {list_name}: malformed reply from the "
                                                 f"router ({_malformed(exc)})") from exc
        return counts

    def plan_followups(self, plan: Plan) -> Plan:
        return plan

    # -- apply ----------------------------------------------------------------------

    def apply(self, plan: Plan, *, progress: Callable[[int], None] | None = None,
              report: Callable[[ApplyResult], None] | None = None) -> ApplyResult:
        """Deletes, then creates, then updates, each phase pipelined (``targets.pipeline``).

        A phase ends before the next begins (a surplus entry is gone before its key is
        added again). A trap fails its own change; a lost connection fails every change
        not yet answered, and the next pass observes what did arrive, so nothing is
        added twice. Answered changes go to ``report`` every ``REPORT_EVERY``.
        """
        result = ApplyResult(target=self.name)
        self._finished = done = _Finished(self.name, progress, report)
        deletes = [c for c in plan.changes if isinstance(c, Delete)]
        creates = [c for c in plan.changes if isinstance(c, Create)]
        updates = [c for c in plan.changes if isinstance(c, Update)]
        try:
            wire = self._wire()
            self._remove(wire, deletes, result)
            self._add_all(creates, wire, result)
            self._pipeline(wire, ((c, _set_words(c)) for c in updates), result, self._set_done)
        except (TargetError, OSError, LibRouterosError) as exc:
            self.close()
            message = str(exc) if isinstance(exc, TargetError) else f"{self.name}: connection lost: {_why(exc)}"
            done.failed_rest(result, plan.changes, message)
        except (UnexpectedReply, *MALFORMED) as exc:
            self.close()
            done.failed_rest(result, plan.changes,
                             f"{self.name}: malformed reply from the router ({_malformed(exc)})")
        except BaseException:
            self.close()  # answers may be left unread: never hand them to the next command
            raise
        done.flush()
        return result

    def _wire(self) -> ApiWire:
        return ApiWire(self._api_or_connect())

    def _pipeline(self, wire: ApiWire, commands: Iterable[tuple[_T, Sequence[str] | bytes]], result: ApplyResult,
                  done: Callable[[ApplyResult, _T, Answer], None], stop: threading.Event | None = None) -> None:
        pipeline.run(wire, commands, window=self.settings.pipeline, on_answer=partial(done, result),
                     stop=stop, tags=self._tags)

    def _remove(self, wire: ApiWire, deletes: list[Delete], result: ApplyResult) -> None:
        """Comma-joined ids in batches; a batch that traps is retried one id at a time."""
        batches = [same[i:i + REMOVE_BATCH] for fam in (4, 6)
                   for same in [[c for c in deletes if family(c.old.get("address")) == fam]]
                   for i in range(0, len(same), REMOVE_BATCH)]
        retry: list[Delete] = []

        def done(result: ApplyResult, batch: list[Delete], answer: Answer) -> None:
            if not answer.traps:
                for c in batch:
                    self._finished.applied(result, c)
            elif len(batch) > 1:
                retry.extend(batch)  # one id in the batch is gone: one at a time below
            else:
                message = answer.traps[0]
                if message.startswith(NO_SUCH_ITEM):
                    self._finished.applied(result, batch[0])  # already gone: the goal is met
                else:
                    self._finished.failed(result, batch[0], self._refused("remove", batch[0].old, message))

        self._pipeline(wire, ((b, _remove_words(b)) for b in batches), result, done)
        self._pipeline(wire, (([c], _remove_words([c])) for c in retry), result, done)

    def _add_all(self, creates: list[Create], wire: ApiWire, result: ApplyResult) -> None:
        """Adds, pipelined; very large batches over up to ``settings.connections`` sessions.

        Extra sessions let a router work on several commands at once; they are opened
        for the batch and closed after it. A session lost stops the others from
        sending more: the router's remaining adds fail, as with one session.
        """
        workers = min(self.settings.connections, max(1, len(creates) // ADDS_PER_SESSION))
        words = _AddWords(wire.encoding)
        if workers <= 1:
            self._pipeline(wire, zip(creates, map(words, creates)), result, self._add_done)
            return
        shares = [creates[i::workers] for i in range(workers)]
        partial = [ApplyResult(target=self.name) for _ in shares]
        lost = threading.Event()
        errors: list[BaseException] = []

        def work(i: int) -> None:
            api = None
            try:
                session = wire if i == 0 else ApiWire(api := self._connect())
                self._pipeline(session, zip(shares[i], map(words, shares[i])), partial[i],
                               self._add_done, stop=lost)
            except (OSError, LibRouterosError, UnexpectedReply, *MALFORMED) as exc:
                lost.set()
                errors.append(exc)
            finally:
                if api is not None:
                    _quietly_close(api)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-add") as pool:
            list(pool.map(work, range(workers)))
        for p in partial:
            result.applied += p.applied
            result.failed += p.failed
            result.conflicts += p.conflicts
        if errors:
            raise errors[0]

    def _add_done(self, result: ApplyResult, change: Create, answer: Answer) -> None:
        if not answer.traps:
            self._finished.applied(result, change)
        elif any(DUPLICATE in t for t in answer.traps):
            self._finished.conflict(result, Conflict(change.new, f"{answer.traps[0]} (not provisiond's)"))
        else:
            self._finished.failed(result, change, self._refused("add", change.new, answer.traps[0]))

    def _set_done(self, result: ApplyResult, change: Update, answer: Answer) -> None:
        if answer.traps:
            self._finished.failed(result, change, self._refused("set", change.new, answer.traps[0]))
        else:
            self._finished.applied(result, change)

    def _refused(self, verb: str, r: Resource, message: str) -> str:
        return f"{self.name}: {verb} {r.get('list')} {r.get('address')} refused: {message}"


def _remove_words(batch: Sequence[Delete]) -> tuple[str, ...]:
    menu = MENUS[family(batch[0].old.get("address"))]
    return (f"/{'/'.join(menu)}/remove", "=.id=" + ",".join(c.old.ref for c in batch))


def _add_words(change: Create) -> tuple[str, ...]:
    r = change.new
    address = r.get("address")
    return (f"/{'/'.join(MENUS[family(address)])}/add", f"=list={r.get('list')}",
            f"=address={address}", f"=comment={r.get('comment')}")


class _AddWords:
    """``_add_words`` as sent, for 100,000 alike: the command and list words made once
    per list and family (librouteros's ``encode_word``); the address and comment words
    with the one length byte ``encode_word`` gives a word shorter than 128 bytes (a
    longer one takes ``encode_word``). A Resource as ``desire`` makes one (list and
    address its ident, the comment its first attribute) is read without
    ``Resource.get``'s search; any other takes ``get``."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._heads: dict[tuple[str, bool], bytes] = {}

    def __call__(self, change: Create) -> bytes:
        r = change.new
        try:
            (k1, name), (k2, address) = r.ident
            k3, comment = r.attrs[0]
            plain = k1 == "list" and k2 == "address" and k3 == "comment"
        except (ValueError, IndexError):
            plain = False
        if not plain:
            name, address, comment = r.get("list"), r.get("address"), r.get("comment")
        six = ":" in address  # family(address) == 6
        head = self._heads.get((name, six))
        if head is None:
            command, first = _add_words(change)[:2]
            head = self._heads[name, six] = (encode_word(command, self._encoding)
                                             + encode_word(first, self._encoding))
        a, c = address.encode(self._encoding), comment.encode(self._encoding)
        if len(a) < 0x77 and len(c) < 0x77:  # "=address=" and "=comment=" are 9 bytes
            return b"%b%c=address=%b%c=comment=%b" % (head, len(a) + 9, a, len(c) + 9, c)
        body: bytes = (head + encode_word(f"=address={address}", self._encoding)
                       + encode_word(f"=comment={comment}", self._encoding))
        return body


def _set_words(change: Update) -> tuple[str, ...]:
    r = change.new
    return (f"/{'/'.join(MENUS[family(r.get('address'))])}/set", f"=.id={change.old.ref}",
            f"=comment={r.get('comment')}", f"=disabled={'yes' if r.get('disabled') == 'true' else 'no'}")


def _quietly_close(api: Any) -> None:
    try:
        api.close()
    except (OSError, LibRouterosError):
        pass


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
        # Set with ``rows``: takes every such row in a run at once (``_ListReader.take_run``).
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


class _Recorded(Iterator[int]):
    """An iterator of command tags that remembers the ones it gave out, in order."""

    def __init__(self, source: Iterator[int]) -> None:
        self._source = source
        self.given: list[int] = []

    def __next__(self) -> int:
        tag = next(self._source)
        self.given.append(tag)
        return tag


class _ListReader:
    """The rows of one router's prints -> an ``Observed``, compared with the desired state.

    ``start`` receives the answers unparsed until the desired state is known. Then per
    row: the id, address, comment and flags, read from the words; a digest of them (the
    address in RouterOS form); then either nothing more (an own entry exactly as
    desired: taken out of ``_left``, the desired entries not found yet) or a Resource in
    ``owned`` / ``surplus``, or a reason in ``foreign``.

    Once one row showed the order the router sends a row's properties in, a row that is
    byte for byte what a desired entry would print (``_tails``) is taken as it is on the
    wire (``take``): the same digest and the same count, without decoding its words.
    """

    def __init__(self, target: RouterTarget, wire: ApiWire,
                 desired: Future[Mapping[str, Mapping[Key, Resource]]],
                 tokens: Sequence[tuple[int, str]], tags: Sequence[int], *,
                 checksum: bool = True) -> None:
        self._target = target
        self._wire = wire
        self._head = f"{target.marker.prefix}:"
        self._desired = desired
        self._lists: Mapping[str, Mapping[str, Entry]] = {}
        self._left: dict[str, dict[str, Entry]] = {}
        self._tokens, self._tags = tokens, tags
        self._tag_of: dict[tuple[int, str], bytes] = {}
        self._reading: dict[bytes, str] = {}  # tag -> list, for the prints not answered yet
        self._tails: dict[str, Mapping[bytes, str]] | None = None  # None: not learnt yet
        self.digest: DigestSum | None = DigestSum() if checksum else None
        self._runs: Mapping[bytes, Callable[[bytes, int], re.Match[bytes] | None]] = {}
        self._first = ""  # the first property of a row after its id, once learnt
        self._batches: dict[bytes, tuple[_Run, _Rows]] = {}  # tag -> its rows' patterns
        self._window = _WINDOW_MIN  # bytes of rows ``_take_batch`` looks at
        self._each = 0  # rows still to take one by one (after a row a batch did not take)
        self.owned: dict[Key, Resource] = {}
        self.foreign: dict[Key, str] = {}
        self.surplus: list[Resource] = []
        self._done: set[tuple[int, str]] = set()

    def start(self) -> None:
        """The prints are out: receive their answers until the desired state is known
        (raises if billing failed), then take this router's part of it."""
        self._wire.prefetch(self._desired.done, limit=PREFETCH_BYTES, poll=PREFETCH_POLL)
        want = self._desired.result().get(self._target.name, {})
        if not isinstance(want, ListEntries):
            want = _as_entries(want)
        self._lists = want.lists
        self._left = {name: dict(self._lists.get(name, {})) for name in self._target.lists}
        self._tag_of = {token: str(tag).encode() for token, tag in zip(self._tokens, self._tags)}
        self._reading = {tag: token[1] for token, tag in self._tag_of.items()}

    def reading(self) -> str:
        """The list whose print was being read (the first not answered yet)."""
        return next((name for fam in (4, 6) for name in self._target.lists
                     if (fam, name) not in self._done), "?")

    def answered(self, token: tuple[int, str], answer: Answer) -> None:
        self._done.add(token)
        self._reading.pop(self._tag_of.get(token, b""), None)
        if answer.traps:
            raise TargetError(self._target.name, f"print {token[1]} refused: {answer.traps[0]}")

    def row(self, token: tuple[int, str], words: Sequence[str]) -> None:
        list_name = token[1]
        ref = raw = comment = ""
        disabled = dynamic = False
        for word in words:
            name, _, value = word[1:].partition("=")
            if name == ".id":
                ref = value
            elif name == "address":
                raw = value
            elif name == "comment":
                comment = value
            elif name == "disabled":
                disabled = value in _TRUE
            elif name == "dynamic":
                dynamic = value in _TRUE
        flag = "true" if disabled else "false"
        own = bool(ref) and not dynamic and comment.startswith(self._head)
        left = self._left[list_name]
        # A desired address is in RouterOS form already: an own row that prints one
        # needs no parsing (400,000 rows over 100,000 addresses would churn a cache).
        entry = left.pop(raw, None) if own else None
        if entry is not None or is_canonical_v4(raw):
            address = raw
        else:
            address = routeros_form(raw)
            if own and address != raw:
                entry = left.pop(address, None)
        if self.digest is not None:
            self.digest.add(f"{ref}\0{list_name}\0{address}\0{comment}\0{flag}\0{dynamic}")
        if entry is not None:
            if (entry[0] == comment and not disabled
                    and (not self.owned or _key(list_name, address) not in self.owned)):
                if self._tails is None:
                    self._learn(words)
                return  # in step: it stays out of ``_left``
            left[address] = entry  # not as desired: compared as owned below
        key, resource, why, _ = self._target._classify(
            {".id": ref, "address": raw, "comment": comment, "disabled": flag, "dynamic": dynamic},
            list_name)
        if resource is None:
            self.foreign.setdefault(key, why)
            return
        in_step = address in self._lists.get(list_name, ()) and address not in left
        if key in self.owned or in_step:
            self.surplus.append(resource)
        else:
            self.owned[key] = resource

    def _learn(self, words: Sequence[str]) -> None:
        """An own row in step shows the order of a row's properties: from now on, rows
        that are exactly a desired entry in that order are taken undecoded."""
        order = tuple(w[1:].partition("=")[0] for w in words if not w.startswith("=.id="))
        self._tails = {}
        if sorted(order) != ["address", "comment", "disabled", "dynamic"]:
            return  # another shape: every row is read word by word
        encoding = self._wire.encoding
        self._tails = {name: _tails(self._desired, self._lists.get(name, {}), order,
                                    self._head, encoding)
                       for name in self._target.lists}
        self._wire.rows = self.take
        self._first = order[0]
        self._runs = _row_patterns(order[0], encoding)
        self._wire.run = self.take_run

    def take(self, tag: bytes, ref: bytes, rest: bytes) -> bool:
        """A row as it is on the wire: True when it is a desired entry exactly, in
        step, counted and digested as ``row`` would; False leaves it to ``row``."""
        name = self._reading.get(tag)
        return name is not None and self._tails is not None and self._taken(name, ref, rest)

    def _taken(self, name: str, ref: bytes, rest: bytes) -> bool:
        """``take`` once the row's list is known (``take_run`` calls it per row)."""
        assert self._tails is not None
        address = self._tails[name].get(rest)
        if address is None:
            return False
        left = self._left[name]
        entry = left.pop(address, None)
        if entry is None:
            return False
        if self.owned and _key(name, address) in self.owned:
            left[address] = entry
            return False
        if self.digest is not None:
            self.digest.add(f"{ref.decode(self._wire.encoding, 'ignore')}\0{name}\0{address}"
                            f"\0{entry[0]}\0false\0False")
        return True

    def take_run(self, buf: bytes, pos: int) -> int:
        """``take`` for every row from ``pos`` on, while they are desired entries exactly:
        where it stopped (the first row it leaves to ``take`` and ``row``, or an
        unfinished sentence).

        A router sends a print's rows one after the other, all alike: ``!re``, the tag
        and the id (the tag first or last), then the properties in the order ``_learn``
        saw. One compiled pattern cuts a row's tag, id and properties, and the
        properties must be those of a desired entry byte for byte, as ``take`` asks.
        The words' length bytes need no check: a tag is our decimal number and an id
        ``*`` and hex digits, so neither can run into the next word (whose bytes after
        its length byte are ``=.id=`` or ``=name=``), and the properties are checked
        with their length bytes.

        With nothing to digest and nothing owned so far (a plan that will not be
        saved), the rows of one print are taken a batch at a time (``_take_batch``);
        otherwise, and for ``_EACH_AFTER_MISS`` rows after a row a batch could not take
        (rows out of step come in clusters: a batch would scan past each), one by one."""
        if self._tails is None or not self._runs:
            return pos
        layout = buf[pos + 5:pos + 10]
        match = self._runs.get(layout)
        if match is None:
            return pos
        if self.owned or self.digest is not None:
            return self._take_each(match, buf, pos, -1)[0]
        while True:
            if self._each:
                pos, taken, missed = self._take_each(match, buf, pos, self._each)
                if missed:  # a row not taken: one by one for a while longer
                    self._each = _EACH_AFTER_MISS
                    return pos
                self._each -= taken
                if self._each:  # the buffer ends here, or another sentence comes
                    return pos
                self._window = _WINDOW_MIN
            m = match(buf, pos)
            if m is None:
                return pos
            tag = m.group("tag")
            name = self._reading.get(tag)
            if name is None:
                return pos
            taken, end = self._take_batch(layout, tag, name, buf, pos)
            if end is None:
                for _ in range(taken):
                    pos = match(buf, pos).end()  # type: ignore[union-attr]  # matched before
                self._each = _EACH_AFTER_MISS
                return pos
            pos = end

    def _take_each(self, match: Callable[[bytes, int], re.Match[bytes] | None], buf: bytes,
                   pos: int, most: int) -> tuple[int, int, bool]:
        """Up to ``most`` rows (-1: no limit) taken one by one, as ``take`` takes each:
        (where it stopped, rows taken, whether it stopped at a row it could not take)."""
        reading, take = self._reading, self._taken
        taken = 0
        while taken != most and (m := match(buf, pos)) is not None:
            tag, ref, rest = m.group("tag", "id", "rest")
            name = reading.get(tag)
            if name is None or not take(name, ref, rest):
                return pos, taken, True
            pos = m.end()
            taken += 1
        return pos, taken, False

    def _take_batch(self, layout: bytes, tag: bytes, name: str, buf: bytes,
                    pos: int) -> tuple[int, int | None]:
        """The rows of print ``tag`` from ``pos`` on (up to ``_window`` bytes), taken as
        ``_taken`` would take each with nothing owned and no digest, in one pass of
        compiled code: (rows taken, where the batch ended when every row was taken,
        else None). The window grows while whole batches are taken."""
        found = self._batches.get(tag)
        if found is None:
            found = self._batches[tag] = _batch_patterns(layout, tag, self._first,
                                                         self._wire.encoding)
        run, rows = found
        window = self._window
        r = run(buf, pos, pos + window)
        if r is None:  # the first row is longer than the window: a wider one
            window = _WINDOW_MAX
            r = run(buf, pos, pos + window)
            if r is None:
                return 0, None
        end = r.end()
        rests: list[bytes] = rows(buf, pos, end)
        assert self._tails is not None
        addresses: list[str | None] = list(map(self._tails[name].get, rests))
        if None in addresses:  # not a desired entry: the batch ends before it
            addresses = addresses[:addresses.index(None)]
        left = self._left[name]
        pop: Callable[[str | None, None], Entry | None] = left.pop  # type: ignore[assignment]
        entries = list(map(pop, addresses, itertools.repeat(None)))  # None: taken already
        if None not in entries:
            if len(entries) == len(rests):
                self._window = min(window * _WINDOW_GROWTH, _WINDOW_MAX)
                return len(entries), end
            return len(entries), None
        # Taken up to the first row whose entry was taken before; the ones after it go
        # back, for ``take`` and ``row`` to see one by one.
        first = entries.index(None)
        for address, entry in zip(addresses[first + 1:], entries[first + 1:]):
            if entry is not None and address is not None:
                left[address] = entry
        return first, None

    def observed(self) -> Observed:
        # What is left is copied: a dict keeps its size after its entries are popped.
        steps = ListSteps(self._lists, {name: dict(left) for name, left in self._left.items()})
        existing = {name: n for name in self._target.lists if (n := steps.count(name))}
        for r in self.owned.values():
            existing[r.group] = existing.get(r.group, 0) + 1
        return Observed(owned=self.owned, foreign=self.foreign, surplus=tuple(self.surplus),
                        checksum=self.digest.hexdigest() if self.digest is not None else "",
                        in_step=steps, existing=existing)


_TAILS: weakref.WeakKeyDictionary[Future[Any], dict[tuple[int, tuple[str, ...]], dict[bytes, str]]] = (
    weakref.WeakKeyDictionary())
_TAILS_LOCK = threading.Lock()


def _tails(desired: Future[Any], entries: Mapping[str, Entry], order: tuple[str, ...], head: str,
           encoding: str) -> Mapping[bytes, str]:
    """``{the words after .id a router prints for an entry exactly as desired: address}``
    for one list, with the properties in ``order``; made once per pass and list for
    every router reading it (the desired lists are shared)."""
    with _TAILS_LOCK:
        made = _TAILS.setdefault(desired, {})
        found = made.get((id(entries), order))
        if found is not None:
            return found
        fixed = {"dynamic": _word("=dynamic=false", encoding), "disabled": _word("=disabled=false", encoding)}
        parts = [fixed.get(name, b"") for name in order]
        at_address, at_comment = order.index("address"), order.index("comment")
        out: dict[bytes, str] = {}
        for address, (comment, _) in entries.items():
            if comment.startswith(head):
                a = f"=address={address}".encode(encoding)
                c = f"=comment={comment}".encode(encoding)
                if len(a) < 0x80 and len(c) < 0x80:  # as ``skim`` takes them: one length byte
                    parts[at_address] = bytes((len(a),)) + a
                    parts[at_comment] = bytes((len(c),)) + c
                    out[b"".join(parts)] = address
        made[(id(entries), order)] = out
        return out


_Run = Callable[[bytes, int, int], "re.Match[bytes] | None"]
_Rows = Callable[[bytes, int, int], list[bytes]]
# The bytes ``_take_batch`` looks at: a few rows at first, doubling while every row is
# in step, up to some 500 rows (a batch that meets a row out of step has scanned the
# rows after it for nothing). After such a row, ``_EACH_AFTER_MISS`` rows are taken one
# by one before batches start again. Tuned on 20,000 rows with one in 1,000 / 100 /
# 20 / 2 out of step: never slower than one by one, twice as fast when all are in step.
_WINDOW_MIN = 1 << 10
_WINDOW_MAX = 1 << 16
_WINDOW_GROWTH = 2
_EACH_AFTER_MISS = 32


def _batch_patterns(layout: bytes, tag: bytes, first: str, encoding: str) -> tuple[_Run, _Rows]:
    """For the rows of the print tagged ``tag`` laid out as ``layout`` says (the key of
    ``_row_patterns``): a match of a run of them, and a ``findall`` of their property
    words (as ``_row_patterns``' group ``rest``). The tag word is written out, its
    length byte too, so a row of another print ends the run."""
    word = re.escape(_word(f".tag={tag.decode()}", encoding))
    ref = rb"[\x06-\x7f]=\.id=\*[0-9A-Fa-f]+"
    rest = rb"[\x01-\x7f]" + re.escape(f"={first}=".encode(encoding)) + rb"[^\x00]*"
    if layout == b".tag=":
        row = (rb"\x03!re" + word + ref + b"(", rest + rb")\x00")
    else:
        row = (rb"\x03!re" + ref + b"(", rest + b")" + word + rb"\x00")
    run = re.compile(b"(?:" + row[0] + b"?:" + row[1] + b")+").match
    return run, re.compile(row[0] + row[1]).findall


def _row_patterns(first: str, encoding: str) -> dict[bytes, Callable[[bytes, int], re.Match[bytes] | None]]:
    """A compiled match for a ``!re`` whose tag and id come first (keyed ``.tag=``, the
    bytes after its first length byte) and one whose id comes first and tag last
    (``=.id=``), the properties starting with ``first``; groups ``tag``, ``id`` and
    ``rest`` (the property words as sent). Only words shorter than 128 bytes (one
    length byte) match; the properties run to the first NUL (greedy: a lazy run costs
    a try of what follows at every byte)."""
    rest = rb"(?P<rest>[\x01-\x7f]" + re.escape(f"={first}=".encode(encoding)) + rb"[^\x00]*)"
    tag = rb"[\x06-\x7f]\.tag=(?P<tag>[0-9]+)"
    ref = rb"[\x06-\x7f]=\.id=(?P<id>\*[0-9A-Fa-f]+)"
    return {b".tag=": re.compile(rb"\x03!re" + tag + ref + rest + rb"\x00").match,
            b"=.id=": re.compile(rb"\x03!re" + ref + rest + tag + rb"\x00").match}


def _word(text: str, encoding: str) -> bytes:
    """A word as sent (librouteros's encoder: its length, then its bytes)."""
    data: bytes = encode_word(text, encoding=encoding)
    return data


def _key(list_name: str, address: str) -> Key:
    return ("address-list", (("list", list_name), ("address", address)))


def _as_entries(desired: Mapping[Key, Resource]) -> ListEntries:
    """Any desired address-list Resources as ``ListEntries``; one that is not as
    ``desire`` makes them (another ``disabled``) never counts as in step: its comment
    is left out, so it is compared as owned."""
    lists: dict[str, dict[str, Entry]] = {}
    for r in desired.values():
        if r.kind != "address-list":
            continue
        comment = r.get("comment")
        usual = r.attrs == (("comment", comment), ("disabled", "false"))
        lists.setdefault(r.group, {})[r.get("address")] = (
            comment if usual else "\0", Account(r.account_id, r.account_name))
    return ListEntries(lists)


_TRUE = ("true", "yes")
_COMMENT, _DISABLED = "comment", "disabled"


class _Finished:
    """Where an apply's answered changes go: its result (a session's share of it, while
    several sessions add), the progress display, and ``report`` (the journal) in parts
    of ``REPORT_EVERY``. Called from every session's thread; a full part is taken under
    the lock and reported by the thread that filled it, outside the lock."""

    def __init__(self, target: str, progress: Callable[[int], None] | None = None,
                 report: Callable[[ApplyResult], None] | None = None) -> None:
        self._target = target
        self._progress = progress
        self._report = report
        self._lock = threading.Lock()
        self._part = ApplyResult(target=target)
        self._count = 0

    def applied(self, result: ApplyResult, change: Change) -> None:
        """The one called for nearly every change: ``_counted`` inlined."""
        result.applied.append(change)
        if self._report is not None:
            with self._lock:
                self._part.applied.append(change)
                self._count += 1
                full = self._counted(0) if self._count >= REPORT_EVERY else None
            if full is not None:
                self._report(full)
        if self._progress is not None:
            self._progress(1)

    def failed(self, result: ApplyResult, change: Change, message: str) -> None:
        result.failed.append((change, message))
        if self._report is not None:
            with self._lock:
                self._part.failed.append((change, message))
                full = self._counted(1)
            if full is not None:
                self._report(full)
        if self._progress is not None:
            self._progress(1)

    def conflict(self, result: ApplyResult, conflict: Conflict) -> None:
        result.conflicts.append(conflict)
        if self._report is not None:
            with self._lock:
                self._part.conflicts.append(conflict)
                full = self._counted(1)
            if full is not None:
                self._report(full)
        if self._progress is not None:
            self._progress(1)

    def failed_rest(self, result: ApplyResult, changes: Iterable[Change], why: str) -> None:
        """The target failed mid-way: every change not yet applied, failed or collided
        fails with ``why`` (reported by ``flush``; not counted as progress: the bar
        stops there)."""
        done = {id(c) for c in result.applied} | {id(c) for c, _ in result.failed}
        done |= {id(c.resource) for c in result.conflicts}
        result.error = why
        rest = [(c, "not applied: " + why) for c in changes
                if id(c) not in done and id(c.resource) not in done]
        result.failed += rest
        if self._report is not None:
            with self._lock:
                self._part.failed += rest
                self._count += len(rest)

    def flush(self) -> None:
        """Report what is left (the last part)."""
        if self._report is not None:
            with self._lock:
                part, self._part, self._count = self._part, ApplyResult(target=self._target), 0
            if part.applied or part.failed or part.conflicts:
                self._report(part)

    def _counted(self, n: int) -> ApplyResult | None:
        """Under the lock: ``n`` more in the part; the part, if that filled it."""
        self._count += n
        if self._count < REPORT_EVERY:
            return None
        part, self._part, self._count = self._part, ApplyResult(target=self._target), 0
        return part


def _readable(address: str) -> bool:
    """An IP address, network or range (not a DNS name, not garbage)."""
    return bool(address) and all(span(part) is not None for part in address.split("-", 1))


def _closed(exc: BaseException | None) -> bool:
    """The peer closed or reset the connection (not a timeout, not a refused login)."""
    return isinstance(exc, (ConnectionClosed, ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError))


def _malformed(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _why(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text
