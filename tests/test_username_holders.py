"""``core.scope.UsernameHolders``: the daemon's memory of who lists each RADIUS username,
kept compact between passes. Checked against the plain model (a dict of sets) over
random sequences of full and scoped reads."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from provisiond.core.scope import UsernameHolders

ACCOUNTS = st.sampled_from([f"{n}" for n in range(1, 7)])
NAMES = st.frozensets(st.sampled_from(["alice", "bob", "carol", "dave"]), max_size=3)


@settings(max_examples=300, deadline=None)
@given(first=st.dictionaries(ACCOUNTS, NAMES), moves=st.lists(st.tuples(ACCOUNTS, NAMES), max_size=12),
       scope=st.frozensets(ACCOUNTS))
def test_holders_match_the_plain_model(first: dict[str, frozenset[str]],
                                       moves: list[tuple[str, frozenset[str]]],
                                       scope: frozenset[str]) -> None:
    holders = UsernameHolders(first)
    model = {a: set(n) for a, n in first.items()}
    for account, names in moves:
        holders.replace(account, names)
        model[account] = set(names)
    holders = pickle.loads(pickle.dumps(holders))  # as it comes back from the full-pass process
    everyone = {"alice", "bob", "carol", "dave", "erin"}
    expected = {}
    for name in everyone:
        others = {a for a, ns in model.items() if name in ns} - scope
        if others:
            expected[name] = others
    assert holders.outside(everyone, scope) == expected
