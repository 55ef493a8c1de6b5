"""Day-2 operations on the real daemon (``provisiond run`` as a subprocess, PostgreSQL
billing, the RouterOS simulator):

- a mapping that matches nobody holds back only its own list: the other lists on the
  same router are written in the same pass, the refusal is a WARNING naming the list,
  and /healthz lists it (``?strict=1`` answers 503);
- a full pool names the accounts it could not serve, counts them, and /healthz says so;
- a router that comes back is passed again when its back-off ends, not at the interval;
- ``provisiond status`` and ``provisiond pass`` see and steer the daemon; pass numbers
  go on across a restart; a failed reload shows in /metrics and /healthz.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from harness import Billing, DaemonProc, free_port, wait_until

from provisiond.sim import RouterSim


def listed(router: RouterSim, list_name: str) -> set[str]:
    return {row["address"] for row in router.entries("ip", list_name)}


def healthz(port: int, query: str = "") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz{query}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(port: int, line_start: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_a_typo_holds_back_only_its_own_list(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc], tmp_path: Path,
) -> None:
    billing.join("Tower Hosts", 1000, 1001)
    billing.join("Legacy Customers", 1002)
    port = free_port()
    good = {"Tower Hosts": "tower-hosts", "Legacy Customers": "legacy"}
    d = start(config(lists=good, daemon={"metrics_listen": f"127.0.0.1:{port}"}))
    d.wait_log(r"pass=1 result=ok")
    assert listed(router, "tower-hosts") == {Billing.address(1000), Billing.address(1001)}
    # The operator typos the group; a reload brings it in. Meanwhile a customer moves
    # to Legacy: that change must not wait for the typo to be fixed.
    config(lists={"Tower Host": "tower-hosts", "Legacy Customers": "legacy"})
    billing.join("Legacy Customers", 1003)
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"pass=\d+ result=\S+", after=mark)
    assert listed(router, "legacy") == {Billing.address(1002), Billing.address(1003)}
    # A pass of a few changes names each at INFO: target, list, address, account.
    assert re.search(r'INFO provisiond.daemon.summary: target=core-1 applied \+ legacy '
                     r'100\.64\.0\.3  acct 1003 "Account 3"', d.text()[mark:])
    assert re.search(r"WARNING provisiond.daemon.passes: target=core-1 result=refused "
                     r"held=tower-hosts reason=.*Tower Host", d.text()[mark:])
    # The reload ran check-config's billing checks on the new mappings, and said so.
    d.wait_log(r'WARNING provisiond.daemon.loop: reload: address_list\[0\].group "Tower Host" '
               r'matches no account in billing; .*closest first: "Tower Hosts"', after=mark)
    assert listed(router, "tower-hosts") == {Billing.address(1000), Billing.address(1001)}
    code, body = healthz(port)
    assert code == 200 and "degraded: refused core-1 tower-hosts:" in body
    code, body = healthz(port, "?strict=1")
    assert code == 503 and "refused core-1 tower-hosts" in body
    # Fixed: the next full pass clears it.
    config(lists=good)
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"pass=\d+ result=ok", after=mark)
    assert healthz(port, "?strict=1")[0] == 200


def test_a_full_pool_names_its_accounts_and_counts_them(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    # A /30 has 2 usable addresses (or 4 with use_network_and_broadcast): 5 accounts
    # can not all be served.
    with billing.connect() as c:
        c.execute("DELETE FROM ip_assignments WHERE account_id BETWEEN 1000 AND 1004")
    billing.join("Tower Hosts", 1000, 1001, 1002, 1003, 1004)
    port = free_port()
    pool = '[[pool]]\nname = "towers"\ngroup = "Tower Hosts"\nnetworks = ["100.64.200.0/30"]\n'
    d = start(config(daemon={"metrics_listen": f"127.0.0.1:{port}"}, extra=pool))
    d.wait_log(r"pass=1 result=\S+")
    line = d.wait_log(r"WARNING provisiond.daemon.passes: pool=towers result=exhausted "
                      r"unallocated=(\d+) accounts=([0-9, ]+)")
    n = int(line.group(1))
    served = len(listed(router, "tower-hosts"))
    assert n >= 1 and served + n == 5
    assert set(line.group(2).split(", ")) <= {"1000", "1001", "1002", "1003", "1004"}
    assert metric(port, 'provisiond_pool_unallocated_accounts{pool="towers"}') == n
    code, body = healthz(port)
    assert code == 200 and f"degraded: pool towers: exhausted: {n} account(s)" in body


def test_a_router_that_comes_back_is_passed_when_its_back_off_ends(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000)
    # The interval is long: only the back-off's retry can bring the router back in time.
    d = start(config(daemon={"interval": "300s", "retry_max": "2s"}))
    d.wait_log(r"pass=1 result=ok")
    router.set_down(True)
    mark = d.mark()
    d.signal(signal.SIGHUP)  # a pass now, while the router is down
    failed = d.wait_log(r"target=core-1 result=unavailable retry_in=([0-9.]+)s", after=mark)
    assert float(failed.group(1)) <= 2.0
    router.set_down(False)
    for entry in router.entries("ip", "tower-hosts"):
        router.remove_entry("ip", entry[".id"])
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=1 targets=core-1", after=mark,
               timeout=15)
    assert listed(router, "tower-hosts") == {Billing.address(1000)}


def cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisiond.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_status_and_pass_see_and_steer_the_running_daemon(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000)
    port = free_port()
    # No NOTIFY, a long interval: only `provisiond pass` can bring a change in now.
    path = config(state_url=billing.url, daemon={"metrics_listen": f"127.0.0.1:{port}"})
    d = start(path)
    d.wait_log(r"pass=1 result=ok")
    billing.join("Tower Hosts", 1001)
    done = cli(path, "pass")
    assert done.returncode == 0, done.stderr
    assert re.match(r"pass 2: ok: ", done.stdout)
    assert listed(router, "tower-hosts") == {Billing.address(1000), Billing.address(1001)}
    billing.join("Tower Hosts", 1002)
    done = cli(path, "pass", "--account", "1002")
    assert done.returncode == 0 and done.stdout.startswith("pass 3: ok"), done
    assert Billing.address(1002) in listed(router, "tower-hosts")
    d.wait_log(r"pass=3 result=ok duration=\S+ changes=1 scope=1")
    bad = cli(path, "pass", "--target", "nope")
    assert bad.returncode == 1 and "--target 'nope' matches no target (targets: core-1)" in bad.stderr
    shown = cli(path, "status")
    assert shown.returncode == 0, shown.stderr
    assert f"leader: pid={d.pid} since=" in shown.stdout
    assert "target core-1: ok" in shown.stdout
    assert re.search(r"pass 3 +\S+ \S+ +scoped +ok +changes=1", shown.stdout), shown.stdout
    assert re.search(r"pass 2 +\S+ \S+ +full +ok +changes=1", shown.stdout), shown.stdout
    # A restart: pass numbers go on, they do not start at 1 again.
    d.stop()
    d2 = start(path)
    d2.wait_log(r"pass=4 result=ok")
    assert "pass=1 " not in d2.text()


def test_pass_with_no_daemon_says_so(billing: Billing, config: Callable[..., Path]) -> None:
    path = config()
    done = cli(path, "pass", "--timeout", "1.5")
    assert done.returncode == 1
    assert "no leading daemon took the request within 2s" in done.stderr


def test_a_failed_reload_is_seen_in_metrics_and_healthz(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    port = free_port()
    path = config(daemon={"metrics_listen": f"127.0.0.1:{port}"})
    d = start(path)
    d.wait_log(r"pass=1 result=ok")
    assert metric(port, "provisiond_config_reload_failed") == 0
    good = path.read_text()
    path.write_text(good.replace("[daemon]", "[daemon]\nintervall = 5\n"))
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"reload failed with 1 problem", after=mark)
    assert metric(port, "provisiond_config_reload_failed") == 1
    assert metric(port, 'provisiond_config_reloads_total{result="failed"}') == 1
    code, body = healthz(port, "?strict=1")
    assert code == 503 and "degraded: reload: failed at" in body and "intervall" in body
    path.write_text(good)
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"reload: configuration valid", after=mark)
    assert metric(port, "provisiond_config_reload_failed") == 0
    assert healthz(port, "?strict=1")[0] == 200
