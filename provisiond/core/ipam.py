"""IPAM: which account holds which address or prefix of which pool. Pure: values in, values out.

``core.pool`` says what a pool offers; this module decides who gets what. The
reconciler calls ``allocate`` right after the Source read, with the Snapshot's
accounts, the configured ``Pool``s and the ``Lease``s it read from the StateStore; the
``Allocation`` it gets back feeds ``desire`` (``Allocation.addresses``) and, in apply
only, ``StateStore.reserve``, which records it in one transaction BEFORE any router or
RADIUS write, so a crash never hands one address out twice. ``plan`` computes the same
Allocation and writes nothing.

The rules (issue #4):

- an account a pool selects (its group, or its selector keys: ``Match``) gets one
  address of that pool, or one aligned prefix of ``prefix_length`` (issue #24: a /56 delegated from a /40, a routed /29 from a /22);
  every prefix lies wholly inside the pool's usable space (never across an exclusion).
  An account holds one allocation per *slot*: one IPv4 allocation, and one IPv6
  allocation per RADIUS attribute (a /64 ``Framed-IPv6-Prefix`` beside a /56
  ``Delegated-IPv6-Prefix``); among pools of one slot the highest priority wins (ties:
  the lower pool name);
- deterministic: accounts are taken in a stable order and get the lowest free
  address, so a plan and the apply after it agree; sticky: a leased address stays with
  its account across passes, restarts and config reloads;
- an account that leaves the group releases its address into hold for ``Pool.hold``;
  coming back during the hold returns the same address; after it the address is free;
  a held address is never given to anyone else;
- a billing-assigned address (``Account.addresses``, same IP family as the pool; for
  an IPv6 prefix pool, a prefix of the pool's length) wins: no allocation for that
  account in that slot, and no allocation ever overlaps a billing-assigned value. If
  it lies in a pool where another account holds it, that is a conflict, reported for
  both accounts;
- a full pool fails that account (``failures``), never the pass;
- a lease whose address is no longer usable (pool shrunk, address excluded, pool
  removed from the config) is reported (``out_of_pool``), never moved or released
  behind the operator's back.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from provisiond.core import addresses
from provisiond.core.model import Account
from provisiond.core.pool import BITS as BITS  # re-exported: callers use pools through ipam
from provisiond.core.pool import RADIUS_ATTRIBUTES as RADIUS_ATTRIBUTES
from provisiond.core.pool import Pool as Pool
from provisiond.core.pool import PoolSpec as PoolSpec
from provisiond.core.pool import _billing_ranges
from provisiond.core.pool import default_attribute as default_attribute
from provisiond.core.pool import overlaps as overlaps

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
        """This allocation with the leases of ``pools`` kept: their releases dropped and
        their addresses still the accounts' (a pool held back because its mapping
        matches nobody: nothing of it changes, on the targets either)."""
        held = set(pools)
        kept = [x for x in self.releases if x.pool in held]
        if not kept:
            return self
        addresses = {k: list(v) for k, v in self.addresses.items()}
        for lease in kept:
            addresses.setdefault(lease.account_id, []).append(lease.address)
        return replace(self, releases=tuple(x for x in self.releases if x.pool not in held),
                       addresses={k: tuple(sorted(v)) for k, v in addresses.items()})

    def standing(self) -> Allocation:
        """This allocation as the leases stand, deciding nothing: what a member without
        the global claim plans its routers with (``daemon.members``). New leases and
        returns are another member's to make, so their addresses are left out until
        they are recorded; releases still take their addresses off (the global member
        releases them too); nothing is left for ``reserve`` to record."""
        fresh: dict[str, set[str]] = {}
        for lease in (*self.new, *self.returns):
            fresh.setdefault(lease.account_id, set()).add(lease.address)
        addresses = {k: kept for k, v in self.addresses.items()
                     if (kept := tuple(a for a in v if a not in fresh.get(k, ())))}
        return replace(self, new=(), releases=(), returns=(), expired=(), addresses=addresses)

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
    """Walks a pool's ranges upwards in steps of one allocation, skipping taken and
    blocked space: lowest free first, always aligned to the pool's prefix length.

    Allocation only ever takes the block under the cursor, so one forward walk serves
    a whole pass without materialising the pool.
    """

    def __init__(self, pool: Pool, taken: set[int], blocked: list[tuple[int, int]]) -> None:
        self._ranges = pool.ranges
        self._step = pool.step
        self._taken = taken
        self._blocked = blocked  # sorted by first address
        self._index = 0
        self._value = self._ranges[0][0] if self._ranges else 0
        self._b = 0

    def take(self) -> int | None:
        step = self._step
        blocked = self._blocked
        while self._index < len(self._ranges):
            first, last = self._ranges[self._index]
            value = max(self._value, first)
            if step > 1:
                value = -(-value // step) * step
            while value + step - 1 <= last:
                while self._b < len(blocked) and blocked[self._b][1] < value:
                    self._b += 1
                if self._b < len(blocked) and blocked[self._b][0] <= value + step - 1:
                    value = blocked[self._b][1] + 1
                    if step > 1:
                        value = -(-value // step) * step
                    continue
                if value in self._taken:
                    value += step
                    continue
                self._value = value + step
                self._taken.add(value)
                return value
            self._index += 1
            self._value = 0
        return None


class _Occupancy:
    """Everything no allocation may overlap, per IP family: live leases and billing values.

    A cursor for allocations of ``step`` addresses sees the values of exactly that size
    and alignment as a set of first addresses (the common case: leases of its own pool)
    and every other value as a blocked range.
    """

    def __init__(self) -> None:
        self.points: dict[int, set[int]] = {4: set(), 6: set()}  # single addresses
        self.spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}  # everything wider
        self._views: dict[tuple[int, int], tuple[set[int], list[tuple[int, int]]]] = {}

    def add(self, version: int, first: int, last: int) -> None:
        if first == last:
            self.points[version].add(first)
        else:
            self.spans[version].append((first, last))

    def view(self, version: int, step: int) -> tuple[set[int], list[tuple[int, int]]]:
        key = (version, step)
        if key not in self._views:
            if step == 1:
                taken, blocked = self.points[version], list(self.spans[version])
            else:
                taken, blocked = set(), [(p, p) for p in self.points[version]]
                for first, last in self.spans[version]:
                    if last - first + 1 == step and first % step == 0:
                        taken.add(first)
                    else:
                        blocked.append((first, last))
            blocked.sort()
            self._views[key] = (taken, blocked)
        return self._views[key]


def _billing_gives(pool: Pool, spans: Sequence[addresses.Span]) -> bool:
    """Whether billing already gives the account what ``pool`` would: any value of the
    family for IPv4 and for a pool of IPv6 hosts, a prefix of the pool's size for an
    IPv6 prefix pool."""
    for version, first, last in spans:
        if version == pool.version and (version == 4 or pool.step == 1 or last - first + 1 == pool.step):
            return True
    return False


def _slot_pools(account: Account, ranked: Sequence[Pool]) -> list[Pool]:
    """The first pool of each slot the account's groups select, ``ranked`` by priority."""
    out: dict[tuple[int, str], Pool] = {}
    for pool in ranked:
        if pool.slot not in out and pool.selects(account):
            out[pool.slot] = pool
    return [p for _, p in sorted(out.items())]


