"""The daemon's copy of one router's managed address-list entries, kept by ``listen``.

A real router scans its whole address-list table for every filtered print (about
80 µs a row on an RB5009: 8 s for 100,000 entries), so the daemon does not print to
learn what a billing event changes. ``follow.Follower`` fills a ``Mirror`` with one
read per family (the ``listen`` opened first on the same connection) and keeps it
true from the ``listen``'s reports; a scoped pass then diffs against the mirror
(``rows_for``) and writes, without a print.

Every report also says whether someone else changed a managed entry: a change to an
entry of provisiond's (or to one on a managed key) that provisiond did not make itself
is *drift*, and ``event`` returns the accounts whose entries need a scoped repair.
provisiond's own writes are told apart by key: a write in this process registers its
keys first (``expect``); a full pass in its own process sends back the keys it wrote
(``written_digest``) and the reports heard meanwhile wait (``hold``/``release``).

The mirror is *trusted* only while its ``listen`` is up and the fill is complete
(``state == "live"``); otherwise a scoped pass prints as before. It is thread-safe:
the follower's thread writes, the daemon's pass thread reads.

Memory: about 90 bytes an entry (``table.RowTable``).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from provisiond.core.addresses import is_canonical_v4, routeros_form
from provisiond.targets.routeros.table import Row, RowTable, pack, unpack

_TRUE = ("true", "yes")
OWN_TTL = 15.0  # seconds a key written by provisiond waits for its report
AWAIT = 2.0  # seconds a scoped read waits for the reports of provisiond's own last writes
BOOT_SLACK = 3.0  # seconds of uptime rounding and latency when comparing boot times

# A row's key in the mirror: its id's number << 1 | 1 for IPv6.
STATES = ("off", "filling", "live", "down", "refused")


def key_digest(list_name: str, address: str) -> int:
    """A key's 64-bit digest, the same in every process (``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(f"{list_name}\0{address}".encode(), digest_size=8).digest(),
                          "big")


def written_digest(keys: Iterable[tuple[str, str]]) -> bytes:
    """The digests of the (list, address) keys a pass wrote, packed for the daemon."""
    return array("Q", (key_digest(name, address) for name, address in keys)).tobytes()


def parse_id(text: str) -> int | None:
    """``*1A`` -> 26; None for anything else."""
    if len(text) < 2 or text[0] != "*":
        return None
    try:
        return int(text[1:], 16)
    except ValueError:
        return None


def parse_uptime(text: str) -> float | None:
    """RouterOS's uptime (``1w2d03:04:05``, ``3h4m5s``, ``5d10h``) in seconds."""
    total = 0.0
    units = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    rest = text.strip()
    clock = re.search(r"(\d+):(\d\d):(\d\d)$", rest)
    if clock:
        total += int(clock[1]) * 3600 + int(clock[2]) * 60 + int(clock[3])
        rest = rest[:clock.start()]
    parts = re.findall(r"(\d+)(ms|[wdhms])", rest)
    if not parts and not clock:
        return None
    for value, unit in parts:
        total += int(value) / 1000 if unit == "ms" else int(value) * units[unit]
    return total


