"""A mirror's rows, kept small: a router's managed entries cost about 90 bytes each.

The daemon mirrors every router (``mirror.Mirror``): at 100,000 entries on each of four
routers, dicts of tuples would cost some 125 MiB. Here a row is one interned string
(``list \\0 address \\0 comment \\0 flags``, shared by every router that holds the same
entry), found by its key (the id's number and family) in a sorted ``array``; the two
lookups a scoped pass needs, by address and by account, are sorted arrays of
``(hash(value), key)`` pairs (16 bytes an entry; a hash shared by two values only adds a
candidate, which the caller checks). Single changes (a ``listen`` report) are a binary
search and a ``memmove``; a fill is gathered in a dict and sorted once at its end.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator

# (list, address, comment, disabled, dynamic)
Row = tuple[str, str, str, bool, bool]


def pack(row: Row) -> str:
    name, address, comment, disabled, dynamic = row
    return sys.intern(f"{name}\0{address}\0{comment}\0{int(disabled) | int(dynamic) << 1}")


def unpack(packed: str) -> Row:
    name, address, comment, flags = packed.split("\0")
    return name, address, comment, flags in ("1", "3"), flags in ("2", "3")


class _Pairs:
    """A sorted multimap of int -> int in two arrays."""

    def __init__(self) -> None:
        self.keys = array("q")
        self.values = array("q")

    def build_arrays(self, keys: array[int], values: array[int]) -> None:
        """From unsorted parallel arrays (a fill's), sorted by (key, value)."""
        order = sorted(range(len(keys)), key=lambda i: (keys[i], values[i]))
        self.keys = array("q", (keys[i] for i in order))
        self.values = array("q", (values[i] for i in order))

    def add(self, key: int, value: int) -> None:
        keys, values = self.keys, self.values
        i = bisect_left(keys, key)
        while i < len(keys) and keys[i] == key and values[i] < value:
            i += 1
        keys.insert(i, key)
        values.insert(i, value)

    def remove(self, key: int, value: int) -> None:
        keys, values = self.keys, self.values
        i = bisect_left(keys, key)
        while i < len(keys) and keys[i] == key:
            if values[i] == value:
                del keys[i]
                del values[i]
                return
            i += 1

    def get(self, key: int) -> list[int]:
        keys, values = self.keys, self.values
        i = bisect_left(keys, key)
        out = []
        while i < len(keys) and keys[i] == key:
            out.append(values[i])
            i += 1
        return out


class RowTable:
    """Rows by key, and keys by address and by account (provisiond's entries only)."""

    def __init__(self, head: str) -> None:
        self._head = head
        self._keys = array("q")
        self._rows: list[str] = []
        self._at = _Pairs()
        self._of = _Pairs()
        self._counts: dict[str, int] = {}
        self._staging: dict[int, str] | None = None

    def account(self, row: Row) -> str | None:
        """The account of one of provisiond's entries (its comment's marker), else None."""
        comment = row[2]
        if row[4] or not comment.startswith(self._head):
            return None
        return comment[len(self._head):].split(" ", 1)[0]

    # -- a fill ---------------------------------------------------------------------

    def begin(self) -> None:
        """Forget every row; changes gather until ``end``."""
        self._keys, self._rows = array("q"), []
        self._at, self._of = _Pairs(), _Pairs()
        self._counts = {}
        self._staging = {}

    def end(self) -> None:
        staging, self._staging = self._staging or {}, None
        keys = sorted(staging)
        self._keys = array("q", keys)
        self._rows = [staging[k] for k in keys]
        staging.clear()
        del keys
        at_hash, at_key, of_hash, of_key = array("q"), array("q"), array("q"), array("q")
        counts: dict[str, int] = {}
        for key, packed in zip(self._keys, self._rows):
            row = unpack(packed)
            at_hash.append(hash(row[1]))
            at_key.append(key)
            account = self.account(row)
            if account is not None:
                of_hash.append(hash(account))
                of_key.append(key)
            counts[row[0]] = counts.get(row[0], 0) + 1
        self._at.build_arrays(at_hash, at_key)
        self._of.build_arrays(of_hash, of_key)
        self._counts = counts

    # -- single changes -------------------------------------------------------------

    def get(self, key: int) -> Row | None:
        if self._staging is not None:
            packed = self._staging.get(key)
            return unpack(packed) if packed is not None else None
        i = bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            return unpack(self._rows[i])
        return None

    def put(self, key: int, row: Row) -> None:
        self.drop(key)
        packed = pack(row)
        if self._staging is not None:
            self._staging[key] = packed
            return
        i = bisect_left(self._keys, key)
        self._keys.insert(i, key)
        self._rows.insert(i, packed)
        self._index(key, row, 1)

    def drop(self, key: int) -> Row | None:
        if self._staging is not None:
            packed = self._staging.pop(key, None)
            return unpack(packed) if packed is not None else None
        i = bisect_left(self._keys, key)
        if i == len(self._keys) or self._keys[i] != key:
            return None
        row = unpack(self._rows[i])
        del self._keys[i]
        del self._rows[i]
        self._index(key, row, -1)
        return row

    def _index(self, key: int, row: Row, sign: int) -> None:
        account = self.account(row)
        if sign > 0:
            self._at.add(hash(row[1]), key)
            if account is not None:
                self._of.add(hash(account), key)
        else:
            self._at.remove(hash(row[1]), key)
            if account is not None:
                self._of.remove(hash(account), key)
        self._counts[row[0]] = self._counts.get(row[0], 0) + sign

    # -- reads ----------------------------------------------------------------------

    def at(self, address: str) -> list[int]:
        """Keys of the rows on ``address`` (any list)."""
        return [k for k in self._at.get(hash(address)) if (r := self.get(k)) and r[1] == address]

    def of(self, account: str) -> list[int]:
        """Keys of provisiond's rows of ``account``."""
        return [k for k in self._of.get(hash(account))
                if (r := self.get(k)) is not None and self.account(r) == account]

    def counts(self) -> dict[str, int]:
        return {name: n for name, n in self._counts.items() if n}

    def items(self) -> Iterator[tuple[int, Row]]:
        if self._staging is not None:
            yield from ((k, unpack(p)) for k, p in list(self._staging.items()))
            return
        for key, packed in zip(self._keys, self._rows):
            yield key, unpack(packed)

    def __len__(self) -> int:
        return len(self._staging) if self._staging is not None else len(self._keys)
