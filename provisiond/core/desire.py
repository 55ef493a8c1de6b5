"""Billing (plus allocated addresses) -> what every router should hold.

Pure. The reconciler calls ``address_lists`` once per pass with the Snapshot, the
addresses IPAM allocated (account id -> addresses) and the settings; it returns, per
router name, the desired address-list Resources by key (``ListEntries``: a comment and
an account per list entry, shared by every router that carries the list; a Resource is
made only when one is asked for), plus the conflicts found while building them (two
accounts claiming one address in one list).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field

from provisiond.core.addresses import routeros_form, sort_key
from provisiond.core.changes import Conflict, Key, Resource
from provisiond.core.model import Account, Match


@dataclass(frozen=True, slots=True)
class ListMapping:
    """The parts of an ``[[address_list]]`` mapping desire needs, routers already resolved."""

    list: str
    routers: tuple[str, ...]
    group: str | None = None
    status: str | None = None
    match: Match | None = None  # the mapping's selector; None: ``group`` or ``status``

    def __post_init__(self) -> None:
        if self.match is None:
            object.__setattr__(self, "match", Match.of(self))

    def selects(self, account: Account) -> bool:
        assert self.match is not None
        return self.match.selects(account)


# A desired address-list entry as ``ListEntries`` holds it: its comment and its account.
Entry = tuple[str, Account]
_ENABLED = ("disabled", "false")


def entry_resource(list_name: str, address: str, entry: Entry) -> Resource:
    """The Resource of a ``ListEntries`` entry: what ``address_list_entry`` makes."""
    comment, account = entry
    return Resource.make("address-list", list_name, (("list", list_name), ("address", address)),
                         (("comment", comment), _ENABLED), account.id, account.name)


class ListEntries(Mapping[Key, Resource]):
    """A router's desired address-list entries: ``{list: {address: (comment, account)}}``
    seen as ``{Key: Resource}``.

    The per-list dicts are shared by every router that manages the same lists from the
    same mappings, so four routers cost one copy; ``RouterTarget`` compares a printed
    row by (list, address) and comment without a key or a Resource for it, and ``diff``
    asks for the Resources of the entries that need a change only. A Resource is made
    when one is first asked for, and kept in ``made`` (shared like the lists: on a cold
    pass every router asks for every entry's, and four routers get one).

    ``order`` sorts a router's creates (``diff``) by where their addresses stand in
    their list, the list sorted once (by ``sort_key``) for every router that carries it,
    and only when a router has creates to sort.
    """

    __slots__ = ("lists", "_made", "_ranks", "_ordered")

    def __init__(self, lists: Mapping[str, Mapping[str, Entry]], *,
                 made: Mapping[str, dict[str, Resource]] | None = None,
                 ranks: Mapping[str, dict[str, int]] | None = None,
                 ordered: Mapping[str, dict[str, list[Resource]]] | None = None) -> None:
        self.lists = lists
        self._made = made if made is not None else {name: {} for name in lists}
        self._ranks = ranks if ranks is not None else {name: {} for name in lists}
        self._ordered = ordered if ordered is not None else {name: {} for name in lists}

    def order(self, r: Resource) -> tuple[str, int]:
        """A sort key for this router's Resources that orders them as ``diff`` applies
        them: by list, then by address (``sort_key``). KeyError: not one of them."""
        name = r.group
        return name, self._ranked(name)[r.ident[1][1]]

    def _ranked(self, name: str) -> dict[str, int]:
        """``{address: rank}`` of list ``name``, in rank order; made once for every router."""
        ranks = self._ranks[name]
        if not ranks:
            ranks.update((address, i) for i, address in enumerate(sorted(self.lists[name], key=sort_key)))
        return ranks

    def in_order(self, name: str, addresses: Mapping[str, object]) -> Iterator[str]:
        """``addresses`` (some of list ``name``'s) in the order ``order`` sorts them: a
        walk over the list sorted once for every router when they are a good part of it
        (a cold router's are all of it), else just them sorted."""
        if len(addresses) * 8 < len(self.lists[name]) and not self._ranks[name]:
            return iter(sorted(addresses, key=sort_key))
        return (a for a in self._ranked(name) if a in addresses)

    def all_in_order(self, name: str) -> list[Resource]:
        """Every entry of list ``name`` as a Resource, in ``order``: made once for every
        router that carries the list (a cold router creates them all)."""
        box = self._ordered[name]
        found = box.get("all")
        if found is None:
            resource = self.resource
            # setdefault: one list for every router, whichever thread made it first
            found = box.setdefault("all", [resource(name, address) for address in self._ranked(name)])
        return found

    def resource(self, name: str, address: str) -> Resource:
        """The Resource of the entry for ``address`` in list ``name`` (KeyError: none)."""
        made = self._made[name]
        r = made.get(address)
        if r is None:
            r = made[address] = entry_resource(name, address, self.lists[name][address])
        return r

    def __getitem__(self, key: Key) -> Resource:
        kind, ident = key
        if kind != "address-list" or len(ident) != 2:
            raise KeyError(key)
        return self.resource(ident[0][1], ident[1][1])

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == "address-list"):
            return False
        try:
            ident = key[1]
            return len(ident) == 2 and ident[1][1] in self.lists[ident[0][1]]
        except (KeyError, TypeError, IndexError):
            return False

    def __iter__(self) -> Iterator[Key]:
        for name, entries in self.lists.items():
            for address in entries:
                yield ("address-list", (("list", name), ("address", address)))

    def items(self) -> Iterator[tuple[Key, Resource]]:  # type: ignore[override]
        for r in self.values():
            yield r.key, r

    def values(self) -> Iterator[Resource]:  # type: ignore[override]
        for name, entries in self.lists.items():
            resource = self.resource
            for address in entries:
                yield resource(name, address)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.lists.values())


class ListSteps:
    """Address-list keys a target found exactly as desired, held as what was not:
    ``lists`` is the desired ``{list: {address: …}}`` (a ``ListEntries``' ``lists``),
    ``left`` the addresses of each list not found in step. A container of keys without
    a key per entry; ``diff`` over that ``ListEntries`` looks at ``left`` only."""

    __slots__ = ("lists", "left")

    def __init__(self, lists: Mapping[str, Mapping[str, object]],
                 left: Mapping[str, Mapping[str, object]]) -> None:
        self.lists = lists
        self.left = left

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == "address-list"):
            return False
        ident = key[1]
        if len(ident) != 2:
            return False
        name, address = str(ident[0][1]), str(ident[1][1])
        return address in self.lists.get(name, ()) and address not in self.left.get(name, ())

    def count(self, name: str) -> int:
        """How many of ``name``'s entries were found in step."""
        return len(self.lists.get(name, ())) - len(self.left.get(name, ()))


