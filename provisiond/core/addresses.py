"""Address values and RouterOS's normal form (../shared/ROUTEROS.md §2.2).

The Source parses billing addresses here (``billing_form``), desire writes allocated
ones through ``routeros_form``, and the RouterOS target passes every address it reads
back through ``routeros_form`` too. Both sides therefore meet as one text per *value*:
an address, network or range is parsed to ``(version, first, last)`` integers and
printed back from those numbers alone, so any two spellings of the same value
(``::FFFF:10.9.9.9`` and ``::ffff:a09:909``, ``10.0.0.5/24`` and ``10.0.0.0/24``,
``10.0.0.0-10.0.0.255`` and ``10.0.0.0/24``) compare equal in desire, observe and diff.

The text is the one RouterOS prints: IPv4 hosts without ``/32``, IPv6 hosts with
``/128``, networks with host bits cleared, a range that is exactly one CIDR block as
that block, other ranges as ``first-last``. IPv6 is written as Linux's ``inet_ntop``
writes it (RFC 5952 compression, lowercase, and the last 32 bits dotted for IPv4-mapped
``::ffff:a.b.c.d`` and IPv4-compatible ``::a.b.c.d``), which RouterOS, a Linux system,
prints [inf]; it is computed here so that it does not change with the Python version
(``ipaddress`` spells mapped addresses differently from 3.13 on). Pure.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

#: (version, first, last) of an address, network or range, as integers.
Span = tuple[int, int, int]

_BITS = {4: 32, 6: 128}


def _single(text: str) -> tuple[int, int] | None:
    """(version, integer) of one address; None for anything else (scoped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if getattr(ip, "scope_id", None) is not None:
        return None  # fe80::1%eth0: no such thing in an address list
    return ip.version, int(ip)


def _quick(text: str) -> tuple[int, int] | None:
    """(version, integer) of a plain dotted quad or colon-hex IPv6 address without the
    ``ipaddress`` machinery (leases: 50,000 /56s a pass); None: ask ``ipaddress``."""
    if _CANONICAL_V4(text) is not None:
        a, b, c, d = text.split(".")
        return 4, (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)
    if _HEX6(text) is None:
        return None
    left, sep, right = text.partition("::")
    words = left.split(":") if left else []
    if sep:
        tail = right.split(":") if right else []
        fill = 8 - len(words) - len(tail)
        if fill < 1:
            return None
        words += ["0"] * fill + tail
    if len(words) != 8 or not all(0 < len(w) <= 4 for w in words):
        return None
    return 6, int("".join([w.rjust(4, "0") for w in words]), 16)


_HEX6 = re.compile(r"[0-9A-Fa-f:]{2,39}").fullmatch


@lru_cache(maxsize=1 << 17)
def parse(text: str) -> Span | None:
    """The value of an address, CIDR network (host bits allowed) or ``a-b`` range; None otherwise.

    Cached: one pass reads a lease's text from the store, the router and FreeRADIUS."""
    value = text.strip()
    if "/" in value:
        if "%" in value:
            return None
        head, _, length = value.partition("/")
        if length.isascii() and length.isdigit() and len(length) <= 3:
            one = _quick(head)
            if one is not None and int(length) <= _BITS[one[0]]:
                host = (1 << (_BITS[one[0]] - int(length))) - 1
                return one[0], one[1] & ~host, one[1] | host
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return None
        return net.version, int(net.network_address), int(net.broadcast_address)
    if "-" in value:
        head, _, tail = value.partition("-")
        first, last = _single(head.strip()), _single(tail.strip())
        if first is None or last is None or first[0] != last[0] or first[1] > last[1]:
            return None
        return first[0], first[1], last[1]
    one = _single(value)
    return None if one is None else (one[0], one[1], one[1])


def span(address: str) -> Span | None:
    """(version, first, last) as integers of an address, network or range; None otherwise."""
    return parse(address)


def text_of(version: int, value: int) -> str:
    """One address in RouterOS's spelling, without a prefix length."""
    if version == 4:
        return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    return _ipv6_text(value)


def _ipv6_text(value: int) -> str:
    """What glibc's ``inet_ntop(AF_INET6, …)`` prints for ``value``."""
    if value and not value & 0xFFFFFFFFFFFFFFFF:
        # A prefix of /64 or shorter: the zero low half is the longest zero run (a run in
        # the high half is at most 3 words), so it is the one written "::".
        high = [(value >> shift) & 0xFFFF for shift in (112, 96, 80, 64)]
        while high[-1] == 0:
            high.pop()
        return ":".join([f"{w:x}" for w in high]) + "::"
    words = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    best_at, best_len, at, run = -1, 0, -1, 0
    for i, w in enumerate(words):
        if w == 0:
            if at < 0:
                at, run = i, 0
            run += 1
            if run > best_len:
                best_at, best_len = at, run
        else:
            at = -1
    if best_len < 2:
        best_at = -1
    if best_at == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
        head = "::ffff:" if best_len == 5 else "::"
        return head + text_of(4, value & 0xFFFFFFFF)
    if best_at < 0:
        return ":".join(f"{w:x}" for w in words)
    left = ":".join(f"{w:x}" for w in words[:best_at])
    right = ":".join(f"{w:x}" for w in words[best_at + best_len:])
    return f"{left}::{right}"


def form_of(value: Span) -> str:
    """The text RouterOS stores and prints for an address-list entry of this value."""
    version, first, last = value
    if first == last:
        return text_of(version, first) + ("/128" if version == 6 else "")
    size = last - first + 1
    if size & (size - 1) == 0 and first % size == 0:  # exactly one CIDR block
        return f"{text_of(version, first)}/{_BITS[version] - size.bit_length() + 1}"
    return f"{text_of(version, first)}-{text_of(version, last)}"


def ipv4_host(address: str) -> str | None:
    """The address if it is a single IPv4 host (``/32`` allowed), canonical; else None."""
    value = address.strip()
    if _is_canonical_v4(value):
        return value
    parsed = parse(value)
    if parsed is None or parsed[0] != 4 or parsed[1] != parsed[2]:
        return None
    return text_of(4, parsed[1])


def is_canonical_v4(value: str) -> bool:
    return _is_canonical_v4(value)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}").fullmatch
