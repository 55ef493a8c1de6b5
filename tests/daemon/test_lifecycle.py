"""Signals, systemd notifications, metrics and leader election of ``provisiond run``."""

from __future__ import annotations

import re

import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from dbservers import Server, fresh_database
from harness import Billing, DaemonProc, free_port, pg_kwargs, wait_until, write_config

from provisiond.daemon.leader import LEADER_KEY, pg_holder

from provisiond.daemon.sdnotify import Notifier
from provisiond.sim import RouterSim


def listed(router: RouterSim, list_name: str = "tower-hosts") -> set[str]:
    return {row["address"] for row in router.entries("ip", list_name)}


def addresses(*accounts: int) -> set[str]:
    return {Billing.address(a) for a in accounts}


ALL = tuple(range(1000, 1020))


def test_sigterm_lets_the_pass_in_flight_finish(
    billing: Billing, make_router: Callable[..., RouterSim], config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    slow = make_router(command_latency=0.5)  # a slow link: the pipelined adds are answered half a second after they leave
    billing.join("Tower Hosts", *ALL)
    d = start(config(router_port=slow.port, daemon={"interval": "1s"}))
    wait_until(lambda: any(c.path.endswith("/add") for c in slow.history), what="adds started")
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0
    # The pass that was applying when the signal came ran to its end: every entry is
    # there, nothing half-done; and no pass started after the signal.
    assert listed(slow) == addresses(*ALL)
    text = d.text()
    assert text.index("signal=SIGTERM") < text.index("pass=1 result=ok")
    assert "pass=2 " not in text
    assert "provisiond stopped" in text


def test_sighup_reload_bad_then_good(
    tmp_path: Path, billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc], password: tuple[str, Path],
) -> None:
    billing.join("Tower Hosts", 1000)
    billing.join("Legacy Customers", 1001)
    daemon = {"interval": "300s", "notify_channel": "provisiond"}
    path = config(daemon=daemon)
    d = start(path)
    d.wait_log(r"pass=1 result=ok")
    good = path.read_text()

    path.write_text(good.replace('interval = "300s"', 'interval = "soon"'))
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"reload: daemon\.interval: not a duration", after=mark)
    d.wait_log(r"the running configuration stays", after=mark)
    billing.join("Tower Hosts", 1002)  # the old config still works, NOTIFY included
    wait_until(lambda: listed(router) == addresses(1000, 1002), timeout=20, what="old config pass")

    write_config(tmp_path, billing_url=billing.url, router_port=router.port,
                 password_file=password[1], daemon=daemon,
                 lists={"Tower Hosts": "tower-hosts", "Legacy Customers": "legacy"})
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"configuration swapped in", after=mark)
    wait_until(lambda: listed(router, "legacy") == addresses(1001), timeout=20,
               what="the new mapping applied")
    assert d.proc.poll() is None


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _drain(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            return into


def test_systemd_notify_ready_watchdog_reload_stopping(
    tmp_path: Path, billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc], notify_socket: socket.socket,
) -> None:
    billing.join("Tower Hosts", 1000)
    d = start(config(daemon={"interval": "300s"}),
              env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "600000"})
    got: list[str] = []
    wait_until(lambda: "READY=1" in _drain(notify_socket, got), what="READY=1")
    status = next(line for line in got if line.startswith("STATUS="))
    assert "pass 1 ok" in status and "1 change(s) applied" in status
    assert listed(router) == addresses(1000)  # READY comes after the first pass
    wait_until(lambda: _drain(notify_socket, got).count("WATCHDOG=1") >= 3, timeout=20,
               what="watchdog keep-alives every 0.3 s")
    d.signal(signal.SIGHUP)
    wait_until(lambda: "RELOADING=1" in _drain(notify_socket, got), timeout=20, what="RELOADING=1")
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    assert "STOPPING=1" in _drain(notify_socket, got)


