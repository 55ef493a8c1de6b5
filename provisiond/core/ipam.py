"""IPAM: which account holds which address of which pool. Pure: values in, values out.

The reconciler calls ``allocate`` right after the Source read, with the Snapshot's
accounts, the configured ``Pool``s and the ``Lease``s it read from the StateStore; the
``Allocation`` it gets back feeds ``desire`` (``Allocation.addresses``) and, in apply
only, ``StateStore.reserve``, which records it in one transaction BEFORE any router or
RADIUS write, so a crash never hands one address out twice. ``plan`` computes the same
Allocation and writes nothing.

The rules (issue #4):

- an account a pool selects (its group, or its selector keys: ``Match``) gets one
  address of that pool; selected by several pools,
  the pool with the highest priority wins (ties: the lower pool name);
- deterministic: accounts are taken in a stable order and get the lowest free
  address, so a plan and the apply after it agree; sticky: a leased address stays with
  its account across passes, restarts and config reloads;
- an account that leaves the group releases its address into hold for ``Pool.hold``;
  coming back during the hold returns the same address; after it the address is free;
  a held address is never given to anyone else;
- a billing-assigned address (``Account.addresses``, same IP family as the pool) wins:
  no allocation for that account in that pool. If it lies in a pool where another
  account holds it, that is a conflict, reported for both accounts;
- a full pool fails that account (``failures``), never the pass;
- a lease whose address is no longer usable (pool shrunk, address excluded, pool
  removed from the config) is reported (``out_of_pool``), never moved or released
  behind the operator's back.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import netaddr

from provisiond.core import addresses
from provisiond.core.model import Account, Match


class PoolSpec(Protocol):
    """What a pool is configured as (``settings.PoolSettings`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def group(self) -> str | None: ...
    @property
    def networks(self) -> list[str]: ...
    @property
    def exclude(self) -> list[str]: ...
    @property
    def priority(self) -> int: ...
    @property
    def hold(self) -> float: ...

LeaseState = Literal["leased", "held"]


@dataclass(frozen=True, slots=True)
class Lease:
    """One account's address in one pool: ``leased``, or ``held`` for it until ``held_until``."""

    pool: str
    address: str
    account_id: str
    state: LeaseState = "leased"
    held_until: datetime | None = None
    leased_at: datetime | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "account_id": self.account_id,
            "pool": self.pool,
            "address": self.address,
            "state": self.state,
        }
        if self.held_until is not None:
            out["held_until"] = self.held_until.isoformat()
        return out


@dataclass(frozen=True, slots=True, eq=False)
class Pool:
    """A group's addresses. ``usable`` already lacks exclusions, network and broadcast."""

    name: str
    group: str | None
    usable: netaddr.IPSet
    priority: int = 0
    hold: timedelta = timedelta(days=1)
    # Which accounts it serves; None: the members of ``group``.
    match: Match | None = field(default=None, compare=False)
    version: int = field(init=False)
    # Inclusive integer ranges of ``usable``, sorted; the allocator walks these.
    ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranges = tuple((int(r.first), int(r.last)) for r in self.usable.iter_ipranges())
        versions = {c.version for c in self.usable.iter_cidrs()}
        if len(versions) > 1:
            raise ValueError(f"pool {self.name}: mixes IPv4 and IPv6 networks")
        object.__setattr__(self, "version", versions.pop() if versions else 4)
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "starts", tuple(r[0] for r in ranges))

    def selects(self, account: Account) -> bool:
        if self.match is None:
            return self.group in account.groups
        return self.match.selects(account)

    @classmethod
    def build(
        cls,
        name: str,
        group: str | None,
        networks: Iterable[str],
        *,
        exclude: Iterable[str] = (),
        priority: int = 0,
        hold: timedelta | float = timedelta(days=1),
        match: Match | None = None,
    ) -> Pool:
        """A pool from network strings; exclusions are addresses, networks or ``a-b`` ranges."""
        usable = netaddr.IPSet()
        for text in networks:
            net = netaddr.IPNetwork(text, flags=netaddr.NOHOST)
            usable.add(net)
        for text in exclude:
            if "-" in text:
                start, end = (p.strip() for p in text.split("-", 1))
                usable.remove(netaddr.IPRange(start, end))
            else:
                usable.remove(netaddr.IPNetwork(text.strip()))
        for text in networks:
            net = netaddr.IPNetwork(text, flags=netaddr.NOHOST)
            for reserved in _reserved(net):
                usable.remove(reserved)
        if not isinstance(hold, timedelta):
            hold = timedelta(seconds=hold)
        return cls(name=name, group=group, usable=usable, priority=priority, hold=hold, match=match)

    @classmethod
    def from_settings(cls, settings: PoolSpec) -> Pool:
        return cls.build(
            settings.name,
            settings.group,
            settings.networks,
            exclude=settings.exclude,
            priority=settings.priority,
            hold=settings.hold,
            match=Match.of(settings),
        )

    @property
    def size(self) -> int:
        return int(self.usable.size)

    def contains(self, value: int) -> bool:
        i = bisect.bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ranges[i][1]

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        parsed = _parse(address)
        return parsed is not None and parsed[0] == self.version and self.contains(parsed[1])


def _reserved(net: netaddr.IPNetwork) -> Iterator[netaddr.IPAddress]:
    """Addresses of a network no host may have."""
    if net.version == 4 and net.prefixlen < 31:
        yield net.network
        yield net.broadcast
    elif net.version == 6 and net.prefixlen < 127:
        yield net.network  # the Subnet-Router anycast address (RFC 4291 2.6.1)


def _parse(address: str) -> tuple[int, int] | None:
    """(version, integer) of a single address, or None for anything else."""
    text = address.strip()
    if text.endswith("/32") or text.endswith("/128"):
        text = text.rsplit("/", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


def _billing_ranges(address: str) -> tuple[int, int, int] | None:
    """(version, first, last) of a billing address or network; None if unparsable."""
    return addresses.span(address)


def overlaps(pool: Pool, address: str) -> bool:
    """Whether a billing address or network shares any address with the pool."""
    span = _billing_ranges(address)
    if span is None or span[0] != pool.version:
        return False
    _, first, last = span
    i = bisect.bisect_right(pool.starts, last) - 1
    return i >= 0 and pool.ranges[i][1] >= first


def _text(version: int, value: int) -> str:
    # One spelling per value whatever the Python version: the lease table is keyed by it.
    return addresses.text_of(version, value)


@dataclass(frozen=True, slots=True)
class AddressConflict:
    """A billing-assigned address that lies in a pool where another account holds it.

    Reported twice, once for each account (``account_id``), naming the other one.
    """

    account_id: str
    other_account_id: str
    pool: str
    address: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "other_account_id": self.other_account_id,
            "pool": self.pool,
            "address": self.address,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class OutOfPool:
    """A lease whose address the pool no longer offers; kept as it is until a human acts."""

    lease: Lease
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {**self.lease.to_json(), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one pass decided. ``new``/``releases``/``returns`` are what ``reserve`` records.

    ``releases`` carry their new state (``held`` with ``held_until``); ``returns`` are held
    addresses going back to their account (state ``leased``). ``addresses`` maps every
    account with a pool address to its addresses (what ``desire`` adds to billing's).
    """

    new: tuple[Lease, ...] = ()
    releases: tuple[Lease, ...] = ()
    returns: tuple[Lease, ...] = ()
    expired: tuple[Lease, ...] = ()
    failures: Mapping[str, str] = field(default_factory=dict)
    conflicts: tuple[AddressConflict, ...] = ()
    out_of_pool: tuple[OutOfPool, ...] = ()
    addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exhausted: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # pool -> accounts left without

    @property
    def changed(self) -> bool:
        """Whether ``reserve`` has anything to record."""
        return bool(self.new or self.releases or self.returns or self.expired)

    def keeping(self, pools: Iterable[str]) -> Allocation:
        """This allocation without the releases in ``pools``: their leases stay (a pool
        held back because its mapping matches nobody)."""
        held = set(pools)
        return replace(self, releases=tuple(x for x in self.releases if x.pool not in held))

    @property
    def change_count(self) -> int:
        """Decisions a human reviews (expired holds are housekeeping, not counted)."""
        return len(self.new) + len(self.releases) + len(self.returns)

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": self.change_count,
            "new": [lease.to_json() for lease in self.new],
            "released": [lease.to_json() for lease in self.releases],
            "returned": [lease.to_json() for lease in self.returns],
            "expired": [lease.to_json() for lease in self.expired],
            "failures": dict(sorted(self.failures.items())),
            "conflicts": [c.to_json() for c in self.conflicts],
            "out_of_pool": [o.to_json() for o in self.out_of_pool],
        }

    def lines(self) -> list[str]:
        """One human line per decision, for the plan's text rendering."""
        out = [f"+ lease {x.pool} {x.address}  acct {x.account_id}" for x in self.new]
        out += [f"< return {x.pool} {x.address}  acct {x.account_id}" for x in self.returns]
        out += [
            f"- release {x.pool} {x.address}  acct {x.account_id} (held until "
            f"{x.held_until.isoformat() if x.held_until else '?'})"
            for x in self.releases
        ]
        out += [f"! {aid}: {why}" for aid, why in sorted(self.failures.items())]
        out += [f"! {c.account_id}: {c.reason}" for c in self.conflicts]
        out += [f"! {o.lease.account_id}: {o.reason}" for o in self.out_of_pool]
        return out


def account_order(account_id: str) -> tuple[int, str]:
    """The stable order accounts are served in (the same one ``desire`` uses)."""
    return (len(account_id), account_id)


class _Cursor:
    """Walks a pool's ranges upwards, skipping used addresses: lowest free first.

    Allocation only ever takes the address under the cursor, so one forward walk serves
    a whole pass without materialising the pool.
    """

    def __init__(self, pool: Pool, used: set[int], blocked: list[tuple[int, int]]) -> None:
        self._ranges = pool.ranges
        self._used = used
        self._blocked = sorted(blocked)
        self._index = 0
        self._value = self._ranges[0][0] if self._ranges else 0
        self._b = 0

    def take(self) -> int | None:
        while self._index < len(self._ranges):
            first, last = self._ranges[self._index]
            value = max(self._value, first)
            while value <= last:
                while self._b < len(self._blocked) and self._blocked[self._b][1] < value:
                    self._b += 1
                if self._b < len(self._blocked) and self._blocked[self._b][0] <= value:
                    value = self._blocked[self._b][1] + 1
                    continue
                if value in self._used:
                    value += 1
                    continue
                self._value = value + 1
                self._used.add(value)
                return value
            self._index += 1
            self._value = 0
        return None


def allocate(
    accounts: Iterable[Account],
    pools: Sequence[Pool],
    leases: Sequence[Lease],
    now: datetime,
    *,
    scope: frozenset[str] | None = None,
    blocked_billing: Iterable[str] = (),
) -> Allocation:
    """Decide every account's pool address for this pass. See the module docstring.

    ``scope`` (a scoped pass): ``accounts`` are only those ids' billing; leases of
    accounts outside it are left as they are (they still block their addresses), and
    only scoped ids missing from ``accounts`` release theirs. ``blocked_billing``:
    billing addresses of accounts outside the scope, which no pool may hand out.
    """
    ranked = sorted(pools, key=lambda p: (-p.priority, p.name))
    by_name = {p.name: p for p in pools}
    ordered = sorted(accounts, key=lambda a: account_order(a.id))

    live: list[Lease] = []
    expired: list[Lease] = []
    for lease in leases:
        if lease.state == "held" and lease.held_until is not None and lease.held_until <= now:
            expired.append(lease)
        else:
            live.append(lease)

    # Addresses nobody else may get: every live lease, every single billing address;
    # billing networks block whole ranges.
    used: dict[int, set[int]] = {4: set(), 6: set()}
    holder: dict[tuple[int, int], Lease] = {}
    parsed_of: dict[str, tuple[int, int] | None] = {}

    def inside(pool: Pool, address: str) -> bool:
        parsed = parsed_of[address] if address in parsed_of else _parse(address)
        return parsed is not None and parsed[0] == pool.version and pool.contains(parsed[1])

    for lease in live:
        parsed = parsed_of[lease.address] = _parse(lease.address)
        if parsed is not None:
            used[parsed[0]].add(parsed[1])
            holder[parsed] = lease
    sorted_held = {v: sorted(n for (w, n) in holder if w == v) for v in (4, 6)}
    blocked: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for address in blocked_billing:
        span = _billing_ranges(address)
        if span is not None:
            if span[1] == span[2]:
                used[span[0]].add(span[1])
            else:
                blocked[span[0]].append((span[1], span[2]))
    conflicts: list[AddressConflict] = []
    billing_family: dict[str, set[int]] = {}
    for account in ordered:
        for address in account.addresses:
            span = _billing_ranges(address)
            if span is None:
                continue
            version, first, last = span
            billing_family.setdefault(account.id, set()).add(version)
            if first == last:
                used[version].add(first)
            else:
                blocked[version].append((first, last))
            conflicts += _billing_conflicts(
                account.id, version, first, last, holder, ranked, sorted_held
            )

    leased_by: dict[str, list[Lease]] = {}
    held_by: dict[tuple[str, str], list[Lease]] = {}
    for lease in live:
        if lease.state == "leased":
            leased_by.setdefault(lease.account_id, []).append(lease)
        else:
            held_by.setdefault((lease.account_id, lease.pool), []).append(lease)

    def wanted(account: Account) -> list[Pool]:
        """The highest-priority pool of each IP family, unless billing gives that family."""
        out: dict[int, Pool] = {}
        for pool in ranked:
            if pool.version not in out and pool.selects(account):
                out[pool.version] = pool
        billing = billing_family.get(account.id, set())
        return [p for v, p in sorted(out.items()) if v not in billing]

    new: list[Lease] = []
    releases: list[Lease] = []
    returns: list[Lease] = []
    failures: dict[str, str] = {}
    exhausted: dict[str, list[str]] = {}
    out_of_pool: list[OutOfPool] = []
    addresses: dict[str, list[str]] = {}
    cursors: dict[str, _Cursor] = {}
    seen: set[str] = set()

    for account in ordered:
        seen.add(account.id)
        pools_for = wanted(account)
        served: set[str] = set()
        for lease in leased_by.get(account.id, ()):
            lease_pool = by_name.get(lease.pool)
            if lease_pool is None:
                out_of_pool.append(OutOfPool(lease, f"pool {lease.pool} is not configured any more"))
            elif lease_pool in pools_for:
                served.add(lease_pool.name)
                addresses.setdefault(account.id, []).append(lease.address)
                if not inside(lease_pool, lease.address):
                    out_of_pool.append(
                        OutOfPool(lease, f"{lease.address} is no longer part of pool {lease.pool}")
                    )
            else:
                releases.append(_hold(lease, lease_pool, now))
        for pool in pools_for:
            if pool.name in served:
                continue
            back = [x for x in held_by.get((account.id, pool.name), ()) if inside(pool, x.address)]
            if back:
                lease = min(back, key=lambda x: _parse(x.address) or (0, 0))
                returns.append(Lease(pool.name, lease.address, account.id, "leased", None))
                addresses.setdefault(account.id, []).append(lease.address)
                continue
            cursor = cursors.get(pool.name)
            if cursor is None:
                cursor = cursors[pool.name] = _Cursor(pool, used[pool.version], blocked[pool.version])
            value = cursor.take()
            if value is None:
                why = f"pool {pool.name} exhausted"
                failures[account.id] = f"{failures[account.id]}; {why}" if account.id in failures else why
                exhausted.setdefault(pool.name, []).append(account.id)
                continue
            address = _text(pool.version, value)
            new.append(Lease(pool.name, address, account.id, "leased", None))
            addresses.setdefault(account.id, []).append(address)

    # Accounts gone from billing release what they held.
    gone = set(leased_by) - seen
    if scope is not None:
        gone &= scope  # an account outside the scope was not read, not removed
    for account_id in sorted(gone, key=account_order):
        for lease in leased_by[account_id]:
            lease_pool = by_name.get(lease.pool)
            if lease_pool is None:
                out_of_pool.append(OutOfPool(lease, f"pool {lease.pool} is not configured any more"))
            else:
                releases.append(_hold(lease, lease_pool, now))

    return Allocation(
        new=tuple(new),
        releases=tuple(releases),
        returns=tuple(returns),
        expired=tuple(expired),
        failures=failures,
        conflicts=tuple(conflicts),
        out_of_pool=tuple(out_of_pool),
        addresses={k: tuple(sorted(v)) for k, v in addresses.items()},
        exhausted={k: tuple(v) for k, v in exhausted.items()},
    )


def _hold(lease: Lease, pool: Pool, now: datetime) -> Lease:
    return Lease(lease.pool, lease.address, lease.account_id, "held", now + pool.hold)


def _billing_conflicts(
    account_id: str,
    version: int,
    first: int,
    last: int,
    holder: Mapping[tuple[int, int], Lease],
    pools: Sequence[Pool],
    sorted_held: Mapping[int, list[int]],
) -> list[AddressConflict]:
    """Billing gives ``account_id`` [first, last]; find pool leases there held by others."""
    found: list[Lease] = []
    if first == last:
        lease = holder.get((version, first))
        if lease is not None:
            found.append(lease)
    else:
        values = sorted_held[version]
        lo, hi = bisect.bisect_left(values, first), bisect.bisect_right(values, last)
        found = [holder[(version, value)] for value in values[lo:hi]]
    out: list[AddressConflict] = []
    for lease in found:
        if lease.account_id == account_id:
            continue
        if not any(p.name == lease.pool for p in pools):
            continue
        what = "leased" if lease.state == "leased" else "held"
        out.append(
            AddressConflict(
                account_id,
                lease.account_id,
                lease.pool,
                lease.address,
                f"billing assigns {lease.address} (pool {lease.pool}), "
                f"which is {what} to account {lease.account_id}",
            )
        )
        out.append(
            AddressConflict(
                lease.account_id,
                account_id,
                lease.pool,
                lease.address,
                f"{lease.address} ({what}, pool {lease.pool}) is assigned in billing "
                f"to account {account_id}",
            )
        )
    return out


def pool_usage(pool: Pool, leases: Sequence[Lease], now: datetime) -> dict[str, Any]:
    """Size, leased, held and free addresses of a pool; expired holds count as free."""
    leased = held = 0
    for lease in leases:
        if lease.pool != pool.name or lease.address not in pool:
            continue
        if lease.state == "leased":
            leased += 1
        elif lease.held_until is None or lease.held_until > now:
            held += 1
    size = pool.size
    return {
        "name": pool.name,
        "size": size,
        "leased": leased,
        "held": held,
        "free": size - leased - held,
        "utilisation": round((leased + held) / size, 4) if size else 0.0,
    }
