"""The managed counts a full apply leaves for scoped passes' safety checks.

``ScopedMemory.count_applied`` tallies a cold apply's 100,000 changes per router once
per group; it must leave what stepping through the changes one by one leaves (deletes
apply first, a count never goes below zero)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from provisiond.core.changes import Change, Create, Delete, Resource, Update
from provisiond.engine import ScopedMemory
from provisiond.targets.base import ApplyResult


def _entry(group: str, n: int) -> Resource:
    return Resource("address-list", group, (("list", group), ("address", f"10.0.0.{n}")),
                    (("comment", "c"), ("disabled", "false")))


def _stepped(existing: dict[str, int], applied: list[Change]) -> dict[str, int]:
    counts = dict(existing)
    for change in applied:
        step = {"create": 1, "delete": -1}.get(change.action, 0)
        if step:
            group = change.resource.group
            counts[group] = max(0, counts.get(group, 0) + step)
    return counts


def _counted(existing: dict[str, int], applied: list[Change], *, error: str | None = None) -> dict[str, int] | None:
    memory = ScopedMemory(existing={"core-1": dict(existing)})
    memory.count_applied(ApplyResult("core-1", applied=applied, error=error), scoped=False)
    return memory.existing.get("core-1")


GROUPS = st.sampled_from(["a", "b", "c"])


@given(existing=st.dictionaries(GROUPS, st.integers(0, 5)),
       deletes=st.lists(GROUPS, max_size=12), creates=st.lists(GROUPS, max_size=12),
       updates=st.lists(GROUPS, max_size=4))
def test_a_full_apply_leaves_what_stepping_through_its_changes_leaves(
        existing: dict[str, int], deletes: list[str], creates: list[str], updates: list[str]) -> None:
    applied: list[Change] = [Delete(_entry(g, i)) for i, g in enumerate(deletes)]
    applied += [Create(_entry(g, i)) for i, g in enumerate(creates)]
    applied += [Update(_entry(g, i), _entry(g, i)) for i, g in enumerate(updates)]
    assert _counted(existing, applied) == _stepped(existing, applied)


def test_more_deletes_than_counted_floor_at_zero_before_the_creates() -> None:
    # A surplus duplicate deleted on top of the one counted entry, then two creates: 2.
    applied: list[Change] = [Delete(_entry("a", 1)), Delete(_entry("a", 1)),
                             Create(_entry("a", 2)), Create(_entry("a", 3))]
    assert _counted({"a": 1}, applied) == {"a": 2}


def test_a_failed_apply_forgets_the_counts() -> None:
    assert _counted({"a": 3}, [Create(_entry("a", 1))], error="core-1: connection lost") is None
