"""``provisiond status`` and ``explain`` in shared mode: members, their routers and
tokens, and who writes each target, read from a PostgreSQL state store's membership
tables (filled by hand, and by real ``Membership`` objects); standby mode's output does
not change."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from world import World

from provisiond import settings as settings_mod
from provisiond.cli import members
from provisiond.daemon.members import GLOBAL, Membership
from provisiond.state.store import StateStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from harness import wait_until  # noqa: E402

SHARED = '[daemon]\nmembers = "shared"\n'
SECRET = "not-a-real-pw-7f3a"  # the server trusts loopback; the URL carries it all the same
MANY = [f"r-{i:02d}" for i in range(10)]  # claimed routers no longer configured


def seconds(line: str) -> str:
    """A line with its counts of seconds blurred (the test takes its time)."""
    return re.sub(r"\b\d+s ago", "Ns ago", line)


def _with_password(url: str) -> str:
    return sa.make_url(url).set(password=SECRET).render_as_string(hide_password=False)


@pytest.fixture
def shared(world: World) -> World:
    """Three routers, an account on all of them, the state store on PostgreSQL."""
    world.state_url = _with_password(world.billing_url)
    StateStore.open(world.state_url).close()  # the schema, as a daemon leaves it
    for name in ("core-1", "core-2", "edge-1"):
        world.router(name)
    world.account(1, "One", groups=["Tower Hosts"], ips=["100.64.0.1"])
    return world


def fill(world: World) -> None:
    """pop-a: live, global and core-1; pop-b: live, core-2 (wanted by pop-a) and ten
    more; pop-c: stopped; pop-d: uncertain, its claim on edge-1 run out with its lease."""
    world.sql("""
        INSERT INTO provisiond_members (member_id, incarnation, host, pid, started_at, renewed_at, expires_at)
        VALUES ('pop-a', 'i1', 'host-a', 101, now() - interval '1 hour', now() - interval '1 s', now() + interval '9 s'),
               ('pop-b', 'i2', 'host-b', 202, now() - interval '1 hour', now() - interval '3 s', now() + interval '7 s'),
               ('pop-c', 'i3', 'host-c', 303, now() - interval '2 hour', now() - interval '5 min', NULL),
               ('pop-d', 'i4', 'host-d', 404, now() - interval '2 hour', now() - interval '12 s', now() - interval '2 s')""")
    world.sql("""
        INSERT INTO provisiond_claims (resource, owner, token, expires_at, claimed_at, wanted_by)
        VALUES ('core-1', 'pop-a', 3, now() + interval '9 s', now() - interval '10 min', NULL),
               ('global', 'pop-a', 7, now() + interval '9 s', now() - interval '20 min', NULL),
               ('core-2', 'pop-b', 2, now() + interval '7 s', now() - interval '30 min', 'pop-a'),
               ('edge-1', 'pop-d', 4, now() - interval '2 s', now() - interval '1 hour', NULL)""")
    for name in MANY:
        world.sql("INSERT INTO provisiond_claims VALUES (:r, 'pop-b', 1, now() + interval '7 s', "
                  "now() - interval '30 min', NULL)", r=name)


def test_status_lists_members_routers_and_tokens_in_shared_mode(shared: World) -> None:
    shared.write_config(extra=SHARED)
    fill(shared)
    code, out, err = shared.run("status")
    assert code == 0, err
    lines = [seconds(line) for line in out.splitlines()]
    assert lines[:7] == [
        'leader: none (daemon.members = "shared": every member is active)',
        "members: 4 (2 live, 1 stopped, 1 uncertain)",
        "member pop-a: live (renewed Ns ago), host host-a pid 101; global; 1 router: core-1",
        "member pop-b: live (renewed Ns ago), host host-b pid 202; 11 routers: core-2, r-00, "
        "r-01, r-02, r-03, r-04, r-05, r-06 and 3 more",
        "member pop-c: stopped 5m ago, host host-c pid 303; no routers",
        "member pop-d: uncertain (lease ran out Ns ago, renewed Ns ago), host host-d pid 404; no routers",
        "unowned: edge-1 (no live claim: no member writes it now)",
    ], out
    assert SECRET not in out + err

    code, out, _ = shared.run("status", "--claims")
    claims = out[out.index("claims:\n"):out.index("last passes:")].splitlines()
    assert claims[1] == "  core-1: pop-a token 3, since " + claims[1].split("since ")[1]
    assert claims[1].endswith("(10m ago)")
    assert re.fullmatch(r"  core-2: pop-b token 2, since \S+ \S+ \(30m ago\), wanted by pop-a", claims[2])
    assert claims[3] == "  edge-1: unowned (last pop-d, token 4)"
    assert claims[-1].startswith("  global: pop-a token 7, since ") and len(claims) == 1 + 4 + len(MANY)

    code, out, _ = shared.run("status", "--format", "json")
    doc = json.loads(out)
    assert doc["leader"] is None and SECRET not in out
    by_id = {m["member_id"]: m for m in doc["members"]["members"]}
    assert by_id["pop-a"]["routers"] == {"core-1": 3} and by_id["pop-a"]["global"] == 7
    assert by_id["pop-b"]["routers"] == {"core-2": 2, **dict.fromkeys(MANY, 1)}
    assert by_id["pop-b"]["global"] is None
    assert [by_id[m]["state"] for m in sorted(by_id)] == ["live", "live", "stopped", "uncertain"]
    assert by_id["pop-a"]["host"] == "host-a" and by_id["pop-a"]["pid"] == 101
    assert 1 <= by_id["pop-a"]["renewed_ago"] < 5 and by_id["pop-c"]["renewed_ago"] >= 300
    assert doc["members"]["unowned"] == ["edge-1"]
    assert {c["resource"]: (c["owner"], c["token"], c["live"]) for c in doc["members"]["claims"]}["edge-1"] \
        == ("pop-d", 4, False)


def test_status_in_shared_mode_says_when_nobody_joined(shared: World) -> None:
    shared.write_config(extra=SHARED)
    code, out, _ = shared.run("status")
    assert code == 0
    assert out.splitlines()[1] == ('members: none has joined (is `provisiond run` running with '
                                   'daemon.members = "shared"?)')


def test_standby_status_is_unchanged_by_stale_member_rows_and_notes_live_ones(shared: World) -> None:
    shared.write_config()  # standby
    before = shared.run("status")
    before_json = shared.run("status", "--format", "json")
    shared.sql("""
        INSERT INTO provisiond_members (member_id, incarnation, host, pid, started_at, renewed_at, expires_at)
        VALUES ('pop-z', 'i9', 'host-z', 909, now(), now() - interval '5 min', NULL)""")
    shared.sql("INSERT INTO provisiond_claims VALUES ('old-1', NULL, 5, now(), now(), NULL)")
    assert shared.run("status") == before
    assert shared.run("status", "--format", "json") == before_json
    assert "member" not in before[1]
    # A daemon running shared on this store is worth knowing about, whatever this config says.
    fill(shared)
    code, out, _ = shared.run("status")
    assert "member pop-a: live" in out
    assert 'members: note: this configuration says daemon.members = "standby"' in out
    assert out.startswith("leader: none (no daemon holds the leader lock)\n")


def test_explain_names_the_member_writing_each_target(shared: World) -> None:
    shared.write_config(extra=SHARED)
    fill(shared)
    code, out, err = shared.run("explain", "1")
    assert code == 2, out + err  # nothing applied yet
    lines = [seconds(line) for line in out.splitlines()]

    def after(target: str) -> str:
        return lines[next(i for i, s in enumerate(lines) if s.startswith(f"{target} (routeros): ")) + 1]

    assert after("core-1") == "    written by member pop-a (its own claim, token 3)"
    assert after("core-2") == "    written by member pop-b (its own claim, token 2)"
    assert after("edge-1") == ("    unowned: no live claim on edge-1, no member writes it now "
                               "(last pop-d, token 4, expired Ns ago)")
    code, out, _ = shared.run("explain", "1", "--format", "json")
    owners = {t["target"]: t["owner"] for t in json.loads(out)["targets"]}
    assert owners["core-1"] == {"resource": "core-1", "member": "pop-a", "token": 3}
    assert owners["edge-1"]["member"] is None and owners["edge-1"]["last"]["member"] == "pop-d"
    assert SECRET not in out


def test_explain_in_standby_mode_names_no_member(shared: World) -> None:
    shared.write_config()
    fill(shared)
    code, out, _ = shared.run("explain", "1")
    assert "written by" not in out and "unowned" not in out
    code, out, _ = shared.run("explain", "1", "--format", "json")
    assert all("owner" not in t for t in json.loads(out)["targets"])


def test_explain_names_the_global_owner_for_radius(shared: World) -> None:
    """RADIUS (like the billing read and IP allocation) is the global claim's work."""
    fill(shared)
    shared.write_config(extra=SHARED)
    view, why = members.read(settings_mod.load(shared.config))
    assert view is not None and why is None
    found = members.owner(view, "radius", "radius")
    assert found == {"resource": GLOBAL, "member": "pop-a", "token": 7}
    assert members.owner_line(found) == "written by member pop-a (the global claim, token 7)"