class Mirror:
    """One router's entries on its managed lists: id -> (list, address, comment, flags)."""

    def __init__(self, router: str, lists: Sequence[str], head: str) -> None:
        self.router = router
        self.lists = frozenset(lists)
        self.head = head  # "<marker>:"
        self._lock = threading.Condition()
        self._rows = RowTable(head)
        self._touched: set[int] | None = None  # while filling: ids reported meanwhile
        self._own: dict[int, tuple[int, float]] = {}  # key digest -> (writes, until)
        # Reports heard while a full pass in another process writes, until ``release``:
        # two key digests each (0: none) and the rows before and after, packed (the
        # accounts are only worked out for the few that turn out not to be its writes;
        # a cold pass's 100,000 reports cost some 3 MB here, not 30).
        self._held: Held | None = None
        self._held_since = 0  # fills when the hold began
        self.state = "off"
        self.stale = False  # a write showed it out of step: the follower reads again
        self.confirmed = 0.0  # wall-clock time the last fill completed
        self.fills = 0
        self.drift_events = 0
        # When the router booted (monotonic clock), as the follower's heartbeat last saw
        # it: a reboot renumbers ids, and a power cut leaves the listen's session half-open
        # for a while, so a session that finds a later boot must not use these ids
        # (``rebooted_since``). None: not known yet; the mirror is not used.
        self.booted: float | None = None
        # account -> digests of its own writes in flight: a scoped read of the account
        # waits for their reports (a new entry's key is not in the mirror yet).
        self._own_of: dict[str, set[int]] = {}

    # -- what the follower tells it ------------------------------------------------

    def begin_fill(self) -> None:
        """A fresh read starts (the ``listen`` already open): forget everything, the
        writes awaited too (made before this listen, they are never reported on it)."""
        with self._lock:
            self._rows.begin()
            self._own.clear()
            self._own_of.clear()
            self.booted = None  # known again at this session's first heartbeat
            self._touched = set()
            self.stale = False  # this read answers any doubt raised before it
            self.state = "filling"

    def fill(self, words: Sequence[str], fam: int) -> None:
        """One row of the fill's print of family ``fam``; skipped when a report about it
        came first."""
        row = _parse(words, fam)
        if row is None:
            return
        ref, values = row
        with self._lock:
            if self._touched is not None and ref in self._touched:
                return
            if values is not None:
                self._rows.put(ref, values)

    def end_fill(self) -> None:
        with self._lock:
            self._touched = None
            self._rows.end()
            self.state = "down" if self.stale else "live"
            self.confirmed = time.time()
            self.fills += 1
            self._lock.notify_all()

    def lost(self, state: str = "down") -> None:
        """The ``listen`` is gone (``down``) or was refused: nothing here is trusted."""
        with self._lock:
            self.state = state
            if self._touched is not None:  # a fill cut short
                self._touched = None
                self._rows.end()
            self._lock.notify_all()

    def event(self, words: Sequence[str], fam: int) -> frozenset[str]:
        """One ``listen`` report of family ``fam``: the mirror follows it; returns the
        accounts to repair (empty: provisiond's own write, a hand-made entry, or held
        for ``release``)."""
        row = _parse(words, fam)
        if row is None:
            return frozenset()
        ref, after = row
        with self._lock:
            before = self._rows.get(ref)
            if self._touched is not None:
                self._touched.add(ref)
            self._rows.drop(ref)
            if after is not None and after[0] not in self.lists:
                after = None  # on a list provisiond does not manage: gone, as far as it cares
            if after is not None:
                self._rows.put(ref, after)
            keys = tuple({key_digest(r[0], r[1]): None for r in (before, after) if r is not None})
            accounts = frozenset(a for r in (before, after) if r is not None
                                 and (a := self._rows.account(r)) is not None)
            self._lock.notify_all()
            if not accounts or self._mine(keys):
                return frozenset()
            if self._held is not None:
                self._held.add(keys, before, after)
                return frozenset()
            self.drift_events += 1
            return accounts

    def suspect(self) -> None:
        """An add answered ``already have such entry``: the router holds an entry the
        mirror does not know. Untrusted until the follower has read the router again."""
        with self._lock:
            self.stale = True
            if self.state == "live":
                self.state = "down"
            self._lock.notify_all()

    def forget(self, refs: Iterable[tuple[int, str]]) -> None:
        """Entries (family, ``.id``) a remove took out, or found gone (``no such item``:
        no report will come for those). Each counts as its remove's report: a report
        that comes later finds no row, so it could not take the expected write back."""
        with self._lock:
            for fam, text in refs:
                number = parse_id(text)
                ref = -1 if number is None else number << 1 | (fam == 6)
                if (row := self._rows.get(ref)) is not None:
                    self._rows.drop(ref)
                    self._mine((key_digest(row[0], row[1]),))
            self._lock.notify_all()

    # -- provisiond's own writes ---------------------------------------------------

    def expect(self, keys: Iterable[tuple[str, str]], accounts: Iterable[str] = ()) -> None:
        """This process is about to write ``keys`` (of ``accounts``, one each): their
        reports are not drift, and a scoped read of those accounts waits for them."""
        digests = [key_digest(n, a) for n, a in keys]
        self._expect(digests)
        with self._lock:
            if len(self._own_of) > 10_000:
                self._own_of = {a: d for a, d in self._own_of.items() if d & self._own.keys()}
            for d, account in zip(digests, accounts):
                if account:
                    self._own_of.setdefault(account, set()).add(d)

    def rebooted_since(self, uptime: float) -> bool:
        """A session that found the router up for ``uptime`` seconds: did it boot after
        the follower last looked (so the mirror's ids may be another entry's now)?"""
        booted = self.booted
        return booted is not None and time.monotonic() - uptime > booted + BOOT_SLACK

    def unexpect(self, keys: Iterable[tuple[str, str]]) -> None:
        """Writes that did not happen (refused, collided): their keys may drift again."""
        with self._lock:
            for d in (key_digest(n, a) for n, a in keys):
                self._own.pop(d, None)

    def hold(self) -> None:
        """A full pass in another process writes now: keep the reports until ``release``."""
        with self._lock:
            if self._held is None:
                self._held = Held()
                self._held_since = self.fills

    def release(self, written: bytes) -> frozenset[str]:
        """That pass wrote the keys ``written`` (``written_digest``): the accounts of the
        held reports about any other key."""
        digests = array("Q")
        digests.frombytes(written)
        self._expect(digests)
        with self._lock:
            held, self._held = self._held or Held(), None
            drifted = [frozenset(a for r in rows if r is not None
                                 and (a := self._rows.account(r)) is not None)
                       for keys, rows in held if not self._mine(keys)]
            self.drift_events += len(drifted)
            if self.fills != self._held_since or self._touched is not None:
                # The listen was lost meanwhile: the reports of writes made before the new
                # one are never coming (the router is read again, then full-passed).
                for d in digests:
                    self._own.pop(d, None)
            self._own = dict(self._own)  # a dict keeps its size after its keys are popped
            return frozenset(a for accounts in drifted for a in accounts)

    def _expect(self, digests: Iterable[int]) -> None:
        until = time.monotonic() + OWN_TTL
        with self._lock:
            own = self._own
            if len(own) > 10_000:
                now = time.monotonic()
                for d in [d for d, (_, t) in own.items() if t < now]:
                    del own[d]
            for d in digests:
                n = own.get(d, (0, 0.0))[0]
                own[d] = (n + 1, until)

    def _mine(self, keys: tuple[int, ...]) -> bool:
        """Under the lock: a report about a key provisiond wrote lately (consumed)."""
        now = time.monotonic()
        mine = False
        for d in keys:
            found = self._own.get(d)
            if found is None:
                continue
            n, until = found
            if until < now:
                del self._own[d]
                continue
            mine = True
            if n <= 1:
                del self._own[d]
            else:
                self._own[d] = (n - 1, until)
        return mine

    # -- what a scoped pass reads --------------------------------------------------

    @property
    def trusted(self) -> bool:
        return self.state == "live"

    def __len__(self) -> int:
        return len(self._rows)

    def rows_for(self, accounts: Iterable[str], addresses: Iterable[str]) -> list[dict[str, Any]] | None:
        """The rows a scoped print would return: provisiond's entries of ``accounts`` and
        every entry on one of ``addresses``, as printed (``.id``, ``list``, ...). None
        when the mirror is not trusted, or provisiond's own writes to those keys were
        not reported back within ``AWAIT`` (the caller prints instead)."""
        accounts, addresses = list(accounts), list(addresses)
        deadline = time.monotonic() + AWAIT
        with self._lock:
            while True:
                if not self.trusted or self.booted is None:
                    return None
                ids = self._ids(accounts, addresses)
                if not self._awaiting(ids, addresses, accounts):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)
            return [_printed(ref, row) for ref in sorted(ids) if (row := self._rows.get(ref))]

    def entries(self) -> dict[tuple[int, str], Row]:
        """Every row, by (family, ``.id``): the whole mirror, to compare with the router."""
        with self._lock:
            return {(6 if ref & 1 else 4, f"*{ref >> 1:X}"): row for ref, row in self._rows.items()}

    def counts(self) -> dict[str, int]:
        """Entries per managed list (hand-made ones too, as ``count-only`` counts)."""
        with self._lock:
            return self._rows.counts()

    def _ids(self, accounts: list[str], addresses: list[str]) -> set[int]:
        ids: set[int] = set()
        for account in accounts:
            ids.update(self._rows.of(account))
        for address in addresses:
            ids.update(self._rows.at(address))
        return ids

    def _awaiting(self, ids: set[int], addresses: list[str], accounts: list[str]) -> bool:
        """Under the lock: an own write to one of these keys, or of one of these
        accounts, not reported back yet."""
        own = self._own
        if not own:
            return False
        now = time.monotonic()
        keys = {key_digest(r[0], r[1]) for i in ids if (r := self._rows.get(i)) is not None}
        keys |= {key_digest(n, a) for a in addresses for n in self.lists}
        for account in accounts:
            keys |= self._own_of.get(account, set())
        return any(own[d][1] >= now for d in keys if d in own)


