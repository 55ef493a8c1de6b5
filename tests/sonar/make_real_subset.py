"""Cut the part of Sonar's real GraphQL schema provisiond touches out of a full dump.

Not a test: run by hand when the product starts reading another field, then check the
result in. ``python tests/sonar/make_real_subset.py SCHEMA.graphql > tests/sonar/real_schema_subset.graphql``
where SCHEMA.graphql is the whole schema: the ```graphql blocks of ``docs/*.md`` in
github.com/Elifnurdeniz/sonar-graphql-schema, concatenated (they parse as one schema).

What is kept: the object types and fields in ``KEEP`` (each connection type with its
``entities`` and ``page_info``); of each kept field's arguments, ``paginator``,
``sorter``, ``search``, ``reverse_relation_filters``, ``include_archived`` and the field
filters that name a kept field of the type listed; every input type, enum and scalar
those reach, whole. Descriptions, nullability and defaults stay as Sonar wrote them.
``tests/sonar/test_schema_faithful.py`` holds the fake Sonar's schema to this file.
"""

from __future__ import annotations

import sys
from typing import Any

from graphql import (
    DocumentNode,
    EnumTypeDefinitionNode,
    GraphQLSchema,
    InputObjectTypeDefinitionNode,
    ObjectTypeDefinitionNode,
    ScalarTypeDefinitionNode,
    build_ast_schema,
    get_named_type,
    parse,
    print_ast,
)

SOURCE = ("github.com/Elifnurdeniz/sonar-graphql-schema at commit 991d802d5136002e737de1a07066dcb76f950900,\n"
          "# docs/*.md (their ```graphql blocks, concatenated: Sonar's schema as of May 2025)")

KEEP: dict[str, set[str]] = {
    "Query": {"accounts", "account_groups", "account_statuses"},
    "Account": {"id", "name", "account_status_id", "is_delinquent", "archived_at", "created_at",
                "updated_at", "account_status", "account_groups", "ip_assignments",
                "radius_accounts", "addresses", "uninventoried_mac_addresses"},
    "AccountStatus": {"id", "name", "activates_account", "created_at", "updated_at"},
    "AccountGroup": {"id", "name", "created_at", "updated_at", "accounts"},
    "RadiusAccount": {"id", "username", "account_id", "created_at", "updated_at", "ip_assignments"},
    "Address": {"id", "serviceable", "created_at", "updated_at", "inventory_items"},
    "InventoryItem": {"id", "created_at", "updated_at", "ip_assignments",
                      "inventory_model_field_data"},
    "InventoryModelFieldData": {"id", "value", "created_at", "updated_at", "ip_assignments"},
    "UninventoriedMacAddress": {"id", "mac_address", "account_id", "created_at", "updated_at",
                                "ip_assignments"},
    "IpAssignment": {"id", "subnet", "soft", "ip_pool_id", "ipassignmentable_type",
                     "ipassignmentable_id", "created_at", "updated_at"},
    "PageInfo": {"page", "records_per_page", "total_count", "total_pages"},
}
LIST_ARGS = ("paginator", "sorter", "search", "reverse_relation_filters", "include_archived")


def entity_type(schema: GraphQLSchema, type_name: str, field: str) -> str:
    """The object a field leads to: a connection's entity type, or the object itself."""
    target = get_named_type(schema.type_map[type_name].fields[field].type)  # type: ignore[attr-defined]
    if target.name.endswith("Connection"):
        return str(get_named_type(target.fields["entities"].type).name)  # type: ignore[attr-defined]
    return str(target.name)


def _with(node: Any, **changes: Any) -> Any:
    """A copy of an AST node with some attributes changed (nodes may be frozen)."""
    return type(node)(**{**{k: getattr(node, k) for k in node.keys if k != "loc"}, **changes})


def subset(text: str) -> str:
    doc = parse(text, no_location=True)
    schema = build_ast_schema(doc)
    objects = dict(KEEP)
    for type_name, fields in KEEP.items():
        for f in fields:
            target = get_named_type(schema.type_map[type_name].fields[f].type)  # type: ignore[attr-defined]
            if target.name.endswith("Connection"):
                objects[target.name] = {"entities", "page_info"}
    by_name = {d.name.value: d for d in doc.definitions if hasattr(d, "name")}
    wanted: dict[str, object] = {}
    named: list[str] = []

    def reach(type_name: str) -> None:
        if type_name in wanted or type_name in ("String", "Int", "Float", "Boolean", "ID"):
            return
        node = by_name[type_name]
        wanted[type_name] = node
        if isinstance(node, InputObjectTypeDefinitionNode):
            for f in node.fields or ():
                reach(get_named_type(schema.type_map[type_name].fields[f.name.value].type).name)  # type: ignore[attr-defined]
        named.append(type_name)

    for type_name, fields in objects.items():
        node = by_name[type_name]
        assert isinstance(node, ObjectTypeDefinitionNode), type_name
        kept = []
        for fnode in node.fields or ():
            if fnode.name.value not in fields:
                continue
            target = entity_type(schema, type_name, fnode.name.value)
            filters = objects.get(target, set()) if fnode.arguments else set()
            fnode = _with(fnode, arguments=tuple(
                a for a in fnode.arguments or () if a.name.value in LIST_ARGS or a.name.value in filters))
            for a in fnode.arguments:
                reach(get_named_type(schema.type_map[type_name].fields[fnode.name.value]  # type: ignore[attr-defined]
                                     .args[a.name.value].type).name)
            reach(get_named_type(schema.type_map[type_name].fields[fnode.name.value].type).name)  # type: ignore[attr-defined]
            kept.append(fnode)
        missing = fields - {f.name.value for f in kept}
        assert not missing, f"{type_name}: no field(s) {missing} in the schema"
        wanted[type_name] = _with(node, interfaces=(), fields=tuple(kept))
    order = (ObjectTypeDefinitionNode, InputObjectTypeDefinitionNode, EnumTypeDefinitionNode,
             ScalarTypeDefinitionNode)
    defs = sorted(wanted.values(), key=lambda d: (
        next(i for i, k in enumerate(order) if isinstance(d, k)), d.name.value))  # type: ignore[attr-defined]
    out = print_ast(DocumentNode(definitions=tuple(defs)))  # type: ignore[arg-type]
    build_ast_schema(parse(out))  # whole: every type it names is in it
    return out


def main() -> None:
    text = open(sys.argv[1], encoding="utf-8").read()
    print("# The subset of Sonar's real GraphQL schema that provisiond touches, cut by")
    print("# tests/sonar/make_real_subset.py (do not edit by hand). Source:")
    print(f"# {SOURCE}.")
    print()
    print(subset(text))


if __name__ == "__main__":
    main()