def slots(account: Account, pools: Sequence[Pool]) -> list[tuple[Pool, str | None]]:
    """The pool of each slot the account's groups select (highest priority, then name),
    with the billing value that fills that slot instead (None: the pool allocates)."""
    spans = [(a, addresses.parse(a)) for a in account.addresses]
    found: list[tuple[Pool, str | None]] = []
    for pool in _slot_pools(account, sorted(pools, key=lambda p: (-p.priority, p.name))):
        given = [a for a, span in spans if span is not None and _billing_gives(pool, (span,))]
        found.append((pool, given[0] if given else None))
    return found


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

    # Space nobody else may get: every live lease and every billing value.
    occupied = _Occupancy()
    holder: dict[tuple[int, int], Lease] = {}
    width: dict[int, int] = {4: 1, 6: 1}  # the widest lease per family (for conflict lookups)
    span_of: dict[str, addresses.Span | None] = {}

    def inside(pool: Pool, address: str) -> bool:
        parsed = span_of[address] if address in span_of else addresses.parse(address)
        return pool.offers(parsed)

    for lease in live:
        parsed = span_of[lease.address] = addresses.parse(lease.address)
        if parsed is not None:
            version, first, last = parsed
            occupied.add(version, first, last)
            holder[(version, first)] = lease
            width[version] = max(width[version], last - first + 1)
    sorted_held = {v: sorted(n for (w, n) in holder if w == v) for v in (4, 6)}
    for address in blocked_billing:
        span = _billing_ranges(address)
        if span is not None:
            occupied.add(*span)
    conflicts: list[AddressConflict] = []
    billing_spans: dict[str, list[addresses.Span]] = {}
    for account in ordered:
        for address in account.addresses:
            span = _billing_ranges(address)
            if span is None:
                continue
            billing_spans.setdefault(account.id, []).append(span)
            occupied.add(*span)
            conflicts += _billing_conflicts(
                account.id, span, holder, ranked, sorted_held, span_of, width
            )

    leased_by: dict[str, list[Lease]] = {}
    held_by: dict[tuple[str, str], list[Lease]] = {}
    for lease in live:
        if lease.state == "leased":
            leased_by.setdefault(lease.account_id, []).append(lease)
        else:
            held_by.setdefault((lease.account_id, lease.pool), []).append(lease)

    def wanted(account: Account) -> list[Pool]:
        """The highest-priority pool of each slot, unless billing fills that slot."""
        billing = billing_spans.get(account.id, ())
        return [p for p in _slot_pools(account, ranked) if not (billing and _billing_gives(p, billing))]

    new: list[Lease] = []
    releases: list[Lease] = []
    returns: list[Lease] = []
    failures: dict[str, str] = {}
    exhausted: dict[str, list[str]] = {}
    out_of_pool: list[OutOfPool] = []
    allocated: dict[str, list[str]] = {}
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
                allocated.setdefault(account.id, []).append(lease.address)
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
                lease = min(back, key=lambda x: addresses.parse(x.address) or (0, 0, 0))
                returns.append(Lease(pool.name, lease.address, account.id, "leased", None))
                allocated.setdefault(account.id, []).append(lease.address)
                continue
            cursor = cursors.get(pool.name)
            if cursor is None:
                cursor = cursors[pool.name] = _Cursor(pool, *occupied.view(pool.version, pool.step))
            value = cursor.take()
            if value is None:
                why = f"pool {pool.name} exhausted"
                failures[account.id] = f"{failures[account.id]}; {why}" if account.id in failures else why
                exhausted.setdefault(pool.name, []).append(account.id)
                continue
            address = pool.text(value)
            new.append(Lease(pool.name, address, account.id, "leased", None))
            allocated.setdefault(account.id, []).append(address)

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
        addresses={k: tuple(sorted(v)) for k, v in allocated.items()},
        exhausted={k: tuple(v) for k, v in exhausted.items()},
    )


def _hold(lease: Lease, pool: Pool, now: datetime) -> Lease:
    return Lease(lease.pool, lease.address, lease.account_id, "held", now + pool.hold)


def _billing_conflicts(
    account_id: str,
    span: addresses.Span,
    holder: Mapping[tuple[int, int], Lease],
    pools: Sequence[Pool],
    sorted_held: Mapping[int, list[int]],
    span_of: Mapping[str, addresses.Span | None],
    width: Mapping[int, int],
) -> list[AddressConflict]:
    """Billing gives ``account_id`` ``span``; find pool leases overlapping it held by others."""
    version, first, last = span
    found: list[Lease] = []
    if first == last and width[version] == 1:
        lease = holder.get((version, first))
        if lease is not None:
            found.append(lease)
    else:
        values = sorted_held[version]
        lo = bisect.bisect_left(values, first - width[version] + 1)
        hi = bisect.bisect_right(values, last)
        for value in values[lo:hi]:
            lease = holder[(version, value)]
            held = span_of.get(lease.address)
            if held is not None and held[2] >= first:
                found.append(lease)
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
