"""The pure core's promises at their edges: safety thresholds at the boundary, the
checksums that tie a saved plan to what was reviewed, diff and desire details.

Written against what mutation testing (bench/mutation.sh) showed no test held: each
test kills mutants that survived the rest of the suite.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from provisiond.core import addresses
from provisiond.core.changes import Conflict, Create, Delete, Observed, Resource, Update
from provisiond.core.desire import ListMapping, address_list_entry, address_lists, addresses_of, comment_for
from provisiond.core.diff import count_by_group, diff
from provisiond.core.model import Account
from provisiond.core.plan import Plan, Safety, observed_digest
from provisiond.errors import TooMuchChange


def _entry(address: str, group: str = "g", account: str = "1", name: str = "N", ref: str = "") -> Resource:
    return Resource(kind="address-list", group=group, ident=(("list", group), ("address", address)),
                    attrs=(("comment", f"provisiond:{account} {name}"), ("disabled", "false")),
                    account_id=account, account_name=name, ref=ref)


def _plan(*changes: Create | Update | Delete, existing: dict[str, int]) -> Plan:
    return Plan("core-1", "routeros", tuple(changes), existing=existing)


def _deletes(n: int, group: str = "g") -> list[Delete]:
    return [Delete(_entry(f"10.0.0.{i}", group)) for i in range(n)]


def _updates(n: int, group: str = "g") -> list[Update]:
    return [Update(_entry(f"10.0.1.{i}", group), _entry(f"10.0.1.{i}", group, name="New")) for i in range(n)]


# -- safety at the boundary ------------------------------------------------------------

SAFETY = Safety(max_delete_ratio=0.3, max_update_ratio=0.3, min_existing=10)


def test_exactly_at_the_ratio_is_allowed_one_more_is_refused() -> None:
    _plan(*_deletes(3), *_updates(3), existing={"g": 10}).check_safety(SAFETY)  # 30 %: allowed
    with pytest.raises(TooMuchChange) as caught:
        _plan(*_deletes(4), *_updates(4), existing={"g": 10}).check_safety(SAFETY)
    assert str(caught.value) == (
        "core-1: g: 4 deletes of 10 existing entries (40.0%) exceeds max_delete_ratio 30.0%; "
        "g: 4 updates of 10 existing entries (40.0%) exceeds max_update_ratio 30.0% "
        "(held back: g; use --force to apply anyway)")


def test_creates_never_count_and_each_group_stands_alone() -> None:
    creates = [Create(_entry(f"10.0.2.{i}")) for i in range(50)]
    _plan(*creates, existing={"g": 10}).check_safety(SAFETY)
    # "a" is under min_existing (all of it may go); "b" right after it is still checked.
    with pytest.raises(TooMuchChange, match=r"^core-1: b: 5 deletes of 10 .*$") as caught:
        _plan(*_deletes(9, "a"), *_deletes(5, "b"), existing={"a": 9, "b": 10}).check_safety(SAFETY)
    assert "a:" not in str(caught.value)


def test_min_existing_one_guards_a_single_entry() -> None:
    with pytest.raises(TooMuchChange, match="1 deletes of 1 existing"):
        _plan(*_deletes(1), existing={"g": 1}).check_safety(Safety(min_existing=1))
    _plan(*_deletes(1), existing={}).check_safety(Safety(min_existing=0))  # nothing there: nothing to lose


# -- what a saved plan is checked against ------------------------------------------------


def test_counts() -> None:
    plan = _plan(*_deletes(3), *_updates(1), Create(_entry("10.0.3.1")), Create(_entry("10.0.3.2")), existing={})
    assert plan.counts() == {"create": 2, "update": 1, "delete": 3}
    assert _plan(existing={}).counts() == {"create": 0, "update": 0, "delete": 0}


def test_plan_checksum_is_stable_and_covers_target_observation_and_changes() -> None:
    """A plan saved by one version must verify in the next: the checksum's format is pinned."""
    plan = dataclasses.replace(_plan(Create(_entry("10.0.0.1")), existing={}), observed_checksum="abc")
    assert plan.checksum() == "2fc67cbd50129bb15b80141ecb138cba4c3f385fe111ab18a6aad2d0c3bc3a5b"
    others = [dataclasses.replace(plan, target="core-2"), dataclasses.replace(plan, observed_checksum="abd"),
              dataclasses.replace(plan, changes=(Create(_entry("10.0.0.2")),))]
    assert len({plan.checksum(), *(p.checksum() for p in others)}) == 4


def test_observed_digest_is_stable_order_free_and_sensitive() -> None:
    items: list[tuple[object, ...]] = [("*1", "l", "10.0.0.1", {"b": 1, "a": datetime(2026, 1, 1, tzinfo=UTC)}),
                                       ("*2", "l", "10.0.0.2", None)]
    digest = observed_digest(items)
    assert digest == "810268cd478d600e23ef3bf1efe1d7036e77508ec2318f591e0d6a6004a84a34"
    assert observed_digest(items[::-1]) == digest
    assert observed_digest([items[0], ("*2", "l", "10.0.0.3", None)]) != digest
    assert observed_digest([]) != observed_digest([()])


# -- diff ------------------------------------------------------------------------------------


