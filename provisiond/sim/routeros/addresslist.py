"""The address-list table of one menu (``/ip`` or ``/ipv6``), as data.

``session`` calls it with the attribute words of add/set/unset/remove/
enable/disable (as a name -> text mapping) and with the rows to print;
``RouterSim`` calls it to inject or inspect entries. Failures raise
``Trap`` with the router's wording. Not thread-safe: the caller holds the
simulator lock.

Entries are frozen ``Entry`` values in insertion (= print, = ``.id``) order,
indexed by id, by the unique key (list, normalised address) (so by address: one
look-up per list), by list and by comment (sorted), so duplicate checks never scan the whole table and a
print whose query an index can answer (``Query.candidates``: ``?list=X``,
``?=address=A``, comment ranges, and ORs/ANDs of them) tests only the rows the
index names; any other query tests every row, as the router does. Entries
with a timeout sit in an expiry heap and vanish once the clock passes their
deadline (checked at every access, and by the server's expiry tick). While
someone listens, ``observer`` is told of every change (``listen``); ``reboot``
keeps what a router saves to disk, renumbered.

What attribute words mean for an entry, and how a print shows it, is
``entry.EntryForm``'s. Choices where ../shared/ROUTEROS.md has no observation ([inf]):

* ``.id`` numbers come from one counter per menu starting at
  ``SimSettings.first_id`` (``*1`` as on a fresh router) and are never reused;
* a bare number without ``*`` is a 0-based position in print order
  (librouteros#20); an empty or unknown id is ``no such item (4)``;
* an entry moved to another list by ``set`` keeps its place in the full print
  but goes last in a ``?list=`` print of its new list.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence

from sortedcontainers import SortedList

from .entry import Entry, EntryForm, TableOptions
from .errors import ALREADY_HAVE, NO_SUCH_ITEM, Trap
from .query import Atom, Eq, Query, Range

Clock = Callable[[], float]
#: Told of every change: (entry before, entry after, whether it expired); None: absent.
Observer = Callable[[Entry | None, Entry | None, bool], None]

_LAST_ID = 1 << 64  # above every id: (comment, _LAST_ID) sorts after every (comment, id)


class AddressTable:
    def __init__(self, options: TableOptions, clock: Clock) -> None:
        self.options = options
        self._clock = clock
        self._form = EntryForm(options, clock)
        self._next_id = options.first_id
        self._rows: dict[int, Entry] = {}
        self._by_key: dict[tuple[str, str], int] = {}
        #: Each list's ids in its print order (an entry moved there by ``set`` goes
        #: last), each with when it joined the list, to sort a few of them in that order.
        self._by_list: dict[str, dict[int, int]] = {}
        self._joins = 0
        self._by_comment: SortedList = SortedList()  # (comment, id)
        self._expiry: list[tuple[float, int]] = []
        #: Set once a duplicate key is injected; only then do removals look for twins.
        self._duplicates = False
        #: Set while someone listens (``listen``): told of each change as it happens.
        self.observer: Observer | None = None

    # -- reading ---------------------------------------------------------

    def __len__(self) -> int:
        self.expire()
        return len(self._rows)

    def entries(self, list_name: str | None = None) -> Iterator[Entry]:
        """Entries in print order, optionally only those of one list."""
        self.expire()
        if list_name is None:
            return iter(list(self._rows.values()))
        ids = self._by_list.get(list_name, {})
        return iter([self._rows[i] for i in ids])

    def select(self, query: Query) -> list[RowView]:
        """The rows ``query`` selects, in print order: each row of ``candidates`` (every
        row when it is None: of the one list the query requires, if any) that passes
        ``query.matches``."""
        named = self.candidates(query)
        source = self.entries(query.list_filter) if named is None else (self._rows[i] for i in named)
        views = (RowView(self, entry) for entry in source)
        return [view for view in views if query.matches(view)]

    def candidates(self, query: Query) -> list[int] | None:
        """The ids the indexes name for ``query`` (``Query.candidates``), in print order;
        None when no index narrows the query beyond its list."""
        self.expire()
        atoms = query.candidates()
        if atoms is None or (atoms and all(isinstance(a, Eq) and a.name == "list" for a in atoms)):
            return None  # a whole list is read faster from its own index, in order
        if self._duplicates and any(isinstance(a, Eq) and a.name == "address" for a in atoms):
            return None  # the unique-key index holds one of each injected twin
        ids: set[int] = set()
        for atom in atoms:
            ids.update(self._named(atom))
        if query.list_filter is None:
            return sorted(ids)
        # Only rows of that list pass a ``?list=X`` query: in that list's own order.
        joined = self._by_list.get(query.list_filter, {})
        return sorted(ids, key=lambda i: joined.get(i, 0))

    def _named(self, atom: Atom) -> Iterator[int]:
        """The ids of the entries ``atom`` names (its property is indexed: ``query.INDEXED``)."""
        if atom.name == "comment":
            if isinstance(atom, Eq):
                for value in atom.values:
                    yield from (i for _, i in self._by_comment.irange((value,), (value, _LAST_ID)))
                return
            yield from (i for _, i in self._by_comment.irange(*_comment_bounds(atom)))
            return
        assert isinstance(atom, Eq)
        for value in atom.values:
            if atom.name == "list":
                yield from self._by_list.get(value, ())
                continue
            # An address: the unique key (list, address) of each list (no duplicates).
            for list_name in self._by_list:
                ident = self._by_key.get((list_name, value))
                if ident is not None:
                    yield ident

    def view(self, entry: Entry) -> RowView:
        """``render(entry)`` computed only as far as a query looks (a print's scan)."""
        return RowView(self, entry)

    def render(self, entry: Entry) -> dict[str, str]:
        """The properties a print shows for ``entry`` (``EntryForm.render``)."""
        return self._form.render(entry)

    # -- ids -------------------------------------------------------------

    def resolve(self, selector: str) -> list[int]:
        """Ids named by a ``.id``/``numbers`` value (``*1A,*1B`` or positions)."""
        self.expire()
        found: dict[int, None] = {}
        missing: list[str] = []
        order: list[int] | None = None
        for part in (p.strip() for p in selector.split(",")):
            ident = self._parse_id(part)
            if ident is None and part.isdigit():
                order = order if order is not None else list(self._rows)
                position = int(part)
                ident = order[position] if position < len(order) else None
            if ident is None or ident not in self._rows:
                missing.append(part)
            else:
                found[ident] = None
        if missing and not found:
            raise Trap(NO_SUCH_ITEM)
        if missing:
            raise PartialSelection(list(found))
        return list(found)

    @staticmethod
    def _parse_id(text: str) -> int | None:
        if not text.startswith("*"):
            return None
        try:
            return int(text[1:], 16)
        except ValueError:
            return None

    # -- writing ---------------------------------------------------------

    def add(self, attrs: Mapping[str, str], *, dynamic: bool = False, allow_duplicate: bool = False) -> Entry:
        """``add``; ``allow_duplicate`` (injection only) skips the unique-key
        check, like a config imported from an older RouterOS can (../shared/ROUTEROS.md 2.3)."""
        entry = self._form.new(self._next_id, attrs, dynamic=dynamic)
        if entry.key in self._by_key:
            if not allow_duplicate:
                raise Trap(ALREADY_HAVE)
            self._duplicates = True
        self._next_id += 1
        self._store(entry)
        if self.observer is not None:
            self.observer(None, entry, False)
        return entry

    def update(self, ids: Sequence[int], attrs: Mapping[str, str]) -> None:
        """``set``: all-or-nothing over ``ids``; ``!name`` unsets ``name``."""
        self._form.check_set(attrs)
        changed = [self._form.apply(self._rows[i], attrs) for i in ids]
        self._replace_all(changed)

    def unset(self, ids: Sequence[int], name: str) -> None:
        self.update(ids, self._form.unsetting(name))

    def set_disabled(self, ids: Sequence[int], disabled: bool) -> None:
        self._replace_all([dataclasses.replace(self._rows[i], disabled=disabled) for i in ids])

    def remove(self, ids: Sequence[int], *, expired: bool = False) -> None:
        for ident in ids:
            entry = self._rows.pop(ident)
            members = self._by_list[entry.list]
            del members[ident]
            if not members:
                del self._by_list[entry.list]
            self._unindex(entry)
            if self._by_key.get(entry.key) == ident:
                del self._by_key[entry.key]
                self._reindex_duplicate(entry)
            if self.observer is not None:
                self.observer(entry, None, expired)

    def _reindex_duplicate(self, removed: Entry) -> None:
        """Point the unique-key index at a surviving injected duplicate, if any."""
        if not self._duplicates:
            return
        for ident in self._by_list.get(removed.list, {}):
            if self._rows[ident].address == removed.address:
                self._by_key[removed.key] = ident
                return

    def expire(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            deadline, ident = heapq.heappop(self._expiry)
            entry = self._rows.get(ident)
            if entry is not None and entry.expires == deadline:
                self.remove([ident], expired=True)

    def reboot(self, next_id: int | None = None) -> None:
        """What a reboot leaves: the entries saved to disk (no timeout, not dynamic) in
        print order, renumbered from ``next_id`` (default: past every id used, so no id
        survives); nobody is told (the listeners' connections die with the router)."""
        kept = [e for e in self._rows.values() if e.expires is None and not e.dynamic]
        start = self._next_id if next_id is None else next_id
        self._rows, self._by_key, self._by_list = {}, {}, {}
        self._by_comment = SortedList()
        self._expiry, self._joins, self._duplicates = [], 0, False
        for offset, entry in enumerate(kept):
            renumbered = dataclasses.replace(entry, id=start + offset)
            if renumbered.key in self._by_key:
                self._duplicates = True
            self._store(renumbered)
        self._next_id = start + len(kept)

    # -- indexes ---------------------------------------------------------

    def _replace_all(self, changed: Sequence[Entry]) -> None:
        moving = {e.id for e in changed}
        new_keys: set[tuple[str, str]] = set()
        for entry in changed:
            holder = self._by_key.get(entry.key)
            if (holder is not None and holder not in moving) or entry.key in new_keys:
                raise Trap(ALREADY_HAVE)
            new_keys.add(entry.key)
        olds = [self._rows[entry.id] for entry in changed]
        for old, entry in zip(olds, changed):
            if old.list != entry.list:
                members = self._by_list[old.list]
                del members[old.id]
                if not members:
                    del self._by_list[old.list]
        for old in olds:
            if self._by_key.get(old.key) == old.id:
                del self._by_key[old.key]
            self._unindex(old)
        for entry in changed:
            self._store(entry)
        for old in olds:
            if old.key not in self._by_key:
                self._reindex_duplicate(old)
        if self.observer is not None:
            for old, entry in zip(olds, changed):
                if old != entry:
                    self.observer(old, entry, False)

    def _store(self, entry: Entry) -> None:
        self._rows[entry.id] = entry
        self._by_key[entry.key] = entry.id
        members = self._by_list.setdefault(entry.list, {})
        if entry.id not in members:
            self._joins += 1
            members[entry.id] = self._joins
        if entry.comment is not None:
            self._by_comment.add((entry.comment, entry.id))
        if entry.expires is not None:
            heapq.heappush(self._expiry, (entry.expires, entry.id))

    def _unindex(self, entry: Entry) -> None:
        """Take ``entry`` out of the comment index."""
        if entry.comment is not None:
            self._by_comment.remove((entry.comment, entry.id))


class RowView(Mapping[str, str]):
    """The printed properties of one entry, rendered on demand.

    A print tests its query against every row of the table; most rows fail on
    ``list``, ``address`` or ``comment``, which need no rendering (dates are the
    costly part). Anything else renders the whole row once.
    """

    __slots__ = ("_table", "_entry", "_full")

    def __init__(self, table: AddressTable, entry: Entry) -> None:
        self._table = table
        self._entry = entry
        self._full: dict[str, str] | None = None

    def _row(self) -> dict[str, str]:
        if self._full is None:
            self._full = self._table.render(self._entry)
        return self._full

    def __getitem__(self, key: str) -> str:
        entry = self._entry
        if key == "list":
            return entry.list
        if key == "address":
            return entry.address
        if key == "comment" and entry.comment is not None:
            return entry.comment
        return self._row()[key]

    def __contains__(self, key: object) -> bool:
        if key in ("list", "address"):
            return True
        if key == "comment":
            return self._entry.comment is not None
        return key in self._row()

    def __iter__(self) -> Iterator[str]:
        return iter(self._row())

    def __len__(self) -> int:
        return len(self._row())

    def rendered(self) -> dict[str, str]:
        """Every printed property (``AddressTable.render``), rendered once."""
        return self._row()


def _comment_bounds(atom: Range) -> tuple[tuple[str, int] | None, tuple[str] | None]:
    """``SortedList.irange`` bounds over (comment, id) for a comment range: after every
    (low, id), before every (high, id)."""
    low = (atom.low, _LAST_ID) if atom.low is not None else None
    high = (atom.high,) if atom.high is not None else None
    return low, high


class PartialSelection(Trap):
    """Some ids of a multi-id selector exist, some do not."""

    def __init__(self, found: list[int]) -> None:
        super().__init__(NO_SUCH_ITEM)
        self.found = found
