"""Scalar value conversions shared by the table model and the query machine.

RouterOS takes booleans as yes/no/true/false and prints true/false; time
intervals come in as ``1d``, ``1w2d3h4m5s``, ``00:05:00`` or plain seconds
and go out as ``23h59m58s``; dates changed format in 7.10. Everything here is
pure: strings in, values out, ``ValueError`` for input RouterOS would refuse.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache

_TRUE = frozenset({"yes", "true"})
_FALSE = frozenset({"no", "false"})

_UNITS = re.compile(
    r"(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m(?!s))?"
    r"(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?"
)
_CLOCK = re.compile(r"(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?\s*(?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)(?:\.\d+)?")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def format_bool(value: bool) -> str:
    return "true" if value else "false"


def parse_duration(text: str) -> float:
    """Seconds in a RouterOS time interval; raises ``ValueError`` if malformed."""
    text = text.strip()
    if text.isdigit():
        return float(text)
    for pattern in (_UNITS, _CLOCK):
        match = pattern.fullmatch(text)
        if match and any(match.groupdict().values()):
            parts = {key: int(value) for key, value in match.groupdict().items() if value}
            return (
                parts.get("w", 0) * 604800
                + parts.get("d", 0) * 86400
                + parts.get("h", 0) * 3600
                + parts.get("m", 0) * 60
                + parts.get("s", 0)
                + parts.get("ms", 0) / 1000
            )
    raise ValueError(f"not a time interval: {text!r}")


def format_duration(seconds: float) -> str:
    """``90061`` -> ``1d1h1m1s``; whole seconds, ``0s`` for nothing left."""
    remaining = max(int(seconds), 0)
    if remaining == 0:
        return "0s"
    out = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def parse_version(version: str) -> tuple[int, ...]:
    """``"7.18.2 (stable)"`` -> ``(7, 18, 2)``; unknown parts are dropped."""
    head = version.split()[0] if version.split() else ""
    numbers = []
    for part in head.split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        numbers.append(int(digits.group()))
    if not numbers:
        raise ValueError(f"not a RouterOS version: {version!r}")
    return tuple(numbers)


@lru_cache(maxsize=4096)  # bulk adds share a handful of creation seconds
def format_timestamp(epoch: float, *, iso: bool) -> str:
    """Local wall-clock time as RouterOS prints it (ISO from 7.10 on)."""
    moment = time.localtime(epoch)
    clock = time.strftime("%H:%M:%S", moment)
    if iso:
        return time.strftime("%Y-%m-%d ", moment) + clock
    month = _MONTHS[moment.tm_mon - 1]
    return f"{month}/{moment.tm_mday:02d}/{moment.tm_year} {clock}"
