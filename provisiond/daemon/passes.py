"""One daemon pass around the Reconciler: back-off, dry run, metrics, the status line.

Called by the daemon's scheduler job. Holds ONE Reconciler per configuration
generation (built lazily, swapped at a pass boundary after a reload) so connections
survive from pass to pass, and the ``ScopedMemory`` scoped passes build on. Per pass:
``plan(skip=<targets in back-off>)`` then, unless dry run, ``apply(force=False,
mode="daemon")``, reduced to a ``PassSummary`` (``daemon.summary``) that the bookkeeping
(metrics, back-off, the status line) works from. With ``isolate`` (the daemon's choice)
every full pass runs in a process of its own (``daemon.worker``) and only its summary
comes back, so the daemon stays small between passes; scoped passes run here, on the
kept connections. What the loop does with each failure:

- billing read failed (``SourceError``) or the state store failed: nothing is written,
  the pass counts as ``error``, the next interval tries again;
- a target unreachable (``TargetUnavailable``): that target backs off exponentially
  (up to ``daemon.retry_max``) while the others go on;
- a target that answered wrongly (``TargetError``: a refused command, a malformed
  reply): reported and counted (``provisiond_target_errors_total``), tried again at the
  next interval without backing off;
- a plan over the safety thresholds: logged and counted, not applied; it stays
  refused on every pass until a human looks (``provisiond apply --force``).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from provisiond.daemon import worker
from provisiond.daemon.metrics import Health, Metrics
from provisiond.daemon.mirrors import Cadence, Mirrors
from provisiond.daemon.sharing import Sharing
from provisiond.daemon.notes import ConflictNames, note_failure, note_pools, note_refusals, note_targets
from provisiond.daemon.summary import Display, PassSummary, summarise
from provisiond.errors import ClaimRefused, ConfigError, ProvisiondError, SourceError, SuspiciousSnapshot
from provisiond.settings import Settings

if TYPE_CHECKING:
    from provisiond.engine import PassPlan, Reconciler, ScopedMemory

log = logging.getLogger(__name__)

BACKOFF_FIRST = 2.0  # seconds before the first retry of a failed target
RETRY_MIN = 0.2  # seconds: a scoped pass owed to a target in back-off is retried no sooner


class Backoff:
    """Per-target exponential back-off: 2 s, 4 s, 8 s, … up to ``ceiling``."""

    def __init__(self, ceiling: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = ceiling
        self._clock = clock
        self._failures: dict[str, int] = {}  # unreachable, in a row: the back-off grows
        self._errors: dict[str, int] = {}  # answered wrongly, in a row: no back-off
        self._until: dict[str, float] = {}

    def skip(self, name: str) -> bool:
        return self._until.get(name, 0.0) > self._clock()

    def remaining(self, name: str) -> float:
        return max(0.0, self._until.get(name, 0.0) - self._clock())

    def failures(self, name: str) -> int:
        """Failures in a row of ``name``, of either kind (0 after a success)."""
        return self._failures.get(name, 0) + self._errors.get(name, 0)

    def errored(self, name: str) -> None:
        """``name`` answered wrongly: counted, but retried at the next interval as usual."""
        self._errors[name] = self._errors.get(name, 0) + 1

    def failed(self, name: str) -> float:
        n = self._failures.get(name, 0) + 1
        self._failures[name] = n
        delay: float = min(self.ceiling, BACKOFF_FIRST * 2.0 ** min(n - 1, 30))
        self._until[name] = self._clock() + delay
        return delay

    def succeeded(self, name: str) -> bool:
        """Forget the failures; True when the target was failing."""
        self._until.pop(name, None)
        errored = self._errors.pop(name, None) is not None
        return self._failures.pop(name, None) is not None or errored

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
    # Targets that could not be reached: passed again when their back-off ends (name -> s).
    retry_targets: dict[str, float] = field(default_factory=dict)
    leased: frozenset[str] = frozenset()  # accounts given addresses (``PassSummary.leased``)


# (settings, readonly, memory) -> the Reconciler of one configuration generation
ReconcilerFactory = Callable[[Settings, bool, "ScopedMemory"], "Reconciler"]


def _default_factory(settings: Settings, readonly: bool, memory: ScopedMemory) -> Reconciler:
    from provisiond.engine import Reconciler

    return Reconciler(settings, readonly=readonly, memory=memory)


def _new_memory() -> ScopedMemory:
    from provisiond.engine import ScopedMemory

    return ScopedMemory()


class PassRunner:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics,
        health: Health,
        factory: ReconcilerFactory = _default_factory,
        isolate: bool = False,
        mirrors: Mirrors | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        self.settings = settings
        self.sharing = sharing  # shared members: passes write only what this one owns
        self.mirrors = mirrors if mirrors is not None else Mirrors(lambda *_: None, enabled=False)
        self.cadence = Cadence(settings)
        self.metrics = metrics
        self.health = health
        self._factory = factory
        self.isolate = isolate  # full passes in a process of their own (``daemon.worker``)
        self._rec: Reconciler | None = None
        self._pending: Settings | None = None
        self.memory = _new_memory()  # what full passes learnt, for scoped ones
        self._in_child = False  # the pass in flight is a full one in its own process
        self.backoff = Backoff(settings.daemon.retry_max)
        self.count = 0
        self._conflicts = ConflictNames()
        self._numbered = False  # the pass count continues from the store's last daemon run
        self.first_progress: Display | None = None  # shown around the next apply only
        self._scope: frozenset[str] | None = None  # the pass in flight's accounts
        self._targets: frozenset[str] | None = None  # ... and its targets (None: all)
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
        self.memory = _new_memory()
        self.settings = new
        self.cadence.settings = new
        self.backoff = Backoff(new.daemon.retry_max)
        if old is not None:
            old.close()
        log.info("configuration swapped in: routers=%d lists=%d radius=%s pools=%d",
                 len(new.router), len(new.address_list), new.radius is not None, len(new.pool))

    def _reconciler(self) -> Reconciler:
        self._swap()
        if self._rec is None:
            self._rec = self._factory(self.settings, self.settings.daemon.dry_run, self.memory)
            self.mirrors.attach(self._rec.targets)
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
        targets: frozenset[str] | None = None,
    ) -> Outcome:
        """One pass, scoped to ``accounts`` (None: full) and to ``targets`` (None: all;
        a retry of targets whose back-off ended). ``may_write`` (the leader check) is
        asked again between plan and apply."""
        if not self._numbered:
            self.count = self._last_number()
            self._numbered = True
        self.count += 1
        started = time.monotonic()
        if accounts is not None and self._refused:
            log.info("pass=%d: full instead of scoped (%d account(s)): a plan is refused by "
                     "safety until apply --force or billing is fixed", self.count, len(accounts))
            accounts = None
        self._scope = accounts
        self._targets = targets if accounts is None else None
        try:
            try:
                summary = self._summary(may_write)
            finally:
                if self.sharing is not None:
                    self.sharing.writes_ended()
                    if self._rec is not None:
                        self.sharing.after(self._rec, self.mirrors)
            outcome = self._book(summary)
            outcome.leased = summary.leased
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
            if self.sharing is not None and isinstance(exc, ClaimRefused):
                self.sharing.claim_lost()
            log.error("pass result=error %s; nothing more written this pass", exc)
            if self._rec is not None and not self._in_child:  # rebuild everything next pass
                self._rec.close()
                self._rec = None
            # It may have written part of its changes: no remembered count is trusted
            # until the next full pass (scoped passes count each list on the target).
            self.memory.forget_counts()
        accounts = self._scope  # a scoped pass may have widened
        outcome.duration = time.monotonic() - started
        full = accounts is None
        self.metrics.passes.labels(outcome.result, "full" if full else "scoped").inc()
        self.metrics.pass_duration.observe(outcome.duration)
        self.mirrors.publish(self.metrics, self.health, self.cadence)
        stamp = datetime.now().astimezone().strftime("%H:%M:%S")
        outcome.status = f"pass {self.count} {outcome.result} at {stamp} in {outcome.duration:.1f}s: " \
                         + outcome.status
        self.health.last_result = outcome.status
        if outcome.result == "ok" and accounts is None and self._targets is None:
            # Only a full pass vouches for every target (healthz).
            self.health.last_success = time.monotonic()
        if outcome.result != "error":  # an error pass saw no target: keep what is known
            self.health.conflicts = {t: n for t, n in outcome.conflicts.items() if n}
        conflicts = sum(outcome.conflicts.values())
        # Lasting conflicts are on every pass line while they last (absent: none).
        log.info("pass=%d result=%s duration=%.2fs changes=%d%s%s%s", self.count,
                 outcome.result, outcome.duration, outcome.changes,
                 ("" if accounts is None else f" scope={len(accounts)}")
                 + ("" if self._targets is None else f" targets={','.join(sorted(self._targets))}"),
                 f" conflicts={conflicts} conflicts_on={','.join(sorted(self.health.conflicts))}"
                 if conflicts else "",
                 f" failed={','.join(outcome.failed)}" if outcome.failed else "")
        return outcome

    def continue_numbering(self) -> None:
        """Pass numbers go on from the state store's last daemon pass (a restart, or this
        daemon taking over from another): read again before the next pass."""
        self._numbered = False

    def _last_number(self) -> int:
        try:
            runs = self._reconciler().store.runs(limit=50)
        except Exception as exc:  # noqa: BLE001 - numbering never stops a pass
            log.warning("pass numbers: cannot read the last runs: %s", exc)
            return self.count
        numbers = [int(r["summary"].get("pass", 0)) for r in runs
                   if r.get("mode") == "daemon" and isinstance(r.get("summary"), dict)]
        return max([self.count, *numbers])

    def _skip(self, name: str) -> bool:
        return self.backoff.skip(name) or not self._asked_for(name)

    def _asked_for(self, name: str) -> bool:
        """In this pass's targets (names or globs; None: every target), and (shared
        members) owned by this member."""
        if self.sharing is not None and self.sharing.skip(name):
            return False
        return self._targets is None or any(fnmatch.fnmatchcase(name, p) for p in self._targets)

    def _summary(self, may_write: Callable[[], bool] | None) -> PassSummary:
        """Plan and apply this pass: here, or (a full pass, isolated) in its own process."""
        self._in_child = False
        self._swap()  # a reload takes effect before anything of this pass is decided
        dry_run = self.settings.daemon.dry_run
        if self.sharing is not None:  # a full (or targets) pass reads its targets whole
            rec = self._reconciler()
            whole = [t.name for t in rec.targets if self._asked_for(t.name)] if self._scope is None else []
            self.sharing.prepare(rec, self.mirrors, whole, full=self._scope is None and self._targets is None)
        if not self.isolate:
            rec = self._reconciler()
            if self._scope is None:
                pp = rec.plan(skip=self._skip, checksums=False)
            else:
                pp = rec.plan(skip=self._skip, accounts=self._scope, checksums=False)
            return self._here(rec, pp, dry_run, may_write)
        if self._scope is not None:
            rec = self._reconciler()
            scoped = rec.plan_scoped(self._scope, skip=self._skip)
            if scoped is not None:
                return self._here(rec, scoped, dry_run, may_write)
            self._scope = None  # widened: only a full pass may decide
        skip = frozenset(n for n in self.backoff.names() if self._skip(n))
        if self._targets is not None or self.sharing is not None:
            skip |= {t.name for t in self._reconciler().targets if not self._asked_for(t.name)}
        display, self.first_progress = self.first_progress, None
        self._in_child = True
        with self.mirrors.holding(skip) as written:
            summary = worker.full_pass(self.settings, skip=skip, may_write=may_write,
                                       display=display, number=self.count, sharing=self.sharing)
            written.update({name: t.written_keys for name, t in summary.targets.items()})
        if summary.memory is not None:
            self.memory, summary.memory = summary.memory, None
            if self._rec is not None:
                self._rec.memory = self.memory
        return summary

    def _here(self, rec: Reconciler, pp: PassPlan, dry_run: bool,
              may_write: Callable[[], bool] | None) -> PassSummary:
        display, self.first_progress = self.first_progress, None
        if display is None or dry_run:
            return summarise(rec, pp, self.settings, dry_run=dry_run, may_write=may_write,
                             number=self.count)
        with display:
            return summarise(rec, pp, self.settings, dry_run=dry_run, may_write=may_write,
                             progress=display.factory, number=self.count)

    # -- bookkeeping ----------------------------------------------------------------

    def _book(self, summary: PassSummary) -> Outcome:
        """Metrics, back-off and the status line of one pass, from its summary."""
        m = self.metrics
        m.billing_reads.labels("ok").inc()
        if summary.lost_leader:
            if self.sharing is not None:  # its may_write is "not fenced"
                line = "fenced itself (no lease renewal) while planning, nothing written"
                log.error("pass result=error: %s", line)
                return Outcome("error", line)
            log.error("pass result=error: lost the leader lock while planning; nothing written")
            return Outcome("error", summary.line)
        for name, t in summary.targets.items():
            if t.scans:
                m.router_scans.labels(name).inc(t.scans)
            for action, n in t.applied.items():
                m.changes.labels(name, action).inc(n)
            for result, n in t.coa.items():
                m.coa.labels(result).inc(n)
        dry_run = self.settings.daemon.dry_run
        if not dry_run:
            if summary.refused:
                self._refused = True
            elif self._scope is None and self._targets is None:
                self._refused = False
            note_refusals(summary, self.health, self.metrics)
        failed = self._target_failures(summary)
        # Unreachable or left out (back-off): owed a retry of this scoped pass. A target
        # that answered wrongly is tried again by the next interval's full pass.
        owed = [n for n in failed if summary.targets[n].unavailable] + [
            n for n in summary.names if n not in summary.targets and self._asked_for(n)]
        retry = None
        if self._scope is not None and owed:
            # Only a full pass would reach them otherwise: the event must not be lost.
            delay = min(self.backoff.remaining(n) for n in owed)
            retry = (self._scope, max(RETRY_MIN, delay))
        note_pools(summary, self.health, self.metrics)
        conflicts = {name: t.conflicts for name, t in summary.targets.items() if t.planned}
        self._conflicts.name(summary)
        for target, n in conflicts.items():
            m.conflicts.labels(target).set(n)
        line = summary.line
        if dry_run:
            return Outcome("ok" if summary.ok else "partial", line, changes=summary.changes,
                           failed=failed, conflicts=conflicts, retry=retry)
        if failed:
            line += f"; failing: {', '.join(failed)}"
        waiting = [n for n in self.backoff.names() if n not in failed]
        if waiting:
            line += f"; backing off: {', '.join(waiting)}"
        if sum(conflicts.values()):
            line += "; conflicts: " + ", ".join(f"{t} {n}" for t, n in sorted(conflicts.items()) if n)
        # Unreachable: passed again when the back-off the log gave ends.
        again = {n: self.backoff.remaining(n) for n in failed if summary.targets[n].unavailable}
        # Shared members: a target whose claim went elsewhere during the pass is not a failure.
        ok = summary.ok or (self.sharing is not None and not summary.refused and all(
            not (t.error or t.failed) or not self._asked_for(n) for n, t in summary.targets.items()))
        return Outcome("ok" if ok and not waiting else "partial", line,
                       changes=summary.changes, failed=failed, conflicts=conflicts, retry=retry,
                       retry_targets=again)

    def _target_failures(self, summary: PassSummary) -> list[str]:
        return note_targets(summary, self.backoff, self.metrics, self.health, self._asked_for)
