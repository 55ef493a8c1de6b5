"""RouterTarget's scoped read (``observe(scope)``) against the simulator over TCP: every
print of the scope goes out at once, tagged, and the read finds exactly what a full read
finds for those accounts, plus whatever sits on an address they want."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest

from provisiond.core.changes import Create, Key, Resource
from provisiond.core.desire import address_list_entry
from provisiond.core.model import Account
from provisiond.core.plan import Plan
from provisiond.core.scope import Scope
from provisiond.errors import TargetError, TargetUnavailable
from provisiond.settings import RouterSettings
from provisiond.sim import RouterSim, SimSettings
from provisiond.targets.routeros import SCOPE_CHUNK, RouterTarget

PRINT4 = "/ip/firewall/address-list/print"
PRINT6 = "/ipv6/firewall/address-list/print"


@pytest.fixture
def sim() -> Iterator[RouterSim]:
    s = RouterSim(SimSettings(username="u", password="p", log_commands=False)).start()
    yield s
    s.stop()


@pytest.fixture
def target(sim: RouterSim) -> Iterator[RouterTarget]:
    settings = RouterSettings(name="core-1", host="127.0.0.1", port=sim.port, username="u",
                              password="p", timeout=5, connect_timeout=2)  # type: ignore[arg-type]
    t = RouterTarget(settings, lists=["l", "yes"], marker="provisiond")
    yield t
    t.close()


def _entry(list_name: str, address: str, account: int) -> Resource:
    return address_list_entry(list_name, address, Account(str(account), f"A{account}"), "provisiond")


def _scope(accounts: Iterable[int], wanted: tuple[Resource, ...] = ()) -> Scope:
    keyed: dict[Key, Resource] = {("address-list", r.ident): r for r in wanted}
    return Scope(accounts=frozenset(map(str, accounts)), wanted=keyed, existing={})


def test_a_scope_wider_than_one_print_reads_every_chunk_of_both_families(
    sim: RouterSim, target: RouterTarget
) -> None:
    n = SCOPE_CHUNK * 2 + 7
    v4 = [_entry("l", f"10.2.{i >> 8}.{i & 255}", i) for i in range(n)]
    v6 = [_entry("yes", f"2001:db8::{i:x}", i) for i in range(0, n, 3)]
    assert target.apply(Plan("core-1", "routeros", tuple(Create(r) for r in v4 + v6))).ok
    full = target.observe().owned
    scope = range(5, n, 2)  # every other account, across all three chunks
    sim.reset_history()
    observed = target.observe(_scope(scope))
    assert observed.owned == {k: r for k, r in full.items() if int(r.account_id) in scope}
    prints = [c for c in sim.history if c.path in (PRINT4, PRINT6)]
    assert [c.path for c in prints] == [PRINT4] * 2 + [PRINT6] * 2  # 2 chunks of accounts each
    assert all(c.tag is not None for c in prints)  # sent as one window of tagged commands
    assert len({c.tag for c in prints}) == len(prints)


def test_rows_are_read_as_text(sim: RouterSim, target: RouterTarget) -> None:
    # A list named "yes" and a comment "true" are text, not booleans (librouteros's
    # own reader would turn both into True).
    assert target.apply(Plan("core-1", "routeros", (Create(_entry("yes", "10.3.0.1", 1)),))).ok
    sim.add_entry("ip", list_name="yes", address="10.3.0.2", comment="true", dynamic=False)
    wanted = _entry("yes", "10.3.0.2", 1)
    observed = target.observe(_scope([1], (wanted,)))
    assert [r.get("address") for r in observed.owned.values()] == ["10.3.0.1"]
    assert observed.foreign == {("address-list", wanted.ident): "entry not created by provisiond (comment 'true')"}


def test_a_refused_scoped_print_fails_the_read_and_the_next_one_reconnects(
    sim: RouterSim, target: RouterTarget
) -> None:
    assert target.apply(Plan("core-1", "routeros", (Create(_entry("l", "10.4.0.1", 1)),))).ok
    sim.fail_next(PRINT6, "not enough permissions (9)")
    with pytest.raises(TargetError, match="scoped print refused: not enough permissions"):
        target.observe(_scope([1]))
    assert len(target.observe(_scope([1])).owned) == 1


def test_a_kept_connection_closed_meanwhile_is_opened_again(sim: RouterSim, target: RouterTarget) -> None:
    assert target.apply(Plan("core-1", "routeros", (Create(_entry("l", "10.5.0.1", 1)),))).ok
    sim.drop_connections()
    assert len(target.observe(_scope([1])).owned) == 1


def test_a_connection_lost_during_the_scoped_read_makes_the_router_unavailable(
    sim: RouterSim, target: RouterTarget
) -> None:
    target.observe(_scope([1]))  # a fresh connection: a loss on it is not retried
    target.close()
    sim.drop_after(PRINT4, 1)
    with pytest.raises(TargetUnavailable, match="scoped read failed"):
        target.observe(_scope([1]))
