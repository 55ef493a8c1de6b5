"""The simulator driven by librouteros, as provisiond's RouterOS target drives it."""

from __future__ import annotations

from collections.abc import Callable

import librouteros
import pytest
from librouteros.exceptions import FatalError, TrapError
from librouteros.query import And, Key, Or

from provisiond.sim import ManualClock, RouterSim, Trap

# What conftest.py configures (test modules do not import conftest: its module
# name is shared with other test directories).
AL = "/ip/firewall/address-list"
USER, PASSWORD = "sim-user", "sim-pass"


def _al(api: librouteros.api.Api, menu: str = "ip") -> librouteros.api.Path:
    return api.path(menu, "firewall", "address-list")


def _addresses(api: librouteros.api.Api, list_name: str, menu: str = "ip") -> list[str]:
    return [row["address"] for row in _al(api, menu).select("address").where(Key("list") == list_name)]


@pytest.mark.parametrize(
    ("menu", "given", "stored"),
    [
        ("ip", "192.0.34.166/32", "192.0.34.166"),
        ("ip", "1.1.1.1/24", "1.1.1.0/24"),
        ("ip", "192.168.0.0-192.168.1.255", "192.168.0.0/23"),
        ("ip", "10.0.0.1-10.0.0.5", "10.0.0.1-10.0.0.5"),
        ("ip", "one.one.one.one", "one.one.one.one"),
        ("ipv6", "2606:4700:4700::1111", "2606:4700:4700::1111/128"),
        ("ipv6", "2001:DB8::1/64", "2001:db8::/64"),
    ],
)
def test_addresses_are_normalised(lr: librouteros.api.Api, menu: str, given: str, stored: str) -> None:
    _al(lr, menu).add(list="n", address=given)
    assert _addresses(lr, "n", menu) == [stored]


@pytest.mark.parametrize(("menu", "address"), [("ip", "2001:db8::1"), ("ipv6", "1.2.3.4"), ("ip", "1.2.3.256")])
def test_wrong_family_or_garbage_address_is_an_argument_trap(lr: librouteros.api.Api, menu: str, address: str) -> None:
    with pytest.raises(TrapError) as caught:
        _al(lr, menu).add(list="n", address=address)
    assert (caught.value.message, caught.value.category) == ("invalid value for argument address", 1)


@pytest.mark.parametrize("missing", ["list", "address"])
def test_add_without_a_required_property(lr: librouteros.api.Api, missing: str) -> None:
    values = {"list": "n", "address": "1.2.3.4"}
    del values[missing]
    with pytest.raises(TrapError) as caught:
        _al(lr).add(**values)
    assert caught.value.message == f"missing value(s) of argument(s) {missing}"


@pytest.mark.parametrize("second", ["1.2.3.4", "1.2.3.4/32", "1.2.3.4-1.2.3.4"])
def test_duplicate_add_traps_without_category(lr: librouteros.api.Api, second: str) -> None:
    _al(lr).add(list="dup", address="1.2.3.4")
    with pytest.raises(TrapError) as caught:
        _al(lr).add(list="dup", address=second)
    assert (caught.value.message, caught.value.category) == ("failure: already have such entry", None)
    assert _al(lr).add(list="other", address=second) == "*2"


def test_set_that_would_duplicate_traps_and_changes_nothing(lr: librouteros.api.Api) -> None:
    path = _al(lr)
    first = path.add(list="dup", address="1.2.3.4")
    second = path.add(list="dup", address="1.2.3.5", comment="keep")
    with pytest.raises(TrapError, match="already have such entry"):
        path.update(**{".id": second, "address": "1.2.3.4/32", "comment": "changed"})
    assert [(r[".id"], r["address"], r.get("comment")) for r in path] == [(first, "1.2.3.4", None), (second, "1.2.3.5", "keep")]
    path.update(**{".id": second, "address": "1.2.3.4", "list": "other"})
    assert _addresses(lr, "other") == ["1.2.3.4"]


