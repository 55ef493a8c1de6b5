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


def test_a_killed_full_pass_process_fails_that_pass_only(
    billing: Billing, router: RouterSim, config: Callable[..., Path], start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000, 1001, 1002)
    router.set_stalled(True)  # the first full pass hangs at the router
    d = start(config(daemon={"interval": "3s", "jitter": "0s", "notify_channel": "provisiond"}))
    worker = wait_until(lambda: children(d.pid), timeout=30, what="the full-pass process")
    assert len(worker) == 1
    os.kill(worker[0], signal.SIGKILL)
    d.wait_log(r"pass=1 result=error", timeout=30)
    d.wait_log(r"full-pass process \(pid \d+\) ended with exit code -9")
    assert listed(router) == set()
    router.set_stalled(False)
    mark = d.mark()
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=3\b", after=mark, timeout=30)
    assert listed(router) == addresses(1000, 1001, 1002)
    # The full pass's own lines (written in its process) are in the daemon's log.
    assert "INFO provisiond.engine: target=core-1 " in d.text()[mark:]
    # Idempotent: the next full pass plans nothing.
    mark = d.mark()
    d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=0\b", after=mark, timeout=30)
    # A NOTIFY after isolated full passes: a scoped pass in the daemon itself.
    mark = d.mark()
    billing.join("Tower Hosts", 1003)
    d.wait_log(r"result=ok duration=\S+ changes=1 scope=1", after=mark, timeout=30)
    assert listed(router) == addresses(1000, 1001, 1002, 1003)
    assert d.proc.poll() is None
