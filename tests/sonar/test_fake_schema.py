"""The fake Sonar against Sonar's real schema, and its scalars in force.

``real_schema_subset.graphql`` is the part of Sonar's published schema provisiond
touches (cut by ``make_real_subset.py``). The fake's schema must be the same, type by
type, field by field, argument by argument; every request provisiond sends must be a
valid operation, with valid variables, for both; and the fake's ``Int64Bit`` and
``Datetime`` must behave as written (graphql-core 3.3 ignores coercion functions set on
a built schema's scalars, which once made every id a number whatever ``ids`` said).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLSchema,
    build_schema,
    graphql_sync,
    is_enum_type,
    is_input_object_type,
    is_object_type,
    is_scalar_type,
    parse,
    validate,
)
from sonarlib import TOKEN, populate

from provisiond.sim.sonar import FakeSonar, World
from provisiond.sim.sonar.schema import build
from provisiond.sources.sonar import SonarSource

MakeSonar = Callable[..., FakeSonar]
REAL = build_schema((Path(__file__).parent / "real_schema_subset.graphql").read_text())


def shape(schema: GraphQLSchema) -> dict[str, Any]:
    """Every named type as names, type strings and defaults: what two schemas must share."""
    out: dict[str, Any] = {}
    for name, t in schema.type_map.items():
        if name.startswith("__"):
            continue
        if is_object_type(t):
            out[name] = {f: (str(d.type), {a: (str(v.type), repr(v.default_value))
                                           for a, v in d.args.items()})
                         for f, d in t.fields.items()}  # type: ignore[attr-defined]
        elif is_input_object_type(t):
            out[name] = {f: (str(d.type), repr(d.default_value))
                         for f, d in t.fields.items()}  # type: ignore[attr-defined]
        elif is_enum_type(t):
            out[name] = sorted(t.values)  # type: ignore[attr-defined]
        elif is_scalar_type(t):
            out[name] = "scalar"
    return out


def test_the_fake_schema_is_the_real_subset() -> None:
    fake, real = shape(build(World())), shape(REAL)
    assert fake.keys() == real.keys()
    for name in real:
        assert fake[name] == real[name], name


def test_every_request_provisiond_sends_is_valid_for_the_real_schema(make_sonar: MakeSonar) -> None:
    world = World()
    populate(world, 12)
    sonar = make_sonar(world, page_cap=5)
    sent: list[dict[str, Any]] = []
    sonar.before_request.append(lambda doc: sent.append(json.loads(json.dumps(doc))))
    source = SonarSource(sonar.url, TOKEN, page_size=5)
    try:
        source.check()  # the check-config query
        source.read()  # the first page, then pages after an id
        source.read(accounts={"1003", "1004"})  # a scoped read
    finally:
        source.close()
    operators = {f["operator"] for d in sent for one in d["variables"].get("search") or ()
                 for f in one["integer_fields"]}
    assert operators == {"GT", "EQ"} and any("search" not in d["variables"] for d in sent)
    empty = {"entities": [], "page_info": {"page": 1, "records_per_page": 1, "total_count": 0,
                                           "total_pages": 0}}
    for doc in sent:
        for schema in (REAL, build(World())):
            assert validate(schema, parse(doc["query"])) == []
        # Executing coerces the variables against the real schema's input types.
        result = graphql_sync(REAL, doc["query"], root_value={"accounts": empty},
                              variable_values=doc["variables"])
        assert result.errors is None, (result.errors, doc["variables"])


@pytest.mark.parametrize("ids", ["string", "number", "mixed"])
def test_ids_go_out_as_the_mode_says(make_sonar: MakeSonar, ids: str) -> None:
    world = World()
    populate(world, 4)
    sonar = make_sonar(world, ids=ids)
    body = httpx.post(f"{sonar.url}/api/graphql", headers={"Authorization": f"Bearer {TOKEN}"},
                      json={"query": "{ accounts(sorter: [{attribute: \"id\", direction: ASC}]) "
                                     "{ entities { id account_status_id radius_accounts "
                                     "{ entities { id account_id } } } } }"}).json()
    accounts = body["data"]["accounts"]["entities"]
    values = [a["id"] for a in accounts] + [r["account_id"] for a in accounts
                                            for r in a["radius_accounts"]["entities"]]
    assert [str(v) for v in values[:4]] == ["1000", "1001", "1002", "1003"]
    for v in values:
        want = str if ids == "string" or (ids == "mixed" and int(v) % 2) else int
        assert type(v) is want, (ids, v)


def test_int64bit_and_datetime_are_parsed_as_written(make_sonar: MakeSonar) -> None:
    world = World()
    populate(world, 6)
    world.tables["accounts"][1004]["updated_at"] = "2030-01-01T00:00:00+00:00"  # (update() stamps now)
    sonar = make_sonar(world)

    def ask(query: str, variables: dict[str, Any]) -> Any:
        return httpx.post(f"{sonar.url}/api/graphql", headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"query": query, "variables": variables}).json()

    q = ("query q($s: [Search]) { accounts(search: $s) { entities { id updated_at } } }")
    later = ask(q, {"s": [{"datetime_fields": [{"attribute": "updated_at", "operator": "GTE",
                                                "search_value": "2029-12-31T23:00:00+02:00"}]}]})
    assert later.get("errors") is None, later
    assert later["data"]["accounts"]["entities"] == [
        {"id": "1004", "updated_at": "2030-01-01T00:00:00+00:00"}]
    for value in ("1003", 1003):  # Int64Bit is taken as a string or as a number
        got = ask(q, {"s": [{"integer_fields": [{"attribute": "id", "operator": "EQ",
                                                 "search_value": value}]}]})
        assert got["data"]["accounts"]["entities"][0]["id"] == "1003"
    bad = ask(q, {"s": [{"integer_fields": [{"attribute": "id", "operator": "EQ",
                                             "search_value": "10x"}]}]})
    assert "Int64Bit cannot represent '10x'" in json.dumps(bad["errors"])
    literal = ask('{ accounts(id: "1002") { entities { id } } }', {})
    assert literal["data"]["accounts"]["entities"] == [{"id": "1002"}]


def test_searches_and_filters_as_sonar_defines_them(make_sonar: MakeSonar) -> None:
    world = World()
    world.account(1, "Ridge Tower", delinquent=True)
    world.account(2, "Ridge Farm")
    world.account(3, "Valley")
    world.archive(3)
    sonar = make_sonar(world)

    def ids(args: str) -> Any:
        body = httpx.post(f"{sonar.url}/api/graphql", headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"query": f"{{ accounts{args} {{ entities {{ id }} }} }}"}).json()
        if body.get("errors"):
            return body["errors"][0]["message"]
        return [int(e["id"]) for e in body["data"]["accounts"]["entities"]]

    assert ids("") == [1, 2]  # archived: left out
    assert ids("(include_archived: true)") == [1, 2, 3]
    assert ids("(is_delinquent: true)") == [1]
    # partial_matching defaults to true; match is required; match: false excludes.
    assert ids('(search: [{string_fields: [{attribute: "name", search_value: "ridge", match: true}]}])') == [1, 2]
    assert ids('(search: [{string_fields: [{attribute: "name", search_value: "ridge", match: false}]}])') == []
    assert ids('(search: [{string_fields: [{attribute: "name", search_value: "ridge", match: true, '
               'partial_matching: false}]}])') == []
    assert "match" in ids('(search: [{string_fields: [{attribute: "name", search_value: "x"}]}])')
    assert ids('(search: [{boolean_fields: [{attribute: "is_delinquent", search_value: true, '
               'operator: NEQ}]}])') == [2]
    assert "not implemented by the fake" in ids('(search: [{unset_fields: ["name"]}])')