@pytest.mark.parametrize("verb", ["set", "remove", "enable", "disable"])
def test_unknown_id_is_no_such_item(lr: librouteros.api.Api, verb: str) -> None:
    _al(lr).add(list="a", address="1.2.3.4")
    with pytest.raises(TrapError) as caught:
        tuple(lr(f"{AL}/{verb}", **{".id": "*77", "comment": "x"} if verb == "set" else {".id": "*77"}))
    assert (caught.value.message, caught.value.category) == ("no such item (4)", None)


def test_set_enable_disable_unset_with_numbers(lr: librouteros.api.Api) -> None:
    path = _al(lr)
    ident = path.add(list="a", address="1.2.3.4", comment="c", timeout="1h")
    tuple(lr(f"{AL}/disable", numbers=ident))
    assert [r["disabled"] for r in path] == [True]
    tuple(lr(f"{AL}/enable", numbers=ident))
    assert [r["disabled"] for r in path] == [False]
    tuple(lr(f"{AL}/unset", numbers=ident, **{"value-name": "comment"}))
    tuple(lr(f"{AL}/set", **{"numbers": ident, "!timeout": ""}))
    assert list(path) and "comment" not in list(path)[0] and "timeout" not in list(path)[0]
    path.update(**{".id": ident, "comment": "back", "disabled": True})
    assert [(r["comment"], r["disabled"]) for r in path] == [("back", True)]


def test_bare_number_is_a_position_not_an_id(lr: librouteros.api.Api) -> None:
    path = _al(lr)
    ids = [path.add(list="p", address=f"10.0.0.{i}") for i in range(1, 6)]
    path.remove(ids[0])
    path.update(**{".id": "1", "comment": "second row"})
    assert [(r[".id"], r.get("comment")) for r in path.select(".id", "comment")] == [
        (ids[1], None),
        (ids[2], "second row"),
        (ids[3], None),
        (ids[4], None),
    ]


def test_comma_joined_remove(lr: librouteros.api.Api) -> None:
    path = _al(lr)
    ids = [path.add(list="r", address=f"10.0.0.{i}") for i in range(4)]
    path.remove(ids[0], ids[2])
    assert _addresses(lr, "r") == ["10.0.0.1", "10.0.0.3"]


@pytest.mark.parametrize(("atomic", "left"), [(True, ["10.0.0.0", "10.0.0.1", "10.0.0.2"]), (False, ["10.0.0.1"])])
def test_multi_id_remove_with_an_unknown_id(make_sim: Callable[..., RouterSim], atomic: bool, left: list[str]) -> None:
    sim = make_sim(atomic_remove=atomic)
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port)
    path = _al(api)
    ids = [path.add(list="r", address=f"10.0.0.{i}") for i in range(3)]
    with pytest.raises(TrapError, match=r"^no such item \(4\)$"):
        path.remove(ids[0], "*999", ids[2])
    assert _addresses(api, "r") == left
    api.close()


def test_remove_with_no_ids_traps(lr: librouteros.api.Api) -> None:
    _al(lr).add(list="r", address="10.0.0.1")
    with pytest.raises(TrapError, match="no such item"):
        _al(lr).remove()
    assert _addresses(lr, "r") == ["10.0.0.1"]


def test_select_proplist_and_empty_rows(lr: librouteros.api.Api) -> None:
    path = _al(lr)
    path.add(list="s", address="1.1.1.1")
    path.add(list="s", address="1.1.1.2", comment="c")
    assert list(path.select("comment")) == [{"comment": "c"}]  # the bare !re is skipped by librouteros
    assert list(path.select(".id", "address").where(Key("comment") == "c")) == [{".id": "*2", "address": "1.1.1.2"}]


def test_count_only(lr: librouteros.api.Api) -> None:
    for i in range(3):
        _al(lr).add(list="c", address=f"1.1.1.{i}")
    _al(lr).add(list="d", address="1.1.1.1")
    assert tuple(lr(f"{AL}/print", **{"count-only": ""})) == ({"ret": 4},)
    assert tuple(lr.rawCmd(f"{AL}/print", "?list=c", "=count-only=")) == ({"ret": 3},)


