"""What a pass leaves for the operator beyond its summary line: refused lists and
exhausted pools logged at WARNING, counted and listed by /healthz (``Health.degraded``),
and conflicts named once when they appear and when they go. Called by ``daemon.passes``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from provisiond.daemon.metrics import Health, Metrics
from provisiond.daemon.summary import PassSummary

log = logging.getLogger("provisiond.daemon.passes")  # the pass's lines, under one name


def note_refusals(summary: PassSummary, health: Health, metrics: Metrics) -> None:
    """Refused lists and groups: counted, logged loud, listed by /healthz until a
    full pass finds them clear."""
    degraded = health.degraded
    if summary.full:  # a full pass says what is still held; a target it left out keeps its entry
        for part in [p for p in degraded if p.startswith("refused ")]:
            _, target, group = part.split(" ", 2)
            held = summary.held.get(target, ())
            still = target in summary.refused and (group in held or (group == "(all)" and not held))
            if (target in summary.targets or target == "ipam") and not still:
                del degraded[part]
    for target, why in summary.refused.items():
        metrics.refusals.labels(target).inc()
        held = summary.held.get(target, ())
        log.warning("target=%s result=refused held=%s reason=%r", target,
                    ",".join(held) or "all", why)
        for group in held or ("(all)",):
            degraded[f"refused {target} {group}"] = why


def note_failure(health: Health, name: str, error: str, *, unavailable: bool) -> None:
    """A target failed: /healthz lists it (since when, and why) until it recovers."""
    part = f"unreachable {name}" if unavailable else f"error {name}"
    since = health.degraded.get(part, "").partition(": ")[0] or \
        f"since {datetime.now().astimezone():%Y-%m-%d %H:%M:%S}"
    health.degraded[part] = f"{since}: {error}"
    health.degraded.pop(f"error {name}" if unavailable else f"unreachable {name}", None)


def note_pools(summary: PassSummary, health: Health, metrics: Metrics) -> None:
    """Pool usage (gauges); accounts a pool had no address for: named, counted, listed
    by /healthz."""
    for pool, usage in (summary.pool_utilisation or {}).items():
        metrics.pool_utilisation.labels(pool).set(float(usage["utilisation"]))
        metrics.pool_prefixes_total.labels(pool).set(usage["size"])
        metrics.pool_prefixes_used.labels(pool).set(usage["leased"])
        metrics.pool_prefixes_held.labels(pool).set(usage["held"])
    for pool, ids in (summary.unallocated or {}).items():
        metrics.pool_unallocated.labels(pool).set(len(ids))
        if not ids:
            health.degraded.pop(f"pool {pool}", None)
            continue
        shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        log.warning("pool=%s result=exhausted unallocated=%d accounts=%s", pool, len(ids), shown)
        health.degraded[f"pool {pool}"] = (f"exhausted: {len(ids)} account(s) have no "
                                               f"address: {shown}")


class ConflictNames:
    """The conflicts named so far, per target."""

    def __init__(self) -> None:
        self.named: dict[str, set[str]] = {}

    def name(self, summary: PassSummary) -> None:
        """Each conflict is named once, when it first shows (the pass line counts them
        while they last); one that goes away is said too."""
        for name, t in summary.targets.items():
            if not t.planned:
                continue
            now = set(t.conflict_lines)
            before = self.named.get(name, set())
            if summary.full or now - before:
                for line in sorted(now - before):
                    log.info("target=%s conflict: %s", name, line)
                if summary.full:
                    for line in sorted(before - now):
                        log.info("target=%s conflict gone: %s", name, line)
                    self.named[name] = now
                else:
                    self.named[name] = before | now

class Backoffs(Protocol):
    """``daemon.passes.Backoff``, as the bookkeeping uses it."""

    def remaining(self, name: str) -> float: ...
    def failures(self, name: str) -> int: ...
    def errored(self, name: str) -> None: ...
    def failed(self, name: str) -> float: ...
    def succeeded(self, name: str) -> bool: ...


def note_targets(summary: PassSummary, backoff: Backoffs, metrics: Metrics, health: Health,
                 asked_for: Callable[[str], bool]) -> list[str]:
    """Update back-off, error counters and last-success gauges; return the failed names."""
    m = metrics
    failed: list[str] = []
    now = time.time()
    for name in summary.names:
        if not asked_for(name):
            continue  # a pass of other targets: this one was not asked for
        t = summary.targets.get(name)
        if t is None:  # left out: still backing off
            remaining = backoff.remaining(name)
            m.backoff.labels(name).set(remaining)
            log.info("target=%s result=backoff retry_in=%.1fs", name, remaining)
            continue
        if t.error:
            m.errors.labels(name).inc()
            failed.append(name)
            note_failure(health, name, t.error, unavailable=t.unavailable)
            if t.unavailable:
                delay = backoff.failed(name)
                m.backoff.labels(name).set(delay)
                log.warning("target=%s result=unavailable retry_in=%.1fs error=%r",
                            name, delay, t.error)
            else:
                backoff.errored(name)
                m.target_errors.labels(name).inc()
                log.warning("target=%s result=error retry=next-interval error=%r", name, t.error)
            m.consecutive_failures.labels(name).set(backoff.failures(name))
            continue
        if backoff.succeeded(name):
            log.info("target=%s recovered", name)
        health.degraded.pop(f"unreachable {name}", None)
        health.degraded.pop(f"error {name}", None)
        m.backoff.labels(name).set(0)
        m.consecutive_failures.labels(name).set(0)
        if t.failed:
            m.errors.labels(name).inc()
        elif name not in summary.refused:
            m.last_success.labels(name).set(now)
            if not t.written:
                log.info("target=%s result=ok changes=0", name)
    return failed