# ``CANONICAL_V4(text)`` matches (not None) a dotted quad already in canonical form:
# ``is_canonical_v4`` without the calls, for loops over every billing row.
CANONICAL_V4 = _CANONICAL_V4


def _is_canonical_v4(value: str) -> bool:
    """Fast path for the common case: a dotted quad already in canonical form.

    The same answer as ``str(ipaddress.IPv4Address(value)) == value`` (four ASCII decimal
    octets up to 255, no leading zeros, nothing around them) at a small part of the cost:
    it runs for every address billing and the routers send (one regular-expression
    match, a quarter of the split-and-check loop it replaced).
    """
    return _CANONICAL_V4(value) is not None


@lru_cache(maxsize=1 << 16)
def billing_form(text: str) -> str:
    """A billing address, network or range in RouterOS form; ValueError names the bad text.

    Unlike ``routeros_form`` this accepts only IP values: a DNS name or a typo in
    billing is an error, not an address-list entry.
    """
    value = text.strip()
    if _is_canonical_v4(value):
        return value
    parsed = parse(value)
    if parsed is None:
        raise ValueError(f"not an IP address or network: {text!r}")
    return form_of(parsed)


def has_host_bits(text: str) -> bool:
    """``100.64.30.9/30`` -> True: a network written with an address inside it."""
    try:
        ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        try:
            ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            return False
        return True
    return False


@lru_cache(maxsize=1 << 16)
def routeros_form(text: str) -> str:
    """The string RouterOS prints for an address-list ``address`` it was given ``text`` for.

    Equal values give equal strings. DNS names (and anything else that is no IP value)
    come back unchanged but stripped.
    """
    value = text.strip()
    if _is_canonical_v4(value):
        return value
    parsed = parse(value)
    return value if parsed is None else form_of(parsed)


def family(address: str) -> int:
    """4 or 6 for an address in RouterOS form (DNS names count as 4)."""
    return 6 if ":" in address else 4


def sort_key(value: str) -> tuple[int, int, str]:
    """Orders addresses numerically (``10.0.0.9`` before ``10.0.0.10``), other text after."""
    if not value or not (value[0].isdigit() or ":" in value):
        return (2, 0, value)  # a username, group or list name: skip the parser
    head = value.split("/", 1)[0].split("-", 1)[0]
    if _CANONICAL_V4(head) is not None:  # the common case, without the parser
        a, b, c, d = head.split(".")
        return (0, (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d), value)
    try:
        ip = ipaddress.ip_address(head)
    except ValueError:
        return (2, 0, value)
    return (ip.version - 4 and 1, int(ip), value)
