"""One daemon pass around the Reconciler: back-off, dry run, metrics, the status line.

Called by the daemon's scheduler job. Holds ONE Reconciler per configuration
generation (built lazily, swapped at a pass boundary after a reload) so connections
survive from pass to pass; a target whose connection broke reconnects by itself on
its next observe. Per pass: ``plan(skip=<targets in back-off>)`` then, unless dry run,
``apply(force=False, mode="daemon")``. What the loop does with each failure:

- billing read failed (``SourceError``) or the state store failed: nothing is written,
  the pass counts as ``error``, the next interval tries again;
- a target unreachable (in ``plan.errors`` or ``ApplyResult.error``): that target backs
  off exponentially (up to ``daemon.retry_max``) while the others go on;
- a plan over the safety thresholds: logged and counted, not applied; it stays
  refused on every pass until a human looks (``provisiond apply --force``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from provisiond.core import render
from provisiond.errors import ConfigError, ProvisiondError, SourceError, SuspiciousSnapshot
from provisiond.daemon.metrics import Health, Metrics
from provisiond.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_FIRST = 2.0  # seconds before the first retry of a failed target


class Backoff:
    """Per-target exponential back-off: 2 s, 4 s, 8 s, … up to ``ceiling``."""

    def __init__(self, ceiling: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = ceiling
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def skip(self, name: str) -> bool:
        return self._until.get(name, 0.0) > self._clock()

    def remaining(self, name: str) -> float:
        return max(0.0, self._until.get(name, 0.0) - self._clock())

    def failures(self, name: str) -> int:
        """Failures in a row of ``name`` (0 after a success)."""
        return self._failures.get(name, 0)

    def failed(self, name: str) -> float:
        n = self._failures.get(name, 0) + 1
        self._failures[name] = n
        delay: float = min(self.ceiling, BACKOFF_FIRST * 2.0 ** min(n - 1, 30))
        self._until[name] = self._clock() + delay
        return delay

    def succeeded(self, name: str) -> bool:
        """Forget the failures; True when the target was backing off."""
        self._until.pop(name, None)
        return self._failures.pop(name, None) is not None

    def names(self) -> list[str]:
        return sorted(self._failures)


@dataclass(slots=True)
class Outcome:
    result: str  # ok | partial | error
    status: str  # one line for systemd's STATUS= and the log
    duration: float = 0.0
    changes: int = 0
    failed: list[str] = field(default_factory=list)
    conflicts: dict[str, int] = field(default_factory=dict)  # target -> entries left alone


ReconcilerFactory = Callable[[Settings, bool], Any]


class Display(Protocol):
    """A live progress display around one apply (the CLI's ``ProgressBars``)."""

    def factory(self, target: str, total: int) -> Callable[[int], None]: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...


def _default_factory(settings: Settings, readonly: bool) -> Any:
    from provisiond.engine import Reconciler

    return Reconciler(settings, readonly=readonly)


class PassRunner:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics,
        health: Health,
        factory: ReconcilerFactory = _default_factory,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self._factory = factory
        self._rec: Any = None
        self._pending: Settings | None = None
        self.backoff = Backoff(settings.daemon.retry_max)
        self.count = 0
        self.first_progress: Display | None = None  # shown around the next apply only
        self._scope: frozenset[str] | None = None  # the pass in flight's accounts
        # A plan was refused by safety: passes stay full until a full one goes through,
        # so that the refused changes keep counting (a scoped pass would not see them).
        self._refused = False

    # -- configuration generations ------------------------------------------------

    def swap_at_next_pass(self, settings: Settings) -> None:
        self._pending = settings

    def _reconciler(self) -> Any:
        if self._pending is not None:
            new, self._pending = self._pending, None
            old = self._rec
            self._rec = None
            self.settings = new
            self.backoff = Backoff(new.daemon.retry_max)
            if old is not None:
                old.close()
            log.info("configuration swapped in: routers=%d lists=%d radius=%s pools=%d",
                     len(new.router), len(new.address_list), new.radius is not None, len(new.pool))
        if self._rec is None:
            self._rec = self._factory(self.settings, self.settings.daemon.dry_run)
        return self._rec

    def close(self) -> None:
        if self._rec is not None:
            self._rec.close()
            self._rec = None

    # -- one pass -------------------------------------------------------------------

    def run_once(
        self,
        *,
        may_write: Callable[[], bool] | None = None,
        accounts: frozenset[str] | None = None,
    ) -> Outcome:
        """One pass, scoped to ``accounts`` (None: full). ``may_write`` (the leader check)
        is asked again between plan and apply."""
        self.count += 1
        started = time.monotonic()
        if accounts is not None and self._refused:
            log.info("pass=%d: full instead of scoped (%d account(s)): a plan is refused by "
                     "safety until apply --force or billing is fixed", self.count, len(accounts))
            accounts = None
        self._scope = accounts
        try:
            rec = self._reconciler()
            if self.settings.daemon.dry_run:
                outcome = self._dry_run(rec)
            else:
                outcome = self._apply(rec, may_write)
        except SourceError as exc:
            outcome = Outcome("error", f"billing read failed, nothing written: {exc}")
            self.metrics.errors.labels("source").inc()
            self.metrics.billing_reads.labels(
                "suspicious" if isinstance(exc, SuspiciousSnapshot) else "error").inc()
            log.error("pass result=error source: %s; nothing written, retrying next interval", exc)
        except ConfigError as exc:
            # e.g. a password_file that vanished: fatal for this pass, not for the daemon.
            outcome = Outcome("error", f"configuration: {exc}")
            log.error("pass result=error configuration: %s", exc)
        except ProvisiondError as exc:  # the state store, or a target failing outside plan/apply
            outcome = Outcome("error", str(exc))
            log.error("pass result=error %s; nothing more written this pass", exc)
            if self._rec is not None:  # rebuild everything next pass
                self._rec.close()
                self._rec = None
        outcome.duration = time.monotonic() - started
        self.metrics.passes.labels(outcome.result).inc()
        self.metrics.pass_duration.observe(outcome.duration)
        stamp = datetime.now().astimezone().strftime("%H:%M:%S")
        outcome.status = f"pass {self.count} {outcome.result} at {stamp} in {outcome.duration:.1f}s: " \
                         + outcome.status
        self.health.last_result = outcome.status
        if outcome.result == "ok" and accounts is None:
            # Only a full pass vouches for every target (healthz).
            self.health.last_success = time.monotonic()
        if outcome.result != "error":  # an error pass saw no target: keep what is known
            self.health.conflicts = {t: n for t, n in outcome.conflicts.items() if n}
        conflicts = sum(outcome.conflicts.values())
        # Lasting conflicts are on every pass line while they last (absent: none).
        log.info("pass=%d result=%s duration=%.2fs changes=%d%s%s%s", self.count,
                 outcome.result, outcome.duration, outcome.changes,
                 "" if accounts is None else f" scope={len(accounts)}",
                 f" conflicts={conflicts} conflicts_on={','.join(sorted(self.health.conflicts))}"
                 if conflicts else "",
                 f" failed={','.join(outcome.failed)}" if outcome.failed else "")
        return outcome

    def _conflicts(self, pp: Any, results: list[Any]) -> dict[str, int]:
        """Entries provisiond will not touch, per target, this pass; sets the gauge."""
        extra = {r.target: len(r.conflicts) for r in results}
        out = {p.target: len(p.conflicts) + extra.get(p.target, 0) for p in pp.plans}
        for target, n in out.items():
            self.metrics.conflicts.labels(target).set(n)
        return out

    def _skip(self, name: str) -> bool:
        return self.backoff.skip(name)

    def _plan(self, rec: Any) -> Any:
        if self._scope is None:
            return rec.plan(skip=self._skip)
        return rec.plan(skip=self._skip, accounts=self._scope)

    def _dry_run(self, rec: Any) -> Outcome:
        pp = self._plan(rec)
        self.metrics.billing_reads.labels("ok").inc()
        for plan in pp.plans:
            c = plan.counts()
            log.info("dry-run target=%s create=%d update=%d delete=%d conflicts=%d",
                     plan.target, c["create"], c["update"], c["delete"], len(plan.conflicts))
            # The diff itself at INFO: watching it is the point of dry-run mode.
            for change in plan.changes:
                log.info("dry-run target=%s %s", plan.target, render.change_line(change))
            for conflict in plan.conflicts:
                log.info("dry-run target=%s conflict: %s: %s", plan.target,
                         render.resource_line(conflict.resource), conflict.reason)
        failed = self._target_failures(pp, results=[])
        line = render.summary_line(pp.plans, errors=pp.errors, ipam_changes=pp.ipam_changes)
        if pp.allocation is not None:
            for text in pp.allocation.lines():
                log.info("dry-run ipam %s", text)
        for note in pp.notes:
            log.info("dry-run note: %s", note)
        log.info("dry-run %s (nothing written)", line)
        ok = not pp.errors
        changes = sum(len(p.changes) for p in pp.plans)
        return Outcome("ok" if ok else "partial", f"dry run: {line}", changes=changes, failed=failed,
                       conflicts=self._conflicts(pp, []))

    def _apply(self, rec: Any, may_write: Callable[[], bool] | None = None) -> Outcome:
        pp = self._plan(rec)
        self.metrics.billing_reads.labels("ok").inc()
        if may_write is not None and not may_write():
            # Planning can take a while; another provisiond may lead by now.
            log.error("pass result=error: lost the leader lock while planning; nothing written")
            return Outcome("error", "lost the leader lock while planning, nothing written")
        display, self.first_progress = self.first_progress, None
        if display is not None:
            with display:
                pr = rec.apply(pp, force=False, mode="daemon", may_write=may_write,
                               progress=display.factory)
        else:
            pr = rec.apply(pp, force=False, mode="daemon", may_write=may_write)
        m = self.metrics
        applied = 0
        for r in pr.results:
            for c in r.applied:
                m.changes.labels(r.target, c.action).inc()
                log.debug("target=%s applied %s", r.target, render.change_line(c))
            applied += len(r.applied)
            for f in r.followups:
                m.coa.labels(str(f.get("result", "unknown"))).inc()
        if pr.refused:
            self._refused = True
        elif self._scope is None:
            self._refused = False
        for target, why in pr.refused.items():
            m.refusals.labels(target).inc()
            log.info("target=%s result=refused reason=%r", target, why)
        failed = self._target_failures(pp, results=pr.results, refused=pr.refused)
        if self._scope is None:  # a full read of the leases: not for every event
            self._pool_utilisation(rec)
        t = render.totals(pp.plans)
        line = (f"{applied} change(s) applied ({t['create']} create, {t['update']} update, "
                f"{t['delete']} delete planned) on {len(pp.plans)} target(s)")
        if pr.refused:
            line += f"; refused by safety: {', '.join(sorted(pr.refused))}"
        if failed:
            line += f"; failing: {', '.join(failed)}"
        waiting = [n for n in self.backoff.names() if n not in failed]
        if waiting:
            line += f"; backing off: {', '.join(waiting)}"
        conflicts = self._conflicts(pp, pr.results)
        if sum(conflicts.values()):
            line += "; conflicts: " + ", ".join(f"{t} {n}" for t, n in sorted(conflicts.items()) if n)
        return Outcome("ok" if pr.ok and not waiting else "partial", line, changes=applied,
                       failed=failed, conflicts=conflicts)

    def _target_failures(self, pp: Any, *, results: list[Any],
                         refused: dict[str, str] | None = None) -> list[str]:
        """Update back-off, error counters and last-success gauges; return the failed names."""
        m = self.metrics
        refused = refused or {}
        by_name = {r.target: r for r in results}
        failed: list[str] = []
        now = time.time()
        for name in self._target_names():
            if name not in pp.kinds:  # left out: still backing off
                remaining = self.backoff.remaining(name)
                m.backoff.labels(name).set(remaining)
                log.info("target=%s result=backoff retry_in=%.1fs", name, remaining)
                continue
            r = by_name.get(name)
            error = pp.errors.get(name) or (r.error if r is not None else None)
            if error:
                delay = self.backoff.failed(name)
                m.errors.labels(name).inc()
                m.backoff.labels(name).set(delay)
                m.consecutive_failures.labels(name).set(self.backoff.failures(name))
                failed.append(name)
                log.warning("target=%s result=unavailable retry_in=%.1fs error=%r", name, delay, error)
                continue
            if self.backoff.succeeded(name):
                log.info("target=%s recovered", name)
            m.backoff.labels(name).set(0)
            m.consecutive_failures.labels(name).set(0)
            if r is not None and r.failed:
                m.errors.labels(name).inc()
            elif name not in refused:
                m.last_success.labels(name).set(now)
                if r is None:
                    log.info("target=%s result=ok changes=0", name)
        return failed

    def _target_names(self) -> list[str]:
        rec = self._rec
        return [t.name for t in rec.targets] if rec is not None else []

    def _pool_utilisation(self, rec: Any) -> None:
        if not self.settings.pool or rec.store is None:
            return
        from provisiond.core import ipam

        try:
            leases = rec.store.leases()
        except ProvisiondError as exc:
            log.warning("pool utilisation: cannot read leases: %s", exc)
            return
        now = datetime.now(UTC)
        for p in self.settings.pool:
            usage = ipam.pool_usage(ipam.Pool.from_settings(p), leases, now)
            self.metrics.pool_utilisation.labels(p.name).set(usage["utilisation"])
