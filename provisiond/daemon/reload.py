"""SIGHUP: the config file read again, and what a reload may not change.

``reread`` returns the new Settings or why the running ones stay (every problem is
logged with its key path); ``failed``/``succeeded`` keep /metrics and /healthz truthful
about it (``systemctl reload`` itself succeeds either way); ``check_billing`` runs the
billing checks ``check-config`` runs against the new mappings, in the background, and
logs what they find. Called by ``daemon.loop``.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path

from provisiond import settings as settings_mod
from provisiond.daemon.metrics import Health, Metrics
from provisiond.errors import ConfigError, ProvisiondError
from provisiond.settings import Settings

log = logging.getLogger("provisiond.daemon.loop")  # the reload's lines, where they always were

RESTART_ONLY = ("metrics_listen", "log_format", "webhook_listen", "webhook_token_file", "members",
                "member_id", "member_ttl")


def reread(path: Path, old: Settings) -> Settings | str:
    """The new settings, or why the running configuration stays."""
    try:
        new = settings_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload: %s", problem)
        log.error("reload failed with %d problem(s); the running configuration stays",
                  len(exc.problems))
        return f"{len(exc.problems)} problem(s): {exc.problems[0] if exc.problems else exc}"
    if new.state.url.get_secret_value() != old.state.url.get_secret_value():
        log.error("reload: state.url cannot change while running (leader lock, leases); "
                  "restart provisiond; the running configuration stays")
        return "state.url cannot change while running; restart provisiond"
    for key in RESTART_ONLY:
        if getattr(new.daemon, key) != getattr(old.daemon, key):
            log.warning("reload: daemon.%s changes only on restart", key)
    return new


def failed(metrics: Metrics, health: Health, why: str) -> None:
    metrics.reloads.labels("failed").inc()
    metrics.reload_failed.set(1)
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    health.degraded["reload"] = f"failed at {stamp}: {why}; the previous configuration runs"


def succeeded(metrics: Metrics, health: Health) -> None:
    metrics.reloads.labels("ok").inc()
    metrics.reload_failed.set(0)
    health.degraded.pop("reload", None)


def check_billing(settings: Settings) -> threading.Thread:
    """``check-config``'s billing checks on the reloaded mappings, logged (WARNING each)."""

    def run() -> None:
        from provisiond.engine.checks import billing_findings

        try:
            findings = billing_findings(settings)
        except ProvisiondError as exc:
            log.warning("reload: billing checks: cannot read billing: %s", exc)
            return
        for finding in findings:
            log.warning("reload: %s", finding)
        if not findings:
            log.info("reload: billing checks: every mapping matches accounts in billing")

    thread = threading.Thread(target=run, name="reload-checks", daemon=True)
    thread.start()
    return thread
