"""radius_desire.radius: billing -> radusergroup / radreply Resources (pure)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from helpers import LEGACY, TOWER, account

from provisiond.core.radius import GroupMapping, radius
from provisiond.settings import RadiusGroupMapping


def keys(desired: dict) -> list[tuple]:  # type: ignore[type-arg]
    return sorted((r.kind, r.ident, r.attrs, r.account_id) for r in desired.values())


def test_mapped_accounts_get_one_row_per_username_and_group() -> None:
    accounts = [
        account("1", "alice", "alice-2"),
        account("2", "bob", groups=["Legacy Customers", "Tower Hosts"]),
        account("3", "carol", groups=["Other"], addresses=["10.0.0.3"]),
        account("4", groups=["Legacy Customers"], addresses=["10.0.0.4"]),  # no username
    ]
    desired, conflicts = radius(accounts, {}, [LEGACY, TOWER])
    assert conflicts == []
    assert keys(desired) == [
        ("radusergroup", (("username", "alice"), ("groupname", "legacy")), (("priority", "1"),), "1"),
        ("radusergroup", (("username", "alice-2"), ("groupname", "legacy")), (("priority", "1"),), "1"),
        ("radusergroup", (("username", "bob"), ("groupname", "legacy")), (("priority", "1"),), "2"),
        ("radusergroup", (("username", "bob"), ("groupname", "tower")), (("priority", "2"),), "2"),
    ]


def test_status_selector_and_settings_mapping_work_alike() -> None:
    m = RadiusGroupMapping(radius_group="suspended", status="suspended", priority=0)
    accounts = [account("1", "alice", status="suspended"), account("2", "bob")]
    desired, _ = radius(accounts, {}, [m])
    assert [r.get("username") for r in desired.values()] == ["alice"]


def test_two_mappings_onto_one_radius_group_give_one_row_with_lowest_priority() -> None:
    maps = [GroupMapping("plan", group="A", priority=5), GroupMapping("plan", group="B", priority=2)]
    desired, _ = radius([account("1", "alice", groups=["A", "B"])], {}, maps)
    assert [r.attrs for r in desired.values()] == [(("priority", "2"),)]


@pytest.mark.parametrize(
    ("billing", "allocated", "want"),
    [
        (["10.0.0.5"], (), "10.0.0.5"),
        (["10.0.0.5/32"], (), "10.0.0.5"),
        ([], ("100.64.0.9",), "100.64.0.9"),
        (["10.0.0.5"], ("100.64.0.9",), "10.0.0.5"),  # billing-assigned wins over the pool
        (["10.0.8.0/29", "2001:db8::1", "2001:db8::/64"], (), None),  # networks and IPv6: none
        (["10.0.8.0/29", "10.0.0.7"], (), "10.0.0.7"),
    ],
)
def test_framed_ip_address_is_one_ipv4_host(billing: list[str], allocated: tuple[str, ...], want: str | None) -> None:
    desired, _ = radius([account("7", "alice", addresses=billing)], {"7": allocated}, [LEGACY])
    replies = [r for r in desired.values() if r.kind == "radreply"]
    if want is None:
        assert replies == []
    else:
        (r,) = replies
        assert r.ident == (("username", "alice"), ("attribute", "Framed-IP-Address"))
        assert r.attrs == (("op", "="), ("value", want))
        assert r.group == "Framed-IP-Address"


def test_no_framed_ip_for_accounts_outside_managed_groups() -> None:
    desired, _ = radius([account("1", "alice", groups=["Other"], addresses=["10.0.0.1"])], {}, [LEGACY])
    assert desired == {}


def test_several_usernames_are_paired_with_addresses_in_order() -> None:
    acc = account("1", "b-user", "a-user", "c-user", addresses=["10.0.0.2", "10.0.0.1"])
    desired, _ = radius([acc], {}, [LEGACY])
    got = {r.get("username"): r.get("value") for r in desired.values() if r.kind == "radreply"}
    assert got == {"a-user": "10.0.0.2", "b-user": "10.0.0.1"}  # c-user: no address left


def test_username_on_two_accounts_belongs_to_lowest_id_and_the_other_conflicts() -> None:
    accounts = [account("10", "alice", addresses=["10.0.0.10"]), account("9", "alice", addresses=["10.0.0.9"])]
    desired, conflicts = radius(accounts, {}, [LEGACY])
    assert {r.account_id for r in desired.values()} == {"9"}
    assert [r.get("value") for r in desired.values() if r.kind == "radreply"] == ["10.0.0.9"]
    assert sorted((c.resource.kind, c.resource.account_id, c.reason) for c in conflicts) == [
        ("radreply", "10", "username 'alice' also belongs to account 9"),
        ("radusergroup", "10", "username 'alice' also belongs to account 9"),
    ]


def test_check_radius_config_flags_mangled_usernames_and_empty_groups(radius_sqlite: str) -> None:
    from provisiond.settings import Settings
    from provisiond.targets.radius import check_radius_config

    settings = Settings(
        source={"url": "sqlite://", "query": "select 1"},
        radius={"url": radius_sqlite},
        radius_group=[{"radius_group": "legacy", "group": "L"}, {"radius_group": "tower", "group": "T"}],
    )
    engine = sa.create_engine(radius_sqlite)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO radgroupreply (groupname, attribute, op, value) "
                          "VALUES ('tower', 'Mikrotik-Rate-Limit', '=', '1M/1M')"))
    warnings = check_radius_config(settings, engine, ["alice", "carol+x", "bob@isp.example", "dé"])
    engine.dispose()
    assert warnings[0].startswith("radius_group 'legacy' has no radgroupreply rows")
    assert "silences every later group" in warnings[0]
    assert len(warnings) == 3
    assert "'carol+x'" in warnings[1] and "'+'" in warnings[1]
    assert "'dé'" in warnings[2]
