"""systemd's watchdog: WATCHDOG=1 while the daemon's loop looks alive.

Honest, not clever: the keep-alive is sent every ``WatchdogSec``/2 only while
``unhealthy(period)`` (the daemon's own check: main loop ticking, scheduler firing, no
pass running longer than the period) finds nothing wrong. Called by ``daemon.loop``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from provisiond.daemon.sdnotify import Notifier, watchdog_interval

log = logging.getLogger(__name__)


def start_watchdog(notifier: Notifier, unhealthy: Callable[[float], str | None]) -> threading.Event | None:
    """Start the keep-alive thread; the returned Event stops it (None: no watchdog asked)."""
    every = watchdog_interval()
    if every is None or not notifier.enabled:
        return None
    stop = threading.Event()
    period = every * 2

    def keep_alive() -> None:
        while not stop.wait(every):
            why = unhealthy(period)
            if why is None:
                notifier.watchdog()
            else:
                log.error("watchdog: not sending keep-alive: %s", why)

    threading.Thread(target=keep_alive, name="watchdog", daemon=True).start()
    log.info("systemd watchdog: keep-alive every %.1fs", every)
    return stop


def why_stuck(period: float, *, heartbeat: float, in_pass_since: float | None, last_job: float,
              scheduler_running: bool, late: float) -> str | None:
    """Why the loop looks stuck, or None: the main loop ticks, the scheduler fires its job,
    and no pass has run longer than the watchdog period (times from time.monotonic)."""
    now = time.monotonic()
    if now - heartbeat > period:
        return f"main loop silent for {now - heartbeat:.0f}s"
    if in_pass_since is not None and now - in_pass_since > period:
        return f"pass running for {now - in_pass_since:.0f}s"
    if not scheduler_running:
        return "scheduler not running"
    if in_pass_since is None and now - last_job > late:
        return f"no pass started for {now - last_job:.0f}s"
    return None
