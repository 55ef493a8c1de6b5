"""``core.model.Match``: the one selection rule, as every kind of mapping uses it
(address lists, RADIUS groups, pools), and the unmatched-mapping rule on its names."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from provisiond.core import desire
from provisiond.core.ipam import Pool, allocate
from provisiond.core.model import Account, Match
from provisiond.core.plan import Selector, unmatched
from provisiond.core.radius import GroupMapping, radius

TOWER = frozenset({"Tower Hosts"})
PAYING = Account("1", "Paying", "Active", TOWER, ("10.0.0.1",), ("u1",), active=True)
OWING = Account("2", "Owing", "Active", TOWER, ("10.0.0.2",), ("u2",), active=True, delinquent=True)
OFF = Account("3", "Off", "Suspended", frozenset(), ("10.0.0.3",), ("u3",), delinquent=True)


def test_every_key_given_must_hold() -> None:
    cases = [
        (Match(groups=TOWER), {"1", "2"}),
        (Match(groups=frozenset({"Tower Hosts", "Legacy"})), {"1", "2"}),
        (Match(statuses=frozenset({"Suspended", "Paid"})), {"3"}),
        (Match(active=True), {"1", "2"}),
        (Match(active=False), {"3"}),
        (Match(delinquent=True), {"2", "3"}),
        (Match(delinquent=False), {"1"}),
        (Match(groups=TOWER, delinquent=True), {"2"}),
        (Match(statuses=frozenset({"Active"}), active=True, delinquent=False), {"1"}),
        (Match(groups=frozenset()), set()),
        (Match(), {"1", "2", "3"}),
    ]
    for match, want in cases:
        assert {a.id for a in (PAYING, OWING, OFF) if match.selects(a)} == want, match


def test_match_of_a_mapping_reads_each_spelling() -> None:
    assert Match.of(GroupMapping("g", group="A")) == Match(groups=frozenset({"A"}))
    assert Match.of(GroupMapping("g", groups=("A", "B"), status="S", delinquent=False)) == Match(
        groups=frozenset({"A", "B"}), statuses=frozenset({"S"}), delinquent=False)
    assert Match.of(object()) == Match()
    assert Match(groups=TOWER, active=True).describe() == 'group "Tower Hosts" and active = true'
    assert Match(delinquent=True).flags() == {"delinquent"}


def test_explain_checks_say_which_key_fails() -> None:
    checks = Match(groups=TOWER, delinquent=True, active=True).checks(PAYING)
    assert checks == [("groups", True, 'member of group "Tower Hosts"'),
                      ("active", True, "its status activates it (active = true)"),
                      ("delinquent", False, "not delinquent (delinquent = true)")]


def test_lists_radius_groups_and_pools_select_alike() -> None:
    walled = Match(delinquent=True)
    lists = desire.address_lists([PAYING, OWING, OFF], {}, [
        desire.ListMapping("walled-garden", ("r",), match=walled),
        desire.ListMapping("tower-hosts", ("r",), match=Match(groups=TOWER, delinquent=False)),
    ], ["r"], marker="p")["r"].desired
    assert {(r.group, r.account_id) for r in lists.values()} == {
        ("walled-garden", "2"), ("walled-garden", "3"), ("tower-hosts", "1")}
    rows, _ = radius([PAYING, OWING, OFF], {}, [GroupMapping("walled", delinquent=True)])
    assert {(r.group, r.account_id) for r in rows.values() if r.kind == "radusergroup"} == {
        ("walled", "2"), ("walled", "3")}
    pool = Pool.build("owing", None, ["100.64.0.0/29"], match=walled)
    bare = [dataclasses.replace(a, addresses=()) for a in (PAYING, OWING, OFF)]  # billing gives none
    got = allocate(bare, [pool], [], datetime(2026, 1, 1, tzinfo=UTC))
    assert {x.account_id for x in got.new} == {"2", "3"}


def test_only_names_make_a_mapping_unmatched() -> None:
    sels = [
        Selector("address_list[0]", "walled", ("r",), match=Match(delinquent=True)),
        Selector("address_list[1]", "t", ("r",), match=Match(groups=frozenset({"Tower Host", "Legacy"}))),
        Selector("address_list[2]", "s", ("r",), match=Match(groups=TOWER, statuses=frozenset({"Gone"}))),
        Selector("address_list[3]", "u", ("r",), match=Match(groups=frozenset({"Tower Host"}),
                                                             active=True)),
    ]
    found = unmatched(sels, groups={"Tower Hosts", "Legacy"}, statuses={"Active"})
    # Nobody delinquent is news, not a typo; one good name of several still matches.
    assert [s.where for s in found] == ["address_list[2]", "address_list[3]"]
    assert found[0].describe() == 'address_list[2].group "Tower Hosts" and address_list[2].status "Gone"'
    assert sels[1].missing({"Tower Hosts", "Legacy"}, set()) == [("group", "Tower Host")]
