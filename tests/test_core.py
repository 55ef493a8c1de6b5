"""The pure core: addresses, desire, diff, plan safety and checksum, JSON round trip."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisiond.core import addresses, desire
from provisiond.core.changes import Create, Delete, Observed, Resource, Update, change_from_json, change_to_json
from provisiond.core.diff import diff
from provisiond.errors import TooMuchChange
from provisiond.core.model import Account
from provisiond.core.plan import Plan, Safety
from provisiond.core.render import change_line
from provisiond.sources.sql import aggregate


@pytest.mark.parametrize(("given", "stored"), [
    ("192.0.34.166/32", "192.0.34.166"),
    ("1.1.1.1/24", "1.1.1.0/24"),
    ("192.168.0.0-192.168.1.255", "192.168.0.0/23"),
    ("10.0.0.1-10.0.0.5", "10.0.0.1-10.0.0.5"),
    ("2606:4700:4700::1111", "2606:4700:4700::1111/128"),
    ("2001:DB8::1/64", "2001:db8::/64"),
    ("example.com", "example.com"),
])
def test_routeros_normal_form(given: str, stored: str) -> None:
    assert addresses.routeros_form(given) == stored


@pytest.mark.parametrize("bad", ["100.64.500.1", "01.2.3.4", "example.com", "1.2.3.4/33", "banana"])
def test_billing_addresses_must_be_ip(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        addresses.billing_form(bad)


def _entry(address: str, account: str = "1", comment: str | None = None, ref: str = "") -> Resource:
    return Resource(kind="address-list", group="l", ident=(("list", "l"), ("address", address)),
                    attrs=(("comment", comment or f"provisiond:{account} N"), ("disabled", "false")),
                    account_id=account, account_name="N", ref=ref)


def test_diff_orders_deletes_creates_updates_and_keeps_refs() -> None:
    have = {r.key: r for r in (_entry("10.0.0.1", ref="*1"), _entry("10.0.0.2", ref="*2"))}
    want = {r.key: r for r in (_entry("10.0.0.2", comment="provisiond:1 New"), _entry("10.0.0.10"), _entry("10.0.0.9"))}
    changes, conflicts = diff(Observed(owned=have), want)
    assert [c.action for c in changes] == ["delete", "create", "create", "update"]
    assert [c.resource.get("address") for c in changes] == ["10.0.0.1", "10.0.0.9", "10.0.0.10", "10.0.0.2"]
    update = changes[-1]
    assert isinstance(update, Update) and update.new.ref == "*2"
    assert conflicts == []


def test_foreign_keys_become_conflicts_and_surplus_is_deleted() -> None:
    mine = _entry("10.0.0.1", ref="*1")
    dup = _entry("10.0.0.1", ref="*9")
    want = {r.key: r for r in (_entry("10.0.0.1"), _entry("10.0.0.3"))}
    observed = Observed(owned={mine.key: mine}, foreign={_entry("10.0.0.3").key: "dynamic entry"}, surplus=(dup,))
    changes, conflicts = diff(observed, want)
    assert changes == [Delete(dup)]
    assert [(c.resource.get("address"), c.reason) for c in conflicts] == [("10.0.0.3", "dynamic entry")]


def test_safety_counts_per_group_only_above_min_existing() -> None:
    deletes = tuple(Delete(_entry(f"10.0.0.{i}")) for i in range(4))
    plan = Plan("core-1", "routeros", deletes, existing={"l": 10})
    with pytest.raises(TooMuchChange, match=r"core-1: l: 4 deletes of 10 existing entries \(40.0%\) exceeds max_delete_ratio 30.0%"):
        plan.check_safety(Safety(0.3, 0.3, 10))
    plan.check_safety(Safety(0.3, 0.3, 11))  # too small a list to judge
    plan.check_safety(Safety(0.5, 0.3, 10))


def test_checksum_ties_plan_to_changes_and_observed_state() -> None:
    a = Plan("r", "routeros", (Create(_entry("10.0.0.1")),), observed_checksum="x")
    b = Plan("r", "routeros", (Create(_entry("10.0.0.1")),), observed_checksum="y")
    c = Plan("r", "routeros", (Create(_entry("10.0.0.2")),), observed_checksum="x")
    assert len({a.checksum(), b.checksum(), c.checksum()}) == 3
    assert a.checksum() == Plan("r", "routeros", (Create(_entry("10.0.0.1")),), observed_checksum="x").checksum()


@pytest.mark.parametrize("change", [
    Create(_entry("10.0.0.1")),
    Delete(_entry("10.0.0.1", ref="*A")),
    Update(_entry("10.0.0.1", ref="*A"), _entry("10.0.0.1", comment="provisiond:1 B", ref="*A")),
])
def test_change_json_round_trip(change: Create | Delete | Update) -> None:
    again = change_from_json(change_to_json(change))
    assert change_to_json(again) == change_to_json(change)
    assert again.resource.ref == change.resource.ref


def test_human_lines() -> None:
    r = Resource(kind="address-list", group="tower-hosts",
                 ident=(("list", "tower-hosts"), ("address", "100.64.10.5")),
                 attrs=(("comment", "provisiond:1042 Ridge Tower"), ("disabled", "false")),
                 account_id="1042", account_name="Ridge Tower")
    assert change_line(Create(r)) == '+ tower-hosts 100.64.10.5  acct 1042 "Ridge Tower"'
    assert change_line(Delete(r)) == '- tower-hosts 100.64.10.5  acct 1042 "Ridge Tower"'


def test_desire_lower_account_id_wins_a_shared_address() -> None:
    accounts = [
        Account("20", "B", groups=frozenset({"T"}), addresses=("10.0.0.1",)),
        Account("3", "A", groups=frozenset({"T"}), addresses=("10.0.0.1",)),
        Account("4", "C", status="delinquent", addresses=("10.0.0.4",)),
    ]
    mappings = [desire.ListMapping("t", ("r",), group="T"), desire.ListMapping("d", ("r",), status="delinquent")]
    out = desire.address_lists(accounts, {}, mappings, ["r"], marker="pvd")["r"]
    assert {(r.get("list"), r.get("address"), r.account_id) for r in out.desired.values()} == {
        ("t", "10.0.0.1", "3"), ("d", "10.0.0.4", "4")}
    assert [(c.resource.account_id, c.reason) for c in out.conflicts] == [("20", "address also claimed by account 3")]
    assert out.lists == {"t", "d"}


def test_aggregate_skips_bad_rows_by_account() -> None:
    rows = [
        (1, "One", "active", "T", "10.0.0.1", "u1"),
        (1, "One", "active", "L", "10.0.0.1", "u1b"),
        (None, "Nobody", "active", "T", "10.0.0.9", None),
        (2, "Two", "active", "T", "10.0.0.300", None),
        (3, " Three ", "active", None, None, None),
    ]
    snap = aggregate([(*r, None, None) for r in rows], read_at=datetime.now(UTC))
    assert snap.accounts["1"] == Account("1", "One", "active", frozenset({"T", "L"}), ("10.0.0.1",), ("u1", "u1b"))
    assert snap.accounts["3"].name == "Three" and snap.accounts["3"].groups == frozenset()
    assert "2" not in snap.accounts
    assert [str(p) for p in snap.problems] == [
        "row without account_id: row 3: account_id is empty",
        "account 2: not an IP address or network: '10.0.0.300'",
    ]


# -- the unmatched-mapping rule (a typo in a group never empties a list) -------------


def _radius_row(user: str, group: str) -> Resource:
    return Resource(kind="radusergroup", group=group, ident=(("username", user), ("groupname", group)),
                    attrs=(("priority", "1"),))


@pytest.mark.parametrize(("existing", "deletes", "creates", "refused"), [
    (1, 1, 0, True),        # one entry: far below min_existing, still protected
    (50, 50, 0, True),
    (3, 2, 0, False),       # not emptied
    (3, 3, 1, False),       # something new arrives: not emptied
    (0, 0, 1, False),
])
def test_an_unmatched_mapping_never_empties_its_group(
    existing: int, deletes: int, creates: int, refused: bool
) -> None:
    from provisiond.errors import UnmatchedMapping

    changes = [Delete(_entry(f"10.0.0.{i}")) for i in range(deletes)]
    changes += [Create(_entry(f"10.0.1.{i}")) for i in range(creates)]
    plan = Plan("core-1", "routeros", tuple(changes), existing={"l": existing},
                unmatched={"l": 'address_list[0].group "Tower Host" matches no account in billing'})
    lenient = Safety(max_delete_ratio=1.0, min_existing=1000)
    if refused:
        with pytest.raises(UnmatchedMapping, match=r'core-1: l: \d+ deletes would empty it, but '
                           r'address_list\[0\].group "Tower Host" matches no account'):
            plan.check_safety(lenient)
    else:
        plan.check_safety(lenient)
    # Without the mark, the same plan passes the lenient thresholds.
    Plan("core-1", "routeros", tuple(changes), existing={"l": existing}).check_safety(lenient)


def test_unmatched_selectors_by_target_and_closest_names() -> None:
    from provisiond.core.plan import Selector, closest, unmatched, unmatched_by_target

    sels = [
        Selector("address_list[0]", "tower-hosts", ("core-1", "edge-1"), group="Tower Host"),
        Selector("address_list[1]", "delinquent", ("core-1",), status="delinquent"),
        Selector("radius_group[0]", "legacy", ("radius",), group="Legacy"),
        Selector("pool[0]", "towers", ("ipam",), group="Tower Hosts"),
    ]
    found = unmatched(sels, groups={"Tower Hosts", "Legacy Customers"}, statuses={"delinquent"})
    assert [s.where for s in found] == ["address_list[0]", "radius_group[0]"]
    by_target = unmatched_by_target(found)
    assert set(by_target) == {"core-1", "edge-1", "radius"}
    assert by_target["radius"] == {"legacy": 'radius_group[0].group "Legacy" matches no account in billing'}
    assert closest("Tower Host", ["Legacy Customers", "Credit Card Pending", "Tower Hosts"])[0] == "Tower Hosts"
    assert closest("delinquent", ["active", "Delinquent", "suspended"])[0] == "Delinquent"
    assert closest("tower hosts", ["Tower Hosts", "x"])[0] == "Tower Hosts"
    assert len(closest("a", [str(i) for i in range(30)], limit=10)) == 10


def test_a_radius_group_of_an_unmatched_mapping_is_not_emptied() -> None:
    from provisiond.errors import UnmatchedMapping

    plan = Plan("radius", "radius", (Delete(_radius_row("bob", "legacy")),), existing={"legacy": 1},
                unmatched={"legacy": "radius_group[0].group \"Legacy\" matches no account in billing"})
    with pytest.raises(UnmatchedMapping, match="radius: legacy: 1 deletes would empty it"):
        plan.check_safety(Safety())


def test_a_pool_of_an_unmatched_mapping_is_not_emptied() -> None:
    from provisiond.core.ipam import Pool, allocate
    from provisiond.core.plan import check_pools
    from provisiond.errors import UnmatchedMapping

    now = datetime(2025, 1, 1, tzinfo=UTC)
    pool = Pool.build("towers", "Tower Hosts", ["100.64.0.0/29"])
    first = allocate([Account("1", groups=frozenset({"Tower Hosts"}))], [pool], [], now)
    leases = list(first.new)
    gone = allocate([Account("1")], [pool], leases, now)
    assert [x.address for x in gone.releases] == ["100.64.0.1"]
    why = {"towers": 'pool[0].group "Tower Hosts" matches no account in billing'}
    with pytest.raises(UnmatchedMapping, match="ipam: pool towers: 1 releases would empty it"):
        check_pools(gone, leases, why)
    check_pools(gone, leases, {})  # a matched pool may empty
    check_pools(first, [], why)  # nothing leased: nothing to empty


@pytest.mark.parametrize(("text", "bits"), [
    ("100.64.30.9/30", True), ("100.64.30.8/30", False), ("2001:db8::1/64", True),
    ("100.64.30.9", False), ("banana/3", False),
])
def test_host_bits(text: str, bits: bool) -> None:
    assert addresses.has_host_bits(text) is bits


def test_aggregate_notes_host_bits_once_per_account() -> None:
    rows = [("7", "n", "active", "g", "100.64.30.9/30", None), ("7", "n", "active", "h", "100.64.30.9/30", None)]
    snap = aggregate([(*r, None, None) for r in rows], read_at=datetime.now(UTC))
    assert snap.accounts["7"].addresses == ("100.64.30.8/30",)
    assert snap.notes == ("account 7: 100.64.30.9/30 has host bits set; used as the network 100.64.30.8/30",)
    assert snap.problems == ()


def test_summary_counts_lease_changes() -> None:
    from provisiond.core.render import summary_line

    assert summary_line([], ipam_changes=2) == "Plan: 0 to create, 0 to update, 0 to delete on 0 of 0 target(s); 2 lease change(s)."


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=12) | st.sampled_from(["Ridge Tower", " Lead", "Trail ", "a  b", "a\u00a0b",
                                              "a\u2028b", "tab\there", "esc\x1b", "\u3000x", ""]))
def test_comment_names_are_one_line_of_single_spaces(name: str) -> None:
    """The fast path for a name that is one line already gives what cleaning it gives."""
    cleaned = " ".join(name.translate({i: " " for i in (*range(0x20), *range(0x7F, 0xA0))}).split())
    assert desire.comment_for("provisiond", Account("7", name)) == f"provisiond:7 {cleaned}".rstrip()