class Held:
    """Reports kept during a hold, compactly: (key digests, (row before, row after))."""

    def __init__(self) -> None:
        self._keys = array("Q")
        self._rows: list[str | None] = []

    def add(self, keys: tuple[int, ...], before: Row | None, after: Row | None) -> None:
        self._keys.extend((keys + (0, 0))[:2])
        self._rows += [None if before is None else pack(before), None if after is None else pack(after)]

    def __iter__(self) -> Iterator[tuple[tuple[int, ...], tuple[Row | None, Row | None]]]:
        for i in range(0, len(self._keys), 2):
            keys = tuple(k for k in self._keys[i:i + 2] if k)
            rows = tuple(None if p is None else unpack(p) for p in self._rows[i:i + 2])
            yield keys, (rows[0], rows[1])


def _parse(words: Sequence[str], fam: int) -> tuple[int, Row | None] | None:
    """A row or report's words -> (key, row; None: removed); the key is the id and the
    family (each menu numbers its entries on its own). A report of a removal
    carries ``.dead`` (``yes`` on v6, ``true`` on v7) and only ``.id``; a row with an
    id and nothing else is taken as a removal too (a ``.proplist`` that left ``.dead``
    out). None: no usable id."""
    values: dict[str, str] = {}
    for w in words:
        if w.startswith("="):
            name, _, value = w[1:].partition("=")
            values[name] = value
    number = parse_id(values.get(".id", ""))
    if number is None:
        return None
    ref = number << 1 | (fam == 6)
    if values.get(".dead") in _TRUE or "list" not in values:
        return ref, None
    raw = values.get("address", "")
    address = raw if is_canonical_v4(raw) else routeros_form(raw)
    return ref, (values["list"], address, values.get("comment", ""),
                 values.get("disabled") in _TRUE, values.get("dynamic") in _TRUE)


def _printed(ref: int, row: Row) -> dict[str, Any]:
    """A row as ``RouterTarget``'s scoped read takes a printed one."""
    name, address, comment, disabled, dynamic = row
    return {".id": f"*{ref >> 1:X}", "list": name, "address": address, "comment": comment,
            "disabled": "true" if disabled else "false", "dynamic": "true" if dynamic else "false"}
