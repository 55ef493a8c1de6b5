"""Billing (plus allocated addresses) -> the FreeRADIUS rows provisiond wants.

Pure; the RADIUS analogue of ``desire.address_lists``. The reconciler calls ``radius``
once per pass with the Snapshot's accounts, the addresses IPAM allocated (account id
-> addresses) and the ``[[radius_group]]`` mappings; the result is the desired State of
the ``radius`` target (``RadiusTarget.observe`` + ``diff`` do the rest) and the
conflicts found while building it.

What is desired:

- ``radusergroup``: one row per RADIUS username of every account a mapping selects
  (by billing group or by status), ident ``(username, groupname)``, attribute
  ``priority``. Two mappings onto one RADIUS group give one row, with the lower
  priority. Several mapped groups give several rows: FreeRADIUS then uses the first by
  priority unless its reply rows carry ``Fall-Through = Yes`` (FREERADIUS.md section 1).
- ``radreply`` ``Framed-IP-Address``: only for a username that also gets at least one
  managed group (provisiond does not blanket-write replies for every billing account),
  ident ``(username, attribute)`` so that a user has exactly one such row and an
  address change is an Update; ``op`` and ``value`` are attributes. The account's single
  IPv4 host addresses (billing-assigned first, then allocated) are paired with its
  usernames in sorted order; a username left without one gets no Framed-IP-Address, and
  networks never do (a /29 is a route, not a Framed-IP-Address). IPv6 is left alone:
  RouterOS hands out IPv6 from prefixes (Delegated-IPv6-Prefix / pools), which needs
  router-side pools provisiond does not manage, so no Framed-IPv6-Address is written.
- A username billing lists on two accounts belongs to the lowest account id (stable
  from pass to pass); the other accounts' rows for it become ``Conflict`` values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from provisiond import addresses
from provisiond.changes import Conflict, Key, Resource
from provisiond.model import Account

FRAMED_IP = "Framed-IP-Address"


class RadiusMappingLike(Protocol):
    """What ``radius`` needs of a ``settings.RadiusGroupMapping``."""

    @property
    def group(self) -> str | None: ...

    @property
    def status(self) -> str | None: ...

    @property
    def radius_group(self) -> str: ...

    @property
    def priority(self) -> int: ...


@dataclass(frozen=True, slots=True)
class GroupMapping:
    """A plain ``[[radius_group]]`` mapping (tests, bench, or a lead without settings)."""

    radius_group: str
    group: str | None = None
    status: str | None = None
    priority: int = 0


def selects(mapping: RadiusMappingLike, account: Account) -> bool:
    if mapping.group is not None:
        return mapping.group in account.groups
    return account.status == mapping.status


def usergroup_row(username: str, groupname: str, priority: int, account: Account) -> Resource:
    return Resource(
        kind="radusergroup",
        group=groupname,
        ident=(("username", username), ("groupname", groupname)),
        attrs=(("priority", str(priority)),),
        account_id=account.id,
        account_name=account.name,
    )


def framed_ip_row(username: str, address: str, account: Account) -> Resource:
    return Resource(
        kind="radreply",
        group=FRAMED_IP,
        ident=(("username", username), ("attribute", FRAMED_IP)),
        attrs=(("op", "="), ("value", address)),
        account_id=account.id,
        account_name=account.name,
    )


def ipv4_hosts(account: Account, allocated: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Single IPv4 addresses of the account, billing-assigned first, without duplicates."""
    out: dict[str, None] = {}
    for text in (*account.addresses, *allocated.get(account.id, ())):
        host = addresses.ipv4_host(text)
        if host is not None:  # a network, IPv6 or a name gets no Framed-IP-Address
            out.setdefault(host, None)
    return list(out)


def radius(
    accounts: Iterable[Account],
    allocated: Mapping[str, tuple[str, ...]],
    mappings: Sequence[RadiusMappingLike],
    *,
    framed_ip: bool = True,
) -> tuple[dict[Key, Resource], list[Conflict]]:
    """The desired radusergroup/radreply Resources by key, and the conflicts."""
    desired: dict[Key, Resource] = {}
    conflicts: list[Conflict] = []
    owner: dict[str, str] = {}  # username -> account id that owns it
    ordered = sorted(accounts, key=lambda a: (len(a.id), a.id))
    for account in ordered:
        for username in account.usernames:
            owner.setdefault(username, account.id)
    for account in ordered:
        groups: dict[str, int] = {}
        for m in mappings:
            if selects(m, account):
                groups[m.radius_group] = min(m.priority, groups.get(m.radius_group, m.priority))
        if not groups:
            continue
        usernames = sorted(set(account.usernames))
        addresses = ipv4_hosts(account, allocated) if framed_ip else []
        for i, username in enumerate(usernames):
            rows = [usergroup_row(username, g, p, account) for g, p in sorted(groups.items())]
            if i < len(addresses):
                rows.append(framed_ip_row(username, addresses[i], account))
            holder = owner[username]
            for row in rows:
                if holder != account.id:
                    conflicts.append(Conflict(row, f"username {username!r} also belongs to account {holder}"))
                else:
                    desired[row.key] = row
    conflicts.sort(key=lambda c: (c.resource.group, c.resource.ident, c.resource.account_id))
    return desired, conflicts
