"""systemd's watchdog: WATCHDOG=1 while the daemon's loop looks alive.

Honest, not clever: the keep-alive is sent every ``WatchdogSec``/2 only while
``unhealthy(period)`` (the daemon's own check: main loop ticking, scheduler firing, no
pass running longer than the period) finds nothing wrong. Called by ``daemon.loop``.
"""

from __future__ import annotations

import logging
import threading
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
