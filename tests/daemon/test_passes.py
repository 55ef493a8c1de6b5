"""``provisiond run`` end to end: NOTIFY and interval passes, dry run, a router that
goes away and comes back, and secrets kept out of the log."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from harness import Billing, DaemonProc, wait_until

from provisiond.sim import RouterSim


def listed(router: RouterSim, list_name: str = "tower-hosts") -> set[str]:
    return {row["address"] for row in router.entries("ip", list_name)}


def addresses(*accounts: int) -> set[str]:
    return {Billing.address(a) for a in accounts}


def test_notify_reaches_the_router_within_seconds(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000, 1001)
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond"}))
    d.wait_log(r"listening for billing changes channel=provisiond")
    wait_until(lambda: listed(router) == addresses(1000, 1001), what="first pass")
    d.wait_log(r"pass=1 result=ok")
    mark = d.mark()
    for account in (1002, 1003, 1004):  # three statements: the first starts a pass at once
        billing.join("Tower Hosts", account)
    # The interval is 300 s: whatever reaches the router now came through NOTIFY.
    wait_until(lambda: listed(router) == addresses(*range(1000, 1005)), timeout=20,
               what="the notified change on the router")
    # Scoped: the passes after the first name the accounts the trigger sent.
    d.wait_log(r"pass=2 result=ok duration=\S+ changes=\d scope=\d\b", after=mark)
    billing.leave("Tower Hosts", 1000)
    wait_until(lambda: listed(router) == addresses(*range(1001, 1005)), timeout=20,
               what="a removal")


def test_interval_pass_without_notify(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    d = start(config(daemon={"interval": "1s"}))
    d.wait_log(r"pass=1 result=ok")
    billing.join("Tower Hosts", 1005)
    wait_until(lambda: listed(router) == addresses(1005), timeout=20, what="the interval pass")


def test_dry_run_writes_nothing(
    tmp_path: Path, billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000, 1001)
    d = start(config(daemon={"interval": "1s", "dry_run": True}))
    d.wait_log(r"dry-run target=core-1 create=2 update=0 delete=0")
    d.wait_log(r"dry-run target=core-1 \+ tower-hosts 100\.64\.0\.0")  # DEBUG per change
    d.wait_log(r"pass=2 result=ok")
    assert listed(router) == set()
    assert not any(c.path.endswith("/add") for c in router.history)
    assert not (tmp_path / "state.db").exists()  # not even the journal or leases


def test_router_down_backs_off_and_converges(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000)
    d = start(config(daemon={"interval": "0.5s", "retry_max": "1s"}))
    wait_until(lambda: listed(router) == addresses(1000), what="first pass")
    router.set_down(True)
    billing.join("Tower Hosts", 1001)
    d.wait_log(r"target=core-1 result=unavailable retry_in=1\.0s")
    d.wait_log(r"target=core-1 result=backoff")
    router.set_down(False)
    wait_until(lambda: listed(router) == addresses(1000, 1001), timeout=10, what="convergence")
    d.wait_log(r"target=core-1 recovered")


def test_a_notify_for_a_router_in_back_off_reaches_it_once_it_is_back(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    """A scoped pass leaves a failing router out; the change it carried must still reach
    that router when its back-off ends, not only at the next interval (an hour here)."""
    billing.join("Tower Hosts", 1000)
    d = start(config(daemon={"interval": "3600s", "notify_channel": "provisiond", "retry_max": "1s"}))
    d.wait_log(r"pass=1 result=ok")
    router.set_down(True)
    billing.join("Tower Hosts", 1001)
    d.wait_log(r"target=core-1 result=unavailable retry_in=1\.0s")
    router.set_down(False)
    wait_until(lambda: listed(router) == addresses(1000, 1001), timeout=20,
               what="the owed change on the router")
    # After the first, only scoped passes and (the router's listen was lost while it was
    # down) passes of that router: the retry, not the next interval's full pass, brought it.
    passes = re.findall(r"pass=(\d+) result=\S+ duration=\S+ changes=\d+( scope=\d+| targets=core-1)?",
                        d.text())
    assert passes[0] == ("1", "") and all(scope for _, scope in passes[1:]), passes


def test_billing_down_skips_the_pass(
    tmp_path: Path, billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    # A billing URL nothing listens on: every pass fails before any write, the daemon lives.
    port = __import__("harness").free_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing"
    d = start(config(billing_url=url, daemon={"interval": "0.5s"}))
    line = d.wait_log(r"pass result=error source: [^\n]*").group(0)
    assert line.count("nothing written") == 1, line  # said once, by the daemon
    d.wait_log(r"pass=2 result=error")
    assert d.proc.poll() is None
    assert router.history == [] or not any(c.path.endswith("/add") for c in router.history)


def test_secrets_never_logged(
    tmp_path: Path, billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc], password: tuple[str, Path],
) -> None:
    # PostgreSQL trusts loopback here, so a password in the URL is accepted and unused.
    db_password = "dbpw-Zq81xK"
    url = billing.url.replace("postgres@", f"postgres:{db_password}@")
    billing.join("Tower Hosts", 1000)
    d = start(config(billing_url=url, daemon={"interval": "0.5s", "notify_channel": "provisiond"}))
    wait_until(lambda: listed(router) == addresses(1000), what="first pass")
    router.set_down(True)  # connection errors are logged too
    d.wait_log(r"result=unavailable")
    router.set_down(False)
    d.wait_log(r"recovered")
    assert d.stop() == 0
    text = d.text()
    assert "DEBUG" in text  # -vv really logged at DEBUG
    assert password[0] not in text
    assert db_password not in text


def test_lost_listen_connection_reconnects(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond"}))
    d.wait_log(r"listening for billing changes")
    d.wait_log(r"pass=1 result=ok")
    mark = d.mark()
    with billing.connect() as c:  # an administrator (or a failover) cuts the LISTEN session
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name = 'provisiond' AND datname = current_database()")
    d.wait_log(r"billing LISTEN connection lost: .*interval only, reconnecting in 1s", after=mark)
    d.wait_log(r"listening for billing changes", after=mark, timeout=10)
    billing.join("Tower Hosts", 1007)
    wait_until(lambda: listed(router) == addresses(1007), timeout=20, what="NOTIFY after reconnect")


def test_watchdog_withholds_keepalive_when_a_pass_hangs(tmp_path: Path, billing: Billing) -> None:
    from provisiond import settings as settings_mod
    from provisiond.daemon.loop import Daemon

    path = tmp_path / "p.toml"
    path.write_text(f'[source]\nurl = "{billing.url}"\nquery = "SELECT 1"\n'
                    f'[state]\nurl = "sqlite:///{tmp_path / "s.db"}"\n'
                    '[daemon]\ninterval = "60s"\njitter = 0\n')
    daemon = Daemon(path, settings_mod.load(path))

    class Running:
        running = True

    daemon.scheduler = Running()
    assert daemon.unhealthy(10.0) is None
    daemon._in_pass_since = time.monotonic() - 11
    assert daemon.unhealthy(10.0) == "pass running for 11s"
    daemon._in_pass_since = None
    daemon._last_job = time.monotonic() - 100
    assert (daemon.unhealthy(10.0) or "").startswith("no pass started for")
    daemon._last_job = time.monotonic()
    daemon._heartbeat = time.monotonic() - 20
    assert (daemon.unhealthy(10.0) or "").startswith("main loop silent")