def test_status_shows_what_real_members_hold(shared: World) -> None:
    """Two ``Membership`` objects share the three routers and global: status lists
    exactly what each holds, with the tokens the database granted."""
    shared.write_config(extra=SHARED)
    routers = ["core-1", "core-2", "edge-1"]
    made = [Membership(shared.state_url, member_id=m, ttl=2.0, margin=0.4, resources=lambda: routers)
            for m in ("pop-a", "pop-b")]
    try:
        for m in made:
            m.start()

        def settled() -> bool:
            owned = [m.owned() for m in made]
            return all(owned) and sorted(r for o in owned for r in o) == sorted([*routers, GLOBAL])

        wait_until(settled, timeout=8, what="pop-a and pop-b share everything")
        code, out, _ = shared.run("status", "--format", "json")
        doc = json.loads(out)["members"]
        for m in made:
            mine = next(x for x in doc["members"] if x["member_id"] == m.member_id)
            held = {**mine["routers"], **({GLOBAL: mine["global"]} if mine["global"] else {})}
            assert held == m.owned() and mine["state"] == "live" and mine["pid"] > 0
        assert doc["unowned"] == []
        code, out, _ = shared.run("status")
        assert "members: 2 (2 live)" in out and "unowned" not in out
    finally:
        for m in made:
            m.stop()
