"""A full read of one router's lists, compared with the desired state as it is read.

``target`` sends the prints (one per family, over every managed list: each row names
its list) and hands their replies here through ``pipeline``: ``ListReader`` turns the
rows into an ``Observed``. An own entry exactly as desired is only counted
(``Observed.in_step``); everything else becomes a Resource in ``owned`` or
``surplus``, or a reason in ``foreign``.

Most rows of a converged router are exactly a desired entry, so once a row has shown
the order the router sends properties in, such rows are taken as they are on the wire,
undecoded: one at a time (``BufferedTransport.skim``) or a run of them with one
compiled pattern (``ListReader.take_run``), with the same count and digest as reading
them word by word.
"""

from __future__ import annotations

import itertools
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from provisiond.core.addresses import is_canonical_v4, routeros_form
from provisiond.core.changes import Key, Observed, Resource
from provisiond.core.desire import Entry, ListEntries, ListSteps
from provisiond.core.model import Account
from provisiond.core.plan import DigestSum
from provisiond.errors import TargetError
from provisiond.targets.routeros.commands import menu_path
from provisiond.targets.routeros.pipeline import Answer
from provisiond.targets.routeros.wire import ApiWire, word

# While billing is read, a full read only receives its answers, as bytes: the router
# is never held up by a full socket, and billing has the interpreter to itself. Past
# this many bytes (about 280,000 rows) it stops receiving until billing is done.
PREFETCH_BYTES = 32 << 20
PREFETCH_POLL = 0.02  # seconds between looks at whether billing is done, when nothing arrives
_TRUE = ("true", "yes")
_PROPERTIES = ["address", "comment", "disabled", "dynamic", "list"]  # a full read's, sorted

# An entry of a router's managed lists: its list and address, NUL between (``_place``);
# text, as its hash is kept once made (a row is looked up by it more than once).
Place = str

# One printed row -> (key, provisiond's Resource or None, why not, digest item).
Classify = Callable[[Mapping[str, Any], str], tuple[Key, Resource | None, str, tuple[Any, ...]]]


class Recorded(Iterator[int]):
    """An iterator of command tags that remembers the ones it gave out, in order."""

    def __init__(self, source: Iterator[int]) -> None:
        self._source = source
        self.given: list[int] = []

    def __next__(self) -> int:
        tag = next(self._source)
        self.given.append(tag)
        return tag


