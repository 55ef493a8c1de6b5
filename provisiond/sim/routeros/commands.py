"""Menu commands of a logged-in session: address lists and /system.

``session`` calls ``run`` with a parsed ``Command`` while holding the state
lock and gets back a ``Result``: the data sentences (``!re``/``!empty``,
without tags), the attribute words of ``!done``, how long to stall before
answering, and for ``listen``/``print =follow=``/``=follow-only=`` the
``Watch`` to stream (the session then sends no ``!done``). Each address-list
print and write is charged to the router's CPU (``load``). Failures raise
``Trap``. No I/O here.

``/sim/load/print`` (one row of counters, ``load.RouterLoad.as_row``) and
``/sim/load/reset`` are the simulator's own, for benches that run it in
another process; no RouterOS has them.

``?`` query words count only for ``print``; every other command ignores them, as
RouterOS does: ``set``/``remove``/``enable``/… act on their ``.id``/``numbers`` alone,
and without one they change nothing and answer a bare ``!done``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from .addresslist import AddressTable, PartialSelection, RowView
from .errors import NO_SUCH_COMMAND, NO_SUCH_ITEM, NO_SUCH_PREFIX, Trap, unknown_parameter
from .listen import Watch
from .query import Query, QueryError, compile_query
from .state import RouterState, menu_for_path
from .values import format_duration

Row = Mapping[str, str]
_R = TypeVar("_R")

_KNOWN_MENUS = frozenset(
    {
        "/ip",
        "/ip/firewall",
        "/ipv6",
        "/ipv6/firewall",
        "/system",
        "/system/identity",
        "/system/resource",
        "/ip/firewall/address-list",
        "/ipv6/firewall/address-list",
        "/sim",
        "/sim/load",
    }
)

_TABLE_VERBS = frozenset({"add", "set", "remove", "enable", "disable", "comment", "unset"})


@dataclass(frozen=True, slots=True)
class Command:
    path: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    queries: tuple[str, ...] = ()
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Result:
    data: tuple[tuple[str, ...], ...] = ()
    done: tuple[str, ...] = ()
    delay: float = 0.0
    #: Keep the command open and stream this (no ``!done`` until ``/cancel``).
    watch: Watch | None = None


def run(state: RouterState, command: Command) -> Result:
    menu, _, verb = command.path.rpartition("/")
    if verb == "getall":
        verb = "print"
    key = menu_for_path(menu)
    if key is not None:
        return _table_command(state, key, verb, command)
    if menu == "/sim/load" and verb in ("print", "reset"):
        if verb == "reset":
            state.cpu.reset()
            return Result()
        return _print([state.cpu.snapshot().as_row()], command, state=state)
    if verb == "print" and menu == "/system/identity":
        return _print([{"name": state.settings.identity}], command, state=state)
    if verb == "print" and menu == "/system/resource":
        return _print([_resource(state)], command, state=state)
    if menu in _KNOWN_MENUS:
        raise Trap(NO_SUCH_COMMAND, 0)
    raise Trap(NO_SUCH_PREFIX, 0)


def _resource(state: RouterState) -> dict[str, str]:
    return {
        "uptime": format_duration(state.clock() - state.booted),
        "version": state.settings.version,
        "build-time": "2025-02-26 12:00:00",
        "free-memory": "873603072",
        "total-memory": "1073741824",
        "cpu": "QEMU",
        "cpu-count": "1",
        "cpu-frequency": "2400",
        "cpu-load": "1",
        "free-hdd-space": "94851072",
        "total-hdd-space": "134217728",
        "architecture-name": "x86_64",
        "board-name": "CHR",
        "platform": "MikroTik",
    }


def _compile(command: Command, family: int | None = None) -> Query:
    try:
        return compile_query(command.queries, family=family, stored=family is not None)
    except QueryError as exc:
        raise Trap(f"invalid query: {exc}", 1) from exc


def _print(rows: Iterable[Row], command: Command, *, state: RouterState) -> Result:
    query = _compile(command)
    return _answer([row for row in rows if query.matches(row)], _same, command, state=state)


def _same(row: Row) -> Row:
    return row


def _answer(
    selected: Sequence[_R], render: Callable[[_R], Row], command: Command, *, state: RouterState,
    delay: float = 0.0, empty: bool = True,
) -> Result:
    """A print's reply: ``count-only``, or one ``!re`` per selected row (``.proplist``)."""
    attrs = command.attributes
    if "count-only" in attrs:
        return Result(done=(f"=ret={len(selected)}",), delay=delay)
    proplist = attrs.get(".proplist")
    rows = map(render, selected)
    data: list[tuple[str, ...]] = []
    if proplist is None:
        data = [("!re", *(f"={k}={v}" for k, v in row.items())) for row in rows]
    else:
        keys = [k for k in proplist.split(",") if k]
        data = [("!re", *(f"={k}={row[k]}" for k in keys if k in row)) for row in rows]
    if not data and empty and state.settings.sends_empty:
        data = [("!empty",)]
    return Result(data=tuple(data), delay=delay)