def test_notifier_abstract_socket_and_unset() -> None:
    name = f"provisiond-test-{free_port()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).ready("first pass done")
        assert sock.recv(4096) == b"READY=1\nSTATUS=first pass done"
    finally:
        sock.close()
    assert not Notifier("").ready("nobody listens")  # NOTIFY_SOCKET unset: a no-op


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_and_healthz(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000, 1001)
    with billing.connect() as c:  # no billing address: gets one from the pool
        c.execute("INSERT INTO accounts (id, name, status) VALUES (2000, 'Pool Tower', 'active')")
    billing.join("Tower Hosts", 2000)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pool = '[[pool]]\nname = "towers"\ngroup = "Tower Hosts"\nnetworks = ["10.99.0.0/29"]\n'
    d = start(config(daemon={"interval": "0.5s", "metrics_listen": f"127.0.0.1:{port}",
                             "healthz_max_age": "1.5s", "retry_max": "5s"}, extra=pool))
    d.wait_log(r"pass=1 result=ok")
    assert _get(base + "/healthz") == (200, "ok\n")
    assert listed(router) == addresses(1000, 1001) | {"10.99.0.1"}
    _, text = _get(base + "/metrics")
    for line in ('provisiond_passes_total{kind="full",result="ok"}',
                 'provisiond_listen_state{state="live",target="core-1"} 1.0',
                 'provisiond_mirror_entries{target="core-1"} 3.0',
                 "provisiond_full_pass_interval_seconds 0.5",
                 'provisiond_changes_applied_total{action="create",target="core-1"} 3.0',
                 "provisiond_leader 1.0", "provisiond_pass_duration_seconds_count",
                 'provisiond_last_success_timestamp_seconds{target="core-1"}',
                 'provisiond_pool_utilisation_ratio{pool="towers"} 0.1667'):
        assert line in text, line
    router.set_down(True)
    _, body = wait_until(lambda: (r := _get(base + "/healthz"))[0] == 503 and r, timeout=20,
                            what="healthz 503")
    assert "last successful pass" in body
    # healthz turns by age alone; the failed pass is counted when it ends.
    wait_until(lambda: 'provisiond_errors_total{target="core-1"}' in _get(base + "/metrics")[1],
               timeout=15, what="the router's error counted")
    assert _get(base + "/nothing")[0] == 404


def test_leader_election_on_postgresql(
    tmp_path: Path, billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    path = config(state_url=billing.url, daemon={"interval": "1s"})
    first = start(path)
    first.wait_log(r"pass=1 result=ok")
    second = start(path)
    # The standby names who leads (host and pid, from the lock's session).
    second.wait_log(rf"standby: advisory lock \S+ on \S+ is held by another provisiond "
                    rf"\(pid={first.pid} since=\S+ host=\S+\)")
    billing.join("Tower Hosts", 1003)
    wait_until(lambda: listed(router) == addresses(1003), timeout=20, what="leader pass")
    assert "pass=" not in second.text()
    first.proc.kill()  # no clean-up: the lock goes with its connection
    first.wait(5)
    second.wait_log(r"leader lock won", timeout=10)
    billing.join("Tower Hosts", 1004)
    wait_until(lambda: listed(router) == addresses(1003, 1004), timeout=20, what="takeover")
    # Its passes go on from the leader's numbers, not from 1 (the leader's last pass may
    # have finished in its full-pass process after the kill: then one more).
    last = max(int(n) for n in re.findall(r"pass=(\d+) ", first.text()))
    taken = int(second.wait_log(r"pass=(\d+) result=").group(1))
    assert last < taken <= last + 2


def test_the_leader_named_is_the_one_of_this_database(pg_url: str, pg_server: Server) -> None:
    """Advisory locks are per database: a provisiond of another store on the same server
    holding the same key is not this store's leader."""
    with fresh_database(pg_server) as other, \
            psycopg.connect(**pg_kwargs(other), application_name="provisiond leader pid=1 host=elsewhere") as them, \
            psycopg.connect(**pg_kwargs(pg_url)) as us:
        assert them.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_KEY,)).fetchone() == (True,)
        assert pg_holder(us) is None
        assert pg_holder(them) == "pid=1 host=elsewhere"


def test_second_daemon_on_one_sqlite_store_refuses(
    tmp_path: Path, billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    path = config(daemon={"interval": "300s"})
    first = start(path)
    first.wait_log(r"pass=1 result=ok")
    second = start(path)
    assert second.wait(15) == 1
    assert "already runs on this state store" in second.text()
    assert (tmp_path / "state.db.lock").exists()
    assert first.proc.poll() is None
