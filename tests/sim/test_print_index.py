"""A print answered from the address table's indexes selects exactly what testing every
row with the boolean stack machine selects, in the same order: on random tables (built
and changed through add/set/unset/remove, duplicates and list moves included) and on
random queries, both of the shapes the indexes answer (a scoped pass's OR of comment
ranges and addresses, ``?list=`` with an address) and of any other shape (a full scan)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from provisiond.sim.routeros.address import normalise_address
from provisiond.sim.routeros.addresslist import AddressTable, TableOptions
from provisiond.sim.routeros.errors import Trap
from provisiond.sim.routeros.query import Eq, QueryError, Range, compile_query

LISTS = ("a", "b", "10", "blk")
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.0/24", "10.0.0.3/32", "192.0.2.7", "10.0.0.10")
ACCOUNTS = ("1", "10", "104", "2", "1042")
COMMENTS = (
    *(f"provisiond:{a}" for a in ACCOUNTS),
    *(f"provisiond:{a} Name {a}" for a in ACCOUNTS),
    "provisiond:10!", "provisiond:", "provisiond", "NOC", "10", "-5", "abc", "Ab:1", "10.0.0.9",
    "ff::1", " x", "1d", "provisiond:1\x00", "provisiond:1 ",
)
QUERY_VALUES = (*LISTS, *ADDRESSES, "10.0.0.3", "010.0.0.1", *COMMENTS, "", "provisiond:10 Name 10!",
                "true", "false")
NAMES = ("comment", "address", "list", "disabled", "dynamic", ".id", "timeout")


def scoped_words(accounts: Sequence[str], addresses: Sequence[str], marker: str = "provisiond") -> list[str]:
    """The query ``routeros.commands.scope_queries`` makes (its shape, not its code)."""
    words: list[str] = []
    for account in accounts:
        low = f"{marker}:{account}"
        words += [f"?=comment={low}", f"?>comment={low}", "?#|", f"?<comment={low}!", "?#&"]
    words += [f"?=address={a}" for a in addresses]
    return words + ["?#|"] * (len(accounts) + len(addresses) - 1)


words = st.one_of(
    st.builds(lambda k, n, v: f"?{k}{n}={v}", st.sampled_from(["", "=", "<", ">"]),
              st.sampled_from(NAMES), st.sampled_from(QUERY_VALUES)),
    st.builds(lambda n: f"?{n}", st.sampled_from(NAMES)),
    st.builds(lambda n: f"?-{n}", st.sampled_from(NAMES)),
    st.builds(lambda ops: f"?#{ops}", st.text(alphabet="0123!&|.", min_size=1, max_size=4)),
)
scoped = st.builds(
    scoped_words,
    st.lists(st.sampled_from(ACCOUNTS), min_size=0, max_size=4),
    st.lists(st.sampled_from(ADDRESSES), min_size=0, max_size=4),
).filter(bool)
list_and_address = st.builds(
    lambda lst, addr, eq: [f"?{eq}list={lst}", f"?{eq}address={addr}"],
    st.sampled_from(LISTS), st.sampled_from(ADDRESSES), st.sampled_from(["", "="]),
)
queries = st.one_of(
    scoped,
    list_and_address,
    st.lists(words, max_size=8),
    # An indexed query combined with arbitrary words (ANDed, ORed, negated).
    st.builds(lambda a, b, op: a + b + [op], scoped, st.lists(words, max_size=3),
              st.sampled_from(["?#&", "?#|", "?#!", "?#|!", "?#0"])),
)

attrs = st.fixed_dictionaries(
    {},
    optional={
        "list": st.sampled_from(LISTS),
        "address": st.sampled_from(ADDRESSES),
        "comment": st.sampled_from((*COMMENTS, "")),
        "disabled": st.sampled_from(("yes", "no")),
        "timeout": st.sampled_from(("1h", "none-static")),
    },
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(LISTS), st.sampled_from(ADDRESSES),
                  st.sampled_from((*COMMENTS, None)), st.booleans()),
        st.tuples(st.just("set"), st.integers(0, 30), attrs),
        st.tuples(st.just("unset"), st.integers(0, 30)),
        st.tuples(st.just("remove"), st.integers(0, 30)),
    ),
    max_size=40,
)


def build(ops: list[tuple[object, ...]]) -> AddressTable:
    table = AddressTable(TableOptions(family=4), lambda: 1_000_000.0)
    for op in ops:
        ids = [e.id for e in table.entries()]
        try:
            if op[0] == "add":
                _, lst, addr, comment, duplicate = op
                fields = {"list": str(lst), "address": str(addr)}
                if comment is not None:
                    fields["comment"] = str(comment)
                table.add(fields, allow_duplicate=bool(duplicate))
            elif ids and op[0] == "set":
                table.update([ids[int(str(op[1])) % len(ids)]], dict(op[2]))  # type: ignore[call-overload]
            elif ids and op[0] == "unset":
                table.unset([ids[int(str(op[1])) % len(ids)]], "comment")
            elif ids and op[0] == "remove":
                table.remove([ids[int(str(op[1])) % len(ids)]])
        except Trap:
            pass  # a refused command changes nothing
    return table


def by_scan(table: AddressTable, words: list[str]) -> list[dict[str, str]]:
    """The reference: every row (of the required list, in its order), on the stack machine."""
    query = compile_query(words, family=4, stored=True)
    rows = (table.render(entry) for entry in table.entries(query.list_filter))
    return [row for row in rows if query.matches_by_stack(row)]


@settings(max_examples=800, deadline=None)
@given(ops=operations, words=queries)
def test_indexed_print_selects_what_the_scan_selects(ops: list[tuple[object, ...]], words: list[str]) -> None:
    table = build(ops)
    try:
        query = compile_query(words, family=4, stored=True)
    except QueryError:
        return
    selected = [view.rendered() for view in table.select(query)]
    assert selected == by_scan(table, words), (words, selected)


@settings(max_examples=200, deadline=None)
@given(ops=operations, accounts=st.lists(st.sampled_from(ACCOUNTS), min_size=1, max_size=4),
       addresses=st.lists(st.sampled_from(ADDRESSES), max_size=4))
def test_a_scoped_query_is_answered_from_the_indexes(
    ops: list[tuple[object, ...]], accounts: list[str], addresses: list[str]
) -> None:
    query = compile_query(scoped_words(accounts, addresses), family=4, stored=True)
    atoms = query.candidates()
    assert atoms is not None
    # Each account is one bounded comment range (or its lower end), never an open one.
    assert all(isinstance(a, Eq) or (a.low is not None and a.high is not None) for a in atoms)
    table = build(ops)
    assert [v.rendered() for v in table.select(query)] == by_scan(table, scoped_words(accounts, addresses))
    # The indexes name only the rows in the accounts' comment ranges or at the addresses
    # (but an address is looked up by the unique key: with injected twins, a scan).
    wanted = {normalise_address(a, 4) for a in addresses}
    named = [e.id for e in table.entries()
             if e.address in wanted or any(f"provisiond:{a}" <= (e.comment or "") < f"provisiond:{a}!"
                                           for a in accounts)]
    twins = any(op[0] == "add" and op[4] for op in ops)
    assert table.candidates(query) in ((None, named) if twins and addresses else (named,))


def test_query_shapes_no_index_answers_fall_back_to_the_scan() -> None:
    for words in (["?#!"], ["?dynamic=true"], ["?=comment=provisiond:1", "?#!"],
                  ["?>comment=10"], ["?-comment"], ["?=comment="],
                  ["?=address=10.0.0.1", "?disabled=false", "?#|"]):
        assert compile_query(words, family=4, stored=True).candidates() is None, words
    # Without a table (no family), nothing is indexed.
    assert compile_query(["?=address=10.0.0.1"]).candidates() is None


def test_ranges_meet() -> None:
    assert Range("c", "a", "m").meet(Range("c", "b", "z")) == Range("c", "b", "m")
    assert Range("c", "b", "z").meet(Range("c", "a", "m")) == Range("c", "b", "m")
    assert Range("c", high="m").meet(Range("c", "b")) == Range("c", "b", "m")
    assert Range("c", "m").meet(Range("c", high="m")) is None
    assert Range("c", "a", "b").holds("ab") and not Range("c", "a", "b").holds("b")
    assert not Range("c", "a", "b").holds("a")


def test_comment_ranges_meet_within_an_and() -> None:
    query = compile_query(scoped_words(["1042"], []), family=4, stored=True)
    assert query.candidates() == (
        Eq("comment", frozenset({"provisiond:1042"})),
        Range("comment", "provisiond:1042", "provisiond:1042!"),
    )


def test_the_indexes_name_a_comment_range_without_its_ends() -> None:
    table = AddressTable(TableOptions(family=4), lambda: 0.0)
    for n, comment in enumerate(("provisiond:10", "provisiond:10 A", "provisiond:10!", "provisiond:100",
                                 "provisiond:1", "provisiond:10\x00")):
        table.add({"list": "a", "address": f"10.0.0.{n + 1}", "comment": comment})
    assert table.candidates(compile_query(["?>comment=provisiond:10", "?<comment=provisiond:10!"],
                                          family=4, stored=True)) == [2, 6]
    assert table.candidates(compile_query(scoped_words(["10"], []), family=4, stored=True)) == [1, 2, 6]


def test_an_entry_moved_to_a_list_still_prints_last_there_when_found_by_comment() -> None:
    table = AddressTable(TableOptions(family=4), lambda: 0.0)
    moved = table.add({"list": "a", "address": "10.0.0.1", "comment": "c"})
    table.add({"list": "b", "address": "10.0.0.2", "comment": "c"})
    table.add({"list": "b", "address": "10.0.0.3"})
    table.update([moved.id], {"list": "b"})
    words = ["?list=b", "?=comment=c"]
    query = compile_query(words, family=4, stored=True)
    assert query.candidates() == (Eq("comment", frozenset({"c"})),)
    ids = [v.rendered()[".id"] for v in table.select(query)]
    assert ids == [r[".id"] for r in by_scan(table, words)] == ["*2", "*1"]  # *1 joined b last


def test_injected_twins_at_an_address_are_all_printed() -> None:
    table = AddressTable(TableOptions(family=4), lambda: 0.0)
    table.add({"list": "a", "address": "10.0.0.1"})
    table.add({"list": "b", "address": "10.0.0.1"})
    query = compile_query(["?=address=10.0.0.1/32"], family=4, stored=True)
    assert table.candidates(query) == [1, 2]  # one look-up per list
    table.add({"list": "a", "address": "10.0.0.1"}, allow_duplicate=True)
    assert table.candidates(query) is None  # the unique key holds one twin: scan
    assert [v.rendered()[".id"] for v in table.select(query)] == ["*1", "*2", "*3"]
