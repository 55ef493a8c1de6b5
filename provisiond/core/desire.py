"""Billing (plus allocated addresses) -> what every router should hold.

Pure. The reconciler calls ``address_lists`` once per pass with the Snapshot, the
addresses IPAM allocated (account id -> addresses) and the settings; it returns, per
router name, the desired address-list Resources by key (``ListEntries``: one Resource
per list entry, shared by every router that carries the list), plus the conflicts found
while building them (two accounts claiming one address in one list).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from provisiond.core.addresses import routeros_form
from provisiond.core.changes import Conflict, Key, Resource
from provisiond.core.model import Account


@dataclass(frozen=True, slots=True)
class ListMapping:
    """The parts of an ``[[address_list]]`` mapping desire needs, routers already resolved."""

    list: str
    routers: tuple[str, ...]
    group: str | None = None
    status: str | None = None

    def selects(self, account: Account) -> bool:
        if self.group is not None:
            return self.group in account.groups
        return account.status == self.status


class ListEntries(Mapping[Key, Resource]):
    """A router's desired address-list entries: ``{list: {address: Resource}}`` seen as
    ``{Key: Resource}``.

    The per-list dicts are shared by every router that manages the same lists from the
    same mappings, so four routers cost one copy, and ``RouterTarget`` looks a printed
    row up by (list, address) without building a key for it.
    """

    __slots__ = ("lists",)

    def __init__(self, lists: Mapping[str, Mapping[str, Resource]]) -> None:
        self.lists = lists

    def __getitem__(self, key: Key) -> Resource:
        kind, ident = key
        if kind != "address-list" or len(ident) != 2:
            raise KeyError(key)
        return self.lists[ident[0][1]][ident[1][1]]

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError, ValueError, IndexError):
            return False
        return True

    def __iter__(self) -> Iterator[Key]:
        for entries in self.lists.values():
            for r in entries.values():
                yield r.key

    def items(self) -> Iterator[tuple[Key, Resource]]:  # type: ignore[override]
        for entries in self.lists.values():
            for r in entries.values():
                yield r.key, r

    def values(self) -> Iterator[Resource]:  # type: ignore[override]
        for entries in self.lists.values():
            yield from entries.values()

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.lists.values())


@dataclass(slots=True)
class RouterDesire:
    desired: Mapping[Key, Resource] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    lists: set[str] = field(default_factory=set)  # every list managed on this router


# C0 and C1 control characters (ESC, BEL, DEL, …): a comment is one line of text.
_CONTROLS = {i: " " for i in (*range(0x20), *range(0x7F, 0xA0))}


def comment_for(marker: str, account: Account) -> str:
    name = " ".join(account.name.translate(_CONTROLS).split())  # one line, no control characters
    return f"{marker}:{account.id} {name}".rstrip()


def address_list_entry(list_name: str, address: str, account: Account, marker: str) -> Resource:
    return Resource(
        kind="address-list",
        group=list_name,
        ident=(("list", list_name), ("address", address)),
        attrs=(("comment", comment_for(marker, account)), ("disabled", "false")),
        account_id=account.id,
        account_name=account.name,
    )


def addresses_of(account: Account, allocated: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Billing-assigned and allocated addresses, in RouterOS form, without repeats."""
    extra = allocated.get(account.id)
    if not extra:
        return list(account.addresses)  # the Source stores them in RouterOS form already
    return list(dict.fromkeys((*account.addresses, *(routeros_form(a) for a in extra))))


def address_lists(
    accounts: Iterable[Account],
    allocated: Mapping[str, tuple[str, ...]],
    mappings: Iterable[ListMapping],
    routers: Iterable[str],
    *,
    marker: str,
) -> dict[str, RouterDesire]:
    mappings = list(mappings)
    routers = list(routers)
    # One entry dict per (list, the mappings that feed it on a router): routers that
    # manage a list from the same mappings share it.
    shared: dict[tuple[str, tuple[int, ...]], dict[str, Resource]] = {}
    shared_conflicts: dict[tuple[str, tuple[int, ...]], list[Conflict]] = {}
    uses: dict[str, list[tuple[str, tuple[int, ...]]]] = {r: [] for r in routers}
    for router in routers:
        for name in sorted({m.list for m in mappings if router in m.routers}):
            combo = (name, tuple(i for i, m in enumerate(mappings) if m.list == name and router in m.routers))
            shared.setdefault(combo, {})
            shared_conflicts.setdefault(combo, [])
            uses[router].append(combo)
    feeds = [[(shared[c], shared_conflicts[c]) for c in shared if i in c[1]] for i in range(len(mappings))]
    # Sorted so that when two accounts claim one address the lower id wins, every pass.
    for account in sorted(accounts, key=lambda a: (len(a.id), a.id)):
        selected = [i for i, m in enumerate(mappings) if m.selects(account)]
        if not selected:
            continue
        addresses = addresses_of(account, allocated)
        for i in selected:
            name = mappings[i].list
            for address in addresses:
                entry: Resource | None = None
                for want, conflicts in feeds[i]:
                    other = want.get(address)
                    if other is None:
                        entry = entry or address_list_entry(name, address, account, marker)
                        want[address] = entry
                    elif other.account_id != account.id:
                        entry = entry or address_list_entry(name, address, account, marker)
                        conflicts.append(
                            Conflict(entry, f"address also claimed by account {other.account_id}")
                        )
    return {
        router: RouterDesire(
            desired=ListEntries({c[0]: shared[c] for c in uses[router]}),
            conflicts=[x for c in uses[router] for x in shared_conflicts[c]],
            lists={c[0] for c in uses[router]},
        )
        for router in routers
    }
