"""``provisiond run`` with NOTIFY payloads (config/billing-notify-trigger.sql sends the
ids a statement touched): a scoped pass for them, a full pass for anything unreadable,
a burst gathered into a few passes (the first at once, the rest in the next one)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import TRIGGER_SQL, Billing, DaemonProc, wait_until

from provisiond.cli import main as cli
from provisiond.sim import RouterSim


def listed(router: RouterSim) -> set[str]:
    return {row["address"] for row in router.entries("ip", "tower-hosts")}


def addresses(*accounts: int) -> set[str]:
    return {Billing.address(a) for a in accounts}


PASS = re.compile(r"pass=(\d+) result=ok duration=\S+ changes=(\d+)( scope=(\d+))?")


def passes(d: DaemonProc, after: int) -> list[tuple[int, int | None]]:
    """(changes, scope size or None for a full pass) of every pass logged past ``after``."""
    return [(int(m[2]), int(m[4]) if m[4] else None) for m in PASS.finditer(d.text(), after)]


def notify(billing: Billing, *payloads: str) -> None:
    with billing.connect() as c:
        for payload in payloads:
            c.execute("SELECT pg_notify('provisiond', %s)", (payload,))


def silently(billing: Billing, statement: str, *params: object) -> None:
    """A billing change the trigger does not report."""
    with billing.connect() as c, c.transaction():
        c.execute("SET LOCAL session_replication_role = replica")  # no triggers fire
        c.execute(statement, params)


def test_notify_runs_a_scoped_pass_and_a_malformed_one_a_full_pass(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000, 1001)
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond"}))
    d.wait_log(r"listening for billing changes channel=provisiond")
    d.wait_log(r"pass=1 result=ok")
    assert listed(router) == addresses(1000, 1001)

    mark = d.mark()
    billing.join("Tower Hosts", 1002)  # the trigger sends "1002"
    d.wait_log(r"pass=2 result=ok duration=\S+ changes=1 scope=1\b", after=mark)
    assert listed(router) == addresses(1000, 1001, 1002)

    # Billing changes behind the trigger's back (no notification), then a payload that
    # is not a list of ids arrives: that means a full pass, which finds the change.
    for n, payload in enumerate(('{"account_id": 1003}', "1003;DROP", " , ", "")):
        silently(billing, "INSERT INTO account_groups VALUES (%s, 1)", 1003 + n)
        mark = d.mark()
        notify(billing, payload)
        d.wait_log(rf"pass={3 + n} result=ok duration=\S+ changes=1\b", after=mark)
        assert passes(d, mark) == [(1, None)], f"payload {payload!r}: {passes(d, mark)}"
    assert listed(router) == addresses(*range(1000, 1007))

    # Idempotent: a scoped pass for accounts already in step changes nothing.
    mark = d.mark()
    notify(billing, "1000,1003")
    d.wait_log(r"pass=7 result=ok duration=\S+ changes=0 scope=2\b", after=mark)


def test_a_burst_is_gathered_into_few_passes(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond"}))
    d.wait_log(r"pass=1 result=ok")
    mark = d.mark()
    # Twenty statements in one transaction: twenty notifications arrive together.
    with billing.connect() as c, c.transaction():
        for account in range(1000, 1020):
            c.execute("INSERT INTO account_groups VALUES (%s, 1)", (account,))
    wait_until(lambda: listed(router) == addresses(*range(1000, 1020)), what="the burst")
    wait_until(lambda: sum(n for n, _ in passes(d, mark)) == 20, what="the passes' log lines")
    done = passes(d, mark)
    # The first notification starts a pass at once; the other nineteen wait for it.
    assert 1 <= len(done) <= 2, done
    assert all(scope is not None for _, scope in done), done


def test_a_burst_beyond_scope_max_accounts_is_one_full_pass(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond",
                             "scope_max_accounts": 5}))
    d.wait_log(r"pass=1 result=ok")
    mark = d.mark()
    with billing.connect() as c, c.transaction():
        c.execute("INSERT INTO account_groups VALUES (1000, 1)")
        for account in range(1001, 1020):
            c.execute("INSERT INTO account_groups VALUES (%s, 1)", (account,))
    wait_until(lambda: listed(router) == addresses(*range(1000, 1020)), what="the burst")
    wait_until(lambda: sum(n for n, _ in passes(d, mark)) == 20, what="the passes' log lines")
    done = passes(d, mark)
    assert len(done) <= 2, done
    # Nineteen ids > scope_max_accounts: one full pass makes every change. (The listener
    # may hand over the burst's last notifications after that pass took the rest: they
    # get one scoped pass more, which finds nothing to do.)
    assert [scope for n, scope in done if n] == [None], done


def test_scoped_passes_add_up_against_the_safety_thresholds(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    everyone = range(1000, 1020)
    billing.join("Tower Hosts", *everyone)
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond"},
                     extra="[safety]\nmax_delete_ratio = 0.3\nmin_existing = 10\n"))
    d.wait_log(r"pass=1 result=ok")
    # Each scoped pass deletes 2 of the list's 20 entries: fine alone, but together
    # they may not do what one full pass would be refused (more than 30 %).
    for n, pair in enumerate(((1000, 1001), (1002, 1003), (1004, 1005)), start=2):
        billing.leave("Tower Hosts", *pair)
        d.wait_log(rf"pass={n} result=ok duration=\S+ changes=2 scope=2\b")
    assert listed(router) == addresses(*range(1006, 1020))
    billing.leave("Tower Hosts", 1006, 1007)  # 8 of 20: refused, nothing written
    d.wait_log(r"target=core-1 result=refused held=tower-hosts reason=.*tower-hosts: 8 deletes of 20 existing")
    assert listed(router) == addresses(*range(1006, 1020))
    # From now on passes are full until one goes through: the refused deletes still count,
    # now against what the list holds (3 of 14: under 30 %, so it goes through).
    mark = d.mark()
    billing.leave("Tower Hosts", 1008)
    d.wait_log(r"full instead of scoped \(1 account\(s\)\)", after=mark)
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=3\n", after=mark)
    assert listed(router) == addresses(*range(1009, 1020))
    mark = d.mark()
    billing.leave("Tower Hosts", 1009)  # scoped again
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=1 scope=1\b", after=mark)
    assert listed(router) == addresses(*range(1010, 1020))


def test_the_trigger_notifies_the_channel_named_in_its_one_place(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc], capsys: pytest.CaptureFixture[str],
) -> None:
    """config/billing-notify-trigger.sql names its channel once, in
    provisiond_notify_channel(); check-config says whether it is notify_channel."""
    text = TRIGGER_SQL.read_text()
    assert text.count("SELECT 'provisiond'::text") == 1
    with billing.connect() as c:
        c.execute(text.replace("SELECT 'provisiond'::text", "SELECT 'billing_events'::text"))
    billing.join("Tower Hosts", 1000)
    path = config(daemon={"interval": "300s", "notify_channel": "billing_events"})

    def check_config(config_path: Path) -> str:
        assert cli.main(["--config", str(config_path), "check-config"]) == 0
        return capsys.readouterr().out

    assert "notify_channel" not in check_config(path)
    d = start(path)
    d.wait_log(r"listening for billing changes channel=billing_events")
    d.wait_log(r"pass=1 result=ok")
    mark = d.mark()
    billing.join("Tower Hosts", 1001)  # the trigger notifies billing_events: "1001"
    d.wait_log(r"pass=2 result=ok duration=\S+ changes=1 scope=1\b", after=mark)
    assert listed(router) == addresses(1000, 1001)
    d.stop()
    assert cli.main(["--config", str(path), "plan"]) == 0  # idempotent: nothing left to do
    assert "Plan: 0 to create, 0 to update, 0 to delete" in capsys.readouterr().out

    other = config(daemon={"notify_channel": "provisiond"}, name="other.toml")
    assert ("warning: daemon.notify_channel is 'provisiond' but the billing database's trigger "
            "notifies 'billing_events'") in check_config(other)
    with billing.connect() as c:
        c.execute("DROP FUNCTION provisiond_notify_channel()")
    assert ("warning: daemon.notify_channel: the billing database has no provisiond_notify_channel(): "
            "install (or re-run) config/billing-notify-trigger.sql") in check_config(other)