class ListReader:
    """The rows of one router's prints (one per family) -> an ``Observed``, compared
    with the desired state.

    ``start`` receives the answers unparsed until the desired state is known. Then per
    row: the id, list, address, comment and flags, read from the words; a digest of them
    (the address in RouterOS form); then either nothing more (an own entry exactly as
    desired: taken out of ``_left``, the desired entries not found yet, by ``_place``)
    or a Resource in ``owned`` / ``surplus``, or a reason in ``foreign``.

    Once one row showed the order the router sends a row's properties in, a row that is
    byte for byte what a desired entry would print, its list word included (``_tails``),
    is taken as it is on the wire (``take``): the same digest and the same count,
    without decoding its words.
    """

    def __init__(self, wire: ApiWire, desired: Future[Mapping[str, Mapping[Key, Resource]]],
                 tokens: Sequence[int], tags: Sequence[int], *, router: str,
                 lists: Sequence[str], head: str, classify: Classify, checksum: bool = True) -> None:
        self._router = router
        self._managed = lists
        self._managed_set = frozenset(lists)
        self._classify = classify
        self._wire = wire
        self._head = head
        self._desired = desired
        self._lists: Mapping[str, Mapping[str, Entry]] = {}
        self._shared: _Shared | None = None
        self._left: dict[Place, Entry] = {}
        self._tokens, self._tags = tokens, tags
        self._tag_of: dict[int, bytes] = {}
        self._reading: dict[bytes, int] = {}  # tag -> family, for the prints not answered yet
        self._tails: Mapping[bytes, Place] | None = None  # None: not learnt yet
        self.digest: DigestSum | None = DigestSum() if checksum else None
        self._runs: Mapping[bytes, Callable[[bytes, int], re.Match[bytes] | None]] = {}
        self._first = ""  # the first property of a row after its id, once learnt
        self._batches: dict[bytes, tuple[_Run, _Rows]] = {}  # tag -> its rows' patterns
        self._window = _WINDOW_MIN  # bytes of rows ``_take_batch`` looks at
        self._each = 0  # rows still to take one by one (after a row a batch did not take)
        self.owned: dict[Key, Resource] = {}
        self.foreign: dict[Key, str] = {}
        self.surplus: list[Resource] = []
        self._done: set[int] = set()

    def start(self) -> None:
        """The prints are out: receive their answers until the desired state is known
        (raises if billing failed), then take this router's part of it."""
        self._wire.prefetch(self._desired.done, limit=PREFETCH_BYTES, poll=PREFETCH_POLL)
        want = self._desired.result().get(self._router, {})
        if not isinstance(want, ListEntries):
            want = _as_entries(want)
        self._lists = want.lists
        self._shared = _shared(self._desired, self._lists, self._managed)
        self._left = dict(self._shared.left)
        self._tag_of = {token: str(tag).encode() for token, tag in zip(self._tokens, self._tags)}
        self._reading = {tag: token for token, tag in self._tag_of.items()}

    def reading(self) -> str:
        """The menu whose print was being read (the first not answered yet)."""
        return next((menu_path(fam) for fam in self._tokens if fam not in self._done), "?")

    def answered(self, token: int, answer: Answer) -> None:
        self._done.add(token)
        self._reading.pop(self._tag_of.get(token, b""), None)
        if answer.traps:
            raise TargetError(self._router, f"print {menu_path(token)} refused: {answer.traps[0]}")

    def row(self, token: int, words: Sequence[str]) -> None:
        list_name = ref = raw = comment = ""
        disabled = dynamic = False
        for word in words:
            name, _, value = word[1:].partition("=")
            if name == ".id":
                ref = value
            elif name == "list":
                list_name = value
            elif name == "address":
                raw = value
            elif name == "comment":
                comment = value
            elif name == "disabled":
                disabled = value in _TRUE
            elif name == "dynamic":
                dynamic = value in _TRUE
        if list_name not in self._managed_set:
            return  # not asked for: the query selects the managed lists only
        flag = "true" if disabled else "false"
        own = bool(ref) and not dynamic and comment.startswith(self._head)
        left = self._left
        # A desired address is in RouterOS form already: an own row that prints one
        # needs no parsing.
        place = _place(list_name, raw)
        entry = left.pop(place, None) if own else None
        if entry is not None or is_canonical_v4(raw):
            address = raw
        else:
            address = routeros_form(raw)
            if address != raw:
                place = _place(list_name, address)
                if own:
                    entry = left.pop(place, None)
        if self.digest is not None:
            self.digest.add(f"{ref}\0{list_name}\0{address}\0{comment}\0{flag}\0{dynamic}")
        if entry is not None:
            if (entry[0] == comment and not disabled
                    and (not self.owned or _key(list_name, address) not in self.owned)):
                if self._tails is None:
                    self._learn(words)
                return  # in step: it stays out of ``_left``
            left[place] = entry  # not as desired: compared as owned below
        key, resource, why, _ = self._classify(
            {".id": ref, "address": raw, "comment": comment, "disabled": flag, "dynamic": dynamic},
            list_name)
        if resource is None:
            self.foreign.setdefault(key, why)
            return
        in_step = address in self._lists.get(list_name, ()) and place not in left
        if key in self.owned or in_step:
            self.surplus.append(resource)
        else:
            self.owned[key] = resource

    def _learn(self, words: Sequence[str]) -> None:
        """An own row in step shows the order of a row's properties: from now on, rows
        that are exactly a desired entry in that order are taken undecoded."""
        order = tuple(w[1:].partition("=")[0] for w in words if not w.startswith("=.id="))
        self._tails = {}
        if sorted(order) != _PROPERTIES or self._shared is None:
            return  # another shape: every row is read word by word
        encoding = self._wire.encoding
        self._tails = self._shared.tails(order, self._head, encoding)
        self._wire.rows = self.take
        self._first = order[0]
        self._runs = _row_patterns(order[0], encoding)
        self._wire.run = self.take_run

    def take(self, tag: bytes, ref: bytes, rest: bytes) -> bool:
        """A row as it is on the wire: True when it is a desired entry exactly, in
        step, counted and digested as ``row`` would; False leaves it to ``row``."""
        return tag in self._reading and self._tails is not None and self._taken(ref, rest)

    def _taken(self, ref: bytes, rest: bytes) -> bool:
        """``take`` once the row is known to be one of a print being read (``take_run``
        calls it per row)."""
        assert self._tails is not None
        place = self._tails.get(rest)
        if place is None:
            return False
        left = self._left
        entry = left.pop(place, None)
        if entry is None:
            return False
        if self.owned and _key(*_unplace(place)) in self.owned:
            left[place] = entry
            return False
        if self.digest is not None:  # the item of ``row``: the place is the list, NUL, the address
            self.digest.add(f"{ref.decode(self._wire.encoding, 'ignore')}\0{place}\0{entry[0]}\0false\0False")
        return True

    def take_run(self, buf: bytes, pos: int) -> int:
        """``take`` for every row from ``pos`` on, while they are desired entries exactly:
        where it stopped (the first row it leaves to ``take`` and ``row``, or an
        unfinished sentence).

        A print's rows are all alike: ``!re``, the tag and the id (the tag first or
        last), then the properties in the order ``_learn`` saw, which must be those of
        a desired entry byte for byte, length bytes included. The tag's and the id's
        length bytes need no check: digits, and ``*`` and hex digits, cannot run into
        the next word (``=.id=`` or ``=name=`` after its length byte).

        With nothing to digest and nothing owned so far, a print's rows are taken a
        batch at a time (``_take_batch``); otherwise, and for ``_EACH_AFTER_MISS`` rows
        after a row a batch could not take (such rows come in clusters), one by one."""
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
            if tag not in self._reading:
                return pos
            taken, end = self._take_batch(layout, tag, buf, pos)
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
            if tag not in reading or not take(ref, rest):
                return pos, taken, True
            pos = m.end()
            taken += 1
        return pos, taken, False

    def _take_batch(self, layout: bytes, tag: bytes, buf: bytes, pos: int) -> tuple[int, int | None]:
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
        places: list[Place | None] = list(map(self._tails.get, rests))
        if None in places:  # not a desired entry: the batch ends before it
            places = places[:places.index(None)]
        left = self._left
        pop: Callable[[Place | None, None], Entry | None] = left.pop  # type: ignore[assignment]
        entries = list(map(pop, places, itertools.repeat(None)))  # None: taken already
        if None not in entries:
            if len(entries) == len(rests):
                self._window = min(window * _WINDOW_GROWTH, _WINDOW_MAX)
                return len(entries), end
            return len(entries), None
        # Taken up to the first row whose entry was taken before; the ones after it go
        # back, for ``take`` and ``row`` to see one by one.
        first = entries.index(None)
        for place, entry in zip(places[first + 1:], entries[first + 1:]):
            if entry is not None and place is not None:
                left[place] = entry
        return first, None

    def observed(self) -> Observed:
        steps = ListSteps(self._lists, self._left_by_list())
        existing = {name: n for name in self._managed if (n := steps.count(name))}
        for r in self.owned.values():
            existing[r.group] = existing.get(r.group, 0) + 1
        return Observed(owned=self.owned, foreign=self.foreign, surplus=tuple(self.surplus),
                        checksum=self.digest.hexdigest() if self.digest is not None else "",
                        in_step=steps, existing=existing)

    def _left_by_list(self) -> Mapping[str, Mapping[str, Entry]]:
        """The desired entries not found in step, per managed list (``ListSteps.left``):
        the lists themselves when nothing was found (a cold router's), else those left
        in ``_left`` (a few, on a router in step)."""
        left = self._left
        if self._shared is not None and len(left) == len(self._shared.left):
            return {name: self._lists.get(name, {}) for name in self._managed}
        out: dict[str, dict[str, Entry]] = {name: {} for name in self._managed}
        for place, entry in left.items():
            name, address = _unplace(place)
            out[name][address] = entry
        return out


