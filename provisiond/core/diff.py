"""Compare what a target holds with what billing wants: ``Observed`` + desired -> Changes.

Pure. Called by the reconciler once per target; the result goes into a ``Plan``.
Desired resources whose key is held by an object provisiond does not own become
``Conflict`` values instead of changes: provisiond never overwrites what it did not create.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Mapping

from provisiond.core.addresses import sort_key
from provisiond.core.changes import (
    ORDER,
    Change,
    Conflict,
    Create,
    Delete,
    Key,
    Observed,
    Resource,
    Update,
)
from provisiond.core.desire import ListEntries, ListSteps


def _ident_key(r: Resource) -> tuple[tuple[int, int, str], ...]:
    return tuple(sort_key(v) for _, v in r.ident)


def _sort_key(change: Change) -> tuple[int, str, tuple[tuple[int, int, str], ...]]:
    r = change.resource
    return (ORDER[change.action], r.group, _ident_key(r))


def diff(
    observed: Observed, desired: Mapping[Key, Resource]
) -> tuple[list[Change], list[Conflict]]:
    """Changes that turn ``observed.owned`` into ``desired``, in apply order.

    Keys in ``observed.in_step`` are already as desired and need nothing.
    """
    owned, foreign, in_step = observed.owned, observed.foreign, observed.in_step
    deletes: list[Change] = [Delete(r) for r in observed.surplus]
    deletes += [Delete(have) for key, have in owned.items() if key not in desired]
    creates: list[Change] = []
    updates: list[Change] = []
    conflicts: list[Conflict] = []
    # Walking a router's left-over entries (``_not_in_step``), nothing met is in step;
    # an empty in_step (a cold router's) is not asked 100,000 times either.
    step = bool(in_step) and not _narrowed(desired, in_step)
    if not owned and not foreign and not step:
        # Nothing owned, nothing in the way (a cold router): every desired item left is a create.
        creates += Create.each(_left_over(desired, in_step) if _narrowed(desired, in_step)
                               else desired.values())
    for key, want in () if creates else _not_in_step(desired, in_step, owned):
        have_r = owned.get(key) if owned else None
        if have_r is None:
            if step and key in in_step:
                continue
            why = foreign.get(key) if foreign else None
            if why is not None:
                conflicts.append(Conflict(want, why))
            else:
                creates.append(Create(want))
        elif have_r.attrs != want.attrs:
            updates.append(Update(have_r, _with_ref(want, have_r.ref)))
    deletes.sort(key=_sort_key)
    if _narrowed(desired, in_step):
        pass  # made in order: list by list, each list's in ``ListEntries.order``
    elif isinstance(desired, ListEntries):
        # A router's creates by a key its desired state keeps for every router: the
        # same order, without a sort_key per create per router.
        order = desired.order
        creates.sort(key=lambda c: order(c.resource))
    else:
        creates.sort(key=_sort_key)
    updates.sort(key=_sort_key)
    conflicts.sort(key=lambda c: (c.resource.group, _ident_key(c.resource)))
    return deletes + creates + updates, conflicts


def _not_in_step(
    desired: Mapping[Key, Resource], in_step: Container[Key], owned: Mapping[Key, Resource]
) -> Iterator[tuple[Key, Resource]]:
    """The desired items that may need a change: all of them, or (a router's entries
    against what it found in step over those very entries) only those left over, list
    by list, without a look-up per entry."""
    if not _narrowed(desired, in_step):
        yield from desired.items()
        return
    for r in _left_over(desired, in_step):
        yield r.key, r
    # A key both owned and in step (RouterTarget never reports one) is compared as owned,
    # as the look-up per entry does.
    for key in owned:
        if key in in_step and key in desired:
            yield key, desired[key]


def _left_over(desired: Mapping[Key, Resource], in_step: Container[Key]) -> Iterator[Resource]:
    """The Resources of a router's desired entries not found in step (``_narrowed``), in
    the order ``diff`` applies creates (by list, then ``ListEntries.order``): a cold
    router's 100,000 need no sort then, and a list none of whose entries was found is
    the list's own Resources, made once for every router."""
    assert isinstance(desired, ListEntries) and isinstance(in_step, ListSteps)
    resource = desired.resource
    for name in sorted(desired.lists):
        entries = desired.lists[name]
        left = in_step.left.get(name, entries)
        if len(left) == len(entries):  # all of them (left holds only the list's own)
            yield from desired.all_in_order(name)
        elif left:
            for address in desired.in_order(name, left):
                yield resource(name, address)


def _narrowed(desired: Mapping[Key, Resource], in_step: Container[Key]) -> bool:
    """A router's entries against what it found in step over those very entries."""
    return (isinstance(desired, ListEntries) and isinstance(in_step, ListSteps)
            and in_step.lists is desired.lists)


def _with_ref(r: Resource, ref: str) -> Resource:
    return Resource(
        kind=r.kind,
        group=r.group,
        ident=r.ident,
        attrs=r.attrs,
        account_id=r.account_id,
        account_name=r.account_name,
        ref=ref,
    )


def count_by_group(resources: Iterable[Resource]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in resources:
        counts[r.group] = counts.get(r.group, 0) + 1
    return counts
