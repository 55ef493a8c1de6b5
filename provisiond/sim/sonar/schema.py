"""The fake Sonar's GraphQL schema, executed by graphql-core over a ``World``.

``build(world, page_cap=…, ids=…)`` returns a ``GraphQLSchema`` from ``sdl.SDL`` (a
subset of Sonar's real schema: same names, nullability, arguments and defaults) whose
resolvers read a ``World``. As on Sonar: every list relation is a ``…Connection``
``{entities, page_info}`` taking ``paginator``, ``sorter``, ``search`` and field
filters (an argument named like a field of the listed type: equality); ``search`` ORs
its Search objects and ANDs the fields inside one, a string field's ``partial_matching``
defaults to true and ``match: false`` excludes; ``accounts`` leaves archived accounts
out unless ``include_archived: true``; ``Int64Bit`` goes out as a string (Sonar: "always
output as a string") and is taken as a string or a number; ``Datetime`` is ISO 8601.
A field that does not exist is a GraphQL error.

Assumptions where Sonar's behaviour is undocumented: ``records_per_page`` is capped at
``page_cap`` and the cap shows in ``page_info.records_per_page``; an empty list has
``total_pages: 0``; search kinds provisiond never sends (float, date, ip_address,
geopoint, unset, exists, reverse_relation_filters) are refused with a GraphQL error
rather than imitated. ``ids="number"`` / ``"mixed"`` (even ids as numbers, odd as
strings) send ``Int64Bit`` as JSON numbers, which the real Sonar does not: for testing a
client's tolerance only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from graphql import GraphQLError, GraphQLScalarType, GraphQLSchema, extend_schema, parse
from graphql.language import DocumentNode, IntValueNode, ScalarTypeDefinitionNode, StringValueNode, ValueNode

from .sdl import SDL
from .world import Row, World

# The arguments of a list relation that are not field filters.
LIST_ARGS = frozenset({"paginator", "sorter", "search", "reverse_relation_filters", "include_archived"})
_SEARCH_KINDS = frozenset({"string_fields", "integer_fields", "datetime_fields", "boolean_fields"})

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": lambda a, b: a == b, "NEQ": lambda a, b: a != b, "GT": lambda a, b: a > b,
    "GTE": lambda a, b: a >= b, "LT": lambda a, b: a < b, "LTE": lambda a, b: a <= b,
}


def _int64(value: Any) -> int:
    if isinstance(value, bool):
        raise GraphQLError(f"Int64Bit cannot represent {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise GraphQLError(f"Int64Bit cannot represent {value!r}")


def _int64_literal(node: ValueNode, _variables: Any = None) -> int:
    if isinstance(node, (IntValueNode, StringValueNode)):
        return _int64(node.value)
    raise GraphQLError("Int64Bit must be an integer or a string of digits")


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise GraphQLError(f"not an ISO 8601 datetime: {value!r}") from exc


def _datetime_literal(node: ValueNode, _variables: Any = None) -> datetime:
    if isinstance(node, StringValueNode):
        return _datetime(node.value)
    raise GraphQLError("Datetime must be a string")


def _datetime_out(value: Any) -> str:
    return _datetime(value).isoformat()


def _schema(scalars: list[GraphQLScalarType]) -> GraphQLSchema:
    """``SDL`` as a schema whose ``scalars`` are the given objects (their coercion
    functions in force: they are passed at construction, which every graphql-core
    version honours), built by extending a schema that holds just them."""
    names = {t.name for t in scalars}
    doc = parse(SDL + "\nschema { query: Query }\n", no_location=True)
    defs = tuple(d for d in doc.definitions
                 if not (isinstance(d, ScalarTypeDefinitionNode) and d.name.value in names))
    return extend_schema(GraphQLSchema(types=scalars), DocumentNode(definitions=defs))


def _matches(row: Row, search: dict[str, Any]) -> bool:
    for kind, given in search.items():
        if given is not None and kind not in _SEARCH_KINDS:
            raise GraphQLError(f"search.{kind}: not implemented by the fake Sonar")
    for f in search.get("integer_fields") or ():
        if not _OPS[f["operator"]](_int64(_attr(row, f["attribute"])), f["search_value"]):
            return False
    for f in search.get("datetime_fields") or ():
        if not _OPS[f["operator"]](_datetime(_attr(row, f["attribute"])), f["search_value"]):
            return False
    for f in search.get("boolean_fields") or ():
        equal = bool(_attr(row, f["attribute"])) == f["search_value"]
        if equal != (f.get("operator") != "NEQ"):
            return False
    for f in search.get("string_fields") or ():
        value, wanted = str(_attr(row, f["attribute"])).lower(), f["search_value"].lower()
        hit = wanted in value if f["partial_matching"] else value == wanted
        if hit != f["match"]:
            return False
    return True


def _filtered(rows: list[Row], args: dict[str, Any]) -> list[Row]:
    """``rows`` narrowed by the field filters among ``args`` (equality; null: not given)."""
    for key, wanted in args.items():
        if key in LIST_ARGS or wanted is None:
            continue
        if isinstance(wanted, datetime):
            rows = [r for r in rows if r.get(key) is not None and _datetime(r[key]) == wanted]
        else:
            rows = [r for r in rows if r.get(key) == wanted]
    return rows


def _attr(row: Row, name: str) -> Any:
    if name not in row or isinstance(row[name], list):
        raise GraphQLError(f"'{name}' is not a searchable attribute")
    return row[name]


class _Collections:
    """Paging, search and sort over a list of rows, the same for every collection."""

    def __init__(self, page_cap: int) -> None:
        self.page_cap = page_cap

    def __call__(self, rows: list[Row], args: dict[str, Any]) -> dict[str, Any]:
        if args.get("reverse_relation_filters"):
            raise GraphQLError("reverse_relation_filters: not implemented by the fake Sonar")
        rows = _filtered(rows, args)
        searches = [s for s in args.get("search") or () if s is not None]
        if searches:
            rows = [r for r in rows if any(_matches(r, s) for s in searches)]
        sorters = args.get("sorter") or [{"attribute": "id", "direction": "ASC"}]
        for s in reversed(sorters):
            for r in rows[:1]:
                _attr(r, s["attribute"])
            rows = sorted(rows, key=lambda r: r[s["attribute"]], reverse=s["direction"] == "DESC")
        paginator = args.get("paginator") or {"page": 1, "records_per_page": self.page_cap}
        page, asked = paginator["page"], paginator["records_per_page"]
        if page < 1 or asked < 1:
            raise GraphQLError("paginator: page and records_per_page start at 1")
        per_page = min(asked, self.page_cap)
        total = len(rows)
        start = (page - 1) * per_page
        return {
            "entities": rows[start:start + per_page],
            "page_info": {"page": page, "records_per_page": per_page, "total_count": total,
                          "total_pages": math.ceil(total / per_page)},
        }


def build(world: World, *, page_cap: int = 100, ids: str = "string") -> GraphQLSchema:
    """The schema, its resolvers bound to ``world``."""
    if ids not in ("number", "string", "mixed"):
        raise ValueError(f"ids must be number, string or mixed, not {ids!r}")

    def out_id(value: Any) -> int | str:
        n = _int64(value)
        if ids == "string" or (ids == "mixed" and n % 2):
            return str(n)
        return n

    schema = _schema([
        GraphQLScalarType("Int64Bit", serialize=out_id, parse_value=_int64,
                          parse_literal=_int64_literal),
        GraphQLScalarType("Datetime", serialize=_datetime_out, parse_value=_datetime,
                          parse_literal=_datetime_literal),
    ])
    page = _Collections(page_cap)

    def unarchived(rows: list[Row], args: dict[str, Any]) -> list[Row]:
        return rows if args.get("include_archived") else [r for r in rows if not r.get("archived_at")]

    def top(table: str) -> Callable[..., dict[str, Any]]:
        def resolve(_root: Any, _info: Any, **args: Any) -> dict[str, Any]:
            rows = world.rows(table)
            return page(unarchived(rows, args) if table == "accounts" else rows, args)
        return resolve

    def related(rows_of: Callable[[Row, dict[str, Any]], list[Row]]) -> Callable[..., dict[str, Any]]:
        def resolve(row: Row, _info: Any, **args: Any) -> dict[str, Any]:
            return page(rows_of(row, args), args)
        return resolve

    def groups_of(row: Row, _args: dict[str, Any]) -> list[Row]:
        return [g for g in (world.get("account_groups", i) for i in row["group_ids"]) if g is not None]

    def ips(kind: str) -> Callable[[Row, dict[str, Any]], list[Row]]:
        return lambda row, _args: world.ips_of(kind, row["id"])

    def child(table: str, key: str) -> Callable[[Row, dict[str, Any]], list[Row]]:
        return lambda row, _args: world.children(table, key, row["id"])

    def members(row: Row, args: dict[str, Any]) -> list[Row]:
        return unarchived([a for a in world.rows("accounts") if row["id"] in a["group_ids"]], args)

    def status_of(row: Row, _info: Any, **args: Any) -> Row | None:
        found = world.get("account_statuses", row["account_status_id"])
        return next(iter(_filtered([found], args)), None) if found is not None else None

    resolvers: dict[tuple[str, str], Callable[..., Any]] = {
        ("Query", "accounts"): top("accounts"),
        ("Query", "account_groups"): top("account_groups"),
        ("Query", "account_statuses"): top("account_statuses"),
        ("Account", "account_status"): status_of,
        ("Account", "account_groups"): related(groups_of),
        ("Account", "ip_assignments"): related(ips("Account")),
        ("Account", "radius_accounts"): related(child("radius_accounts", "account_id")),
        ("Account", "addresses"): related(child("addresses", "account_id")),
        ("Account", "uninventoried_mac_addresses"):
            related(child("uninventoried_mac_addresses", "account_id")),
        ("AccountGroup", "accounts"): related(members),
        ("RadiusAccount", "ip_assignments"): related(ips("RadiusAccount")),
        ("UninventoriedMacAddress", "ip_assignments"): related(ips("UninventoriedMacAddress")),
        ("Address", "inventory_items"): related(child("inventory_items", "address_id")),
        ("InventoryItem", "ip_assignments"): related(ips("InventoryItem")),
        ("InventoryItem", "inventory_model_field_data"):
            related(child("inventory_model_field_data", "inventory_item_id")),
        ("InventoryModelFieldData", "ip_assignments"): related(ips("InventoryModelFieldData")),
    }
    for (type_name, field_name), fn in resolvers.items():
        schema.type_map[type_name].fields[field_name].resolve = fn  # type: ignore[attr-defined]
    return schema
