"""One daemon pass reduced to what its bookkeeping needs: a ``PassSummary``.

``summarise`` applies a PassPlan (or, in a dry run, logs its diff) and keeps a few
numbers per target: errors, conflicts, changes applied, CoA results. The pass's
metrics, back-off and status line are made from it (``daemon.passes``). A full pass
run in a process of its own (``daemon.worker``) sends back only its PassSummary, with
the ``ScopedMemory`` its Reconciler learnt. Picklable.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from provisiond.core import render
from provisiond.errors import ProvisiondError
from provisiond.settings import Settings
from provisiond.targets.routeros import RouterTarget
from provisiond.targets.routeros.mirror import written_digest

if TYPE_CHECKING:
    from provisiond.engine import PassPlan, ProgressFactory, Reconciler, ScopedMemory
    from provisiond.targets.base import ApplyResult

log = logging.getLogger(__name__)

LOG_EACH = 20  # a pass with at most this many changes logs each one at INFO


class Display(Protocol):
    """A live progress display around one apply (the CLI's ``ProgressBars``)."""

    def factory(self, target: str, total: int) -> Callable[[int], None]: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass(slots=True)
class TargetSummary:
    """One target of a pass, as the bookkeeping needs it."""

    error: str | None = None  # it could not be planned, or its apply failed as a whole
    unavailable: bool = False  # ... because it could not be reached (back off and retry)
    planned: bool = False  # it has a plan (its conflicts count)
    conflicts: int = 0  # entries left alone: the plan's and the apply's
    applied: dict[str, int] = field(default_factory=dict)  # action -> changes applied
    coa: dict[str, int] = field(default_factory=dict)  # CoA / Disconnect result -> count
    written: bool = False  # its apply ran (an ApplyResult exists)
    failed: bool = False  # some of its changes failed
    conflict_lines: list[str] = field(default_factory=list)  # the first LOG_EACH, named
    scans: int = 0  # prints sent to it (a router: each a scan of its whole table)
    # A router's keys this pass wrote (``mirror.written_digest``): the daemon's mirror
    # takes their ``listen`` reports for provisiond's own, not drift.
    written_keys: bytes = b""


@dataclass(slots=True)
class PassSummary:
    names: list[str]  # every target of the configuration, in order
    targets: dict[str, TargetSummary]  # the targets this pass planned or tried to
    line: str  # the summary, before the back-off notes
    changes: int  # applied (planned, in a dry run)
    ok: bool
    refused: dict[str, str] = field(default_factory=dict)  # safety refusals, by target
    held: dict[str, tuple[str, ...]] = field(default_factory=dict)  # target -> groups held back
    lost_leader: bool = False  # the leader lock went while planning: nothing written
    pool_utilisation: dict[str, dict[str, Any]] | None = None  # ipam.pool_usage per pool (passes that allocated)
    unallocated: dict[str, tuple[str, ...]] | None = None  # pool -> accounts it had no address for
    full: bool = True  # a full pass (not scoped)
    memory: ScopedMemory | None = None  # what a full pass in its own process learnt
    # Accounts this pass leased (or gave back) addresses to: other shared members, who
    # only read leases, plan them again (``daemon.sharing``).
    leased: frozenset[str] = frozenset()


def summarise(
    rec: Reconciler,
    pp: PassPlan,
    settings: Settings,
    *,
    dry_run: bool,
    may_write: Callable[[], bool] | None = None,
    progress: ProgressFactory | None = None,
    number: int = 0,
) -> PassSummary:
    """Apply ``pp`` (unless ``dry_run``: log its diff) and reduce the pass to a summary.

    Logs what only this process can see: a dry run's diff, each applied change at DEBUG."""
    names = [t.name for t in rec.targets]
    targets = {name: TargetSummary(error=pp.errors.get(name), unavailable=name in pp.unavailable)
               for name in pp.kinds}
    for target in rec.targets:
        if isinstance(target, RouterTarget) and (n := target.take_scans()):
            targets.setdefault(target.name, TargetSummary()).scans = n
    for plan in pp.plans:
        t = targets.setdefault(plan.target, TargetSummary())
        t.planned, t.conflicts = True, len(plan.conflicts)
        t.conflict_lines = [f"{render.resource_line(c.resource)}: {c.reason}"
                            for c in plan.conflicts[:LOG_EACH]]
    full = pp.accounts is None
    if dry_run:
        return _dry_run(pp, names, targets)
    allocation = pp.allocation
    unallocated: dict[str, tuple[str, ...]] | None = None
    if allocation is not None:
        # A full pass knows every pool (0 where none ran out); a scoped one its own accounts.
        pools = [p.name for p in settings.pool] if full else list(allocation.exhausted)
        unallocated = {name: tuple(allocation.exhausted.get(name, ())) for name in pools}
    if may_write is not None and not may_write():
        # Planning can take a while; another provisiond may lead by now.
        return PassSummary(names, targets, "lost the leader lock while planning, nothing written",
                           0, False, lost_leader=True)
    kind = "full" if full else "scoped"
    note: dict[str, Any] = {"pass": number, "kind": kind, "accounts": len(pp.accounts or ())}
    if settings.daemon.members == "shared":  # history tells the members' runs apart
        note["member"] = settings.daemon.member_id or socket.gethostname()
    pr = rec.apply(pp, force=False, mode="daemon", may_write=may_write, progress=progress,
                   note=note)
    applied = 0
    each = sum(len(r.applied) for r in pr.results) <= LOG_EACH
    for r in pr.results:
        t = targets.setdefault(r.target, TargetSummary())
        t.written, t.failed = True, bool(r.failed)
        if pp.kinds.get(r.target) == "routeros":
            # Applied only: a refused write made no report, and one sent on a session that
            # was lost is heard as drift (a scoped pass then finds nothing to do).
            t.written_keys = written_digest((c.resource.group, c.resource.get("address"))
                                            for c in r.applied)
        if t.error is None and r.error is not None:
            t.error, t.unavailable = r.error, r.unavailable
        t.conflicts += len(r.conflicts)
        for action, n in r.counts().items():
            if n:
                t.applied[action] = t.applied.get(action, 0) + n
        if each:
            for c in r.applied:
                log.info("target=%s applied %s", r.target, render.change_line(c))
        else:  # a cold pass applies 400,000: one line per list, each change at DEBUG only
            _log_per_group(r)
        applied += len(r.applied)
        for f in r.followups:
            result = str(f.get("result", "unknown"))
            t.coa[result] = t.coa.get(result, 0) + 1
    total = render.totals(pp.plans)
    line = (f"{applied} change(s) applied ({total['create']} create, {total['update']} update, "
            f"{total['delete']} delete planned) on {len(pp.plans)} target(s)")
    if pr.refused:
        line += f"; refused by safety: {', '.join(sorted(pr.refused))}"
    allocated = allocation is not None and (full or allocation.changed)
    leased = frozenset(x.account_id for x in (*allocation.new, *allocation.returns)
                       ) if allocation is not None and "ipam" not in pr.refused else frozenset()
    return PassSummary(names, targets, line, applied, pr.ok, refused=dict(pr.refused),
                       held=dict(pr.held), full=full, unallocated=unallocated,
                       pool_utilisation=pool_utilisation(rec, settings) if allocated else None,
                       leased=leased)


def _log_per_group(r: ApplyResult) -> None:
    per_group: dict[str, dict[str, int]] = {}
    for c in r.applied:
        n = per_group.setdefault(c.resource.group, {"create": 0, "update": 0, "delete": 0})
        n[c.action] += 1
    for group, n in sorted(per_group.items()):
        log.info("target=%s list=%s created=%d updated=%d deleted=%d", r.target, group,
                 n["create"], n["update"], n["delete"])
    if log.isEnabledFor(logging.DEBUG):
        for c in r.applied:
            log.debug("target=%s applied %s", r.target, render.change_line(c))


def _dry_run(pp: PassPlan, names: list[str], targets: dict[str, TargetSummary]) -> PassSummary:
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
    return PassSummary(names, targets, f"dry run: {line}", changes, not pp.errors,
                       full=pp.accounts is None)


def pool_utilisation(rec: Reconciler, settings: Settings) -> dict[str, dict[str, Any]] | None:
    """Each pool's allocations in use (``ipam.pool_usage``: size, leased, held, utilisation;
    a full read of the leases)."""
    if not settings.pool:
        return None
    from provisiond.core import ipam

    try:
        leases = rec.store.leases()
    except ProvisiondError as exc:
        log.warning("pool utilisation: cannot read leases: %s", exc)
        return None
    now = datetime.now(UTC)
    return {p.name: ipam.pool_usage(ipam.Pool.from_settings(p), leases, now) for p in settings.pool}
