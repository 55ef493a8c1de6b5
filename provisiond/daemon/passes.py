"""One daemon pass around the Reconciler: back-off, dry run, metrics, the status line.

Called by the daemon's scheduler job. Holds ONE Reconciler per configuration
generation (built lazily, swapped at a pass boundary after a reload) so connections
survive from pass to pass; a target whose connection broke reconnects by itself on
its next observe. Per pass: ``plan(skip=<targets in back-off>)`` then, unless dry run,
``apply(force=False, mode="daemon")``, reduced to a ``Digest`` (``make_digest``) that
the bookkeeping (metrics, back-off, the status line) works from. With ``isolate``
(the daemon's choice) every full pass runs in a process of its own
(``daemon.worker``) and only its Digest comes back, so the daemon stays small between
passes; scoped passes run here, on the kept connections. What the loop does with each
failure:

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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from provisiond.core import render
from provisiond.errors import ConfigError, ProvisiondError, SourceError, SuspiciousSnapshot
from provisiond.daemon.metrics import Health, Metrics
from provisiond.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_FIRST = 2.0  # seconds before the first retry of a failed target
RETRY_MIN = 0.2  # seconds: a scoped pass owed to a target in back-off is retried no sooner


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
    # A scoped pass that left targets out (back-off) or failed on them: its accounts are
    # owed to those targets; the daemon asks for a pass for them after ``retry[1]`` s.
    retry: tuple[frozenset[str], float] | None = None


@dataclass(slots=True)
class TargetDigest:
    """One target of a pass, as the bookkeeping needs it."""

    error: str | None = None  # it could not be planned, or its apply failed as a whole
    planned: bool = False  # it has a plan (its conflicts count)
    conflicts: int = 0  # entries left alone: the plan's and the apply's
    applied: dict[str, int] = field(default_factory=dict)  # action -> changes applied
    coa: dict[str, int] = field(default_factory=dict)  # CoA / Disconnect result -> count
    written: bool = False  # its apply ran (an ApplyResult exists)
    failed: bool = False  # some of its changes failed


@dataclass(slots=True)
class Digest:
    """One pass reduced to what the daemon keeps: a few numbers per target, picklable.

    ``make_digest`` makes it from a PassPlan (and PassResult); a full pass run in the
    full-pass process comes back as one, with what its Reconciler learnt for scoped
    passes (``remembered``)."""

    names: list[str]  # every target of the configuration, in order
    targets: dict[str, TargetDigest]  # the targets this pass planned or tried to
    line: str  # the summary, before the back-off notes
    changes: int  # applied (planned, in a dry run)
    ok: bool
    refused: dict[str, str] = field(default_factory=dict)  # safety refusals, by target
    lost_leader: bool = False  # the leader lock went while planning: nothing written
    pool_utilisation: dict[str, dict[str, Any]] | None = None  # ipam.pool_usage per pool (full passes)
    remembered: Any = None  # engine.Remembered, from the full-pass process


def make_digest(
    rec: Any,
    pp: Any,
    settings: Settings,
    *,
    dry_run: bool,
    may_write: Callable[[], bool] | None = None,
    progress: Any = None,
) -> Digest:
    """Apply ``pp`` (unless ``dry_run``: log its diff) and reduce the pass to a Digest.

    Logs what only this process can see: a dry run's diff, each applied change at DEBUG.
    ``progress`` is the engine's ProgressFactory for the apply."""
    names = [t.name for t in rec.targets]
    targets = {name: TargetDigest(error=pp.errors.get(name)) for name in pp.kinds}
    for plan in pp.plans:
        t = targets.setdefault(plan.target, TargetDigest())
        t.planned, t.conflicts = True, len(plan.conflicts)
    full = pp.accounts is None
    if dry_run:
        return _dry_run_digest(rec, pp, names, targets, full)
    if may_write is not None and not may_write():
        # Planning can take a while; another provisiond may lead by now.
        return Digest(names, targets, "lost the leader lock while planning, nothing written",
                      0, False, lost_leader=True)
    pr = rec.apply(pp, force=False, mode="daemon", may_write=may_write, progress=progress)
    applied = 0
    for r in pr.results:
        t = targets.setdefault(r.target, TargetDigest())
        t.written, t.failed = True, bool(r.failed)
        t.error = t.error or r.error
        t.conflicts += len(r.conflicts)
        for action, n in r.counts().items():
            if n:
                t.applied[action] = t.applied.get(action, 0) + n
        if log.isEnabledFor(logging.DEBUG):  # a cold pass applies 400,000: no lines made unasked
            for c in r.applied:
                log.debug("target=%s applied %s", r.target, render.change_line(c))
        applied += len(r.applied)
        for f in r.followups:
            result = str(f.get("result", "unknown"))
            t.coa[result] = t.coa.get(result, 0) + 1
    total = render.totals(pp.plans)
    line = (f"{applied} change(s) applied ({total['create']} create, {total['update']} update, "
            f"{total['delete']} delete planned) on {len(pp.plans)} target(s)")
    if pr.refused:
        line += f"; refused by safety: {', '.join(sorted(pr.refused))}"
    return Digest(names, targets, line, applied, pr.ok, refused=dict(pr.refused),
                  pool_utilisation=_pool_utilisation(rec, settings) if full else None)