def _table_command(state: RouterState, menu: str, verb: str, command: Command) -> Result:
    table = state.tables[menu]
    attrs = command.attributes
    streams = verb == "listen" or (verb == "print" and ("follow" in attrs or "follow-only" in attrs))
    if streams and not state.settings.listen:  # a router without listen: an unknown word
        if verb == "listen":
            raise Trap(NO_SUCH_COMMAND, 0)
        raise unknown_parameter("follow-only" if "follow-only" in attrs else "follow")
    if verb == "listen" or (verb == "print" and "follow-only" in attrs):
        return Result(watch=_watch(menu, table, command))
    if verb == "print":
        # The router scans every row whatever the query (../shared/ROUTEROS.md 6, 8): row_latency
        # and scan_cost_us charge for all of them, however few the indexes let it test.
        query = _compile(command, table.options.family)
        rows = len(table)
        delay = state.settings.row_latency * rows
        state.cpu.scan(menu, rows)
        if "follow" in attrs:
            data = _answer(table.select(query), RowView.rendered, command, state=state, delay=delay,
                           empty=False)
            return dataclasses.replace(data, watch=_watch(menu, table, command, query))
        return _answer(table.select(query), RowView.rendered, command, state=state, delay=delay)
    if verb not in _TABLE_VERBS:
        raise Trap(NO_SUCH_COMMAND, 0)
    values = {k: v for k, v in attrs.items() if not k.startswith(".") and k != "numbers"}
    if verb == "add":
        state.cpu.write(menu, 1)
        entry = table.add(values)
        return Result(done=(f"=ret={entry.id_text}",))
    if ".id" not in attrs and "numbers" not in attrs:
        # Query words select nothing outside print (../shared/ROUTEROS.md 1.2: ``remove ?.id=*A6``
        # answers a bare !done and removes nothing), so a command that names no item
        # by .id/numbers does nothing and says so with a bare !done.
        return Result()
    if verb == "remove":
        _remove(state, menu, table, attrs)
        return Result()
    ids = _select(table, attrs)
    state.cpu.write(menu, len(ids))
    if verb == "set":
        table.update(ids, values)
    elif verb in ("enable", "disable"):
        table.set_disabled(ids, verb == "disable")
    elif verb == "comment":
        table.update(ids, {"comment": attrs.get("comment", "")})
    else:
        if "value-name" not in attrs:
            raise Trap("missing value(s) of argument(s) value-name", 1)
        for name in attrs["value-name"].split(","):
            table.unset(ids, name)
    return Result()


def _selector(attrs: Mapping[str, str]) -> str:
    selector = attrs.get(".id", attrs.get("numbers"))
    if selector is None:
        raise Trap("missing value(s) of argument(s) numbers", 1)
    return selector


def _select(table: AddressTable, attrs: Mapping[str, str]) -> Sequence[int]:
    try:
        return table.resolve(_selector(attrs))
    except PartialSelection as exc:
        raise Trap(NO_SUCH_ITEM) from exc


def _remove(state: RouterState, menu: str, table: AddressTable, attrs: Mapping[str, str]) -> None:
    try:
        ids = table.resolve(_selector(attrs))
    except PartialSelection as exc:
        if not state.settings.atomic_remove:
            state.cpu.write(menu, len(exc.found))
            table.remove(exc.found)
        raise Trap(NO_SUCH_ITEM) from exc
    state.cpu.write(menu, len(ids))
    table.remove(ids)


def _watch(menu: str, table: AddressTable, command: Command, query: Query | None = None) -> Watch:
    """What a listen/follow streams: its query's changes, narrowed by ``.proplist``."""
    proplist = command.attributes.get(".proplist")
    keys = None if proplist is None else tuple(k for k in proplist.split(",") if k)
    return Watch(menu, query if query is not None else _compile(command, table.options.family), keys)

