"""Billing (plus allocated addresses) -> what every router should hold.

Pure. The reconciler calls ``address_lists`` once per pass with the Snapshot, the
addresses IPAM allocated (account id -> addresses) and the settings; it returns, per
router name, the desired address-list Resources by key, plus the conflicts found
while building them (two accounts claiming one address in one list).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


@dataclass(slots=True)
class RouterDesire:
    desired: dict[Key, Resource] = field(default_factory=dict)
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
    out = {name: RouterDesire() for name in routers}
    for m in mappings:
        for r in m.routers:
            out[r].lists.add(m.list)
    # Sorted so that when two accounts claim one address the lower id wins, every pass.
    for account in sorted(accounts, key=lambda a: (len(a.id), a.id)):
        selected = [m for m in mappings if m.selects(account)]
        if not selected:
            continue
        addresses = addresses_of(account, allocated)
        for m in selected:
            for address in addresses:
                entry = address_list_entry(m.list, address, account, marker)
                for router in m.routers:
                    want = out[router].desired
                    other = want.get(entry.key)
                    if other is None:
                        want[entry.key] = entry
                    elif other.account_id != account.id:
                        out[router].conflicts.append(
                            Conflict(entry, f"address also claimed by account {other.account_id}")
                        )
    return out
