"""Billing (plus allocated addresses) -> the FreeRADIUS rows provisiond wants.

Pure; the RADIUS analogue of ``desire.address_lists``. The reconciler calls ``radius``
once per pass with the Snapshot's accounts, the addresses IPAM allocated (account id
-> addresses) and the ``[[radius_group]]`` mappings; the result is the desired State of
the ``radius`` target (``RadiusTarget.observe`` + ``diff`` do the rest) and the
conflicts found while building it.

What is desired:

- ``radusergroup``: one row per RADIUS username of every account a mapping selects
  (by its selector keys, ``Match``), ident ``(username, groupname)``, attribute
  ``priority``. Two mappings onto one RADIUS group give one row, with the lower
  priority. Several mapped groups give several rows: FreeRADIUS then uses the first by
  priority unless its reply rows carry ``Fall-Through = Yes`` (../shared/FREERADIUS.md section 1).
- ``radreply`` ``Framed-IP-Address``: only for a username that also gets at least one
  managed group (provisiond does not blanket-write replies for every billing account),
  ident ``(username, attribute)`` so that a user has exactly one such row and an
  address change is an Update; ``op`` and ``value`` are attributes. The account's single
  IPv4 host addresses (billing-assigned first, then allocated) are paired with its
  usernames in sorted order; a username left without one gets no Framed-IP-Address, and
  networks never do (a /29 is a route, not a Framed-IP-Address).
- radreply rows for pool allocations (issue #24): each ``[[pool]]`` names the attribute
  its allocation travels in (``Pool.attribute``): ``Delegated-IPv6-Prefix`` (RFC 4818,
  DHCPv6-PD on RouterOS), ``Framed-IPv6-Prefix`` (RFC 3162), ``Framed-Route``
  (``100.64.8.0/29 0.0.0.0 1``, RFC 2865 5.22), ``Framed-IP-Address`` (the host rule
  above) or ``none``. A billing-assigned value that fills the pool's slot travels in the
  same attribute. These rows go to the account's first username only (one prefix per
  account, not per login); same ident ``(username, attribute)``, so a change is an Update.
- A username billing lists on two accounts belongs to the lowest account id (stable
  from pass to pass); the other accounts' rows for it become ``Conflict`` values.

Below that, FreeRADIUS's reply predicted (``effective_reply``, rlm_sql's merge of
radreply and group replies): ``targets.radius`` uses it to choose between a CoA and a
Disconnect for a live session, from rows it has read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from provisiond.core import addresses, ipam
from provisiond.core.changes import Conflict, Key, Resource
from provisiond.core.model import Account, Match

FRAMED_IP = "Framed-IP-Address"
FRAMED_ROUTE = "Framed-Route"
FRAMED_IP_NETMASK = "Framed-IP-Netmask"
FRAMED_IPV6_PREFIX = "Framed-IPv6-Prefix"
DELEGATED_IPV6_PREFIX = "Delegated-IPv6-Prefix"
#: The radreply attributes provisiond writes (and so reads back, by ledger).
REPLY_ATTRIBUTES = (FRAMED_IP, FRAMED_IP_NETMASK, FRAMED_ROUTE, FRAMED_IPV6_PREFIX,
                    DELEGATED_IPV6_PREFIX)
_PREFIX_ATTRIBUTES = frozenset({FRAMED_ROUTE, FRAMED_IPV6_PREFIX, DELEGATED_IPV6_PREFIX})


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
    groups: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    active: bool | None = None
    delinquent: bool | None = None


def selects(mapping: RadiusMappingLike, account: Account) -> bool:
    return Match.of(mapping).selects(account)


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


def reply_row(username: str, attribute: str, value: str, account: Account) -> Resource:
    return Resource(
        kind="radreply",
        group=attribute,
        ident=(("username", username), ("attribute", attribute)),
        attrs=(("op", "="), ("value", value)),
        account_id=account.id,
        account_name=account.name,
    )


def reply_value(attribute: str, value: str) -> str:
    """One spelling per value of a managed radreply attribute (desire and observe agree).

    ``Framed-IP-Address``: the dotted quad; the IPv6 prefixes: ``2001:db8:100::/56``;
    ``Framed-Route``: ``100.64.8.0/29 0.0.0.0 1`` (destination with its length, then the
    gateway and metrics as written). Anything unparsable comes back as it is.
    """
    text = value.strip()
    if attribute in (FRAMED_IP, FRAMED_IP_NETMASK):
        return addresses.ipv4_host(text) or value
    head, _, rest = text.partition(" ")
    span = addresses.parse(head)
    if span is None or "-" in head:
        return value
    version, first, last = span
    prefix = f"{addresses.text_of(version, first)}/{ipam.BITS[version] - (last - first + 1).bit_length() + 1}"
    if attribute == FRAMED_ROUTE:
        return " ".join([prefix, *rest.split()])
    return prefix


def ipv4_hosts(
    account: Account, allocated: Mapping[str, tuple[str, ...]], hidden: frozenset[str] = frozenset()
) -> list[str]:
    """Single IPv4 addresses of the account, billing-assigned first, without duplicates;
    ``hidden``: allocated addresses whose pool sends them otherwise (or not at all)."""
    out: dict[str, None] = {}
    for text in (*account.addresses, *(a for a in allocated.get(account.id, ()) if a not in hidden)):
        host = addresses.ipv4_host(text)
        if host is not None:  # a network, IPv6 or a name gets no Framed-IP-Address
            out.setdefault(host, None)
    return list(out)


def pool_replies(
    account: Account,
    allocated: Mapping[str, tuple[str, ...]],
    pools: Sequence[ipam.Pool],
    *,
    by_shape: Mapping[tuple[int, int], Sequence[ipam.Pool]] | None = None,
) -> tuple[list[tuple[str, str]], frozenset[str]]:
    """The (attribute, value) pairs the account's pool slots send, and the allocated
    addresses the Framed-IP-Address rule must skip (their pool sends something else).

    ``by_shape``: the pools by (IP family, prefix length), to find an allocation's pool
    from its text when only one pool has that shape (``shapes(pools)``).
    """
    shape_of = by_shape if by_shape is not None else shapes(pools)
    out: dict[str, str] = {}
    hidden: set[str] = set()
    for text in allocated.get(account.id, ()):
        pool = _pool_of(text, pools, shape_of)
        if pool is None or (pool.attribute == FRAMED_IP and "/" not in text):
            continue
        hidden.add(text)
        if pool.attribute == FRAMED_IP:  # an interface block: its first host, and its mask
            host, mask = interface_address(text)
            out.setdefault(FRAMED_IP, host)
            out.setdefault(FRAMED_IP_NETMASK, mask)
            continue
        if pool.attribute in _PREFIX_ATTRIBUTES:
            # A lease's text is already in its one spelling (``ipam.Pool.text``).
            prefix = text if "/" in text else f"{text}/{ipam.BITS[pool.version]}"
            out.setdefault(pool.attribute, f"{prefix} 0.0.0.0 1" if pool.attribute == FRAMED_ROUTE else prefix)
    if account.addresses:
        for pool, given in ipam.slots(account, pools):
            if given is None or pool.attribute not in _PREFIX_ATTRIBUTES:
                continue
            span = addresses.parse(given)
            if span is not None and (pool.attribute != FRAMED_ROUTE or span[1] != span[2]):
                value = f"{given} 0.0.0.0 1" if pool.attribute == FRAMED_ROUTE else given
                out.setdefault(pool.attribute, reply_value(pool.attribute, value))
    return sorted(out.items()), frozenset(hidden)


def interface_address(block: str) -> tuple[str, str]:
    """An IPv4 block given as an interface block: (its first host, its netmask); the
    router's side of the link is the operator's to configure."""
    network, _, length = block.partition("/")
    bits = int(length)
    base = int.from_bytes(bytes(int(p) for p in network.split(".")), "big")
    mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF

    def dotted(value: int) -> str:
        return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))

    return dotted((base & mask) + 1), dotted(mask)


def shapes(pools: Sequence[ipam.Pool]) -> dict[tuple[int, int], list[ipam.Pool]]:
    out: dict[tuple[int, int], list[ipam.Pool]] = {}
    for pool in pools:
        out.setdefault((pool.version, pool.length), []).append(pool)
    return out


def _pool_of(
    text: str, pools: Sequence[ipam.Pool], by_shape: Mapping[tuple[int, int], Sequence[ipam.Pool]]
) -> ipam.Pool | None:
    """The configured pool an allocated address or prefix lies in (None: none does)."""
    version = 6 if ":" in text else 4
    _, slash, length = text.partition("/")
    candidates = by_shape.get((version, int(length) if slash and length.isdigit() else ipam.BITS[version]), ())
    if len(candidates) == 1:
        return candidates[0]  # pools never overlap: the only pool of this shape
    span = addresses.parse(text)
    return next((p for p in pools if p.within(span)), None)


def radius(
    accounts: Iterable[Account],
    allocated: Mapping[str, tuple[str, ...]],
    mappings: Sequence[RadiusMappingLike],
    *,
    framed_ip: bool = True,
    pools: Sequence[ipam.Pool | ipam.PoolSpec] = (),
    withheld: frozenset[str] = frozenset(),
) -> tuple[dict[Key, Resource], list[Conflict]]:
    """The desired radusergroup/radreply Resources by key, and the conflicts.

    ``pools``: the configured ``[[pool]]``s, which say which attribute carries each
    allocation; without them every allocated IPv4 host is a Framed-IP-Address.
    ``withheld``: accounts that get no RADIUS rows this pass (a pool that should have
    given them an address is exhausted, and says ``on_exhausted = "withhold"``)."""
    built = [p if isinstance(p, ipam.Pool) else ipam.Pool.from_settings(p) for p in pools]
    by_shape = shapes(built)
    desired: dict[Key, Resource] = {}
    conflicts: list[Conflict] = []
    owner: dict[str, str] = {}  # username -> account id that owns it
    ordered = sorted(accounts, key=lambda a: (len(a.id), a.id))
    matches = [(m, Match.of(m)) for m in mappings]
    for account in ordered:
        for username in account.usernames:
            owner.setdefault(username, account.id)
    for account in ordered:
        if account.id in withheld:
            continue
        groups: dict[str, int] = {}
        for m, match in matches:
            if match.selects(account):
                groups[m.radius_group] = min(m.priority, groups.get(m.radius_group, m.priority))
        if not groups:
            continue
        usernames = sorted(set(account.usernames))
        replies, hidden = pool_replies(account, allocated, built, by_shape=by_shape) if built else ([], frozenset())
        addresses = ipv4_hosts(account, allocated, hidden) if framed_ip else []
        for i, username in enumerate(usernames):
            rows = [usergroup_row(username, g, p, account) for g, p in sorted(groups.items())]
            if i < len(addresses):
                rows.append(framed_ip_row(username, addresses[i], account))
            if i == 0:
                rows += [reply_row(username, attr, value, account) for attr, value in replies]
            holder = owner[username]
            for row in rows:
                if holder != account.id:
                    conflicts.append(Conflict(row, f"username {username!r} also belongs to account {holder}"))
                else:
                    desired[row.key] = row
    conflicts.sort(key=lambda c: (c.resource.group, c.resource.ident, c.resource.account_id))
    return desired, conflicts


# Reply attributes RouterOS changes on a live session by CoA (MikroTik manual, "RADIUS",
# ../shared/FREERADIUS.md section 4). Anything else - an address, a pool, Mikrotik-Address-List -
# needs the session to start over: Disconnect-Request.
COA_CHANGEABLE = frozenset(
    {
        "Mikrotik-Group", "Mikrotik-Recv-Limit", "Mikrotik-Xmit-Limit", "Mikrotik-Rate-Limit",
        "Mikrotik-Mark-Id", "Mikrotik-Advertise-URL", "Mikrotik-Advertise-Interval",
        "Filter-Id", "Session-Timeout", "Idle-Timeout", "Port-Limit",
    }
)


# -- FreeRADIUS's reply, predicted (rlm_sql mod_authorize, ../shared/FREERADIUS.md section 1) ------
def effective_reply(
    user_reply: Sequence[tuple[str, str, str]],
    groups: Sequence[tuple[int, str]],
    group_reply: Mapping[str, Sequence[tuple[str, str, str]]],
) -> tuple[dict[str, list[str]], set[str]]:
    """The reply attributes rlm_sql would send, and the groups it read.

    radreply first; groups by priority while each group's reply says ``Fall-Through = Yes``
    (a group without reply rows stops the loop); ``Fall-Through = No`` in radreply skips
    groups. ``=`` adds an attribute not yet present, ``:=`` replaces, ``+=`` appends.
    """
    reply: dict[str, list[str]] = {}
    fall = _merge(reply, user_reply)
    used: set[str] = set()
    if fall is False:
        return reply, used
    seen: set[str] = set()
    for _, g in groups:
        if g in seen:
            continue
        seen.add(g)
        used.add(g)
        if not _merge(reply, group_reply.get(g, ())):
            break
    return reply, used


def _merge(reply: dict[str, list[str]], rows: Iterable[tuple[str, str, str]]) -> bool | None:
    """Merge one result set into ``reply`` like rlm_sql's pairmove; its Fall-Through, if any.

    Operators compare against the reply as it was before this result set: two ``=`` rows
    for one attribute in the same set are both sent (../shared/FREERADIUS.md section 1). Names are
    case-insensitive, as in FreeRADIUS's dictionary.
    """
    fall: bool | None = None
    before = set(reply)
    replaced: set[str] = set()
    for raw_attr, op, value in rows:
        attr = _canonical(raw_attr)
        if attr == "Fall-Through":
            fall = (value or "").strip().lower() in ("yes", "1")
            continue
        if op == ":=" and attr not in replaced:
            reply[attr] = [value]
            replaced.add(attr)
        elif op in ("+=", ":=") or (op == "=" and attr not in before):
            reply.setdefault(attr, []).append(value)
    return fall


_CANONICAL = {a.lower(): a for a in (*COA_CHANGEABLE, *REPLY_ATTRIBUTES, "Fall-Through", "Mikrotik-Address-List")}


def canonical(attr: str) -> str:
    """An attribute name as provisiond spells it (FreeRADIUS reads names case-insensitively)."""
    return _CANONICAL.get(attr.lower(), attr)


def _canonical(attr: str) -> str:
    return _CANONICAL.get(attr.lower(), attr)


def reply_diff(old: Mapping[str, list[str]], new: Mapping[str, list[str]]) -> str:
    parts = []
    for a in sorted(old.keys() | new.keys()):
        if old.get(a) != new.get(a):
            parts.append(f"{a} {','.join(old.get(a, [])) or '-'} -> {','.join(new.get(a, [])) or '-'}")
    return "; ".join(parts)
