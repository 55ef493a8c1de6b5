"""Address parsing and RouterOS's normal form (ROUTEROS.md §2.2).

Billing addresses are parsed here when the Source reads them; address-list entries
are compared in the form RouterOS stores them, on both sides: IPv4 hosts without
``/32``, IPv6 hosts with ``/128``, networks with host bits cleared, ranges that are
exactly one CIDR block collapsed to it. Pure.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

import netaddr


def span(address: str) -> tuple[int, int, int] | None:
    """(version, first, last) as integers of an address or CIDR network; None otherwise."""
    value = address.strip()
    try:
        n = int(ipaddress.IPv4Address(value))
        return 4, n, n
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None
    return net.version, int(net.network_address), int(net.broadcast_address)


def ipv4_host(address: str) -> str | None:
    """The address if it is a single IPv4 host (``/32`` allowed), canonical; else None."""
    value = address.strip().removesuffix("/32")
    if _is_canonical_v4(value):
        return value
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def is_canonical_v4(value: str) -> bool:
    return _is_canonical_v4(value)


def _is_canonical_v4(value: str) -> bool:
    """Fast path for the common case: a dotted quad already in canonical form."""
    try:
        return str(ipaddress.IPv4Address(value)) == value
    except ValueError:
        return False


@lru_cache(maxsize=1 << 16)
def billing_form(text: str) -> str:
    """A billing address or network in RouterOS form; ValueError names the bad text.

    Unlike ``routeros_form`` this accepts only IP addresses and CIDR networks: a DNS
    name or a typo in billing is an error, not an address-list entry.
    """
    value = text.strip()
    if _is_canonical_v4(value):
        return value
    try:
        ip = ipaddress.ip_address(value)
        return str(ip) if ip.version == 4 else f"{ip}/128"
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or network: {text!r}") from None
    return routeros_form(str(net))


@lru_cache(maxsize=1 << 16)
def routeros_form(text: str) -> str:
    """The string RouterOS prints for an address-list ``address`` it was given ``text`` for.

    DNS names and ranges that are not one CIDR block come back unchanged (stripped).
    """
    value = text.strip()
    if _is_canonical_v4(value):
        return value
    try:  # a single address: the stdlib parser is several times faster than netaddr
        ip = ipaddress.ip_address(value)
        return str(ip) if ip.version == 4 else f"{ip}/128"
    except ValueError:
        pass
    if "-" in value and "/" not in value:
        try:
            start, end = (p.strip() for p in value.split("-", 1))
            cidrs = netaddr.IPRange(start, end).cidrs()
        except (netaddr.AddrFormatError, ValueError, TypeError):
            return value
        if len(cidrs) == 1:
            return _net_form(cidrs[0])
        return f"{netaddr.IPAddress(start)}-{netaddr.IPAddress(end)}"
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return value  # a DNS name: stored as given
    return _net_form(net.cidr)


def _net_form(net: netaddr.IPNetwork) -> str:
    if net.version == 4 and net.prefixlen == 32:
        return str(net.ip)
    if net.version == 6:
        return f"{net.network}/{net.prefixlen}"
    return str(net.cidr)


def family(address: str) -> int:
    """4 or 6 for an address in RouterOS form (DNS names count as 4)."""
    return 6 if ":" in address else 4


def sort_key(value: str) -> tuple[int, int, str]:
    """Orders addresses numerically (``10.0.0.9`` before ``10.0.0.10``), other text after."""
    if not value or not (value[0].isdigit() or ":" in value):
        return (2, 0, value)  # a username, group or list name: skip the parser
    head = value.split("/", 1)[0].split("-", 1)[0]
    try:
        ip = ipaddress.ip_address(head)
    except ValueError:
        return (2, 0, value)
    return (ip.version - 4 and 1, int(ip), value)
