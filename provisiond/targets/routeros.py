"""RouterOS address lists over the binary API (librouteros), plain or TLS.

One ``RouterTarget`` per ``[[router]]``. ``observe`` reads only the lists provisiond
manages, one filtered print per list and family with ``.proplist``, and sorts what it
finds into provisiond's own entries (comment ``<marker>:<account id> …``) and everything
else (hand-made and dynamic entries: never touched; a desired entry that collides with
one is a conflict). ``apply`` removes (comma-joined ids, in batches), adds, then sets.
A trap on one entry is reported for that entry; a lost connection fails the router.
This is the only module that imports librouteros.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import librouteros
import librouteros.login
from librouteros.connections import SocketTransport
from librouteros.exceptions import ConnectionClosed, LibRouterosError, TrapError
from librouteros.query import Key as RosKey

from provisiond.core.addresses import family, routeros_form, span
from provisiond.core.changes import Change, Conflict, Create, Delete, Key, Observed, Resource, Update
from provisiond.errors import TargetError, TargetUnavailable
from provisiond.core.plan import Plan, observed_digest
from provisiond.settings import RouterSettings
from provisiond.targets.base import ApplyResult

log = logging.getLogger(__name__)
# librouteros logs every word it sends at DEBUG, /login's password included.
logging.getLogger("librouteros").setLevel(logging.INFO)

MENUS = {4: ("ip", "firewall", "address-list"), 6: ("ipv6", "firewall", "address-list")}
PROPLIST = (".id", "list", "address", "comment", "dynamic", "disabled", "timeout")
REMOVE_BATCH = 200
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

    def read(self, length: int) -> bytes:
        end = self._pos + length
        if end <= len(self._buf):
            data = self._buf[self._pos:end]
            self._pos = end
            return data
        chunks = [self._buf[self._pos:]]
        have = len(chunks[0])
        while have < length:
            got = self.sock.recv(65536)
            if not got:
                raise ConnectionClosed("Connection unexpectedly closed.")
            chunks.append(got)
            have += len(got)
        self._buf = b"".join(chunks)
        self._pos = length
        return self._buf[:length]


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
        self._tick: Callable[[int], None] = _no_progress  # the running apply's progress

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

    def close(self) -> None:
        if self._api is not None:
            try:
                self._api.close()
            except (OSError, LibRouterosError):
                pass
            self._api = None

    # -- observe --------------------------------------------------------------------

    def _rows(self, fam: int, list_name: str) -> Iterator[Mapping[str, Any]]:
        path = self._api_or_connect().path(*MENUS[fam])
        try:
            yield from path.select(*PROPLIST).where(RosKey("list") == list_name)
        except TrapError as exc:
            raise TargetError(self.name, f"print {list_name} refused: {exc.message}") from exc
        except (OSError, LibRouterosError) as exc:
            self.close()
            raise TargetUnavailable(self.name, f"reading list {list_name} failed: {_why(exc)}") from exc
        except MALFORMED as exc:
            self.close()
            raise TargetError(self.name, f"print {list_name}: malformed reply from the router "
                                         f"({_malformed(exc)}); nothing planned") from exc

    def observe(self) -> Observed:
        owned: dict[Key, Resource] = {}
        foreign: dict[Key, str] = {}
        surplus: list[Resource] = []
        digest: list[tuple[Any, ...]] = []
        for fam in (4, 6):
            for list_name in self.lists:
                for row in self._rows(fam, list_name):
                    address = routeros_form(str(row.get("address", "")))
                    comment = str(row.get("comment", ""))
                    ref = str(row.get(".id", ""))
                    disabled = "true" if row.get("disabled") in (True, "true", "yes") else "false"
                    dynamic = row.get("dynamic") in (True, "true", "yes")
                    key: Key = ("address-list", (("list", list_name), ("address", address)))
                    owner = None if dynamic else self.marker.owner(comment)
                    digest.append((ref, list_name, address, comment, disabled, dynamic))
                    if owner is not None and (not ref or not _readable(address)):
                        # Without an id it cannot be changed; with an address that is not
                        # one, it cannot be compared: either way it is left alone.
                        why = "no .id" if not ref else f"an address provisiond cannot read ({address!r})"
                        log.warning("%s: %s entry %s (comment %r) has %s: left alone",
                                    self.name, list_name, ref or "?", comment, why)
                        foreign.setdefault(key, f"provisiond's marker but {why}")
                        continue
                    if owner is None:
                        why = "dynamic entry" if dynamic else "entry not created by provisiond"
                        foreign.setdefault(key, f"{why} (comment {comment!r})" if comment else why)
                        continue
                    entry = Resource(
                        kind="address-list",
                        group=list_name,
                        ident=key[1],
                        attrs=(("comment", comment), ("disabled", disabled)),
                        account_id=owner,
                        account_name=comment.split(" ", 1)[1] if " " in comment else "",
                        ref=ref,
                    )
                    if key in owned:
                        surplus.append(entry)
                    else:
                        owned[key] = entry
        log.debug("%s: observed owned=%d foreign=%d", self.name, len(owned), len(foreign))
        return Observed(owned=owned, foreign=foreign, surplus=tuple(surplus),
                        checksum=observed_digest(digest))

    def plan_followups(self, plan: Plan) -> Plan:
        return plan

    # -- apply ----------------------------------------------------------------------

    def apply(self, plan: Plan, *, progress: Callable[[int], None] | None = None) -> ApplyResult:
        result = ApplyResult(target=self.name)
        self._tick = progress or _no_progress
        try:
            api = self._api_or_connect()
            deletes = [c for c in plan.changes if isinstance(c, Delete)]
            for fam in (4, 6):
                self._remove(api.path(*MENUS[fam]),
                             [c for c in deletes if family(c.old.get("address")) == fam], result)
            self._add_all([c for c in plan.changes if isinstance(c, Create)], api, result)
            for change in plan.changes:
                if isinstance(change, Update):
                    self._set(api, change, result)
        except (TargetError, OSError, LibRouterosError) as exc:
            self.close()
            message = str(exc) if isinstance(exc, TargetError) else f"{self.name}: connection lost: {_why(exc)}"
            _fail_rest(result, plan.changes, message)
        except MALFORMED as exc:
            self.close()
            _fail_rest(result, plan.changes,
                       f"{self.name}: malformed reply from the router ({_malformed(exc)})")
        return result

    def _remove(self, path: Any, deletes: list[Delete], result: ApplyResult) -> None:
        for start in range(0, len(deletes), REMOVE_BATCH):
            batch = deletes[start:start + REMOVE_BATCH]
            try:
                path.remove(*(c.old.ref for c in batch))
                result.applied.extend(batch)
                self._tick(len(batch))
                continue
            except TrapError:
                pass  # one id in the batch is gone: fall back to one at a time
            for change in batch:
                try:
                    path.remove(change.old.ref)
                    result.applied.append(change)
                except TrapError as exc:
                    if str(exc.message).startswith(NO_SUCH_ITEM):
                        result.applied.append(change)  # already gone: the goal is met
                    else:
                        result.failed.append((change, self._refused("remove", change.old, exc)))
                self._tick(1)

    def _add_all(self, creates: list[Create], api: Any, result: ApplyResult) -> None:
        """Adds over ``settings.connections`` API sessions at once.

        librouteros has one command in flight per connection (no tags), so each add
        costs a full round trip; a few connections keep the router busy while the
        client waits. Extra sessions are opened for the batch and closed after it.
        """
        workers = min(self.settings.connections, max(1, len(creates) // 500))
        if workers <= 1:
            for change in creates:
                self._add(api, change, result)
            return
        shares = [creates[i::workers] for i in range(workers)]
        partial = [ApplyResult(target=self.name) for _ in shares]

        def work(i: int) -> None:
            conn = api if i == 0 else None
            try:
                if conn is None:
                    conn = self._connect()
                for change in shares[i]:
                    self._add(conn, change, partial[i])
            except (OSError, LibRouterosError) as exc:
                _fail_rest(partial[i], shares[i], f"{self.name}: connection lost: {_why(exc)}")
            except MALFORMED as exc:
                _fail_rest(partial[i], shares[i],
                           f"{self.name}: malformed reply from the router ({_malformed(exc)})")
            finally:
                if i != 0 and conn is not None:
                    try:
                        conn.close()
                    except (OSError, LibRouterosError):
                        pass

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-add") as pool:
            list(pool.map(work, range(workers)))
        for p in partial:
            result.applied += p.applied
            result.failed += p.failed
            result.collisions += p.collisions
            if p.error and result.error is None:
                result.error = p.error

    def _add(self, api: Any, change: Create, result: ApplyResult) -> None:
        r = change.new
        address = r.get("address")
        try:
            api.path(*MENUS[family(address)]).add(
                list=r.get("list"), address=address, comment=r.get("comment")
            )
            result.applied.append(change)
        except TrapError as exc:
            if DUPLICATE in str(exc.message):
                result.collisions.append(Conflict(r, f"{exc.message} (not provisiond's)"))
            else:
                result.failed.append((change, self._refused("add", r, exc)))
        self._tick(1)

    def _set(self, api: Any, change: Update, result: ApplyResult) -> None:
        r = change.new
        try:
            api.path(*MENUS[family(r.get("address"))]).update(
                **{".id": change.old.ref, "comment": r.get("comment"),
                   "disabled": "yes" if r.get("disabled") == "true" else "no"}
            )
            result.applied.append(change)
        except TrapError as exc:
            result.failed.append((change, self._refused("set", r, exc)))
        self._tick(1)

    def _refused(self, verb: str, r: Resource, exc: TrapError) -> str:
        return f"{self.name}: {verb} {r.get('list')} {r.get('address')} refused: {exc.message}"


def _no_progress(n: int) -> None:
    pass


def _fail_rest(result: ApplyResult, changes: Iterable[Change], why: str) -> None:
    """The target failed mid-way: every change not yet applied, failed or collided fails with ``why``."""
    done = {id(c) for c in result.applied} | {id(c) for c, _ in result.failed}
    done |= {id(c.resource) for c in result.collisions}
    result.error = why
    result.failed += [(c, "not applied: " + why) for c in changes
                      if id(c) not in done and id(c.resource) not in done]


def _readable(address: str) -> bool:
    """An IP address, network or range (not a DNS name, not garbage)."""
    return bool(address) and all(span(part) is not None for part in address.split("-", 1))


def _malformed(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _why(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text
