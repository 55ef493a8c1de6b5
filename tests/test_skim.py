"""``BufferedTransport.skim``: a row taken undecoded is exactly the sentence reading it
word by word gives, and one it does not take is left where it was.

Sentences of any shape (the tag and the id anywhere, extra words, NUL bytes and long
words in values, other reply words) are offered to a ``take`` that accepts the rest
words it was told to expect (those of the sentence, or others); whatever ``skim`` did,
reading on from there with ``read_sentence`` must give back every sentence in order.
"""

from __future__ import annotations

import itertools
from hypothesis import given, settings
from hypothesis import strategies as st
from librouteros.protocol import encode_sentence, encode_word

from provisiond.targets.routeros import BufferedTransport
from provisiond.targets.routeros.reader import _WINDOW_MIN, ListReader, _key, _row_patterns
from provisiond.targets.routeros.reader import _place as place_of


class _Bytes:
    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk, self.at = data, chunk, 0

    def recv(self, n: int) -> bytes:
        out = self.data[self.at:self.at + min(n, self.chunk)]
        self.at += len(out)
        return out


values = st.one_of(st.sampled_from(["false", "true", "10.0.0.1", "provisiond:1 A", "", "a\x00b", "x" * 140]),
                   st.text(max_size=8))
attr = st.builds(lambda n, v: f"={n}={v}", st.sampled_from(["address", "comment", "dynamic", "disabled", "x"]), values)
sentence = st.builds(
    lambda kind, tag, ref, attrs, at_tag, at_ref: _place(kind, attrs, [(at_tag, f".tag={tag}"), (at_ref, f"=.id={ref}")]),
    st.sampled_from(["!re"] * 6 + ["!done", "!trap"]), st.sampled_from(["7", "12", "7", ""]),
    st.sampled_from(["*1", "*A0", "*1", ""]), st.lists(attr, max_size=5), st.sampled_from([0, 0, 1, 2, 6]), st.sampled_from([0, 0, 1, 2, 6]))


def _place(kind: str, attrs: list[str], extra: list[tuple[int, str]]) -> list[str]:
    words = list(attrs)
    for at, word in extra:
        words.insert(min(at, len(words)), word)
    return [kind, *words]


@settings(max_examples=400, deadline=None)
@given(st.lists(sentence, min_size=1, max_size=6), st.integers(1, 64), st.data())
def test_a_skimmed_row_is_the_sentence_read_word_by_word(
        sentences: list[list[str]], chunk: int, data: st.DataObject) -> None:
    wire = b"".join(encode_sentence(*s, encoding="utf-8") for s in sentences)
    sock = _Bytes(wire, chunk)
    t = BufferedTransport(sock)  # type: ignore[arg-type]
    got: list[list[str]] = []
    for s in sentences:
        rest_words = [w for w in s[1:] if not w.startswith((".tag=", "=.id="))]
        expected = b"".join(encode_word(w, encoding="utf-8") for w in rest_words)
        accepted = data.draw(st.sampled_from([expected, expected, b"\x01=", b""]))
        taken: list[tuple[bytes, bytes, bytes]] = []

        def take(tag: bytes, ref: bytes, rest: bytes) -> bool:
            taken.append((tag, ref, rest))
            return rest == accepted

        # What the reader has buffered: some of the reply, often all of this sentence.
        left = len(wire) - sock.at + t.buffered()
        t._fill(min(left, data.draw(st.integers(1, len(encode_sentence(*s, encoding="utf-8")) + 3))))
        if t.skim(take):
            tag, ref, rest = taken[-1]
            assert rest == expected and s[0] == "!re"
            assert [w for w in s if w.startswith(".tag=")] == [".tag=" + tag.decode()]
            assert [w for w in s if w.startswith("=.id=")] == ["=.id=" + ref.decode()]
            got.append(s)
        else:
            got.append(t.read_sentence("utf-8"))
    assert got == sentences


class _Wire:
    encoding = "utf-8"


ids = st.one_of(st.sampled_from(["*1", "*A0", "*1F", "*"]), st.text("0123456789ABCDEFG*", min_size=1, max_size=70))
row = st.builds(
    lambda tag, ref, attrs, at_tag, at_ref: _place("!re", attrs, [(at_tag, f".tag={tag}"), (at_ref, f"=.id={ref}")]),
    st.sampled_from(["7", "12", "7", "3", "77777777777777777777777777777777777777777777777"]), ids,
    st.lists(st.builds(lambda n, v: f"={n}={v}", st.sampled_from(["address", "comment", "x"]), values),
             min_size=1, max_size=4),
    st.sampled_from([0, 0, 9, 9, 1]), st.sampled_from([0, 0, 1, 2]))


def _listed(i: int) -> tuple[str, str]:
    """The (list, address) of the i-th wanted rest: two lists, one address in both."""
    return ("l" if i % 2 else "m", f"a{i // 2}")


def _placed(i: int) -> str:
    return place_of(*_listed(i))