class _Shared:
    """What every router that reads the same lists of one pass's desired state shares:
    the desired entries by ``_place`` (``ListReader._left`` starts as a copy), and
    ``tails`` per property order. Holds the lists it was made from, so the ``id`` that
    finds it is never another list's."""

    __slots__ = ("lists", "left", "_tails")

    def __init__(self, lists: tuple[Mapping[str, Entry], ...], left: dict[Place, Entry]) -> None:
        self.lists = lists
        self.left = left
        self._tails: dict[tuple[tuple[str, ...], str, str], dict[bytes, Place]] = {}

    def tails(self, order: tuple[str, ...], head: str, encoding: str) -> Mapping[bytes, Place]:
        """``_tails`` of these lists with the properties in ``order``: made once per
        pass for every router reading them."""
        with _SHARED_LOCK:
            found = self._tails.get((order, head, encoding))
            if found is None:
                found = self._tails[order, head, encoding] = _tails(self.left, order, head, encoding)
            return found


_SHARED: weakref.WeakKeyDictionary[Future[Any], dict[tuple[tuple[str, int], ...], _Shared]] = (
    weakref.WeakKeyDictionary())
_SHARED_LOCK = threading.Lock()
_NO_ENTRIES: Mapping[str, Entry] = {}


def _shared(desired: Future[Any], lists: Mapping[str, Mapping[str, Entry]],
            managed: Sequence[str]) -> _Shared:
    """The ``_Shared`` of ``managed`` lists of this pass (``desired``): made by the
    first router that reads them."""
    entries = tuple(lists.get(name, _NO_ENTRIES) for name in managed)
    key = tuple((name, id(e)) for name, e in zip(managed, entries))
    with _SHARED_LOCK:
        made = _SHARED.setdefault(desired, {})
        found = made.get(key)
        if found is None:
            left: dict[Place, Entry] = {}
            for name, e in zip(managed, entries):
                head = f"{name}\0"
                left.update({head + address: entry for address, entry in e.items()})
            found = made[key] = _Shared(entries, left)
        return found


