"""Shared membership without a database: who is proposed what (``daemon.shares``) and
what a member may write when (``daemon.holdings``)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from provisiond.daemon.holdings import Holdings
from provisiond.daemon.shares import (GLOBAL, ClaimRow, MemberRow, View, assign, decide, propose,
                                      rendezvous)

NOW = datetime(2027, 1, 11, 12, 0, tzinfo=UTC)


def name_sets(count: int, routers: int = 12, members: int = 3) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(25)
    out = []
    for _ in range(count):
        tag = rng.randrange(10**9)
        out.append(([f"core-{tag}-{i}" for i in range(routers)], [f"pop-{tag}-{j}" for j in range(members)]))
    return out


def test_rendezvous_is_the_same_in_another_process() -> None:
    resources = [f"core-{i}" for i in range(50)]
    members = ["pop-north", "pop-south", "pop-east"]
    here = [rendezvous(r, members) for r in resources]
    there = subprocess.run(
        [sys.executable, "-c", "import sys; from provisiond.daemon.shares import rendezvous; "
         f"print(' '.join(rendezvous(r, {members!r}) for r in {resources!r}))"],
        env={"PYTHONHASHSEED": "12345"}, capture_output=True, text=True, check=True).stdout.split()
    assert here == there
    assert len(set(here)) == 3  # and it does spread
    with pytest.raises(ValueError, match="no member to serve core-1"):
        rendezvous("core-1", [])


def test_plain_rendezvous_alone_would_not_keep_the_spread_bound() -> None:
    """Why ``assign`` bounds the loads: one member gets 6 of 12 routers over 3 members in
    a good share of name sets with rendezvous alone."""
    over = sum(1 for rs, ms in name_sets(200)
               if max(sum(1 for r in rs if rendezvous(r, ms) == m) for m in ms) > math.ceil(12 / 3) + 1)
    assert over > 40


@pytest.mark.parametrize(("routers", "members"), [(12, 3), (12, 4), (13, 3), (100, 3), (300, 7), (2, 3)])
def test_no_member_is_home_to_more_than_its_share_plus_one(routers: int, members: int) -> None:
    for rs, ms in name_sets(100, routers, members):
        homes = assign([*rs, GLOBAL], ms)
        assert sorted(homes) == sorted([*rs, GLOBAL])
        loads = [sum(1 for r in rs if homes[r] == m) for m in ms]
        assert max(loads) <= math.ceil(routers / members) + 1, loads
        assert homes == assign(reversed([GLOBAL, *rs]), reversed(ms))  # order does not matter


def test_a_member_away_moves_only_its_own_resources_and_gets_them_back() -> None:
    for rs, ms in name_sets(100):
        resources = [*rs, GLOBAL]
        before = propose(resources, ms, ms)
        for away in ms:
            during = propose(resources, ms, [m for m in ms if m != away])
            assert {r for r in resources if during[r] != before[r]} == \
                {r for r in resources if before[r] == away}
            assert propose(resources, ms, ms) == before


def view(members: dict[str, str], claims: dict[str, tuple[str | None, bool, str | None]]) -> View:
    expires = {"live": NOW + timedelta(seconds=5), "uncertain": NOW - timedelta(seconds=1),
               "dead": NOW - timedelta(seconds=60), "stopped": None}
    return View(
        now=NOW,
        members=tuple(MemberRow(m, "h", 1, NOW, NOW, expires[state], state) for m, state in members.items()),
        claims={r: ClaimRow(r, owner, 3, NOW, NOW, wanted, live) for r, (owner, live, wanted) in claims.items()},
    )


def test_a_live_claim_moves_only_when_the_member_it_is_proposed_to_asks() -> None:
    resources = [f"core-{i}" for i in range(12)]
    homes = propose([*resources, GLOBAL], ["a", "b"], ["a", "b"])
    r = next(x for x in resources if homes[x] == "b")
    members = {"a": "live", "b": "live"}
    # a holds b's resource: b asks, a keeps it until asked
    assert decide(view(members, {r: ("a", True, None)}), me="b", resources=resources, held=()).want == (r,)
    assert r not in decide(view(members, {r: ("a", True, None)}), me="a", resources=resources,
                           held={r}).release
    assert r in decide(view(members, {r: ("a", True, "b")}), me="a", resources=resources, held={r}).release
    # expired or free: claimed outright
    assert r in decide(view(members, {r: ("a", False, None)}), me="b", resources=resources, held=()).claim
    # b uncertain: a neither hands r over nor takes it; b dead: a takes it
    uncertain = view({"a": "live", "b": "uncertain"}, {r: ("b", False, None)})
    assert r not in decide(uncertain, me="a", resources=resources, held=()).claim
    dead = view({"a": "live", "b": "dead"}, {r: ("b", False, None)})
    assert r in decide(dead, me="a", resources=resources, held=()).claim
    # a resource no longer configured is released; a lapsed member does nothing
    assert decide(view(members, {}), me="a", resources=[], held={r}).release == (r,)
    assert decide(view({"a": "uncertain", "b": "live"}, {}), me="a", resources=resources, held={r}) \
        == decide(view({}, {}), me="a", resources=resources, held=())


def test_holdings_fence_at_the_deadline_and_the_tenure_ends_there() -> None:
    h = Holdings(ttl=10.0, margin=2.0)
    assert h.may_write("core-1", 0.0) is None  # never renewed
    assert h.renewed(100.0, {"core-1": 4}, 100.05)
    assert h.may_write("core-1", 107.99) == 4
    assert h.may_write("core-1", 108.0) is None  # sent at 100 + ttl 10 - margin 2
    assert h.lapse(109.0) and not h.lapse(109.5) and h.self_fences == 1
    [tenure] = h.tenures()
    assert (tenure.token, tenure.asked, tenure.start, tenure.end) == (4, 100.0, 100.05, 108.0)
    h.renewed(109.6, {"core-1": 4}, 109.7)  # back, same claim: a new tenure
    assert h.may_write("core-1", 110.0) == 4 and len(h.tenures()) == 2
    assert h.drain({"core-1"}, 111.0) and h.may_write("core-1", 111.0) is None
    assert h.granted(112.0, {"core-2": 7}, 112.1) and h.handovers == 1
    assert h.shut(113.0) and h.owned(113.0) == {}
    assert not h.renewed(113.5, {"core-1": 4}, 113.6) and h.owned(113.6) == {}
