"""Normalisation of address-list ``address`` values (../shared/ROUTEROS.md 2.2).

Called by the table model on add/set and by the query machine when a query
compares ``address``. Input is what a client typed; output is the form a
router prints and uses in its (list, address) unique key:

* IPv4 host: ``/32`` stripped; IPv4 network: host bits cleared;
* a range that is exactly one CIDR block becomes that block, others stay
  ``a-b`` with both ends normalised;
* IPv6 host: compact lowercase WITH ``/128``; IPv6 network: host bits cleared;
  IPv6 text is what Linux's ``inet_ntop`` prints (netaddr calls it), so IPv4-mapped
  and -compatible addresses keep a dotted tail: ``::ffff:10.9.9.9/128`` [inf];
* anything else that looks like a DNS name is kept verbatim.

A value of the other family, or garbage, raises ``ValueError``.
"""

from __future__ import annotations

import re
from functools import lru_cache

import netaddr

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: Plain dotted-quad IPv4 host, already in stored form (the common case; netaddr is slow).
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _family_check(version: int, family: int, text: str) -> None:
    if version != family:
        raise ValueError(f"IPv{version} value {text!r} on an IPv{family} list")


def _host(address: object, family: int) -> str:
    text = str(address)
    return f"{text}/128" if family == 6 else text


def _network(text: str, family: int) -> str:
    try:
        network = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise ValueError(f"bad network {text!r}") from exc
    _family_check(int(network.version), family, text)
    if family == 4 and int(network.prefixlen) == 32:
        return str(network.ip)
    return str(network.cidr)


def _address(text: str) -> object:
    try:
        return netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise ValueError(f"bad address {text!r}") from exc


def _range(text: str, family: int) -> str:
    first_text, _, last_text = text.partition("-")
    first, last = _address(first_text.strip()), _address(last_text.strip())
    for end, end_text in ((first, first_text), (last, last_text)):
        _family_check(int(end.version), family, end_text)  # type: ignore[attr-defined]
    if first > last:  # type: ignore[operator]
        raise ValueError(f"range {text!r} ends before it starts")
    blocks = netaddr.IPRange(first, last).cidrs()
    if len(blocks) == 1:
        return _network(str(blocks[0]), family)
    return f"{first}-{last}"


def _looks_numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+", text)) or ":" in text


@lru_cache(maxsize=65536)
def normalise_address(text: str, family: int) -> str:
    """The stored form of ``text`` on the IPv``family`` address list."""
    value = text.strip()
    if not value:
        raise ValueError("empty address")
    if _DOTTED_QUAD.fullmatch(value):
        _family_check(4, family, value)
        return value
    if "/" in value:
        return _network(value, family)
    if "-" in value and _looks_numeric(value.replace("-", "")):
        return _range(value, family)
    if _looks_numeric(value):
        address = _address(value)
        _family_check(int(address.version), family, value)  # type: ignore[attr-defined]
        return _host(address, family)
    if _HOSTNAME.fullmatch(value):
        return value
    raise ValueError(f"not an address, range, network or DNS name: {value!r}")


_ADDRESSISH = re.compile(r"[0-9A-Fa-f.:]+")


def address_sort_key(text: str) -> tuple[int, int] | None:
    """Numeric position of the first address in ``text``, for ``?<``/``?>``."""
    head = text.split("-", 1)[0].split("/", 1)[0]
    if not _ADDRESSISH.fullmatch(head):
        return None  # a comment, a name: not worth netaddr's exception
    try:
        address = netaddr.IPAddress(head)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return int(address.version), int(address)
