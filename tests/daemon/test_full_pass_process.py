"""The daemon runs each full pass in a process of its own (``daemon.worker``) and keeps
only its digest, so what a pass at ISP size allocates leaves with that process. Tested
on the real thing (``provisiond run`` as a subprocess) for what an operator relies on:

- the full pass's own log lines reach the daemon's log, in its format;
- a full-pass process that dies (the OOM killer) fails that pass only: the daemon
  logs it, stays up, and its next pass converges; a second pass plans nothing;
- scoped passes after an isolated full pass still work (NOTIFY -> router).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from harness import Billing, DaemonProc, wait_until

from provisiond.sim import RouterSim


def listed(router: RouterSim, list_name: str = "tower-hosts") -> set[str]:
    return {row["address"] for row in router.entries("ip", list_name)}


def addresses(*accounts: int) -> set[str]:
    return {Billing.address(a) for a in accounts}


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (any of its threads may have started them)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def full_pass(billing: Billing) -> None:
    """A NOTIFY with an empty payload: the daemon runs a full pass."""
    with billing.connect() as c:
        c.execute("SELECT pg_notify('provisiond', '')")


def test_a_killed_full_pass_process_fails_that_pass_only(
    billing: Billing, router: RouterSim, config: Callable[..., Path], start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000, 1001, 1002)
    router.set_stalled(True)  # the first full pass hangs at the router
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond"}))
    worker = wait_until(lambda: children(d.pid), timeout=30, what="the full-pass process")
    assert len(worker) == 1
    os.kill(worker[0], signal.SIGKILL)
    d.wait_log(r"pass=1 result=error", timeout=30)
    d.wait_log(r"full-pass process \(pid \d+\) ended with exit code -9")
    assert listed(router) == set()
    router.set_stalled(False)
    full_pass(billing)
    d.wait_log(r"pass=2 result=ok duration=\S+ changes=3\n", timeout=30)
    assert listed(router) == addresses(1000, 1001, 1002)
    # The full pass's own lines (written in its process) are in the daemon's log.
    assert "INFO provisiond.engine: target=core-1 result=ok created=3 " in d.text()
    full_pass(billing)  # idempotent: the next full pass plans nothing
    d.wait_log(r"pass=3 result=ok duration=\S+ changes=0\n", timeout=30)
    # A NOTIFY after isolated full passes: a scoped pass in the daemon itself.
    billing.join("Tower Hosts", 1003)
    d.wait_log(r"pass=4 result=ok duration=\S+ changes=1 scope=1", timeout=30)
    assert listed(router) == addresses(1000, 1001, 1002, 1003)
    assert d.proc.poll() is None


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in state


def test_the_full_pass_process_stops_when_the_daemon_dies(
    billing: Billing, router: RouterSim, config: Callable[..., Path], start: Callable[..., DaemonProc],
) -> None:
    """The watchdog's SIGABRT or a kill -9 ends the daemon: its full pass must not go on
    writing while a standby may already lead."""
    billing.join("Tower Hosts", 1000, 1001)
    router.set_stalled(True)
    path = config(daemon={"interval": "300s"})
    # The stalled router does not make the pass give up by itself (a slow router).
    path.write_text(path.read_text().replace('timeout = "5s"', 'timeout = "120s"')
                    .replace('connect_timeout = "2s"', 'connect_timeout = "120s"'))
    d = start(path)
    worker = wait_until(lambda: children(d.pid), timeout=30, what="the full-pass process")[0]
    d.proc.kill()
    d.wait(10)
    wait_until(lambda: gone(worker), timeout=10, what="the orphaned full-pass process to exit")
    router.set_stalled(False)
    assert listed(router) == set()


def test_after_a_full_pass_failed_part_way_scoped_passes_count_lists_live(
    billing: Billing, router: RouterSim, config: Callable[..., Path], start: Callable[..., DaemonProc],
) -> None:
    """A full pass whose remove ran on the router but whose reply never came back: the
    counts it would hand to scoped passes are wrong (five, where one is left). The
    group's last member leaving must still widen to a full pass (which refuses to empty
    the list: the group matches nobody), never be deleted by a scoped pass."""
    members = (1000, 1001, 1002, 1003, 1004)
    billing.join("Tower Hosts", *members)
    # retry_max: the router's back-off after the failed pass is over at once.
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond", "retry_max": "0.1s"},
                     extra="[safety]\nmin_existing = 1000\n"))
    d.wait_log(r"pass=1 result=ok")
    with billing.connect() as c:  # four leave without a NOTIFY: for the next full pass
        c.execute("ALTER TABLE account_groups DISABLE TRIGGER USER")
        c.execute("DELETE FROM account_groups WHERE account_id = ANY(%s)", (list(members[:4]),))
        c.execute("ALTER TABLE account_groups ENABLE TRIGGER USER")
    # The remove runs; its reply is held until the pass gives up on the router.
    router.on_sentence(lambda n, words: router.stall_after(0) if words[0].endswith("/remove") else None)
    mark = d.mark()
    full_pass(billing)
    d.wait_log(r"pass=2 result=partial", after=mark, timeout=30)
    router.on_sentence(None)
    router.set_stalled(False)
    assert listed(router) == addresses(1004)
    mark = d.mark()
    billing.leave("Tower Hosts", 1004)
    # Refused by a full read of core-1: the scoped pass widened, or the router's retry
    # (its back-off ended) read it whole first.
    d.wait_log(r"scoped pass widened to a full pass: it would empty core-1 tower-hosts|"
               r"targets=core-1", after=mark)
    d.wait_log(r"target=core-1 result=refused held=tower-hosts", after=mark, timeout=30)
    assert listed(router) == addresses(1004)
