"""Writing a pass: leases and the billing read recorded first, then every target.

``Applier.apply`` writes a finished PassPlan; ``Applier.start`` opens a ``Run`` that a
full pass feeds each target's Plan as soon as it is made (``Reconciler.plan_and_apply``),
so a router is written while the others are still diffed. Either way the same steps in
the same order: nothing written while the pass is held (the leader lock lost, an IPAM
plan refused), leases recorded before any target write, the safety check per plan,
every change journalled as it is applied, the run finished with its outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from provisiond.core import render
from provisiond.core.plan import Plan, Safety, refused
from provisiond.engine.memory import ScopedMemory
from provisiond.engine.results import Failed, PassPlan, PassResult, ProgressFactory, each, guarded
from provisiond.state.base import Store
from provisiond.targets.base import ApplyResult, Target

log = logging.getLogger("provisiond.engine")  # one name for the whole engine: log filters rely on it

MayWrite = Callable[[], bool]


class Applier:
    def __init__(self, *, store: Store, targets: Sequence[Target], safety: Safety,
                 memory: ScopedMemory, record_reads: bool = True) -> None:
        self.store = store
        self.record_reads = record_reads  # False: the member with the global claim does
        self.by_name = {t.name: t for t in targets}
        self.safety = safety
        self.memory = memory

    def apply(self, pp: PassPlan, *, force: bool = False, mode: str = "apply",
              may_write: MayWrite | None = None, progress: ProgressFactory | None = None,
              note: Mapping[str, Any] | None = None) -> PassResult:
        """Apply a PassPlan: leases first, then every target in parallel.

        ``may_write`` (the daemon's leader check) is asked again right before each
        target is written; a target that may not be written is reported, untouched.
        ``progress`` gets each target's number of changes and its completions.
        ``note`` goes into the run's summary (the daemon's pass number and kind).
        """
        started = time.monotonic()
        result = PassResult(plan=pp)
        if self.held(pp, result, force=force, may_write=may_write):
            result.duration = time.monotonic() - started
            return result
        run_id = self.begin(pp, mode)
        if pp.ipam_refused and not force:  # held pools keep their leases (``decide``)
            result.refused["ipam"] = pp.ipam_refused
        todo = [cleared for plan in pp.plans
                if (cleared := self.cleared(pp, plan, result, force=force)) is not None]
        write = self.writer(run_id, may_write, progress)
        try:
            outcomes = each(todo, _target_of, write)
        except BaseException as exc:
            self.abandon(run_id, exc)
            raise
        self.end(result, run_id, outcomes, started, note=note)
        return result

    def start(self, pp: PassPlan, *, force: bool, mode: str, may_write: MayWrite | None,
              progress: ProgressFactory | None, pool: ThreadPoolExecutor,
              started: float) -> Run:
        """A Run that writes each plan as it is handed over."""
        run_id = self.begin(pp, mode)
        run = Run(self, pp, run_id, force=force, started=started,
                  write=self.writer(run_id, may_write, progress), pool=pool)
        if pp.ipam_refused and not force:  # held pools keep their leases (``decide``)
            run.result.refused["ipam"] = pp.ipam_refused
        return run

    # -- the steps ------------------------------------------------------------------

    def held(self, pp: PassPlan, result: PassResult, *, force: bool,
             may_write: MayWrite | None) -> bool:
        """True (``result`` says why) when nothing of ``pp`` may be written."""
        if may_write is not None and not may_write():
            result.results = [ApplyResult(target=p.target, error=f"{p.target}: not applied: lost the "
                                          "leader lock") for p in pp.plans if p.changes or p.followups]
            return True
        return False

    def begin(self, pp: PassPlan, mode: str) -> str:
        """Start a run: its id, leases and the billing read recorded, before any write.
        A run that cannot record them ends at once, failed, with the reason."""
        run_id = self.store.start_run(mode)
        try:
            if pp.allocation is not None:
                # A LeaseConflict (another process reserved first) stops the pass before
                # any write; the next pass re-plans.
                self.store.reserve(pp.allocation, pp.now or datetime.now(UTC), run_id=run_id)
            if pp.snapshot is not None and pp.snapshot.scope is None and self.record_reads:
                # A scoped read's few accounts are no yardstick for the next full read.
                self.store.record_read(len(pp.snapshot), pp.snapshot.rows, pp.snapshot.read_at)
        except BaseException as exc:
            self.abandon(run_id, exc)
            raise
        return run_id

    def abandon(self, run_id: str, exc: BaseException) -> None:
        """A run that stops on an error of its own (not a target's) is finished as failed,
        with that error: ``history`` never shows it as still running."""
        try:
            self.store.finish_run(run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"})
        except Exception as also:  # noqa: BLE001 - the first error is the one to raise
            log.warning("run %s: could not be recorded as failed: %s", run_id, also)

    def cleared(self, pp: PassPlan, plan: Plan, result: PassResult, *, force: bool) -> Plan | None:
        """What of ``plan`` is to be written (None: nothing). Unforced, the groups the
        safety check holds (over a threshold, or a mapping that matches nobody) are
        left out and reported in ``result``; the rest of the target is written."""
        if not force:
            held = plan.refusals(self.safety, earlier=(
                self.memory.since(plan.target) if pp.accounts is not None else None))
            if held:
                exc = refused(plan, held)
                result.refused[plan.target] = str(exc)
                result.held[plan.target] = tuple(held)
                log.debug("%s", exc)  # shown by the CLI, logged by the daemon: once
                plan = plan.without(held.keys())
        return plan if plan.changes or plan.followups else None

    def writer(self, run_id: str, may_write: MayWrite | None,
               progress: ProgressFactory | None) -> Callable[[Plan], ApplyResult]:
        """The function that writes one target's plan, journalling as it goes."""

        def one(plan: Plan) -> ApplyResult:
            if may_write is not None and not may_write():
                return ApplyResult(target=plan.target,
                                   error=f"{plan.target}: not applied: lost the leader lock")
            target = self.by_name[plan.target]
            gate = getattr(target, "gate", None)  # shared members: this target's claim
            if gate is not None and not gate():  # handed over since it was planned: not a failure
                log.info("target=%s not applied: its claim went to another member, which reads "
                         "it afresh", plan.target)
                return ApplyResult(target=plan.target)
            tick = progress(plan.target, len(plan.changes)) if progress is not None else None
            # The target hands over what it did in parts; the store writes them in the
            # background while the target applies the rest.
            try:
                outcome = target.apply(
                    plan, progress=tick, report=lambda part: self.journal(run_id, part, wait=False))
                # A finished target's journal is on disk before its result counts: a crash
                # while slower targets still apply loses none of it.
                self.store.sync_journal()
            finally:
                if (done := getattr(gate, "done", None)) is not None:
                    done()  # its writes answered and journalled: a claim being handed over may go
            return outcome

        return one

    def end(self, result: PassResult, run_id: str,
            outcomes: Sequence[tuple[Plan, ApplyResult | Failed]], started: float, *,
            note: Mapping[str, Any] | None = None) -> None:
        """Every target's outcome (an ApplyResult, or its failure's message) into
        ``result``, the counts scoped passes check against, and the run finished."""
        scoped = result.plan.accounts is not None
        for plan, outcome in outcomes:
            if isinstance(outcome, Failed):
                outcome = ApplyResult(target=plan.target, error=outcome.message,
                                      unavailable=outcome.unavailable)
                self.journal(run_id, outcome)
            result.results.append(outcome)
            _log_result(outcome)
            self.memory.count_applied(outcome, scoped=scoped)
        result.duration = time.monotonic() - started
        self.store.finish_run(run_id, "ok" if result.ok else "failed",
                              {**_summary(result), **(note or {})})

    def journal(self, run_id: str, outcome: ApplyResult, *, wait: bool = True) -> None:
        if outcome.applied or outcome.failed or outcome.conflicts:
            self.store.journal_changes(run_id, outcome.target, applied=outcome.applied,
                                       failed=outcome.failed, conflicts=outcome.conflicts,
                                       wait=wait)


class Run:
    """One run under way: plans handed over are written at once, in the pool's threads."""

    def __init__(self, applier: Applier, pp: PassPlan, run_id: str, *, force: bool,
                 started: float, write: Callable[[Plan], ApplyResult],
                 pool: ThreadPoolExecutor) -> None:
        self.applier = applier
        self.result = PassResult(plan=pp)
        self.run_id = run_id
        self.force = force
        self.started = started
        self._write = write
        self._pool = pool
        self._writing: list[tuple[Plan, Future[ApplyResult | Failed]]] = []

    def write(self, plan: Plan) -> None:
        """Start writing what of ``plan`` is cleared (a refusal goes into the result)."""
        cleared = self.applier.cleared(self.result.plan, plan, self.result, force=self.force)
        if cleared is not None:
            self._writing.append((cleared, self._pool.submit(guarded, plan.target, self._write, cleared)))

    def outcomes(self) -> list[tuple[Plan, ApplyResult | Failed]]:
        """Waits for every write started."""
        return [(plan, future.result()) for plan, future in self._writing]

    def abandon(self, exc: BaseException) -> None:
        """The pass failed: wait for the writes started (their journal is kept), and
        finish the run as failed."""
        for _, future in self._writing:
            future.exception()  # a target's own error is in its journal
        self.applier.abandon(self.run_id, exc)

    def end(self) -> PassResult:
        self.applier.end(self.result, self.run_id, self.outcomes(), self.started)
        return self.result


def _target_of(plan: Plan) -> str:
    return plan.target


def _log_result(r: ApplyResult) -> None:
    counts = r.counts()
    log.info(
        "target=%s result=%s created=%d updated=%d deleted=%d failed=%d conflicts=%d%s",
        r.target, "ok" if r.ok else "failed", counts["create"], counts["update"],
        counts["delete"], len(r.failed), len(r.conflicts),
        f" error={r.error!r}" if r.error else "",
    )
    # INFO, not WARNING: the CLI prints these on stdout already (an error is said once);
    # the daemon logs at INFO, so the service journal still has every one.
    for _, message in r.failed[:20]:
        log.info("%s", message)
    for conflict in r.conflicts:
        log.info("%s: conflict: %s: %s", r.target, render.resource_line(conflict.resource),
                 conflict.reason)


def _summary(result: PassResult) -> dict[str, Any]:
    return {
        "refused": dict(result.refused),
        "errors": dict(result.plan.errors),
        "targets": {
            r.target: {"applied": len(r.applied), "failed": len(r.failed),
                       "conflicts": len(r.conflicts), "error": r.error}
            for r in result.results
        },
    }
