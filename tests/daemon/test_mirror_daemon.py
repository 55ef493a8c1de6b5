"""``provisiond run`` with each router mirrored by ``listen`` (the default): a billing
event prints nothing on the router, hand edits are repaired within seconds, a storm of
them is one full pass of that router, and the full pass is a backstop.

The router is the simulator (real API over TCP); hand edits come from librouteros, as
an operator's WinBox or script would make them. Prints are counted from the router's
own command history.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import librouteros
from harness import Billing, DaemonProc, wait_until

from provisiond.sim import RouterSim

AL = ("ip", "firewall", "address-list")
LISTEN_UP = r"router=core-1 listen up"


def listed(router: RouterSim) -> dict[str, dict[str, str]]:
    return {row["address"]: row for row in router.entries("ip", "tower-hosts")}


def prints(router: RouterSim) -> int:
    return sum(1 for c in router.history if c.path.endswith("address-list/print"))


def hand(router: RouterSim, password: tuple[str, Path]) -> librouteros.api.Api:
    return librouteros.connect("127.0.0.1", "admin", password[0], port=router.port, timeout=5)


def started(billing: Billing, router: RouterSim, config: Callable[..., Path],
            start: Callable[..., DaemonProc], accounts: range) -> DaemonProc:
    billing.join("Tower Hosts", *accounts)
    # No interval: the adaptive backstop (15 minutes here), so no full pass comes by.
    d = start(config(daemon={"interval": None, "notify_channel": "provisiond",
                             "metrics_listen": None}))
    d.wait_log(r"pass=1 result=ok")
    d.wait_log(LISTEN_UP)
    wait_until(lambda: len(listed(router)) == len(accounts), what="the first pass's entries")
    return d


def test_a_billing_event_and_its_second_pass_print_nothing_on_the_router(
        billing: Billing, router: RouterSim, config: Callable[..., Path],
        start: Callable[..., DaemonProc]) -> None:
    d = started(billing, router, config, start, range(1000, 1010))
    router.reset_history()
    mark = d.mark()
    billing.join("Tower Hosts", 1010)
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=1 scope=1\b", after=mark)
    assert Billing.address(1010) in listed(router)
    billing.leave("Tower Hosts", 1003)
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=1 scope=1\b",
               after=d.wait_log(r"changes=1 scope=1\b", after=mark).end())
    assert Billing.address(1003) not in listed(router)
    mark = d.mark()
    billing.join("Tower Hosts", 1010)  # again: nothing to do
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=0 scope=1\b", after=mark)
    assert prints(router) == 0


def test_hand_edits_of_managed_entries_are_repaired_and_hand_made_ones_left_alone(
        billing: Billing, router: RouterSim, config: Callable[..., Path],
        start: Callable[..., DaemonProc], password: tuple[str, Path]) -> None:
    d = started(billing, router, config, start, range(1000, 1010))
    before = listed(router)
    router.reset_history()
    api = hand(router, password)
    try:
        path = api.path(*AL)
        path.remove(before[Billing.address(1000)][".id"])
        path.update(**{".id": before[Billing.address(1001)][".id"], "disabled": True})
        path.update(**{".id": before[Billing.address(1002)][".id"], "comment": "provisiond:1002 x"})
        path.update(**{".id": before[Billing.address(1003)][".id"], "address": "192.0.2.33"})
        path.add(list="tower-hosts", address="192.0.2.77", comment="by hand")
    finally:
        api.close()

    def repaired() -> bool:
        now = listed(router)
        return (set(now) == set(before) | {"192.0.2.77"}
                and all(now[a]["disabled"] == "false" and now[a]["comment"] == before[a]["comment"]
                        for a in before))

    wait_until(repaired, timeout=5, what="the hand edits repaired")
    assert listed(router)["192.0.2.77"]["comment"] == "by hand"
    assert prints(router) == 0
    assert re.search(r"router=core-1 drift: entries of \d account\(s\) changed", d.text())
    mark = d.mark()
    billing.join("Tower Hosts", 1005)  # an event after the repair: nothing left to do
    d.wait_log(r"changes=0 scope=1\b", after=mark)


def test_a_thousand_hand_deletions_are_one_full_pass_of_that_router(
        billing: Billing, router: RouterSim, config: Callable[..., Path],
        start: Callable[..., DaemonProc], password: tuple[str, Path]) -> None:
    with billing.connect() as c, c.cursor() as cur:  # the harness has 20 accounts
        more = range(1020, 2200)
        cur.executemany("INSERT INTO accounts (id, name, status) VALUES (%s, %s, 'active')",
                        [(a, f"Account {a}") for a in more])
        cur.executemany("INSERT INTO ip_assignments VALUES (%s, %s)",
                        [(a, Billing.address(a)) for a in more])
    d = started(billing, router, config, start, range(1000, 2200))
    ids = [row[".id"] for row in listed(router).values()][:1000]
    mark = d.mark()
    api = hand(router, password)
    try:
        path = api.path(*AL)
        for i in range(0, 1000, 100):
            path.remove(*ids[i:i + 100])
    finally:
        api.close()
    wait_until(lambda: len(listed(router)) == 1200, timeout=30, what="every entry back")
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=\d+ targets=core-1", after=mark)
    lines = re.findall(r"pass=\d+ result=\w+ duration=\S+ changes=(\d+)( scope=\d+)?( targets=\S+)?",
                       d.text()[mark:])
    assert sum(int(c) for c, _, _ in lines) == 1000
    assert not [1 for _, scope, _ in lines if scope]  # no scoped pass for them


def _second_router(router: RouterSim, password: tuple[str, Path]) -> str:
    return "\n".join(["[[router]]", 'name = "core-2"', 'host = "127.0.0.1"', f"port = {router.port}",
                      'username = "admin"', f'password_file = "{password[1]}"', 'timeout = "5s"',
                      'connect_timeout = "2s"', ""])


def scans(router: RouterSim) -> int:
    return sum(router.load.scans.values())


def test_a_lost_listen_and_a_reboot_read_that_router_again_and_full_pass_only_it(
        billing: Billing, router: RouterSim, make_router: Callable[..., RouterSim],
        config: Callable[..., Path], start: Callable[..., DaemonProc],
        password: tuple[str, Path]) -> None:
    other = make_router()
    billing.join("Tower Hosts", *range(1000, 1010))
    d = start(config(daemon={"interval": None, "notify_channel": "provisiond"},
                     extra=_second_router(other, password)))
    d.wait_log(r"pass=1 result=ok")
    d.wait_log(r"router=core-1 listen up")
    d.wait_log(r"router=core-2 listen up")
    before_other = scans(other)
    mark = d.mark()
    assert router.drop_listening() == 1
    d.wait_log(r"router=core-1 listen lost", after=mark)
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=0 targets=core-1\b", after=mark, timeout=20)
    mark = d.mark()
    router.reboot()  # ids renumbered
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=0 targets=core-1\b", after=mark, timeout=20)
    assert scans(other) == before_other  # the other router was not read again
    assert not re.search(r"pass=\d+ result=\w+ duration=\S+ changes=\d+\n", d.text()[mark:])
    # The new ids are known: a billing event after the reboot is written without a print.
    router.reset_history()
    mark = d.mark()
    billing.leave("Tower Hosts", 1004)
    d.wait_log(r"changes=2 scope=1\b", after=mark)  # one delete on each router
    assert Billing.address(1004) not in listed(router)
    assert prints(router) == 0


def test_a_router_without_listen_is_read_as_before_and_full_passed_at_the_interval(
        billing: Billing, make_router: Callable[..., RouterSim], config: Callable[..., Path],
        start: Callable[..., DaemonProc]) -> None:
    old = make_router(listen=False)  # listen traps "no such command"
    billing.join("Tower Hosts", 1000, 1001)
    d = start(config(router_port=old.port, daemon={"interval": "1s", "notify_channel": "provisiond"}))
    d.wait_log(r"pass=1 result=ok")
    d.wait_log(r"router=core-1 listen refused")
    d.wait_log(r"pass=3 result=ok")  # the interval goes on
    assert d.text().count("listen refused") == 1  # said once
    old.reset_history()
    billing.join("Tower Hosts", 1002)
    wait_until(lambda: Billing.address(1002) in listed(old), what="the change on the router")
    assert prints(old) > 0  # no mirror: every pass printed, as before
