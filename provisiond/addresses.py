"""Address parsing and RouterOS's normal form (ROUTEROS.md §2.2).

Billing addresses are parsed here when the Source reads them; address-list entries
are compared in the form RouterOS stores them, on both sides: IPv4 hosts without
``/32``, IPv6 hosts with ``/128``, networks with host bits cleared, ranges that are
exactly one CIDR block collapsed to it. Pure.
"""

from __future__ import annotations

import netaddr


def parse(text: str) -> netaddr.IPNetwork:
    """An address or network from billing; raises ValueError with the offending text."""
    value = text.strip()
    if not value:
        raise ValueError("empty address")
    try:
        return netaddr.IPNetwork(value, flags=netaddr.NOHOST if "/" in value else 0)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise ValueError(f"not an IP address or network: {text!r}") from exc


def routeros_form(text: str) -> str:
    """The string RouterOS prints for an address-list ``address`` it was given ``text`` for.

    DNS names and ranges that are not one CIDR block come back unchanged (stripped).
    """
    value = text.strip()
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
