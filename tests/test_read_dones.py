"""``BufferedTransport.read_dones``: the pipeline's answers are those reading every reply
word by word gives.

A random reply stream for a window of tagged commands (each command's ``!re`` rows,
``!trap``s and ``!empty`` and then its ``!done``, with or without ``=ret=``, the tag first,
last or between; the commands' replies interleaved, then answers for a later run), with odd sentences put in (a tag not
in flight or not digits, a second tag, no tag, another word, a word of 128 bytes or
more, a NUL or a non-ASCII character in ``=ret=``, a word whose length byte is a digit, sent as UTF-8 or as bytes that are no
UTF-8, ``!fatal``), is cut into random chunks. The
pipeline reads it once with the fast path and once with ``read_sentence`` alone (cut
into other chunks): the same answers (token, ret, traps) in the same order, the same
rows, and the same error where the stream ends or goes wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from librouteros.protocol import encode_sentence

from provisiond.targets.routeros import pipeline
from provisiond.targets.routeros import ApiWire, BufferedTransport

ENCODING = "utf-8"


class _Socket:
    """The router's side: the replies in the given chunks; what is sent is dropped."""

    def __init__(self, data: bytes, cuts: Sequence[int]) -> None:
        self.data, self.cuts, self.at = data, list(cuts), 0

    def recv(self, n: int) -> bytes:
        size = self.cuts.pop(0) if self.cuts else 64
        out = self.data[self.at:self.at + min(n, size)]
        self.at += len(out)
        return out

    def sendall(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _WordByWord(ApiWire):
    """The general path only: every reply through ``read_sentence``."""

    def read_dones(self, most: int) -> Sequence[tuple[bytes, str]]:
        return ()


def _wire(data: bytes, cuts: Sequence[int], fast: bool) -> ApiWire:
    transport = BufferedTransport(_Socket(data, cuts))  # type: ignore[arg-type]
    protocol = SimpleNamespace(transport=transport, encoding=ENCODING, close=lambda: None)
    return (ApiWire if fast else _WordByWord)(SimpleNamespace(protocol=protocol))


def _outcome(data: bytes, cuts: Sequence[int], commands: int, fast: bool) -> tuple[Any, ...]:
    """What the pipeline hands on, reading ``data`` in ``cuts`` after sending ``commands``
    adds tagged 100, 101, ..., and how it ended."""
    got: list[tuple[Any, ...]] = []
    wire = _wire(data, cuts, fast)
    try:
        pipeline.run(wire, [(i, b"\x04/add") for i in range(commands)], window=commands,
                     on_answer=lambda token, answer: got.append(("answer", token, answer.ret, answer.traps)),
                     on_row=lambda token, words: got.append(("row", token, tuple(words))),
                     tags=iter(range(100, 100 + commands)))
        end = "returned"
    except Exception as exc:  # noqa: BLE001 - compared below, whatever it is
        end = f"{type(exc).__name__}: {exc}"
    # Where reading stopped, when it ended well (after an error the connection is dropped).
    read = wire._transport.sock.at - wire.buffered() if end == "returned" else None
    return tuple(got), end, read


RET = st.sampled_from([None, None, "*1A", "*1", "", "*ABCDEF12", "123", "a=b",
                       "*" + "A" * 130, "*1\x00x", "*\u00e9", ".tag=7"])
MESSAGE = st.sampled_from(["failure: already have such entry", "no such item (4)", "x" * 140, ""])


def _place(kind: str, words: list[str], tag: str | None, at: int) -> list[str]:
    if tag is not None:
        words.insert(min(at, len(words)), f".tag={tag}")
    return [kind, *words]


@st.composite
def _replies(draw: st.DrawFn, tag: str) -> list[list[str]]:
    """One command's replies: rows, traps, ``!empty``, then ``!done``."""
    out = []
    for kind in draw(st.lists(st.sampled_from(["!re", "!trap", "!empty"]), max_size=2)):
        words = {"!re": [f"=address=10.0.0.{draw(st.integers(0, 255))}"],
                 "!trap": [f"=message={draw(MESSAGE)}"] + draw(st.sampled_from([[], ["=category=1"]])),
                 "!empty": []}[kind]
        out.append(_place(kind, words, tag, draw(st.sampled_from([0, 0, 9]))))
    ret = draw(RET)
    words = [] if ret is None else [f"=ret={ret}"]
    words += draw(st.sampled_from([[]] * 3 + [["=foo=bar"], ["=message=m"]]))  # ignored, as librouteros does
    # The tag with a character that, sent as Latin-1, is no UTF-8: read as the tag.
    spelt = draw(st.sampled_from([tag] * 4 + [tag[:2] + "\u00e9" + tag[2:]]))
    out.append(_place("!done", words, spelt, draw(st.sampled_from([0, 0, 1, 9]))))
    return out


ODD = st.one_of(
    st.builds(lambda tag, ret, at: _place("!done", [] if ret is None else [f"=ret={ret}"], tag, at),
              st.sampled_from(["99", "007", "1x", "", "\u00e9", "10\u00e90", "1" * 130, None]), RET, st.sampled_from([0, 9])),
    st.sampled_from([["!done", ".tag=100", ".tag=101"], ["!done", ".tag=100", "=ret=*1", "=foo=bar"],
                     ["!done", "=foo=bar", ".tag=100"], ["!done", ".tag=100", "junk"], ["!done"],
                     ["!fatal", "session terminated on request"], ["!re", ".tag=101", "=.id=*5"],
                     ["!done", ".tag=100", "=ret=*1", "=ret=*2"], ["!done", ".tag=100", "=foo=bar"],
                     # A word whose length byte is a digit, after a tag it would lengthen.
                     ["!done", ".tag=10", "\x00" + "x" * 47], ["!done", "=ret=*1", ".tag=10", "\x00" + "x" * 47]]),
)


@settings(max_examples=500, deadline=None)
@given(st.data(), st.integers(1, 6))
def test_the_fast_path_answers_as_reading_every_word_does(data: st.DataObject, commands: int) -> None:
    per_command = [data.draw(_replies(str(100 + i))) for i in range(commands)]
    sentences: list[list[str]] = []
    while any(per_command):  # the commands' replies interleaved, each in its order
        i = data.draw(st.sampled_from([i for i, left in enumerate(per_command) if left]))
        sentences.append(per_command[i].pop(0))
    for _ in range(data.draw(st.integers(0, 2))):
        sentences.insert(data.draw(st.integers(0, len(sentences))), data.draw(ODD))
    # Answers after the last: for a later run on the session, never read by this one.
    sentences += data.draw(st.lists(st.builds(lambda tag, ret: ["!done", f".tag={tag}", f"=ret={ret}"],
                                              st.sampled_from(["99", "100", "106"]), st.sampled_from(["*9", ""])),
                                    max_size=2))
    # Sent as UTF-8, or as Latin-1: then a non-ASCII byte is no UTF-8 and is dropped.
    sent_as = data.draw(st.sampled_from([ENCODING, ENCODING, "latin-1"]))
    stream = b"".join(encode_sentence(*s, encoding=sent_as) for s in sentences)
    cuts = st.lists(st.integers(1, 80), max_size=40)
    fast = _outcome(stream, data.draw(cuts), commands, fast=True)
    slow = _outcome(stream, data.draw(cuts), commands, fast=False)
    assert fast == slow


@pytest.mark.parametrize("sent_as", [ENCODING, "latin-1"])
@pytest.mark.parametrize("odd", [
    ["!done", ".tag=10\u00e90", "=ret=*1"],  # no UTF-8 when sent as Latin-1: reads as tag 100
    ["!done", ".tag=100", "=foo=bar"],  # a word librouteros ignores: no ret
    ["!done", ".tag=10", "\x00" + "x" * 47],  # a length byte that is a digit
    ["!done", ".tag=100", "=ret=*\u00e9"],
    ["!done", "=ret=" + "A" * 130, ".tag=100"],
])
def test_odd_answers_are_read_as_word_by_word(odd: list[str], sent_as: str) -> None:
    sentences = [["!done", ".tag=101", "=ret=*2"], odd, ["!done", "=ret=*3", ".tag=100"], ["!done", ".tag=99"]]
    stream = b"".join(encode_sentence(*s, encoding=sent_as) for s in sentences)
    assert _outcome(stream, [len(stream)], 2, fast=True) == _outcome(stream, [7], 2, fast=False)


def test_a_run_of_plain_answers_is_taken_at_once_tag_first_or_last() -> None:
    """The fast path is taken: a buffered run of ``!done`` (tag first, or ``=ret=`` first)
    comes out of one ``read_dones``, up to the first reply it leaves to ``read_sentence``."""
    sentences = [["!done", ".tag=1", "=ret=*1"], ["!done", "=ret=*2", ".tag=2"], ["!done", ".tag=3"],
                 ["!trap", ".tag=4", "=message=m"], ["!done", ".tag=4"]]
    stream = b"".join(encode_sentence(*s, encoding=ENCODING) for s in sentences)
    wire = _wire(stream, [len(stream)], fast=True)
    assert list(wire.read_dones(2)) == [(b"1", "*1"), (b"2", "*2")]
    assert list(wire.read_dones(9)) == [(b"3", "")]
    assert list(wire.read_dones(9)) == []
    assert list(wire.read_sentence()) == ["!trap", ".tag=4", "=message=m"]
    assert list(wire.read_dones(9)) == [(b"4", "")]
    assert wire.buffered() == 0