def _reader(wanted: set[bytes], *, window: int, one_by_one: bool, each: int = 0) -> ListReader:
    reader = object.__new__(ListReader)
    reader._wire = _Wire()  # type: ignore[assignment]
    # Two prints being read (one per family): any of their rows may be any list's.
    reader._reading = {b"7": 4, b"12": 6, b"77777777777777777777777777777777777777777777777": 4}
    reader._tails = {rest: _placed(i) for i, rest in enumerate(sorted(wanted))}
    reader._left = {_placed(i): ("c", None) for i in range(len(wanted))}  # type: ignore[misc]
    # Something owned already (another list's entry): rows are taken one by one.
    reader.owned = {_key("other", "a0"): None} if one_by_one else {}  # type: ignore[dict-item]
    reader.digest = None
    reader._first = "address"
    reader._batches = {}
    reader._window = window
    reader._each = each  # rows still to take one by one before batches
    reader._runs = _row_patterns("address", "utf-8")
    return reader


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(row, row, row, sentence), min_size=1, max_size=8), st.data())
def test_rows_taken_in_a_run_are_desired_rows_read_word_by_word(sentences: list[list[str]],
                                                               data: st.DataObject) -> None:
    """``take_run`` takes whole sentences only, each a ``!re`` of one tag of a print being
    read, one id and exactly the property words of a desired entry (each taken once);
    reading on from where it stopped gives back the rest of the sentences in order.
    Taken a batch at a time (any window) or one by one, it stops at the same row and
    leaves the same entries waiting."""
    wire = b"".join(encode_sentence(*s, encoding="utf-8") for s in sentences)
    rests = [b"".join(encode_word(w, encoding="utf-8") for w in s[1:]
                      if not w.startswith((".tag=", "=.id="))) for s in sentences]
    wanted = data.draw(st.sets(st.sampled_from(rests)))
    window = data.draw(st.sampled_from([_WINDOW_MIN, 1, 24, 60, 200]))
    reader = _reader(wanted, window=window, one_by_one=False, each=data.draw(st.sampled_from([0, 0, 1, 3])))
    end = reader.take_run(wire, 0)
    one_by_one = _reader(wanted, window=window, one_by_one=True)
    assert one_by_one.take_run(wire, 0) == end
    assert one_by_one._left == reader._left
    # It stops where a sentence starts (where reading on word by word starts).
    offsets = list(itertools.accumulate((len(encode_sentence(*s, encoding="utf-8")) for s in sentences), initial=0))
    assert end in offsets
    taken = sentences[:offsets.index(end)]
    seen = set()
    for s, rest in zip(taken, rests):
        assert s[0] == "!re" and rest in wanted and rest not in seen
        seen.add(rest)
        assert [w for w in s if w.startswith(".tag=")] in ([".tag=7"], [".tag=12"], [".tag=" + "7" * 47])
        assert len([w for w in s if w.startswith("=.id=")]) == 1
    # What is left is as it was: every desired rest not taken is still waiting.
    names = {rest: _placed(i) for i, rest in enumerate(sorted(wanted))}
    assert set(reader._left) == {names[r] for r in wanted - seen}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["7", "7", "7", "12"])), min_size=1, max_size=12),
       st.sets(st.integers(0, 5)), st.booleans(), st.sampled_from([_WINDOW_MIN, 1, 60, 120]),
       st.sampled_from([0, 0, 1, 2, 5]), st.one_of(st.none(), st.integers(0, 600)))
def test_a_batch_of_one_print_takes_what_rows_one_by_one_take(
        rows: list[tuple[int, str]], wanted: set[int], tag_last: bool, window: int, each: int,
        cut: int | None) -> None:
    """Rows of a print as a router sends them, the lists interleaved (one address in
    two lists is two entries), some desired, some not, some twice, the last maybe not
    all received: a batch stops at the first row one by one would not take (or the
    first not whole) and leaves every entry after it waiting, whatever the window."""
    def words(i: int) -> tuple[str, ...]:
        name, address = _listed(i)
        return (f"=list={name}", f"=address={address}", "=comment=c", "=disabled=false", "=dynamic=false")

    def rest(i: int) -> bytes:
        return b"".join(encode_word(w, encoding="utf-8") for w in words(i))

    def sentence(n: int, i: int, tag: str) -> bytes:
        sent = ["!re", f"=.id=*{n:X}", *words(i)]
        sent.insert(len(sent) if tag_last else 1, f".tag={tag}")
        return encode_sentence(*sent, encoding="utf-8")

    wire = b"".join(sentence(n, i, tag) for n, (i, tag) in enumerate(rows))[:cut]
    wanted_rests = {rest(i) for i in wanted}
    batch = _reader(wanted_rests, window=window, one_by_one=False, each=each)
    one = _reader(wanted_rests, window=window, one_by_one=True)
    batch._first = one._first = "list"
    batch._runs = one._runs = _row_patterns("list", "utf-8")
    end = batch.take_run(wire, 0)
    assert one.take_run(wire, 0) == end
    assert batch._left == one._left
    # One by one, rows are taken up to the first not desired or seen before.
    seen: set[int] = set()
    expected = 0
    for n, (i, tag) in enumerate(rows):
        if i not in wanted or i in seen or expected + len(sentence(n, i, tag)) > len(wire):
            break
        seen.add(i)
        expected += len(sentence(n, i, tag))
    assert end == expected
