"""A test's faults on a ``RouterSim``: cut or stall a connection at one exact sentence,
rewrite one reply, hold every reply.

``RouterSim`` holds one ``FaultHooks``; a ``connection.Connection`` asks it, for every
non-empty sentence received on any connection (login included), what to do with that
sentence before its session runs it (``for_sentence``), and waits on its stall gate
before sending any reply. Sentences are numbered from the router's start, so a test can
break one apply at an exact point (``cut_after``, ``stall_after``) or watch them arrive
(``on_sentence``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

Sentences = tuple[tuple[str, ...], ...]
Rewrite = Callable[[Sentences], Sentences]
Observer = Callable[[int, list[str]], None]


@dataclass(frozen=True, slots=True)
class SentenceFaults:
    """What happens to one received sentence."""

    #: None: nothing; False: close the connection before running it; True: after running it.
    cut: bool | None = None
    #: None: nothing; False: hold its whole reply (and every later one); True: send half first.
    stall: bool | None = None
    #: Passes its reply's sentences through this before they are sent.
    rewrite: Rewrite | None = None


_NONE = SentenceFaults()


class FaultHooks:
    """Faults a test asked for, by sentence number; thread-safe."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._received = 0
        self._cuts: dict[int, bool] = {}  # -> run the command before cutting?
        self._stalls: dict[int, bool] = {}  # -> send half of the reply before stalling?
        self._rewrites: list[tuple[str, Rewrite]] = []
        self._observer: Observer | None = None
        self._unstalled = threading.Event()
        self._unstalled.set()

    def cut_after(self, n: int, *, run: bool = False) -> None:
        """The ``n``-th sentence received from now on (1 = the next one, on any
        connection; 0 = the one an ``on_sentence`` observer is looking at) is the last
        on its connection: it is closed without an answer.
        ``run`` runs the command first, as when the reply is lost on its way back."""
        with self._guard:
            self._cuts[self._received + n] = run

    def stall_after(self, n: int, *, half: bool = False) -> None:
        """The reply to the ``n``-th sentence from now on is held until
        ``set_stalled(False)``; ``half`` sends the first half of its bytes first.
        Takes effect by stalling the whole router (every later reply waits too)."""
        with self._guard:
            self._stalls[self._received + n] = half

    def rewrite_next(self, command_path: str, rewrite: Rewrite) -> None:
        """The next reply to ``command_path`` passes through ``rewrite`` (sentences in,
        sentences out) before it is sent; a ``!fatal`` among them closes the connection
        after sending, as RouterOS does."""
        with self._guard:
            self._rewrites.append((command_path, rewrite))

    def on_sentence(self, observer: Observer | None) -> None:
        """Call ``observer(number, words)`` for every sentence received, before it runs
        (number counts from the router's start); it may call ``cut_after(0)`` or
        ``stall_after(0)`` to break that very sentence."""
        with self._guard:
            self._observer = observer

    @property
    def received(self) -> int:
        with self._guard:
            return self._received

    def set_stalled(self, stalled: bool) -> None:
        """Stalled: every reply is held until un-stalled."""
        if stalled:
            self._unstalled.clear()
        else:
            self._unstalled.set()

    def wait_unstalled(self) -> None:
        self._unstalled.wait()

    def for_sentence(self, words: list[str]) -> SentenceFaults:
        """Count a received sentence (an empty one is not counted) and say what to do with it."""
        if not words:
            return _NONE
        with self._guard:
            self._received += 1
            number, observer = self._received, self._observer
        if observer is not None:  # outside the lock: it may call cut_after(0) and the like
            observer(number, words)
        with self._guard:
            cut = self._cuts.pop(number, None)
            stall = self._stalls.pop(number, None)
            rewrite = None
            for index, (path, fn) in enumerate(self._rewrites):
                if path == words[0]:
                    rewrite = fn
                    del self._rewrites[index]
                    break
        if cut is None and stall is None and rewrite is None:
            return _NONE
        return SentenceFaults(cut, stall, rewrite)