def _tails(entries: Mapping[Place, Entry], order: tuple[str, ...], head: str,
           encoding: str) -> dict[bytes, Place]:
    """``{the words after .id a router prints for an entry exactly as desired: its
    place}`` for ``entries``, with the properties in ``order``: own entries whose words
    are each shorter than 128 bytes (as ``skim`` takes them: one length byte)."""
    fixed = {"dynamic": word("=dynamic=false", encoding), "disabled": word("=disabled=false", encoding)}
    parts = [fixed.get(name, b"") for name in order]
    at_list, at_address, at_comment = order.index("list"), order.index("address"), order.index("comment")
    list_words: dict[str, bytes | None] = {}
    out: dict[bytes, Place] = {}
    for place, (comment, _) in entries.items():
        if not comment.startswith(head):
            continue
        name, address = _unplace(place)
        if name not in list_words:
            n = f"=list={name}".encode(encoding)
            list_words[name] = bytes((len(n),)) + n if len(n) < 0x80 else None
        list_word = list_words[name]
        a = f"=address={address}".encode(encoding)
        c = f"=comment={comment}".encode(encoding)
        if list_word is not None and len(a) < 0x80 and len(c) < 0x80:
            parts[at_list] = list_word
            parts[at_address] = bytes((len(a),)) + a
            parts[at_comment] = bytes((len(c),)) + c
            out[b"".join(parts)] = place
    return out


_Run = Callable[[bytes, int, int], "re.Match[bytes] | None"]
_Rows = Callable[[bytes, int, int], list[bytes]]
# The bytes ``_take_batch`` looks at: a few rows at first, doubling while every row is
# in step, up to some 500 rows (a batch that meets a row out of step has scanned the
# rows after it for nothing). After such a row, ``_EACH_AFTER_MISS`` rows are taken one
# by one before batches start again.
_WINDOW_MIN = 1 << 10
_WINDOW_MAX = 1 << 16
_WINDOW_GROWTH = 2
_EACH_AFTER_MISS = 32


def _batch_patterns(layout: bytes, tag: bytes, first: str, encoding: str) -> tuple[_Run, _Rows]:
    """For the rows of the print tagged ``tag`` laid out as ``layout`` says (the key of
    ``_row_patterns``): a match of a run of them, and a ``findall`` of their property
    words (as ``_row_patterns``' group ``rest``). The tag word is written out, its
    length byte too, so a row of another print ends the run."""
    tag_word = re.escape(word(f".tag={tag.decode()}", encoding))
    ref = rb"[\x06-\x7f]=\.id=\*[0-9A-Fa-f]+"
    rest = rb"[\x01-\x7f]" + re.escape(f"={first}=".encode(encoding)) + rb"[^\x00]*"
    if layout == b".tag=":
        row = (rb"\x03!re" + tag_word + ref + b"(", rest + rb")\x00")
    else:
        row = (rb"\x03!re" + ref + b"(", rest + b")" + tag_word + rb"\x00")
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


def _place(list_name: str, address: str) -> Place:
    return f"{list_name}\0{address}"


def _unplace(place: Place) -> tuple[str, str]:
    """(list, address) of a ``_place`` (an address has no NUL; a list name might)."""
    name, _, address = place.rpartition("\0")
    return name, address


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


