"""A bounded window of tagged RouterOS API commands over one session.

RouterOS lets a client send commands without waiting for the answers: replies to
several commands interleave, each marked with the ``.tag`` its command carried.
librouteros sends one command and waits for its ``!done``; ``target`` and ``writer``
hand this module their commands instead, each with a token of its own (the Changes a
command carries), and a ``Wire`` (``wire.ApiWire``: librouteros's codec and the
session's transport). This module adds only the tags and the window. Every reply is
routed back to its token by tag: rows to ``on_row``, traps and ``!done`` to
``on_answer`` once the command is finished, so a ``!trap`` is always attributed to the
command that caused it. Runs of plain ``!done`` come from the wire at once
(``Wire.read_dones``), each as reading it word by word would give it.

A lost connection (an exception from the wire) ends the run with that exception; the
caller knows which tokens were answered and fails the rest. The wire is a Protocol,
so this module imports no librouteros and is tested without it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Wire(Protocol):
    """One logged-in API session, at the level of sentences."""

    def encode(self, words: Sequence[str]) -> bytes:
        """One sentence on the wire (librouteros's encoder)."""
        ...

    def send(self, data: bytes) -> None: ...

    def read_sentence(self) -> Sequence[str]:
        """The next reply sentence, reply word first; raises when the connection is lost."""
        ...

    def read_dones(self, most: int) -> Sequence[tuple[bytes, str]]:
        """Waits for a reply, then takes the run of plain ``!done`` replies next in the
        buffer (``.tag=`` digits and maybe ``=ret=``, nothing else, wholly received), at
        most ``most``, as (tag, ret), as ``read_sentence`` would read them; empty when
        the next reply is anything else, which ``read_sentence`` then reads."""
        ...

    def buffered(self) -> int:
        """Bytes received and not yet read: >0 means the next read will not wait."""
        ...


class UnexpectedReply(Exception):
    """A reply without a tag, or with a tag that is not in flight: the stream is unusable."""


@dataclass(slots=True)
class Answer:
    """How one command ended: ``!done``'s ``=ret=`` and the message of every ``!trap``."""

    ret: str = ""
    traps: tuple[str, ...] = ()


def run(
    wire: Wire,
    commands: Iterable[tuple[T, Sequence[str] | bytes]],
    *,
    window: int,
    on_answer: Callable[[T, Answer], None],
    on_row: Callable[[T, Sequence[str]], None] | None = None,
    stop: threading.Event | None = None,
    before_reading: Callable[[], None] | None = None,
    tags: Iterator[int] | None = None,
    gate: Callable[[], bool] | None = None,
) -> bool:
    """Send ``commands`` (token, words) with at most ``window`` unanswered at once.
    True when ``gate`` stopped it (False: every command was sent).

    A command's words may come encoded already (``bytes``: every word, no end of
    sentence), as a caller that sends thousands alike makes them; its tag is added here.

    ``on_answer(token, answer)`` is called once per command, when its ``!done``
    arrives; ``on_row(token, words)`` for every ``!re`` of it (attribute words only).
    ``stop`` set: no new command is sent; those in flight are still answered.
    ``before_reading()`` is called once, after the first window went out and before
    the first reply is read (the router works meanwhile).
    ``tags``: where the ``.tag`` numbers come from; a caller that keeps a session
    across runs passes one counter for it, so no tag is ever used twice on it and a
    reply left over from an earlier run is an ``UnexpectedReply``, never an answer.
    ``gate()`` is asked before the first command and again once a window's worth has
    gone out since it was last asked: false sends nothing more (those in flight are
    still answered), so at most one window follows the moment it turned false.
    """
    pending = iter(commands)
    inflight: dict[bytes, T] = {}  # tag (as sent: ASCII digits) -> token
    trapped: dict[bytes, list[str]] = {}  # the traps of commands in flight, few
    outgoing: list[bytes] = []
    serial = tags if tags is not None else itertools.count()
    encode, read_sentence, read_dones, buffered = wire.encode, wire.read_sentence, wire.read_dones, wire.buffered
    exhausted = gated = False
    unasked = window  # commands sent since ``gate`` was last asked (ask before the first)
    while True:
        room = 0 if exhausted else window - len(inflight)
        if room > 0 and gate is not None and unasked >= window:
            unasked = 0
            if not gate():
                exhausted = gated = True
                room = 0
        if room > 0:
            unasked += room
            if stop is not None and stop.is_set():
                exhausted = True
            else:
                for token, words in itertools.islice(pending, room):
                    room -= 1
                    tag = b"%d" % next(serial)
                    if not isinstance(words, bytes):
                        outgoing.append(encode((*words, ".tag=" + tag.decode())))
                    elif len(tag) < 0x7B:
                        # The tag word with its one-byte length, as librouteros encodes it.
                        outgoing.append(b"%b%c.tag=%b\x00" % (words, len(tag) + 5, tag))
                    else:
                        outgoing.append(words + encode((".tag=" + tag.decode(),)))
                    inflight[tag] = token
                exhausted = room > 0
        if outgoing and buffered() == 0:
            # About to wait for replies: send everything queued in one write. While
            # replies are already buffered, keep reading them first and batch the refill.
            wire.send(b"".join(outgoing))
            outgoing.clear()
        if not inflight:
            return gated
        if before_reading is not None:
            before_reading()
            before_reading = None
        # At most one answer per command in flight: past that, reading word by word
        # would have stopped (every command answered), and the rest stays unread.
        dones = read_dones(len(inflight))
        if dones:
            for tag, ret in dones:
                token = inflight.pop(tag, _NOT_IN_FLIGHT)
                if token is _NOT_IN_FLIGHT:
                    raise UnexpectedReply(f"!done for tag {tag.decode()}, which is not in flight")
                traps = trapped.pop(tag, None) if trapped else None
                on_answer(token, Answer(ret, tuple(traps)) if traps else Answer(ret))
            continue
        sentence = read_sentence()
        kind, text = sentence[0], ""
        rest: list[str] = []
        for word in sentence[1:]:
            if word[:1] == "=":
                rest.append(word)
            elif word.startswith(".tag=") and not text:
                text = word[5:]
            else:
                raise UnexpectedReply(f"{kind} carries a word that is no attribute: {word[:40]!r}")
        tag = text.encode()
        if tag not in inflight:
            raise UnexpectedReply(f"{kind} for tag {text or '(none)'}, which is not in flight")
        if kind == "!done":
            traps = trapped.pop(tag, None)
            on_answer(inflight.pop(tag), Answer(_attr(rest, "=ret="), tuple(traps) if traps else ()))
        elif kind == "!re":
            if on_row is not None:
                on_row(inflight[tag], rest)
        elif kind == "!trap":
            trapped.setdefault(tag, []).append(_attr(rest, "=message=") or "unknown error")
        # !empty (7.18+, a print with no rows) carries nothing.


_NOT_IN_FLIGHT: Any = object()


def _attr(words: Sequence[str], head: str) -> str:
    """The value of the first ``head`` word (``=name=``)."""
    for word in words:
        if word.startswith(head):
            return word[len(head):]
    return ""