def _seed_query_rows(api: librouteros.api.Api) -> None:
    path = _al(api)
    path.add(list="a", address="10.0.0.1", comment="x")
    path.add(list="a", address="10.0.0.2", disabled=True)
    path.add(list="b", address="10.0.0.3", comment="y")
    path.add(list="c", address="10.0.0.4")


@pytest.mark.parametrize(
    ("where", "addresses"),
    [
        ((Key("list") == "a",), ["10.0.0.1", "10.0.0.2"]),
        ((Key("list") != "a",), ["10.0.0.3", "10.0.0.4"]),
        ((Key("list").In("a", "c"),), ["10.0.0.1", "10.0.0.2", "10.0.0.4"]),
        ((Or(Key("list") == "b", Key("disabled") == True),), ["10.0.0.2", "10.0.0.3"]),  # noqa: E712
        ((And(Key("list") == "a", Key("disabled") == False),), ["10.0.0.1"]),  # noqa: E712
        ((Key("list") == "a", Key("disabled") == False), ["10.0.0.1"]),  # noqa: E712
        ((Key("address") > "10.0.0.2",), ["10.0.0.3", "10.0.0.4"]),
        ((Key("comment") > "",), ["10.0.0.1", "10.0.0.3"]),
        ((Key("address") == "10.0.0.3/32",), ["10.0.0.3"]),
    ],
)
def test_where_clauses(lr: librouteros.api.Api, where: tuple[object, ...], addresses: list[str]) -> None:
    _seed_query_rows(lr)
    assert [r["address"] for r in _al(lr).select("address").where(*where)] == addresses


