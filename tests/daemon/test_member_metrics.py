"""Shared mode's metrics and /healthz: ``Metrics.members(status)`` exports what a
membership holds (from a fake status, and from real ``Membership`` objects on
PostgreSQL), a member that fenced itself fails /healthz until a renewal comes back, and
a standby daemon exports none of it."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from harness import pg_kwargs, wait_until

from provisiond import settings as settings_mod
from provisiond.daemon import shares
from provisiond.daemon.members import GLOBAL, Membership
from provisiond.daemon.metrics import GLOBAL as GLOBAL_CLAIM
from provisiond.daemon.metrics import MEMBER_STATES, Health, Metrics, serve

REPO = Path(__file__).resolve().parents[2]
TTL, MARGIN = 1.5, 0.3
ROUTERS = [f"core-{i:02d}" for i in range(6)]


@dataclass(frozen=True)
class Seen:
    state: str


@dataclass
class FakeStatus:
    owned: Mapping[str, int] = field(default_factory=dict)
    claim_ages: Mapping[str, float] = field(default_factory=dict)
    fenced: bool = False
    handovers: int = 0
    self_fences: int = 0
    members: tuple[Seen, ...] = ()


def value(m: Metrics, name: str, **labels: str) -> float | None:
    got: float | None = m.registry.get_sample_value(name, labels)
    return got


def ages(m: Metrics) -> dict[str, float]:
    return {s.labels["resource"]: s.value for f in m.registry.collect() for s in f.samples
            if s.name == "provisiond_member_claim_age_seconds"}


def member_series(m: Metrics) -> set[str]:
    return {s.name for f in m.registry.collect() for s in f.samples if s.name.startswith("provisiond_member")}


def reference(members: str) -> settings_mod.Settings:
    s = settings_mod.load(REPO / "config" / "provisiond.reference.toml")
    return s.model_copy(update={"daemon": s.daemon.model_copy(update={"members": members})})


def test_the_names_repeated_in_metrics_are_the_membership_ones() -> None:
    assert GLOBAL_CLAIM == shares.GLOBAL
    assert set(MEMBER_STATES) == {shares.LIVE, shares.UNCERTAIN, shares.DEAD, shares.STOPPED}


def test_standby_exports_no_member_series_and_shared_starts_them_at_zero() -> None:
    assert member_series(Metrics(reference("standby"))) == set()
    assert member_series(Metrics()) == set()
    m = Metrics(reference("shared"))
    for name in ("provisiond_member_routers_owned", "provisiond_member_global",
                 "provisiond_member_handovers_total", "provisiond_member_self_fences_total",
                 "provisiond_member_fenced"):
        assert value(m, name) == 0.0, name
    for state in MEMBER_STATES:
        assert value(m, "provisiond_members", state=state) == 0.0


def test_members_exports_what_the_status_says_and_drops_claims_no_longer_held() -> None:
    m = Metrics()
    m.members(FakeStatus(owned={"core-1": 3, "core-2": 1, GLOBAL: 7},
                         claim_ages={"core-1": 12.5, "core-2": 0.5, GLOBAL: 40.0},
                         handovers=1, members=(Seen("live"), Seen("live"), Seen("uncertain"))))
    assert value(m, "provisiond_member_routers_owned") == 2
    assert value(m, "provisiond_member_global") == 1
    assert value(m, "provisiond_member_claim_age_seconds", resource="core-1") == 12.5
    assert value(m, "provisiond_member_claim_age_seconds", resource=GLOBAL) == 40.0
    assert value(m, "provisiond_member_handovers_total") == 1
    assert value(m, "provisiond_member_fenced") == 0
    assert [value(m, "provisiond_members", state=s) for s in MEMBER_STATES] == [2, 1, 0, 0]

    # core-1 and global handed over, core-3 taken over; then a lapse.
    m.members(FakeStatus(owned={"core-2": 1, "core-3": 5}, claim_ages={"core-2": 9.0, "core-3": 0.1},
                         handovers=2, self_fences=1, fenced=True,
                         members=(Seen("live"), Seen("dead"), Seen("stopped"))))
    assert value(m, "provisiond_member_routers_owned") == 2
    assert value(m, "provisiond_member_global") == 0
    assert value(m, "provisiond_member_claim_age_seconds", resource="core-1") is None
    assert value(m, "provisiond_member_claim_age_seconds", resource=GLOBAL) is None
    assert value(m, "provisiond_member_claim_age_seconds", resource="core-3") == 0.1
    assert value(m, "provisiond_member_handovers_total") == 2  # counted once each
    assert value(m, "provisiond_member_self_fences_total") == 1
    assert value(m, "provisiond_member_fenced") == 1
    assert [value(m, "provisiond_members", state=s) for s in MEMBER_STATES] == [1, 0, 1, 1]
    m.members(FakeStatus(handovers=2, self_fences=1))  # the same counts: nothing added
    assert value(m, "provisiond_member_handovers_total") == 2
    assert value(m, "provisiond_member_self_fences_total") == 1
    assert value(m, "provisiond_member_routers_owned") == 0
    assert not ages(m)


@dataclass
class FakeMember:
    member_id: str = "pop-a"
    fenced: bool = False
    deadline: float = 0.0


def test_a_fenced_member_fails_healthz_and_is_healthy_again_once_it_renews() -> None:
    h = Health(max_age=60, last_success=100.0)
    member = FakeMember()
    h.member = member
    assert h.check(now=110.0) == (True, "ok")
    member.fenced, member.deadline = True, 105.0
    h.degraded["pool towers"] = "exhausted"
    ok, reason = h.check(now=110.0)
    assert not ok
    assert reason.startswith("member pop-a fenced itself: no lease renewal within ttl-margin; "
                             "writing stopped 5s ago until one comes back")
    assert "degraded: pool towers: exhausted" in reason
    member.fenced = False
    assert h.check(now=110.0)[0]


# -- real members on PostgreSQL ---------------------------------------------------------



@pytest.fixture
def make(url: str) -> Iterator[Callable[..., Membership]]:
    made: list[Membership] = []

    def member(member_id: str) -> Membership:
        m = Membership(url, member_id=member_id, ttl=TTL, margin=MARGIN, resources=lambda: ROUTERS)
        made.append(m)
        return m.start()

    yield member
    for m in made:
        m.stop(graceful=False)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_real_members_statuses_are_exported_and_a_fenced_one_fails_healthz_until_it_renews(
        url: str, make: Callable[..., Membership]) -> None:
    a = make("pop-a")
    wait_until(lambda: sorted(a.owned()) == sorted([*ROUTERS, GLOBAL]), timeout=3 * TTL, what="pop-a owns all")
    b = make("pop-b")
    wait_until(lambda: b.owned() and not set(a.owned()) & set(b.owned())
               and len(a.owned()) + len(b.owned()) == len(ROUTERS) + 1, timeout=4 * TTL,
               what="pop-b took its share")
    metrics, health = Metrics(), Health(max_age=60)
    health.last_success = 1e18  # a pass "just" succeeded: only the membership decides
    health.member = b
    metrics.watch(health)
    metrics.before_scrape = lambda: metrics.members(b.status())
    server = serve("127.0.0.1:0", metrics, health)
    port = server.server_address[1]
    try:
        text = get(port, "/metrics")[1]
        mine = b.owned()
        routers = sorted(set(mine) - {GLOBAL})
        assert f"provisiond_member_routers_owned {float(len(routers))}" in text
        assert f"provisiond_member_global {1.0 if GLOBAL in mine else 0.0}" in text
        assert all(f'provisiond_member_claim_age_seconds{{resource="{r}"}}' in text for r in mine)
        assert not any(f'provisiond_member_claim_age_seconds{{resource="{r}"}}' in text for r in a.owned())
        assert 'provisiond_members{state="live"} 2.0' in text
        # every claim b holds it took over from a
        assert f"provisiond_member_handovers_total {float(len(mine))}" in text
        assert get(port, "/healthz") == (200, "ok\n")

        with psycopg.connect(**pg_kwargs(url)) as admin, admin.transaction():
            # b's renewal waits on its own row, locked here, until its statement times out
            admin.execute("SELECT 1 FROM provisiond_members WHERE member_id = 'pop-b' FOR UPDATE")
            wait_until(lambda: get(port, "/healthz")[0] == 503, timeout=2 * TTL, what="/healthz 503")
            code, body = get(port, "/healthz")
            assert body.startswith("member pop-b fenced itself: no lease renewal within ttl-margin"), body
            text = get(port, "/metrics")[1]
            assert "provisiond_member_fenced 1.0" in text and "provisiond_healthy 0.0" in text
            assert "provisiond_member_routers_owned 0.0" in text
            # counted by the membership thread once it sees the lapse (its renewal times out)
            wait_until(lambda: "provisiond_member_self_fences_total 1.0" in get(port, "/metrics")[1],
                       timeout=2 * TTL, what="the self-fence counted")
        wait_until(lambda: get(port, "/healthz") == (200, "ok\n"), timeout=3 * TTL, what="healthy again")
        assert "provisiond_member_fenced 0.0" in get(port, "/metrics")[1]
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_members_takes_a_real_status(make: Callable[..., Membership]) -> None:
    """The status of a member that stopped: nothing held, every claim age gone."""
    a = make("pop-a")
    wait_until(lambda: len(a.owned()) == len(ROUTERS) + 1, timeout=3 * TTL, what="pop-a owns all")
    m = Metrics()
    m.members(a.status())
    assert value(m, "provisiond_member_routers_owned") == len(ROUTERS)
    assert value(m, "provisiond_member_global") == 1
    assert value(m, "provisiond_members", state="live") == 1
    a.stop()
    m.members(a.status())
    assert value(m, "provisiond_member_routers_owned") == 0
    assert not ages(m)
