"""A pool as the allocator sees it: its usable space, prefix length, slot and RADIUS attribute.

``ipam.allocate`` walks a ``Pool``'s ``ranges`` in steps of ``step`` addresses; the
settings' ``[[pool]]`` entries become Pools through ``Pool.from_settings``, once per pass
(the engine, the RADIUS desire, ``ipam list``, the metrics). A Pool is IPv4 or IPv6 and
hands out single addresses or aligned prefixes of ``prefix_length`` (issue #24); its
``slot`` says which pools compete for one account. Pure.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

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
    @property
    def prefix_length(self) -> int | None: ...
    @property
    def radius_attribute(self) -> str | None: ...


#: How a pool's allocation reaches FreeRADIUS (a radreply row per account), or "none".
RADIUS_ATTRIBUTES = ("Framed-IP-Address", "Framed-Route", "Framed-IPv6-Prefix", "Delegated-IPv6-Prefix", "none")
BITS = {4: 32, 6: 128}


def default_attribute(version: int, length: int) -> str:
    """The RADIUS attribute of a pool that names none: today's Framed-IP-Address for IPv4
    hosts, Framed-Route for IPv4 blocks, Delegated-IPv6-Prefix for IPv6 prefixes."""
    if version == 4:
        return "Framed-IP-Address" if length == 32 else "Framed-Route"
    return "none" if length == 128 else "Delegated-IPv6-Prefix"


@dataclass(frozen=True, slots=True, eq=False)
class Pool:
    """A group's addresses or prefixes. ``usable`` already lacks exclusions (and, for a
    pool of single addresses, network and broadcast addresses).

    ``prefix_length`` is the length of every allocation (None: single addresses, /32 or
    /128); allocations are aligned blocks of that size lying wholly inside ``usable``.
    """

    name: str
    group: str | None
    usable: netaddr.IPSet
    priority: int = 0
    hold: timedelta = timedelta(days=1)
    # Which accounts it serves; None: the members of ``group``.
    match: Match | None = field(default=None, compare=False)
    prefix_length: int | None = None
    radius_attribute: str | None = None
    networks: tuple[tuple[int, int], ...] = ()  # (first, last) of each configured network
    version: int = field(init=False)
    length: int = field(init=False)  # the allocations' prefix length (32/128 for hosts)
    step: int = field(init=False)  # addresses per allocation
    attribute: str = field(init=False)  # ``radius_attribute`` or the family's default
    # Inclusive integer ranges of ``usable``, sorted; the allocator walks these.
    ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranges = tuple((int(r.first), int(r.last)) for r in self.usable.iter_ipranges())
        versions = {c.version for c in self.usable.iter_cidrs()}
        if len(versions) > 1:
            raise ValueError(f"pool {self.name}: mixes IPv4 and IPv6 networks")
        version = versions.pop() if versions else (6 if (self.prefix_length or 0) > 32 else 4)
        length = BITS[version] if self.prefix_length is None else self.prefix_length
        if not 0 < length <= BITS[version]:
            raise ValueError(f"pool {self.name}: prefix_length {length} does not fit IPv{version}")
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "step", 1 << (BITS[version] - length))
        object.__setattr__(self, "attribute", self.radius_attribute or default_attribute(version, length))
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "starts", tuple(r[0] for r in ranges))

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
        prefix_length: int | None = None,
        radius_attribute: str | None = None,
        match: Match | None = None,
    ) -> Pool:
        """A pool from network strings; exclusions are addresses, networks or ``a-b`` ranges."""
        usable = netaddr.IPSet()
        nets = [netaddr.IPNetwork(text, flags=netaddr.NOHOST) for text in networks]
        for net in nets:
            usable.add(net)
        for text in exclude:
            if "-" in text:
                start, end = (p.strip() for p in text.split("-", 1))
                usable.remove(netaddr.IPRange(start, end))
            else:
                usable.remove(netaddr.IPNetwork(text.strip()))
        for net in nets:
            if prefix_length is None or prefix_length == BITS[net.version]:
                for reserved in _reserved(net):
                    usable.remove(reserved)
        if not isinstance(hold, timedelta):
            hold = timedelta(seconds=hold)
        return cls(name=name, group=group, usable=usable, priority=priority, hold=hold, match=match,
                   prefix_length=prefix_length, radius_attribute=radius_attribute,
                   networks=tuple((int(n.first), int(n.last)) for n in nets))

    @classmethod
    def from_settings(cls, settings: PoolSpec) -> Pool:
        return cls.build(
            settings.name,
            settings.group,
            settings.networks,
            exclude=settings.exclude,
            priority=settings.priority,
            hold=settings.hold,
            prefix_length=settings.prefix_length,
            radius_attribute=settings.radius_attribute,
            match=Match.of(settings),
        )

    def selects(self, account: Account) -> bool:
        if self.match is None:
            return self.group in account.groups
        return self.match.selects(account)

    @property
    def size(self) -> int:
        """How many allocations the pool can hand out (addresses, or aligned prefixes)."""
        if self.step == 1:
            return int(self.usable.size)
        step = self.step
        return sum(max(0, (last + 1) // step - -(-first // step)) for first, last in self.ranges)

    @property
    def slot(self) -> tuple[int, str]:
        """Pools of one slot compete (priority); an account holds one allocation per slot."""
        return (self.version, self.attribute if self.version == 6 else "")

    def contains(self, value: int) -> bool:
        i = bisect.bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ranges[i][1]

    def offers(self, span: addresses.Span | None) -> bool:
        """Whether ``span`` is one allocation this pool can hand out (aligned, usable)."""
        if span is None or span[0] != self.version:
            return False
        _, first, last = span
        if last - first + 1 != self.step or first % self.step:
            return False
        i = bisect.bisect_right(self.starts, first) - 1
        return i >= 0 and last <= self.ranges[i][1]

    def within(self, span: addresses.Span | None) -> bool:
        """Whether ``span`` lies in one of the configured networks (exclusions or not)."""
        return span is not None and span[0] == self.version and any(
            a <= span[1] and span[2] <= b for a, b in self.networks)

    def text(self, first: int) -> str:
        """The lease text of the allocation starting at ``first`` (a host: no suffix)."""
        if self.step == 1:
            return _text(self.version, first)
        return addresses.form_of((self.version, first, first + self.step - 1))

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        return self.offers(addresses.parse(address))


def _reserved(net: netaddr.IPNetwork) -> Iterator[netaddr.IPAddress]:
    """Addresses of a network no host may have."""
    if net.version == 4 and net.prefixlen < 31:
        yield net.network
        yield net.broadcast
    elif net.version == 6 and net.prefixlen < 127:
        yield net.network  # the Subnet-Router anycast address (RFC 4291 2.6.1)


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
