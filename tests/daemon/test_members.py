"""Shared membership on the real PostgreSQL: several ``Membership`` objects in one
process, each with its own connection and thread, a short ttl.

Safety is checked on each member's own record of when ``may_write`` gave a token
(``Membership.tenures``, cross-checked against ``owned()`` sampled meanwhile): for any
resource, no two members' tenures overlap, and a member cut off stops before another
member's claim on its resources is even sent.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from harness import pg_kwargs, wait_until

from provisiond.daemon.members import GLOBAL, Membership, still_owner
from provisiond.state.claims import ClaimLost, Fence, lock_claim

TTL, MARGIN = 1.5, 0.3
ROUTERS = [f"core-{i:02d}" for i in range(12)]
ALL = sorted([*ROUTERS, GLOBAL])




@pytest.fixture
def make(url: str) -> Iterator[Callable[..., Membership]]:
    made: list[Membership] = []

    def member(member_id: str, **kw: Any) -> Membership:
        kw.setdefault("resources", lambda: ROUTERS)
        m = Membership(url, member_id=member_id, ttl=TTL, margin=MARGIN, **kw)
        made.append(m)
        return m.start()

    yield member
    for m in made:
        m.stop(graceful=False)


def converged(admin: psycopg.Connection[Any], *members: Membership) -> dict[str, dict[str, int]] | None:
    """Every resource owned by exactly one of ``members``, and none asked for."""
    owned = {m.member_id: m.owned() for m in members}
    if sorted(r for o in owned.values() for r in o) != ALL:
        return None
    if admin.execute("SELECT 1 FROM provisiond_claims WHERE wanted_by IS NOT NULL").fetchone():
        return None
    return owned


def settle(admin: psycopg.Connection[Any], *members: Membership,
           timeout: float = 3 * TTL) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = wait_until(lambda: converged(admin, *members), timeout=timeout,
                                                   what="every resource owned once, none asked for")
    return result


def owners_by_resource(owned: dict[str, dict[str, int]]) -> dict[str, str]:
    return {r: m for m, o in owned.items() for r in o}


def claims(admin: psycopg.Connection[Any]) -> dict[str, tuple[str | None, int, datetime | None]]:
    rows = admin.execute("SELECT resource, owner, token, claimed_at FROM provisiond_claims").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def assert_no_two_writers(*members: Membership) -> None:
    spans: dict[str, list[tuple[float, float, str, int]]] = {}
    for m in members:
        for t in m.tenures():
            spans.setdefault(t.resource, []).append((t.start, math.inf if t.end is None else t.end,
                                                     m.member_id, t.token))
    for resource, found in spans.items():
        found.sort()
        for (s1, e1, m1, t1), (s2, e2, m2, t2) in zip(found, found[1:]):
            assert e1 <= s2, f"{resource}: {m1} (token {t1}) until {e1:.3f}, {m2} (token {t2}) from {s2:.3f}"
            assert t2 > t1 or m2 == m1, f"{resource}: token went from {t1} to {t2}"


@contextmanager
def sampling(*members: Membership) -> Iterator[list[tuple[float, float, str, dict[str, int]]]]:
    """``owned()`` of every member every few ms; on exit each sample is checked against
    the tenures (what a member said it owned, it had a tenure for at that moment)."""
    samples: list[tuple[float, float, str, dict[str, int]]] = []
    done = threading.Event()

    def run() -> None:
        while not done.is_set():
            for m in members:
                before = time.monotonic()
                owned = m.owned()
                samples.append((before, time.monotonic(), m.member_id, owned))
            time.sleep(0.005)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
    tenures = {m.member_id: m.tenures() for m in members}
    for before, after, member_id, owned in samples:
        for r, token in owned.items():
            assert any(t.resource == r and t.token == token and t.start <= after
                       and (t.end is None or t.end >= before) for t in tenures[member_id]), (member_id, r)
    assert_no_two_writers(*members)


def db_offset(admin: psycopg.Connection[Any]) -> tuple[float, float]:
    """(low, high) bounds of database clock − time.monotonic(), in seconds."""
    before = time.monotonic()
    row = admin.execute("SELECT extract(epoch FROM now())").fetchone()
    after = time.monotonic()
    assert row is not None
    return float(row[0]) - after, float(row[0]) - before


def test_three_members_share_twelve_routers_and_a_fourth_takes_its_share(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    a, b, c = make("pop-a"), make("pop-b"), make("pop-c")
    owned = settle(admin, a, b, c)
    assert max(len(set(o) - {GLOBAL}) for o in owned.values()) <= math.ceil(12 / 3) + 1
    assert min(len(o) for o in owned.values()) >= 1
    rows = claims(admin)
    assert {r: (m, t) for m, o in owned.items() for r, t in o.items()} == \
        {r: (owner, token) for r, (owner, token, _) in rows.items()}
    with sampling(a, b, c) as samples:
        joined = time.monotonic()
        d = make("pop-d")
        after = settle(admin, a, b, c, d)
        took = time.monotonic() - joined
    assert after["pop-d"] and took < 2 * TTL
    assert max(len(set(o) - {GLOBAL}) for o in after.values()) <= math.ceil(12 / 4) + 1
    assert len(samples) > 10
    assert_no_two_writers(a, b, c, d)
    wait_until(lambda: {m.member_id: dict(m.owned) for m in a.status().members} == after, timeout=TTL,
               what="a's status showing every member's routers and tokens")
    status = d.status()
    assert status.owned == after["pop-d"] and set(status.claim_ages) == set(after["pop-d"])
    assert not status.fenced and status.self_fences == 0


def test_a_member_cut_off_fences_itself_before_its_routers_are_claimed_and_takes_them_back(
        url: str, make: Callable[..., Membership], admin: psycopg.Connection[Any], pg_server: Any) -> None:
    a, b, c = make("pop-a"), make("pop-b"), make("pop-c")
    before = owners_by_resource(settle(admin, a, b, c))
    tokens = {r: t for r, (_, t, _) in claims(admin).items()}
    lost = sorted(r for r, m in before.items() if m == "pop-b")
    database = psycopg.connect(**pg_kwargs(url)).info.dbname
    with psycopg.connect(**{**pg_kwargs(url), "dbname": "postgres"}) as root, sampling(a, b, c):
        # b's connection is killed and it cannot get another; a and c keep theirs
        root.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            cut = time.monotonic()
            killed = root.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                  "datname = %s AND application_name = 'provisiond member pop-b'",
                                  (database,)).fetchall()
            assert killed == [(True,)]
            taken = wait_until(lambda: sorted(r for r in lost if r in {**a.owned(), **c.owned()}) == lost,
                               timeout=4 * TTL, what="pop-b's routers taken over")
            took = time.monotonic() - cut
        finally:
            root.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        assert taken and b.fenced and b.owned() == {} and b.self_fences >= 1
        fence = b.deadline
        grants = [t for m in (a, c) for t in m.tenures() if t.resource in lost and t.token > tokens[t.resource]]
        assert sorted(t.resource for t in grants) == lost
        assert all(fence < t.asked for t in grants)  # stopped before the new claim was even sent
        low, high = db_offset(admin)
        rows = claims(admin)
        fence_on_db = datetime.fromtimestamp(fence + high, tz=rows[lost[0]][2].tzinfo)  # type: ignore[union-attr]
        assert all(rows[r][2] > fence_on_db + timedelta(seconds=MARGIN) for r in lost)
        assert took < 2 * TTL + 1.0
        assert not still_owner(admin, lost[0], "pop-b", tokens[lost[0]])
        # back: it takes its own routers back, nobody else's move
        wait_until(lambda: owners_by_resource(converged(admin, a, b, c) or {}) == before, timeout=3 * TTL,
                   what="pop-b back with its own routers")
    now = claims(admin)
    assert all(now[r][1] == tokens[r] for r in ALL if r not in lost)
    assert all(now[r][1] == tokens[r] + 2 for r in lost)  # taken over, then given back


def test_a_member_whose_connection_is_killed_reconnects_and_keeps_its_claims(
        url: str, make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    """``pg_terminate_backend`` of a member's connection, with the server still there:
    it reconnects and renews within its lease, so nothing moves and no token changes."""
    a, b = make("pop-a"), make("pop-b")
    before = owners_by_resource(settle(admin, a, b))
    tokens = {r: t for r, (_, t, _) in claims(admin).items()}
    killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                           "datname = current_database() AND application_name = "
                           "'provisiond member pop-a'").fetchall()
    assert killed == [(True,)]
    time.sleep(2 * TTL)  # past a's lease, had it not renewed
    assert owners_by_resource(converged(admin, a, b) or {}) == before
    assert {r: t for r, (_, t, _) in claims(admin).items()} == tokens
    assert a.self_fences == 0


def test_a_member_whose_renewals_hang_fences_itself_in_time(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    a, b, c = make("pop-a"), make("pop-b"), make("pop-c")
    before = owners_by_resource(settle(admin, a, b, c))
    lost = sorted(r for r, m in before.items() if m == "pop-c")
    tokens = {r: t for r, (_, t, _) in claims(admin).items()}
    stale = c.fence(lost[0])
    assert stale is not None
    with sampling(a, b, c), admin.transaction():
        # c's renewal waits on its own row, locked here, until its statement times out
        admin.execute("SELECT 1 FROM provisiond_members WHERE member_id = 'pop-c' FOR UPDATE")
        wait_until(lambda: sorted(r for r in lost if r in {**a.owned(), **b.owned()}) == lost,
                   timeout=4 * TTL, what="pop-c's routers taken over")
        assert c.fenced and c.self_fences >= 1
        grants = [t for m in (a, b) for t in m.tenures() if t.resource in lost and t.token > tokens[t.resource]]
        assert grants and all(c.deadline < t.asked for t in grants)
    assert not still_owner(admin, stale.resource, stale.owner, stale.token)
    wait_until(lambda: owners_by_resource(converged(admin, a, b, c) or {}) == before, timeout=3 * TTL,
               what="pop-c back with its own routers")


def test_a_stale_token_is_refused_and_a_writer_stuck_past_its_claim_is_ended_by_the_next_owner(
        url: str, make: Callable[..., Membership], admin: psycopg.Connection[Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """A writer holding its claim's fencing lock keeps the next owner out while it
    writes; one still holding it ``margin`` after the claim ended (cut off
    mid-transaction) is ended by the member claiming it, so a takeover never waits on
    it; its write lands nowhere, and its token is refused from then on."""
    a, b = make("pop-a"), make("pop-b")
    settle(admin, a, b)
    resource = sorted(a.owned())[0]
    fence = a.fence(resource)
    assert fence is not None and still_owner(admin, resource, "pop-a", fence.token)
    assert not still_owner(admin, resource, "pop-a", fence.token - 1)
    assert not still_owner(admin, resource, "pop-b", fence.token)
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            with pytest.raises(sa.exc.OperationalError), conn.begin():
                lock_claim(conn, fence)  # a's journal write: the claim stands, and stays standing
                a.stop()  # a releases everything; b claims the rest at once, not this one ...
                wait_until(lambda: set(ALL) - {resource} <= set(b.owned()), timeout=2 * TTL,
                           what="b taking the others")
                assert resource not in b.owned()
                # ... until the writer still holds it past the margin: b ends it.
                wait_until(lambda: set(ALL) <= set(b.owned()), timeout=2 * TTL,
                           what="b taking every claim, this one once it ended the writer")
                conn.execute(sa.text("SELECT 1"))  # the writer's session is gone
            assert f"held the fencing lock of {resource}" in "".join(caplog.messages)
        with engine.connect() as conn:
            with pytest.raises(ClaimLost, match=f"{resource}: write refused: pop-a no longer holds"):
                with conn.begin():
                    lock_claim(conn, fence)
            new = b.fence(resource)
            assert new is not None and new.token == fence.token + 1
            with conn.begin():
                lock_claim(conn, new)
            held = conn.execute(sa.text("SELECT 1")).scalar_one()
            assert held == 1
    finally:
        engine.dispose()
    assert Fence(resource, "pop-a", fence.token) != new


def test_graceful_stop_hands_over_in_under_a_second_and_the_member_returns_to_its_own(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    a, b, c = make("pop-a"), make("pop-b"), make("pop-c")
    before = owners_by_resource(settle(admin, a, b, c))
    tokens = {r: t for r, (_, t, _) in claims(admin).items()}
    mine = sorted(r for r, m in before.items() if m == "pop-a")
    with sampling(a, b, c):
        stopped = time.monotonic()
        a.stop()
        settle(admin, b, c, timeout=1.0)
        took = time.monotonic() - stopped
    assert took < 1.0
    assert {r: m for r, m in owners_by_resource(converged(admin, b, c) or {}).items() if r not in mine} == \
        {r: m for r, m in before.items() if r not in mine}
    again = make("pop-a")
    back = owners_by_resource(settle(admin, again, b, c))
    assert back == before
    now = claims(admin)
    assert {r: now[r][1] - tokens[r] for r in ALL} == {r: 2 if r in mine else 0 for r in ALL}


def test_a_rolling_restart_hands_each_router_over_at_most_twice(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    members = {m: make(m) for m in ("pop-a", "pop-b", "pop-c")}
    before = owners_by_resource(settle(admin, *members.values()))
    tokens = {r: t for r, (_, t, _) in claims(admin).items()}
    counted = sum(m.handovers for m in members.values())
    retired: list[Membership] = []
    for name in list(members):
        members[name].stop()
        retired.append(members[name])
        settle(admin, *(m for n, m in members.items() if n != name), timeout=1.0)
        members[name] = make(name)
        settle(admin, *members.values())
    assert owners_by_resource(settle(admin, *members.values())) == before
    now = claims(admin)
    assert max(now[r][1] - tokens[r] for r in ALL) <= 2
    handovers = sum(m.handovers for m in [*members.values(), *retired]) - counted
    assert handovers == sum(now[r][1] - tokens[r] for r in ALL)
    assert_no_two_writers(*members.values(), *retired)


def test_a_crashed_member_is_taken_over_within_two_ttl(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    a, b, c = make("pop-a"), make("pop-b"), make("pop-c")
    before = owners_by_resource(settle(admin, a, b, c))
    lost = sorted(r for r, m in before.items() if m == "pop-b")
    crashed = time.monotonic()
    b.stop(graceful=False)  # its row and claims stay until they run out
    settle(admin, a, c, timeout=3 * TTL)
    took = time.monotonic() - crashed
    assert TTL < took < 2 * TTL + 1.0, took  # the goal: 2 x ttl + 1 s
    assert a.status().members and {m.member_id: m.state for m in a.status().members}["pop-b"] == "dead"
    assert all(r in {**a.owned(), **c.owned()} for r in lost)


def test_without_notify_polling_alone_converges(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    a = make("pop-a", channel="heard-by-a-only")
    b = make("pop-b", channel="heard-by-b-only")
    settle(admin, a, b)
    joined = time.monotonic()
    c = make("pop-c", channel="heard-by-c-only")
    settle(admin, a, b, c, timeout=2 * TTL)
    assert c.owned() and time.monotonic() - joined < 2 * TTL
    stopped = time.monotonic()
    a.stop()
    settle(admin, b, c, timeout=2 * TTL)
    assert time.monotonic() - stopped < TTL


def test_a_second_process_with_the_same_id_waits_for_the_first_ones_lease(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    first, other = make("pop-a"), make("pop-b")
    before = settle(admin, first, other)
    twin = make("pop-a")
    time.sleep(TTL / 2)
    assert twin.fenced and twin.owned() == {} and first.owned() == before["pop-a"]
    first.stop(graceful=False)
    wait_until(lambda: converged(admin, twin, other), timeout=3 * TTL, what="the twin taking over")
    assert all(twin.owned()[r] > t for r, t in before["pop-a"].items())
    assert_no_two_writers(first, twin, other)


def test_a_router_being_written_is_handed_over_once_its_batch_is_done(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    writing: set[str] = set(ALL)
    changes: list[dict[str, int]] = []
    a = make("pop-a", busy=lambda r: r in writing, on_change=changes.append)
    settle(admin, a)
    assert changes[-1] == a.owned() and sorted(a.owned()) == ALL
    b = make("pop-b")
    asked = wait_until(lambda: [r for r, (owner, _, _) in claims(admin).items() if owner == "pop-a"
                                and admin.execute("SELECT wanted_by FROM provisiond_claims WHERE resource = %s",
                                                  (r,)).fetchone() == ("pop-b",)],
                       timeout=TTL, what="b asking for its share")
    wait_until(lambda: all(a.may_write(r) is None for r in asked), timeout=TTL, what="a no longer writing them")
    time.sleep(TTL)  # renewals go on; the batches do not end
    assert all(claims(admin)[r][0] == "pop-a" for r in asked) and not set(asked) & set(b.owned())
    assert changes[-1] == a.owned() and not set(asked) & set(changes[-1])
    writing.clear()
    a.wake()
    settle(admin, a, b, timeout=TTL)
    assert set(asked) <= set(b.owned())
    assert_no_two_writers(a, b)


def test_a_member_that_leaves_or_is_forgotten_leaves_the_roster(
        make: Callable[..., Membership], admin: psycopg.Connection[Any]) -> None:
    a, b, c = (make(m, forget_after=2 * TTL) for m in ("pop-a", "pop-b", "pop-c"))
    settle(admin, a, b, c)
    c.stop(leave=True)
    owned = settle(admin, a, b, timeout=1.0)
    assert max(len(set(o) - {GLOBAL}) for o in owned.values()) <= math.ceil(12 / 2) + 1
    assert [r[0] for r in admin.execute("SELECT member_id FROM provisiond_members ORDER BY 1")] == \
        ["pop-a", "pop-b"]
    b.stop(graceful=False)  # dead after 2 ttl, forgotten 2 ttl later
    wait_until(lambda: [r[0] for r in admin.execute("SELECT member_id FROM provisiond_members")] == ["pop-a"],
               timeout=6 * TTL, what="b forgotten")
    assert sorted(a.owned()) == ALL
