"""Daemon promises tested on the real thing (``provisiond run`` as a subprocess):

- it never forces past the safety thresholds;
- a leader whose lock connection is lost stops writing until it wins the lock again;
- the systemd watchdog keep-alive is withheld while a pass hangs, and resumes after.

Every negative check waits for a positive event first (a log line, a message), never
for a fixed time.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from harness import Billing, DaemonProc, pg_kwargs, wait_until

from provisiond.daemon.leader import LEADER_KEY
from provisiond.sim import RouterSim

WRITE_VERBS = ("add", "set", "remove", "enable", "disable", "unset", "comment")
ALL = tuple(range(1000, 1020))


def listed(router: RouterSim, list_name: str = "tower-hosts") -> set[str]:
    return {row["address"] for row in router.entries("ip", list_name)}


def addresses(*accounts: int) -> set[str]:
    return {Billing.address(a) for a in accounts}


def writes(router: RouterSim) -> list[str]:
    return [c.path for c in router.history if c.path.rsplit("/", 1)[-1] in WRITE_VERBS]


def test_the_daemon_never_forces_past_the_safety_thresholds(
    billing: Billing, router: RouterSim, config: Callable[..., Path], start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", *ALL)
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond"},
                     extra="[safety]\nmax_delete_ratio = 0.3\nmin_existing = 10\n"))
    d.wait_log(r"pass=1 result=ok")
    assert listed(router) == addresses(*ALL)
    router.reset_history()
    billing.leave("Tower Hosts", *ALL[:10])  # 10 deletes of 20: over 30 %
    d.wait_log(r"target=core-1 result=refused held=tower-hosts reason=.*10 deletes of 20 existing entries")
    d.wait_log(r"pass=2 result=\S+")
    assert listed(router) == addresses(*ALL) and writes(router) == []
    billing.leave("Tower Hosts", *ALL[10:11])  # another pass: still refused, still nothing
    d.wait_log(r"pass=3 result=\S+")
    assert listed(router) == addresses(*ALL) and writes(router) == []


def test_a_leader_whose_lock_connection_is_lost_stops_writing(
    billing: Billing, router: RouterSim, config: Callable[..., Path], start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000)
    # listen off: the scoped pass prints (with a mirror it would read nothing from the
    # router, and nothing would hang between its plan and its leader check).
    d = start(config(state_url=billing.url, daemon={"interval": "2s", "notify_channel": "provisiond",
                                                    "listen": False}))
    d.wait_log(r"pass=1 result=ok")
    assert listed(router) == addresses(1000)
    router.set_stalled(True)  # the next pass hangs in observe, after reading billing
    router.reset_history()
    billing.join("Tower Hosts", 1001)
    # The pass is scoped (a NOTIFY): its first command (a login on a new connection, or
    # the print on a kept one) hangs.
    wait_until(lambda: any(c.path.endswith(("/print", "/login")) for c in router.history),
               what="the next pass's first command")
    # The leader's lock connection dies (a failover, an administrator) and someone else
    # takes the lock before the leader notices.
    high, low = LEADER_KEY >> 32, LEADER_KEY & 0xFFFFFFFF
    with billing.connect() as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = %s AND objid = %s AND granted", (high, low)).fetchall()
    assert killed == [(True,)]
    rival = psycopg.connect(**pg_kwargs(billing.url))
    try:
        wait_until(lambda: rival.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_KEY,)).fetchone() == (True,),
                   what="the rival taking the lock")
        mark = d.mark()
        router.set_stalled(False)
        d.wait_log(r"lost the leader lock", after=mark)
        d.wait_log(r"standby: advisory lock", after=mark)
        assert writes(router) == [] and listed(router) == addresses(1000)
    finally:
        rival.close()  # the lock goes with the rival's session
    d.wait_log(r"leader lock won", after=mark)
    wait_until(lambda: listed(router) == addresses(1000, 1001), what="writing again as leader")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    yield sock
    sock.close()


def _drain(sock: socket.socket) -> list[str]:
    got: list[str] = []
    while True:
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            return got


def test_watchdog_keepalive_is_withheld_while_a_pass_hangs(
    tmp_path: Path, billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc], notify_socket: socket.socket,
) -> None:
    billing.join("Tower Hosts", 1000)
    path = config(daemon={"interval": "300s"})
    path.write_text(path.read_text().replace('timeout = "5s"', 'timeout = "120s"')
                    .replace('connect_timeout = "2s"', 'connect_timeout = "120s"'))
    router.set_stalled(True)  # the first pass hangs at login until the router answers
    d = start(path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "600000"})
    first = d.wait_log(r"watchdog: not sending keep-alive: pass running for")
    _drain(notify_socket)  # whatever was sent before the pass hung
    # The watchdog thread either sends or logs this line on each tick: two more of them
    # in a row mean no keep-alive in between, which the socket must confirm.
    second = d.wait_log(r"watchdog: not sending keep-alive", after=first.end())
    d.wait_log(r"watchdog: not sending keep-alive", after=second.end())
    during = _drain(notify_socket)
    assert "pass=1 result" not in d.text(), "the pass must still hang for this check to mean anything"
    assert "WATCHDOG=1" not in during
    router.set_stalled(False)
    d.wait_log(r"pass=1 result=ok")
    got: list[str] = []
    wait_until(lambda: "WATCHDOG=1" in got or got.extend(_drain(notify_socket)), timeout=10,
               what="keep-alives again once the pass finished")
    assert listed(router) == addresses(1000)
