"""Routers that stall: one accepts the connection and never answers, one answers half
a sentence and stalls. ``provisiond run`` (a real subprocess) gives up on each within
its timeouts, the other router converges, passes go on and systemd's watchdog keeps
being fed, and once the stalled routers
answer again everything converges and /healthz turns 200.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

from faultlib import Figures, daemon_config
from harness import Billing, DaemonProc, free_port, new_password, wait_until

from provisiond.sim import RouterSim, SimSettings


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def drain(sock: socket.socket) -> str:
    """Every sd_notify datagram received since the last call, one per line."""
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except BlockingIOError:
            return "\n".join(got)


def listed(sim: RouterSim) -> set[str]:
    return {row["address"] for row in sim.entries("ip", "tower-hosts")}


def test_stalled_routers_are_given_up_and_the_others_converge(
    tmp_path: Path, pg_url: str, figures: Figures
) -> None:
    billing = Billing(pg_url)
    billing.join("Tower Hosts", *range(1000, 1010))
    want = {Billing.address(a) for a in range(1000, 1010)}
    password, password_file = new_password(tmp_path)
    sims = {name: RouterSim(SimSettings(username="admin", password=password, log_commands=False)).start()
            for name in ("core-1", "mute", "half")}
    port = free_port()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    d: DaemonProc | None = None
    trials = figures.trials("stalled routers (never answers, half a sentence)")
    try:
        with trials.trial() as outcome:
            outcome["routers_stalled"] += 2
            sims["mute"].set_stalled(True)  # accepts, reads, never answers (not even the login)
            sims["half"].stall_after(2, half=True)  # login answered; half the first print, then silence
            config = daemon_config(
                tmp_path, billing_url=billing.url, password_file=password_file,
                routers={name: sim.port for name, sim in sims.items()},
                # listen off: a stall counts the router's commands, and the listen session's
                # would race the pass's for the "half a print" (tests/targets cover a
                # stalled listen).
                daemon={"interval": "0.5s", "jitter": "0s", "retry_max": "1s",
                        "metrics_listen": f"127.0.0.1:{port}", "healthz_max_age": "30s",
                        "listen": False},
            )
            d = DaemonProc(config, log=tmp_path / "daemon.log", verbosity="-v",
                           env={"NOTIFY_SOCKET": str(notify.getsockname()), "WATCHDOG_USEC": "3000000"})
            # Pass 1 ends while both stalls still hold: each router was given up on.
            d.wait_log(r"pass=1 result=partial .*failed=(mute,half|half,mute)", timeout=30)
            assert listed(sims["core-1"]) == want
            assert listed(sims["mute"]) == set() and listed(sims["half"]) == set()
            log = d.text()
            assert "target=mute result=unavailable" in log and "target=half result=unavailable" in log
            assert "mute: cannot connect to 127.0.0.1" in log and "timed out" in log
            assert "half: reading /ip/firewall/address-list failed: timed out" in log
            d.wait_log(r"pass=3 result=")  # the loop goes on
            drain(notify)  # from here on, with both stalls holding,
            fed: list[str] = []  # systemd's watchdog keeps being fed
            wait_until(lambda: fed.append(drain(notify)) or "\n".join(fed).count("WATCHDOG=1") >= 2,
                       timeout=10, what="watchdog keep-alives while two routers stall")
            assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
            code, body = get(f"http://127.0.0.1:{port}/healthz")
            assert code == 503, body
            billing.join("Tower Hosts", 1010)
            want.add(Billing.address(1010))
            wait_until(lambda: listed(sims["core-1"]) == want, what="core-1 converging during the stalls")
            for sim in sims.values():
                sim.set_stalled(False)
            for name in ("mute", "half"):
                wait_until(lambda name=name: listed(sims[name]) == want, timeout=20, what=f"{name} converging")
            wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=20,
                       what="healthz 200")
            for sim in sims.values():
                outcome["lost"] += len(want - listed(sim))
                outcome["duplicates"] += len(sim.entries("ip", "tower-hosts")) - len(listed(sim))
            assert all(listed(sim) == want for sim in sims.values())
            assert d.stop() == 0
        trials.check("duplicates")
    finally:
        if d is not None:
            d.stop()
        for sim in sims.values():
            sim.stop()
        notify.close()
