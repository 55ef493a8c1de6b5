"""One address-list entry as a value, and its form on the wire: attribute words in, a print row out.

``AddressTable`` holds an ``EntryForm`` and asks it to make an ``Entry`` from an
``add``'s attribute words, to apply a ``set``'s, and to render an entry as a print
shows it; the table itself only stores and indexes. Failures raise ``Trap`` with the
router's wording. Choices where ../shared/ROUTEROS.md has no observation ([inf]):

* an entry added with a timeout prints ``dynamic=false`` unless
  ``timeout_marks_dynamic`` is set; ``timeout=0``/``none-static`` means no
  timeout, ``none-dynamic`` no timeout and dynamic;
* ``set`` accepts list, address, comment, disabled, timeout and ``!comment``/
  ``!timeout``; anything else is ``unknown parameter <name>`` (category 1);
  ``dynamic`` is writable on add only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .address import normalise_address
from .errors import Trap, invalid_value, unknown_parameter
from .values import format_bool, format_duration, format_timestamp, parse_bool, parse_duration

Clock = Callable[[], float]

PROPERTIES = frozenset({"list", "address", "comment", "disabled", "timeout", "dynamic"})
_SETTABLE = frozenset({"list", "address", "comment", "disabled", "timeout"})
_UNSETTABLE = frozenset({"comment", "timeout"})


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    list: str
    address: str
    created: float
    comment: str | None = None
    disabled: bool = False
    dynamic: bool = False
    expires: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.list, self.address)

    @property
    def id_text(self) -> str:
        return f"*{self.id:X}"


@dataclass(frozen=True, slots=True)
class TableOptions:
    family: int
    first_id: int = 1
    iso_dates: bool = True
    timeout_marks_dynamic: bool = False


class EntryForm:
    """Attribute words -> ``Entry`` fields, checked; ``Entry`` -> print row."""

    def __init__(self, options: TableOptions, clock: Clock) -> None:
        self.options = options
        self._clock = clock

    def new(self, ident: int, attrs: Mapping[str, str], *, dynamic: bool = False) -> Entry:
        """The entry an ``add`` with ``attrs`` makes, numbered ``ident``."""
        for name in attrs:
            if name not in PROPERTIES:
                raise unknown_parameter(name)
        missing = [name for name in ("list", "address") if name not in attrs]
        if missing:
            raise Trap(f"missing value(s) of argument(s) {', '.join(missing)}", 1)
        list_name, address = self._list_name(attrs["list"]), self._address(attrs["address"])
        created = self._clock()
        fields: dict[str, object] = {"dynamic": dynamic}
        if len(attrs) > 2:
            fields.update(self._changes({k: v for k, v in attrs.items() if k not in ("list", "address")}))
        if "dynamic" in attrs:
            fields["dynamic"] = _bool(attrs, "dynamic")
        return Entry(ident, list_name, address, created, **fields)  # type: ignore[arg-type]

    def check_set(self, attrs: Mapping[str, str]) -> None:
        """Refuse a ``set`` naming a property it cannot change (``!name`` unsets ``name``)."""
        for name in attrs:
            if name.lstrip("!") not in _SETTABLE or (name.startswith("!") and name[1:] not in _UNSETTABLE):
                raise unknown_parameter(name)

    def unsetting(self, name: str) -> dict[str, str]:
        """The ``set`` words of an ``unset`` of ``value-name=name``."""
        if name not in _UNSETTABLE:
            raise invalid_value("value-name")
        return {"!" + name: ""}

    def apply(self, entry: Entry, attrs: Mapping[str, str]) -> Entry:
        """``entry`` after a ``set`` of ``attrs`` (already passed ``check_set``)."""
        return dataclasses.replace(entry, **self._changes(attrs))  # type: ignore[arg-type]

    def render(self, entry: Entry) -> dict[str, str]:
        """The properties a print shows for ``entry`` (unset ones omitted)."""
        row = {".id": entry.id_text, "list": entry.list, "address": entry.address}
        row["creation-time"] = format_timestamp(int(entry.created), iso=self.options.iso_dates)
        dynamic = entry.dynamic or (self.options.timeout_marks_dynamic and entry.expires is not None)
        row["dynamic"] = format_bool(dynamic)
        row["disabled"] = format_bool(entry.disabled)
        if entry.expires is not None:
            row["timeout"] = format_duration(entry.expires - self._clock())
        if entry.comment is not None:
            row["comment"] = entry.comment
        return row

    def _list_name(self, value: str) -> str:
        if not value:
            raise invalid_value("list")
        return value

    def _address(self, value: str) -> str:
        try:
            return normalise_address(value, self.options.family)
        except ValueError as exc:
            raise invalid_value("address") from exc

    def _changes(self, attrs: Mapping[str, str]) -> dict[str, object]:
        """The Entry fields ``attrs`` (of add or set) change, checked."""
        changes: dict[str, object] = {}
        for name, value in attrs.items():
            if name == "list":
                changes["list"] = self._list_name(value)
            elif name == "address":
                changes["address"] = self._address(value)
            elif name == "comment":
                changes["comment"] = value if value else None
            elif name == "disabled":
                changes["disabled"] = _bool(attrs, "disabled")
            elif name == "timeout":
                changes.update(self._timeout(value))
            elif name == "!comment":
                changes["comment"] = None
            elif name == "!timeout":
                changes["expires"] = None
        return changes

    def _timeout(self, value: str) -> dict[str, object]:
        if value in ("none-static", "none-dynamic", ""):
            changes: dict[str, object] = {"expires": None}
            if value == "none-dynamic":
                changes["dynamic"] = True
            return changes
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise invalid_value("timeout") from exc
        return {"expires": self._clock() + seconds if seconds > 0 else None}


def _bool(attrs: Mapping[str, str], name: str) -> bool:
    try:
        return parse_bool(attrs[name])
    except ValueError as exc:
        raise invalid_value(name) from exc
