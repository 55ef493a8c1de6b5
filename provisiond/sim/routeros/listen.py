"""Streams of address-list changes: ``listen`` and ``print =follow=``/``=follow-only=``.

``session`` opens a ``Listener`` for such a command (under the state lock,
in the same hold as a follow's first rows) and registers it in the router's
``Listeners``; from then on every change an ``AddressTable`` reports to its
observer (an add, a set/enable/disable/comment/unset that changed the entry,
a remove, an expiry) becomes one ``!re`` per listener whose query selects the
entry, handed to the listener's connection through ``deliver`` (the server's
outbox for that connection). A listener is born *pending*: it buffers until
its command's own reply (a follow's rows) is queued, then ``arm`` flushes it,
so an event never overtakes the rows it follows. ``/cancel`` or the
connection's end unregisters it.

While a command runs, its events are held and released with the time the
router finishes it (``load.RouterCpu``), so a listener hears of a change no
sooner than its writer does.

A change row has the shape of a print row (``.proplist`` narrows it); a
removal is ``!re =.id=*X =.dead=yes`` (``true`` from v7; ``SimSettings.dead_value``)
and nothing else. Choices where ../shared/ROUTEROS.md has no observation ([inf]):

* the query is tested on the entry as it is after the change, so an entry
  moved out of a scoped listen's lists by ``set`` is not reported to it;
  a removal reaches the listens whose query selected the entry as it was
  (``SimSettings.dead_to_all_listeners``: every listen of the menu);
* an expiry is a removal and is reported (``SimSettings.report_expiry``: not at all);
* a computed field's change (``timeout`` counting down) is never reported;
* a follow or listen that has nothing to say sends no ``!empty``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .addresslist import AddressTable
from .entry import Entry
from .query import Query

Sentence = tuple[str, ...]
Sentences = tuple[Sentence, ...]
#: Hands sentences to a connection: (sentences, monotonic time they may leave; 0: now).
Deliver = Callable[[Sentences, float], None]
Frame = Callable[..., Sentence]  # (kind, tag, *words) -> a tagged sentence


@dataclass(frozen=True, slots=True)
class Watch:
    """What a command wants streamed: ``menu`` (``ip``/``ipv6``), its query, its proplist."""

    menu: str
    query: Query
    proplist: tuple[str, ...] | None


class Listener:
    """One open listen/follow on one connection."""

    def __init__(self, watch: Watch, *, tag: str | None, frame: Frame, deliver: Deliver,
                 lock: threading.RLock) -> None:
        self.watch = watch
        self.tag = tag
        self._frame = frame
        self._deliver = deliver
        self._lock = lock
        self._pending: list[tuple[Sentence, float]] | None = []

    def offer(self, words: Sentence, ready: float) -> None:
        """One ``!re`` (untagged ``words``); the caller holds the state lock."""
        sentence = self._frame("!re", self.tag, *words)
        if self._pending is not None:
            self._pending.append((sentence, ready))
        else:
            self._deliver((sentence,), ready)

    def arm(self) -> None:
        """The command's own reply is queued: send what was held, then stream directly."""
        with self._lock:
            pending, self._pending = self._pending, None
            for sentence, ready in pending or ():
                self._deliver((sentence,), ready)

    def row(self, row: Mapping[str, str]) -> Sentence:
        keys = self.watch.proplist
        if keys is None:
            return tuple(f"={k}={v}" for k, v in row.items())
        return tuple(f"={k}={row[k]}" for k in keys if k in row)


class Listeners:
    """Every open listener of one router, by menu; the caller holds the state lock."""

    def __init__(self, *, dead_value: str, report_expiry: bool, dead_to_all: bool,
                 count: Callable[[str, int], None]) -> None:
        self._by_menu: dict[str, list[Listener]] = {}
        self._dead_value = dead_value
        self._report_expiry = report_expiry
        self._dead_to_all = dead_to_all
        self._count = count
        self._held: list[tuple[Listener, Sentence]] | None = None

    def add(self, listener: Listener) -> None:
        self._by_menu.setdefault(listener.watch.menu, []).append(listener)

    def discard(self, listener: Listener) -> None:
        menu = self._by_menu.get(listener.watch.menu, [])
        if listener in menu:
            menu.remove(listener)

    def clear(self) -> None:
        self._by_menu.clear()

    def listening(self, menu: str) -> bool:
        return bool(self._by_menu.get(menu))

    def __len__(self) -> int:
        return sum(map(len, self._by_menu.values()))

    def hold(self) -> None:
        """A command starts: keep its events until ``release``."""
        self._held = []

    def release(self, ready: float) -> None:
        held, self._held = self._held, None
        for listener, words in held or ():
            listener.offer(words, ready)

    def changed(self, menu: str, table: AddressTable, old: Entry | None, new: Entry | None,
                *, expired: bool) -> None:
        """An entry of ``menu``'s ``table`` changed from ``old`` to ``new`` (None: absent)."""
        listeners = self._by_menu.get(menu)
        if not listeners:
            return
        out: list[tuple[Listener, Sentence]] = []
        if new is None:
            if expired and not self._report_expiry:
                return
            assert old is not None
            dead = (f"=.id={old.id_text}", f"=.dead={self._dead_value}")
            before = table.view(old)
            out = [(listener, dead) for listener in listeners
                   if self._dead_to_all or listener.watch.query.matches(before)]
        else:
            after = table.view(new)
            for listener in listeners:
                if listener.watch.query.matches(after):
                    out.append((listener, listener.row(after.rendered())))
        if not out:
            return
        self._count(menu, len(out))
        if self._held is not None:
            self._held.extend(out)
            return
        for listener, words in out:
            listener.offer(words, 0.0)