def test_an_update_carries_the_observed_entry_and_the_wanted_one_with_its_id() -> None:
    have = _entry("10.0.0.1", ref="*7")
    want = _entry("10.0.0.1", name="Renamed")
    (change,), _ = diff(Observed(owned={have.key: have}), {want.key: want})
    assert isinstance(change, Update)
    assert change.old is have
    assert change.new == dataclasses.replace(want, ref="*7")
    assert (change.new.account_id, change.new.account_name, change.new.ref) == ("1", "Renamed", "*7")


def test_conflicts_come_sorted_by_list_then_address_value() -> None:
    wants = [_entry(a, g) for g, a in (("b", "10.0.0.9"), ("a", "10.0.0.10"), ("a", "10.0.0.9"))]
    foreign = {w.key: "hand-made" for w in wants}
    _, conflicts = diff(Observed(owned={}, foreign=foreign), {w.key: w for w in wants})
    assert [(c.resource.group, c.resource.get("address")) for c in conflicts] == [
        ("a", "10.0.0.9"), ("a", "10.0.0.10"), ("b", "10.0.0.9")]
    assert all(isinstance(c, Conflict) and c.reason == "hand-made" for c in conflicts)


def test_count_by_group() -> None:
    assert count_by_group([_entry("10.0.0.1", "a"), _entry("10.0.0.2", "b"), _entry("10.0.0.3", "a")]) == {
        "a": 2, "b": 1}
    assert count_by_group([]) == {}


# -- desire ----------------------------------------------------------------------------------


def test_comment_is_one_line_and_trimmed() -> None:
    assert comment_for("provisiond", Account("7", " Two\n\tWords\x00\x1b[31m ")) == "provisiond:7 Two Words [31m"
    assert comment_for("provisiond", Account("7", "")) == "provisiond:7"


def test_entry_fields() -> None:
    r = address_list_entry("tower-hosts", "10.0.0.1", Account("7", "Seven"), "m")
    assert (r.group, r.account_id, r.account_name, r.get("comment")) == ("tower-hosts", "7", "Seven", "m:7 Seven")


def test_addresses_of_adds_allocated_ones_in_routeros_form_without_repeats() -> None:
    account = Account("7", addresses=("10.0.0.1", "2001:db8::1/128"))
    assert addresses_of(account, {"8": ("10.9.9.9",)}) == ["10.0.0.1", "2001:db8::1/128"]
    assert addresses_of(account, {"7": ("10.0.0.1/32", "2001:DB8::2", "10.0.0.3")}) == [
        "10.0.0.1", "2001:db8::1/128", "2001:db8::2/128", "10.0.0.3"]


def test_accounts_no_mapping_selects_do_not_stop_the_others() -> None:
    accounts = [Account("1", groups=frozenset({"x"}), addresses=("10.0.0.1",)),
                Account("2", groups=frozenset({"g"}), addresses=("10.0.0.2",))]
    out = address_lists(accounts, {}, [ListMapping("l", ("r",), group="g")], ["r"], marker="m")
    assert [r.get("address") for r in out["r"].desired.values()] == ["10.0.0.2"]


def test_sort_key_orders_by_family_then_number_then_text() -> None:
    values = ["bob", "2001:db8::1/128", "10.0.0.10", "10.0.0.9-10.0.0.20", "10.0.0.9/32", "::1", "", "9x"]
    assert sorted(values, key=addresses.sort_key) == [
        "10.0.0.9-10.0.0.20", "10.0.0.9/32", "10.0.0.10", "::1", "2001:db8::1/128", "", "9x", "bob"]


# -- a refusal holds back only its own groups ----------------------------------------


def test_a_group_over_a_threshold_is_held_and_the_others_are_written() -> None:
    other = [Create(_entry("10.0.9.1", "h")), *_deletes(1, "h")]
    plan = _plan(*_deletes(4), *other, existing={"g": 10, "h": 10})
    held = plan.refusals(SAFETY)
    assert list(held) == ["g"] and "4 deletes of 10 existing entries" in held["g"]
    assert plan.without(held.keys()).changes == tuple(other)
    with pytest.raises(TooMuchChange, match=r"held back: g; everything else on this target is applied"):
        plan.check_safety(SAFETY)


def test_a_held_radius_group_keeps_the_reply_rows_of_its_usernames() -> None:
    def row(kind: str, group: str, user: str) -> Resource:
        return Resource(kind=kind, group=group, ident=(("username", user), ("groupname", group)),
                        attrs=(), account_id=user)

    members = [Delete(row("radusergroup", "tower", f"u{i}")) for i in range(3)]
    replies = [Delete(row("radreply", "Framed-IP-Address", f"u{i}")) for i in range(4)]
    plan = Plan("radius", "radius", (*members, *replies), existing={"tower": 3},
                unmatched={"tower": 'radius_group[0].group "Tower Host" matches no account'},
                followups=({"username": "u0"}, {"username": "u3"}))
    held = plan.refusals(SAFETY)
    assert list(held) == ["tower"] and "3 deletes would empty it" in held["tower"]
    rest = plan.without(held.keys())
    assert rest.changes == (replies[3],)  # u3's reply row is not the held group's
    assert rest.followups == ({"username": "u3"},)
