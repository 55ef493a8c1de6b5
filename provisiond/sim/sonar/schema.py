"""The fake Sonar's GraphQL schema: the subset of Sonar's API provisiond uses, executed
by graphql-core.

``build(world, page_cap=…, ids=…)`` returns a ``GraphQLSchema`` whose resolvers read a
``World``. Field and type names follow Sonar's (docs and open-source clients): every
list relation is a collection ``{entities, page_info}``, nested ones included, and
takes a ``paginator``; ``records_per_page`` is capped at ``page_cap`` and the cap shows
in ``page_info.records_per_page``; ``search`` ORs its Search objects and ANDs the fields
inside one; ``sorter`` sorts. A field that does not exist is a GraphQL error, as on
Sonar. ``Int64Bit`` ids go out as JSON numbers, strings, or both (``ids="mixed"``:
even ids as numbers, odd as strings), since Sonar does not document which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from graphql import GraphQLError, GraphQLSchema, build_schema
from graphql.language import IntValueNode, StringValueNode, ValueNode

from .world import Row, World

SDL = """
scalar Int64Bit
scalar Datetime

enum SortDirection { ASC DESC }
enum Operator { EQ NEQ GT GTE LT LTE }

input Paginator { page: Int!  records_per_page: Int! }
input Sorter { attribute: String!  direction: SortDirection! }
input StringField { attribute: String!  search_value: String!  match: Boolean  partial_matching: Boolean }
input IntegerField { attribute: String!  search_value: Int64Bit!  operator: Operator! }
input DatetimeField { attribute: String!  search_value: Datetime!  operator: Operator! }
input BooleanField { attribute: String!  search_value: Boolean! }
input Search {
  string_fields: [StringField]  integer_fields: [IntegerField]
  datetime_fields: [DatetimeField]  boolean_fields: [BooleanField]
}

type PageInfo { page: Int!  records_per_page: Int!  total_count: Int!  total_pages: Int! }

type Query {
  accounts(id: Int64Bit, account_status_id: Int64Bit, paginator: Paginator, search: [Search],
           sorter: [Sorter]): AccountCollection
  account_groups(id: Int64Bit, paginator: Paginator, search: [Search], sorter: [Sorter]): AccountGroupCollection
  account_statuses(id: Int64Bit, activates_account: Boolean, paginator: Paginator): AccountStatusCollection
}

type Account {
  id: Int64Bit!  name: String!  account_status_id: Int64Bit!  created_at: Datetime  updated_at: Datetime
  account_status: AccountStatus
  account_groups(paginator: Paginator): AccountGroupCollection
  ip_assignments(soft: Boolean, paginator: Paginator): IpAssignmentCollection
  radius_accounts(paginator: Paginator): RadiusAccountCollection
  addresses(serviceable: Boolean, paginator: Paginator): AddressCollection
}
type AccountStatus { id: Int64Bit!  name: String!  activates_account: Boolean! }
type AccountGroup { id: Int64Bit!  name: String!
  accounts(paginator: Paginator, search: [Search], sorter: [Sorter]): AccountCollection }
type RadiusAccount { id: Int64Bit!  username: String!  account_id: Int64Bit!
  ip_assignments(paginator: Paginator): IpAssignmentCollection }
type Address { id: Int64Bit!  serviceable: Boolean!
  inventory_items(paginator: Paginator): InventoryItemCollection }
type InventoryItem { id: Int64Bit!
  ip_assignments(paginator: Paginator): IpAssignmentCollection
  inventory_model_field_data(paginator: Paginator): InventoryModelFieldDataCollection }
type InventoryModelFieldData { id: Int64Bit!  value: String
  ip_assignments(paginator: Paginator): IpAssignmentCollection }
type IpAssignment { id: Int64Bit!  subnet: String!  soft: Boolean!  ip_pool_id: Int64Bit
  ipassignmentable_type: String!  ipassignmentable_id: Int64Bit!
  created_at: Datetime  updated_at: Datetime }

