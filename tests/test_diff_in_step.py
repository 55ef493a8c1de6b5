"""``diff`` over a router's desired entries (``ListEntries``) and what it found in step
(``ListSteps``: the entries it did not) looks only at what is left; whatever the
entries, it must plan exactly what the look-up per entry plans over Resources."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from provisiond.core.changes import Key, Observed, Resource
from provisiond.core.desire import Entry, ListEntries, ListSteps, address_list_entry, comment_for
from provisiond.core.diff import diff
from provisiond.core.model import Account

LISTS = ("a", "b")
# Text order is not address order (10.0.0.10 before 10.0.0.9; an IPv6 one in between).
ADDRESSES = (*(f"10.0.0.{i}" for i in range(6)), "10.0.0.10", "10.0.0.9", "2001:db8::1")


def _entry(list_name: str, address: str, name: str) -> Resource:
    return address_list_entry(list_name, address, Account(str(ADDRESSES.index(address)), name), "provisiond")


class _Keys:
    """The same in-step keys as a plain container (the look-up per entry)."""

    def __init__(self, keys: set[Key]) -> None:
        self.keys = keys

    def __contains__(self, key: object) -> bool:
        return key in self.keys


cells = st.sampled_from([(n, a) for n in LISTS for a in ADDRESSES])


@settings(max_examples=300, deadline=None)
@given(want=st.lists(cells, unique=True), steps=st.sets(cells),
       owned=st.dictionaries(cells, st.sampled_from(["X", "Y"])), foreign=st.sets(cells))
def test_skipping_in_step_lists_plans_what_the_lookup_per_entry_plans(
        want: list[tuple[str, str]], steps: set[tuple[str, str]], owned: dict[tuple[str, str], str],
        foreign: set[tuple[str, str]]) -> None:
    lists: dict[str, dict[str, Entry]] = {}
    for n, a in want:  # billing's order, not the lists' nor the addresses'

        account = Account(str(ADDRESSES.index(a)), "X")
        lists.setdefault(n, {})[a] = (comment_for("provisiond", account), account)
    desired = ListEntries(lists)
    have = {_entry(n, a, name).key: _entry(n, a, name) for (n, a), name in owned.items()}
    why = {_entry(n, a, "X").key: "hand-made" for n, a in foreign}
    left = {n: {a: e for a, e in entries.items() if (n, a) not in steps} for n, entries in lists.items()}
    fast = Observed(owned=have, foreign=why, in_step=ListSteps(lists, left))
    slow = Observed(owned=have, foreign=why,
                    in_step=_Keys({_entry(n, a, "X").key for n, a in steps if (n, a) in want}))
    plain = {_entry(n, a, "X").key: _entry(n, a, "X") for n, a in sorted(want)}
    assert dict(desired.items()) == plain
    assert diff(fast, desired) == diff(slow, plain)