@pytest.mark.parametrize(
    ("queries", "addresses"),
    [
        (("?-comment",), ["10.0.0.2", "10.0.0.4"]),
        (("?comment",), ["10.0.0.1", "10.0.0.3"]),
        (("?>comment=",), ["10.0.0.1", "10.0.0.3"]),
        (("?list=a", "?list=b", "?#|"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        (("?list=a", "?list=b", "?#|!"), ["10.0.0.4"]),
        (("?list=a", "?#!"), ["10.0.0.3", "10.0.0.4"]),
    ],
)
def test_raw_query_words(lr: librouteros.api.Api, queries: tuple[str, ...], addresses: list[str]) -> None:
    _seed_query_rows(lr)
    assert [r["address"] for r in lr.rawCmd(f"{AL}/print", "=.proplist=address", *queries)] == addresses


def test_timeout_counts_down_and_expires(lr: librouteros.api.Api, clock: ManualClock) -> None:
    path = _al(lr)
    path.add(list="t", address="1.1.1.1", timeout="1d")
    path.add(list="t", address="1.1.1.2", timeout="00:00:05")
    path.add(list="t", address="1.1.1.3")
    clock.advance(2)
    assert [(r["address"], r.get("timeout"), r["dynamic"]) for r in path] == [
        ("1.1.1.1", "23h59m58s", False),
        ("1.1.1.2", "3s", False),
        ("1.1.1.3", None, False),
    ]
    clock.advance(3)
    assert _addresses(lr, "t") == ["1.1.1.1", "1.1.1.3"]
    path.add(list="t", address="1.1.1.2")  # the key is free again


def test_timeout_marks_dynamic_setting(make_sim: Callable[..., RouterSim]) -> None:
    sim = make_sim(timeout_marks_dynamic=True)
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port)
    _al(api).add(list="t", address="1.1.1.1", timeout="5m")
    _al(api).add(list="t", address="1.1.1.2")
    assert [(r["address"], r["dynamic"]) for r in _al(api)] == [("1.1.1.1", True), ("1.1.1.2", False)]
    api.close()


def test_dynamic_entries_from_the_api_and_injected(lr: librouteros.api.Api, sim: RouterSim) -> None:
    _al(lr).add(list="d", address="1.1.1.1", dynamic=True)
    injected = sim.add_entry("ip", list_name="d", address="1.1.1.2/32", comment="from a firewall rule")
    with pytest.raises(Trap, match="already have such entry"):
        sim.add_entry("ip", list_name="d", address="1.1.1.2")
    rows = list(_al(lr).select(".id", "address", "dynamic", "comment").where(Key("dynamic") == True))  # noqa: E712
    assert rows == [
        {".id": "*1", "address": "1.1.1.1", "dynamic": True},
        {".id": injected, "address": "1.1.1.2", "dynamic": True, "comment": "from a firewall rule"},
    ]
    assert [e["address"] for e in sim.entries("ip", "d")] == ["1.1.1.1", "1.1.1.2"]


@pytest.mark.parametrize("comment", ["Ridge Tower – ñandú 🚀", "Zürich", "ü" * 200])
def test_non_ascii_comments_round_trip(lr: librouteros.api.Api, sim: RouterSim, comment: str) -> None:
    _al(lr).add(list="u", address="1.1.1.1", comment=comment)
    assert [r["comment"] for r in _al(lr).select("comment")] == [comment]
    assert sim.entries("ip")[0]["comment"] == comment


def test_ipv6_menu_is_a_separate_table(lr: librouteros.api.Api) -> None:
    _al(lr, "ipv6").add(list="v6", address="2001:db8::1")
    _al(lr).add(list="v6", address="192.0.2.1")
    assert _addresses(lr, "v6", "ipv6") == ["2001:db8::1/128"]
    assert _addresses(lr, "v6") == ["192.0.2.1"]
    assert [r[".id"] for r in _al(lr, "ipv6")] == ["*1"]


def test_quit_raises_fatal(lr: librouteros.api.Api) -> None:
    with pytest.raises(FatalError, match="session terminated on request"):
        tuple(lr("/quit"))


def test_identity_and_resource(make_sim: Callable[..., RouterSim]) -> None:
    sim = make_sim(identity="core-1", version="7.16.1 (stable)")
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port)
    assert tuple(api.path("system", "identity")) == ({"name": "core-1"},)
    resource = tuple(api.path("system", "resource"))[0]
    assert (resource["version"], resource["board-name"]) == ("7.16.1 (stable)", "CHR")
    api.close()


def test_bad_password_raises_trap(sim: RouterSim) -> None:
    with pytest.raises(TrapError, match=r"invalid user name or password \(6\)"):
        librouteros.connect(sim.host, USER, "nope", port=sim.port)


def test_token_login_against_legacy_router(make_sim: Callable[..., RouterSim]) -> None:
    sim = make_sim(legacy_login=True)
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port, login_method=librouteros.login.token)
    assert tuple(api.path("system", "identity")) == ({"name": "MikroTik"},)
    api.close()


def test_list_filtered_prints_are_counted(lr: librouteros.api.Api, sim: RouterSim) -> None:
    _al(lr).add(list="a", address="1.1.1.1")
    list(_al(lr).select(".id").where(Key("list") == "a"))
    prints = [c for c in sim.history if c.path == f"{AL}/print"]
    assert [c.queries for c in prints] == [("?=list=a",)]
    assert sim.command_counts[f"{AL}/add"] == 1


def test_injected_duplicates_are_printed_and_removable(lr: librouteros.api.Api, sim: RouterSim) -> None:
    first = _al(lr).add(list="d", address="1.1.1.1")
    twin = sim.add_entry("ip", list_name="d", address="1.1.1.1/32", dynamic=False, allow_duplicate=True)
    assert [(r[".id"], r["address"]) for r in _al(lr).select(".id", "address")] == [(first, "1.1.1.1"), (twin, "1.1.1.1")]
    _al(lr).remove(first)
    with pytest.raises(TrapError, match="already have such entry"):
        _al(lr).add(list="d", address="1.1.1.1")
    _al(lr).remove(twin)
    assert _al(lr).add(list="d", address="1.1.1.1") == "*3"