@dataclass(slots=True)
class RouterDesire:
    desired: Mapping[Key, Resource] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    lists: set[str] = field(default_factory=set)  # every list managed on this router


# C0 and C1 control characters (ESC, BEL, DEL, …): a comment is one line of text.
_CONTROLS = {i: " " for i in (*range(0x20), *range(0x7F, 0xA0))}


def comment_for(marker: str, account: Account) -> str:
    name = account.name
    # Printable text has no whitespace but the ASCII space (no control characters, no
    # other separators): unless spaces lead, trail or repeat, it is one line already.
    if not (name.isprintable() and "  " not in name and name[:1] != " " and name[-1:] != " "):
        name = " ".join(name.translate(_CONTROLS).split())  # one line, no control characters
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
    shared: dict[tuple[str, tuple[int, ...]], dict[str, Entry]] = {}
    shared_conflicts: dict[tuple[str, tuple[int, ...]], list[Conflict]] = {}
    uses: dict[str, list[tuple[str, tuple[int, ...]]]] = {r: [] for r in routers}
    for router in routers:
        for name in sorted({m.list for m in mappings if router in m.routers}):
            combo = (name, tuple(i for i, m in enumerate(mappings) if m.list == name and router in m.routers))
            shared.setdefault(combo, {})
            shared_conflicts.setdefault(combo, [])
            uses[router].append(combo)
    feeds = [[(shared[c], shared_conflicts[c]) for c in shared if i in c[1]] for i in range(len(mappings))]
    # The mappings that select an account depend on its groups, status and flags only: a
    # few distinct kinds for 100,000 accounts (the Source shares equal group sets).
    selecting: dict[tuple[frozenset[str], str, bool, bool], list[int]] = {}
    # Sorted so that when two accounts claim one address the lower id wins, every pass.
    for account in sorted(accounts, key=lambda a: (len(a.id), a.id)):
        kind = (account.groups, account.status, account.active, account.delinquent)
        selected = selecting.get(kind)
        if selected is None:
            selected = selecting[kind] = [i for i, m in enumerate(mappings) if m.selects(account)]
        if not selected:
            continue
        addresses = addresses_of(account, allocated)
        comment = ""
        for i in selected:
            name = mappings[i].list
            for address in addresses:
                for want, conflicts in feeds[i]:
                    other = want.get(address)
                    if other is None:
                        want[address] = (comment or (comment := comment_for(marker, account)), account)
                    elif other[1].id != account.id:
                        conflicts.append(Conflict(
                            address_list_entry(name, address, account, marker),
                            f"address also claimed by account {other[1].id}"))
    made: dict[tuple[str, tuple[int, ...]], dict[str, Resource]] = {c: {} for c in shared}
    ranks: dict[tuple[str, tuple[int, ...]], dict[str, int]] = {c: {} for c in shared}
    ordered: dict[tuple[str, tuple[int, ...]], dict[str, list[Resource]]] = {c: {} for c in shared}
    return {
        router: RouterDesire(
            desired=ListEntries({c[0]: shared[c] for c in uses[router]},
                                made={c[0]: made[c] for c in uses[router]},
                                ranks={c[0]: ranks[c] for c in uses[router]},
                                ordered={c[0]: ordered[c] for c in uses[router]}),
            conflicts=[x for c in uses[router] for x in shared_conflicts[c]],
            lists={c[0] for c in uses[router]},
        )
        for router in routers
    }