type AccountCollection { entities: [Account!]!  page_info: PageInfo! }
type AccountStatusCollection { entities: [AccountStatus!]!  page_info: PageInfo! }
type AccountGroupCollection { entities: [AccountGroup!]!  page_info: PageInfo! }
type RadiusAccountCollection { entities: [RadiusAccount!]!  page_info: PageInfo! }
type AddressCollection { entities: [Address!]!  page_info: PageInfo! }
type InventoryItemCollection { entities: [InventoryItem!]!  page_info: PageInfo! }
type InventoryModelFieldDataCollection { entities: [InventoryModelFieldData!]!  page_info: PageInfo! }
type IpAssignmentCollection { entities: [IpAssignment!]!  page_info: PageInfo! }
"""

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
    try:
        return datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise GraphQLError(f"not an ISO 8601 datetime: {value!r}") from exc


def _matches(row: Row, search: dict[str, Any]) -> bool:
    for f in search.get("integer_fields") or ():
        if not _OPS[f["operator"]](_int64(_attr(row, f["attribute"])), f["search_value"]):
            return False
    for f in search.get("datetime_fields") or ():
        if not _OPS[f["operator"]](_datetime(_attr(row, f["attribute"])), f["search_value"]):
            return False
    for f in search.get("boolean_fields") or ():
        if bool(_attr(row, f["attribute"])) != f["search_value"]:
            return False
    for f in search.get("string_fields") or ():
        value, wanted = str(_attr(row, f["attribute"])).lower(), f["search_value"].lower()
        hit = wanted in value if f.get("partial_matching") else value == wanted
        if hit != (f.get("match") is not False):
            return False
    return True


def _attr(row: Row, name: str) -> Any:
    if name not in row or isinstance(row[name], list):
        raise GraphQLError(f"'{name}' is not a searchable attribute")
    return row[name]


class _Collections:
    """Paging, search and sort over a list of rows, the same for every collection."""

    def __init__(self, page_cap: int) -> None:
        self.page_cap = page_cap

    def __call__(self, rows: list[Row], args: dict[str, Any]) -> dict[str, Any]:
        searches = args.get("search")
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


def build(world: World, *, page_cap: int = 100, ids: str = "number") -> GraphQLSchema:
    """The schema, its resolvers bound to ``world``."""
    if ids not in ("number", "string", "mixed"):
        raise ValueError(f"ids must be number, string or mixed, not {ids!r}")
    schema = build_schema(SDL)
    page = _Collections(page_cap)

    def out_id(value: Any) -> int | str:
        n = _int64(value)
        if ids == "string" or (ids == "mixed" and n % 2):
            return str(n)
        return n

    int64 = schema.type_map["Int64Bit"]
    int64.serialize = out_id  # type: ignore[attr-defined]
    int64.parse_value = _int64  # type: ignore[attr-defined]
    int64.parse_literal = _int64_literal  # type: ignore[attr-defined]
    dt = schema.type_map["Datetime"]
    dt.serialize = str  # type: ignore[attr-defined]
    dt.parse_value = _datetime  # type: ignore[attr-defined]

    def top(table: str, *filters: str) -> Callable[..., dict[str, Any]]:
        def resolve(_root: Any, _info: Any, **args: Any) -> dict[str, Any]:
            rows = world.rows(table)
            for key in ("id", *filters):
                if args.get(key) is not None:
                    rows = [r for r in rows if r[key] == args[key]]
            return page(rows, args)
        return resolve

    def related(rows_of: Callable[[Row, dict[str, Any]], list[Row]]) -> Callable[..., dict[str, Any]]:
        def resolve(row: Row, _info: Any, **args: Any) -> dict[str, Any]:
            return page(rows_of(row, args), args)
        return resolve

    def groups_of(row: Row, _args: dict[str, Any]) -> list[Row]:
        return [g for g in (world.get("account_groups", i) for i in row["group_ids"]) if g is not None]

    def ips(kind: str) -> Callable[[Row, dict[str, Any]], list[Row]]:
        def rows_of(row: Row, args: dict[str, Any]) -> list[Row]:
            found = world.ips_of(kind, row["id"])
            if args.get("soft") is not None:
                found = [r for r in found if r["soft"] == args["soft"]]
            return found
        return rows_of

    def addresses_of(row: Row, args: dict[str, Any]) -> list[Row]:
        found = world.children("addresses", "account_id", row["id"])
        if args.get("serviceable") is not None:
            found = [r for r in found if r["serviceable"] == args["serviceable"]]
        return found

    def child(table: str, key: str) -> Callable[[Row, dict[str, Any]], list[Row]]:
        return lambda row, _args: world.children(table, key, row["id"])

    def members(row: Row, _args: dict[str, Any]) -> list[Row]:
        return [a for a in world.rows("accounts") if row["id"] in a["group_ids"]]

    resolvers: dict[tuple[str, str], Callable[..., Any]] = {
        ("Query", "accounts"): top("accounts", "account_status_id"),
        ("Query", "account_groups"): top("account_groups"),
        ("Query", "account_statuses"): top("account_statuses", "activates_account"),
        ("Account", "account_status"):
            lambda row, _info: world.get("account_statuses", row["account_status_id"]),
        ("Account", "account_groups"): related(groups_of),
        ("Account", "ip_assignments"): related(ips("Account")),
        ("Account", "radius_accounts"): related(child("radius_accounts", "account_id")),
        ("Account", "addresses"): related(addresses_of),
        ("AccountGroup", "accounts"): related(members),
        ("RadiusAccount", "ip_assignments"): related(ips("RadiusAccount")),
        ("Address", "inventory_items"): related(child("inventory_items", "address_id")),
        ("InventoryItem", "ip_assignments"): related(ips("InventoryItem")),
        ("InventoryItem", "inventory_model_field_data"):
            related(child("inventory_model_field_data", "inventory_item_id")),
        ("InventoryModelFieldData", "ip_assignments"): related(ips("InventoryModelFieldData")),
    }
    for (type_name, field_name), fn in resolvers.items():
        schema.type_map[type_name].fields[field_name].resolve = fn  # type: ignore[attr-defined]
    return schema