def _dry_run_digest(
    rec: Any, pp: Any, names: list[str], targets: dict[str, TargetDigest], full: bool
) -> Digest:
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
    line = render.summary_line(pp.plans, errors=pp.errors, ipam_changes=pp.ipam_changes)
    if pp.allocation is not None:
        for text in pp.allocation.lines():
            log.info("dry-run ipam %s", text)
    for note in pp.notes:
        log.info("dry-run note: %s", note)
    log.info("dry-run %s (nothing written)", line)
    changes = sum(len(p.changes) for p in pp.plans)
    return Digest(names, targets, f"dry run: {line}", changes, not pp.errors,
                  pool_utilisation=None)


def _pool_utilisation(rec: Any, settings: Settings) -> dict[str, dict[str, Any]] | None:
    """Each pool's allocations in use (``ipam.pool_usage``; a full read of the leases:
    full passes only)."""
    if not settings.pool or rec.store is None:
        return None
    from provisiond.core import ipam

    try:
        leases = rec.store.leases()
    except ProvisiondError as exc:
        log.warning("pool utilisation: cannot read leases: %s", exc)
        return None
    now = datetime.now(UTC)
    return {p.name: ipam.pool_usage(ipam.Pool.from_settings(p), leases, now) for p in settings.pool}


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
        isolate: bool = False,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self._factory = factory
        # Full passes in a process of their own (``daemon.worker``): the daemon's choice.
        self.isolate = isolate
        self._rec: Any = None
        self._pending: Settings | None = None
        self._learnt: Any = None  # what the last isolated full pass learnt, for scoped ones
        self._in_child = False  # the pass in flight is a full one in its own process
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

    def _swap(self) -> None:
        if self._pending is None:
            return
        new, self._pending = self._pending, None
        old = self._rec
        self._rec = None
        self._learnt = None
        self.settings = new
        self.backoff = Backoff(new.daemon.retry_max)
        if old is not None:
            old.close()
        log.info("configuration swapped in: routers=%d lists=%d radius=%s pools=%d",
                 len(new.router), len(new.address_list), new.radius is not None, len(new.pool))

    def _reconciler(self) -> Any:
        self._swap()
        if self._rec is None:
            self._rec = self._factory(self.settings, self.settings.daemon.dry_run)
            if self._learnt is not None:
                self._rec.absorb(self._learnt)
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
            digest = self._digest(may_write)
            outcome = self._book(digest)
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
            if self._rec is not None and not self._in_child:  # rebuild everything next pass
                self._rec.close()
                self._rec = None
            # It may have written part of its changes: no remembered count is trusted
            # until the next full pass (scoped passes count each list on the target).
            self._forget_counts()
        accounts = self._scope  # a scoped pass may have widened
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

    def _skip(self, name: str) -> bool:
        return self.backoff.skip(name)

    def _digest(self, may_write: Callable[[], bool] | None) -> Digest:
        """Plan and apply this pass: here, or (a full pass, isolated) in its own process."""
        self._in_child = False
        self._swap()  # a reload takes effect before anything of this pass is decided
        dry_run = self.settings.daemon.dry_run
        if not self.isolate:
            rec = self._reconciler()
            if self._scope is None:
                pp = rec.plan(skip=self._skip, checksums=False)
            else:
                pp = rec.plan(skip=self._skip, accounts=self._scope, checksums=False)
            return self._here(rec, pp, dry_run, may_write)
        if self._scope is not None:
            rec = self._reconciler()
            pp = rec.plan_scoped(self._scope, skip=self._skip)
            if pp is not None:
                return self._here(rec, pp, dry_run, may_write)
            self._scope = None  # widened: only a full pass may decide
        from provisiond.daemon import worker

        skip = frozenset(n for n in self.backoff.names() if self._skip(n))
        display, self.first_progress = self.first_progress, None
        self._in_child = True
        digest = worker.full_pass(self.settings, skip=skip, may_write=may_write, display=display)
        self._learnt = digest.remembered
        digest.remembered = None
        if self._rec is not None and self._learnt is not None:
            self._rec.absorb(self._learnt)
        return digest

    def _forget_counts(self) -> None:
        """Managed counts from the last full pass are stale after a failed pass: keep
        the rest of what it learnt, and let targets count live until the next one."""
        if self._learnt is None:
            return
        self._learnt = replace(self._learnt, existing={})
        if self._rec is not None:
            self._rec.absorb(self._learnt)

    def _here(self, rec: Any, pp: Any, dry_run: bool, may_write: Callable[[], bool] | None) -> Digest:
        display, self.first_progress = self.first_progress, None
        if display is None or dry_run:
            return make_digest(rec, pp, self.settings, dry_run=dry_run, may_write=may_write)
        with display:
            return make_digest(rec, pp, self.settings, dry_run=dry_run, may_write=may_write,
                               progress=display.factory)

    # -- bookkeeping ----------------------------------------------------------------

    def _book(self, digest: Digest) -> Outcome:
        """Metrics, back-off and the status line of one pass, from its Digest."""
        m = self.metrics
        m.billing_reads.labels("ok").inc()
        if digest.lost_leader:
            log.error("pass result=error: lost the leader lock while planning; nothing written")
            return Outcome("error", digest.line)
        for name, t in digest.targets.items():
            for action, n in t.applied.items():
                m.changes.labels(name, action).inc(n)
            for result, n in t.coa.items():
                m.coa.labels(result).inc(n)
        dry_run = self.settings.daemon.dry_run
        if not dry_run:
            if digest.refused:
                self._refused = True
            elif self._scope is None:
                self._refused = False
            for target, why in digest.refused.items():
                m.refusals.labels(target).inc()
                log.info("target=%s result=refused reason=%r", target, why)
        failed = self._target_failures(digest)
        owed = failed + [n for n in digest.names if n not in digest.targets]
        retry = None
        if self._scope is not None and owed:
            # Only a full pass would reach them otherwise: the event must not be lost.
            delay = min(self.backoff.remaining(n) for n in owed)
            retry = (self._scope, max(RETRY_MIN, delay))
        for pool, usage in (digest.pool_utilisation or {}).items():
            m.pool_utilisation.labels(pool).set(float(usage["utilisation"]))
            m.pool_prefixes_total.labels(pool).set(usage["size"])
            m.pool_prefixes_used.labels(pool).set(usage["leased"])
            m.pool_prefixes_held.labels(pool).set(usage["held"])
        conflicts = {name: t.conflicts for name, t in digest.targets.items() if t.planned}
        for target, n in conflicts.items():
            m.conflicts.labels(target).set(n)
        line = digest.line
        if dry_run:
            return Outcome("ok" if digest.ok else "partial", line, changes=digest.changes,
                           failed=failed, conflicts=conflicts, retry=retry)
        if failed:
            line += f"; failing: {', '.join(failed)}"
        waiting = [n for n in self.backoff.names() if n not in failed]
        if waiting:
            line += f"; backing off: {', '.join(waiting)}"
        if sum(conflicts.values()):
            line += "; conflicts: " + ", ".join(f"{t} {n}" for t, n in sorted(conflicts.items()) if n)
        return Outcome("ok" if digest.ok and not waiting else "partial", line,
                       changes=digest.changes, failed=failed, conflicts=conflicts, retry=retry)

    def _target_failures(self, digest: Digest) -> list[str]:
        """Update back-off, error counters and last-success gauges; return the failed names."""
        m = self.metrics
        failed: list[str] = []
        now = time.time()
        for name in digest.names:
            t = digest.targets.get(name)
            if t is None:  # left out: still backing off
                remaining = self.backoff.remaining(name)
                m.backoff.labels(name).set(remaining)
                log.info("target=%s result=backoff retry_in=%.1fs", name, remaining)
                continue
            if t.error:
                delay = self.backoff.failed(name)
                m.errors.labels(name).inc()
                m.backoff.labels(name).set(delay)
                m.consecutive_failures.labels(name).set(self.backoff.failures(name))
                failed.append(name)
                log.warning("target=%s result=unavailable retry_in=%.1fs error=%r", name, delay, t.error)
                continue
            if self.backoff.succeeded(name):
                log.info("target=%s recovered", name)
            m.backoff.labels(name).set(0)
            m.consecutive_failures.labels(name).set(0)
            if t.failed:
                m.errors.labels(name).inc()
            elif name not in digest.refused:
                m.last_success.labels(name).set(now)
                if not t.written:
                    log.info("target=%s result=ok changes=0", name)
        return failed
