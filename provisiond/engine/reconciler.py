"""One pass: Source -> Allocator -> desired State -> per-target observe -> diff -> Plan -> apply.

The ``Reconciler`` is the front the CLI (``plan``, ``apply``, ``explain``) and the daemon
(every pass) call. ``plan`` writes nothing anywhere; ``apply`` records leases in the
StateStore before any target write, then applies every target in its own worker so one
failing router never stops the others, and journals every change. A failing or
suspicious billing read raises ``SourceError`` before anything is written.

The steps live beside it: ``planning`` (mappings, allocation, desire, diff), ``reading``
(every target's read of a full pass), ``scoped`` (a pass over a few accounts),
``applying`` (the writes), ``saved`` (``apply --plan``), ``assembly`` (the parts from the
settings), and ``memory`` (what full passes teach scoped ones).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from provisiond.core.changes import Conflict, Key, Observed, Resource
from provisiond.core.model import Snapshot
from provisiond.core.plan import Plan, Safety
from provisiond.engine import planning, saved, scoped
from provisiond.engine.applying import Applier, MayWrite
from provisiond.engine.assembly import allocate, build_source, build_targets, pool_billing, pool_matches
from provisiond.engine.memory import ScopedMemory
from provisiond.engine.reading import FullRead
from provisiond.engine.results import MAX_WORKERS, PassPlan, PassResult, ProgressFactory
from provisiond.errors import ConfigError, SuspiciousSnapshot
from provisiond.settings import Settings
from provisiond.sources.base import Source
from provisiond.state.base import Store
from provisiond.state.ondemand import open_store
from provisiond.targets.base import Target

if TYPE_CHECKING:
    from provisiond.core.ipam import Allocation


class Reconciler:
    """Holds the settings, the source, the targets, the store and the memory scoped
    passes build on, for one or many passes."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: Source | None = None,
        targets: Sequence[Target] | None = None,
        store: Store | None = None,
        readonly: bool = True,
        memory: ScopedMemory | None = None,
    ) -> None:
        self.settings = settings
        # The source and the store are made when first used: a pass sends every router
        # its prints first, and the routers answer while the billing driver and the
        # store's SQLAlchemy are still being imported.
        self._source = source
        self.store: Store = store if store is not None else open_store(settings, readonly=readonly)
        self.targets: list[Target] = (list(targets) if targets is not None
                                      else build_targets(settings, self.store))
        self.memory = memory if memory is not None else ScopedMemory()
        # False: another daemon holds the global claim (``[daemon] members = "shared"``):
        # leases are read, never decided or written, and billing reads are not recorded.
        self.global_work = True

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = build_source(self.settings)
        return self._source

    @property
    def safety(self) -> Safety:
        s = self.settings.safety
        return Safety(s.max_delete_ratio, s.max_update_ratio, s.min_existing)

    def close(self) -> None:
        for t in self.targets:
            t.close()
        if self._source is not None:
            self._source.close()
        self.store.close()

    # -- planning -------------------------------------------------------------------

    def read_source(self) -> Snapshot:
        """A full billing read, refused when it has far fewer accounts than the last good one."""
        snapshot: Snapshot = self.source.read()
        last = self.store.last_good_read()
        drop = self.settings.source.max_account_drop
        # Accounts whose every row was bad still exist in billing: count them.
        seen = len(snapshot) + len(
            {p.account_id for p in snapshot.problems if p.account_id} - snapshot.accounts.keys()
        )
        if last and seen < last * (1 - drop):
            raise SuspiciousSnapshot(
                f"billing returned {seen} accounts, last good read had {last}: "
                f"a drop of more than {drop:.0%} (source.max_account_drop); if the drop is "
                "real, accept it with one `PROVISIOND_SOURCE__MAX_ACCOUNT_DROP=1 provisiond "
                "apply` (add --force if the safety thresholds refuse its deletes): later "
                "reads are measured against that one"
            )
        return snapshot

    def plan(
        self,
        *,
        now: datetime | None = None,
        skip: Callable[[str], bool] | None = None,
        targets: Sequence[str] | None = None,
        accounts: Collection[str] | None = None,
        checksums: bool = True,
        force: bool = False,
    ) -> PassPlan:
        """Read billing, allocate, observe every target and diff. Writes nothing.

        ``skip(name)`` true leaves that target out of this pass (the daemon's back-off).
        ``targets`` (names or globs, ``--target``) limits the pass to those targets.
        ``accounts``: a scoped pass for those account ids only (None: a full pass); it
        widens itself to a full pass where only a full pass may decide.
        ``checksums=False``: the plan will not be saved, so targets may skip the
        observed checksum. ``force``: a pool whose mapping matches nobody is emptied too
        (``apply --force``); otherwise it keeps its leases.
        """
        if accounts is not None:
            found = self.plan_scoped(accounts, now=now, skip=skip, targets=targets, force=force)
            if found is not None:
                return found
        with FullRead(self._chosen(targets, skip), checksums=checksums) as reads:
            pp, one = self._prepare_full(reads, now, targets, force=force)
            for target, outcome in reads.plans(one):
                pp.add(target.name, target.kind, outcome)
        self._learn(pp)
        return pp

    def plan_scoped(
        self,
        accounts: Collection[str],
        *,
        now: datetime | None = None,
        skip: Callable[[str], bool] | None = None,
        targets: Sequence[str] | None = None,
        force: bool = False,
    ) -> PassPlan | None:
        """``plan(accounts=...)`` without the widening: None when only a full pass may
        decide (the daemon then runs that full pass where it runs full passes)."""
        pp = scoped.plan_scoped(self.settings, self.source, self.store, self.memory,
                                accounts=frozenset(accounts), targets=self._chosen(targets, skip),
                                every_target=self.targets, now=now or datetime.now(UTC),
                                force=force, global_work=self.global_work)
        if pp is not None:
            pp.target_patterns = tuple(targets or ())
        return pp

    def _chosen(self, patterns: Sequence[str] | None,
                skip: Callable[[str], bool] | None) -> list[Target]:
        return [t for t in self.select_targets(patterns) if skip is None or not skip(t.name)]

    def _prepare_full(self, reads: FullRead, now: datetime | None, patterns: Sequence[str] | None,
                      *, force: bool = False) -> tuple[PassPlan, Callable[[Target, Observed], Plan]]:
        """Billing read and checked, decisions and desire made, the readers told."""
        snapshot = self.read_source()
        pp, desired, conflicts = planning.prepare(self.settings, self.store, snapshot,
                                                  now or datetime.now(UTC), self.memory, force=force,
                                                  global_work=self.global_work)
        reads.want(desired)
        pp.target_patterns = tuple(patterns or ())
        return pp, planning.planner(pp, desired, conflicts, targets=self.targets, store=self.store)

    def _learn(self, pp: PassPlan) -> None:
        """What this full pass teaches later scoped passes."""
        self.memory.learn(
            pp.plans, pp.snapshot, pool_matches=pool_matches(self.settings),
            pool_billing=pool_billing(self.settings, pp.snapshot) if pp.snapshot is not None else None,
            radius=any(t.kind == "radius" for t in self.targets))

    def select_targets(self, patterns: Sequence[str] | None) -> list[Target]:
        """The targets whose name matches any of ``patterns`` (globs); all when None.
        A pattern that matches nothing is an error: a typo must not plan nothing and
        look converged."""
        if not patterns:
            return list(self.targets)
        unknown = [p for p in patterns
                   if not any(fnmatch.fnmatchcase(t.name, p) for t in self.targets)]
        if unknown:
            known = ", ".join(t.name for t in self.targets) or "none"
            raise ConfigError([f"--target {p!r} matches no target (targets: {known})"
                               for p in unknown])
        return [t for t in self.targets if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]

    # -- for explain ----------------------------------------------------------------

    def allocate(self, snapshot: Snapshot, now: datetime) -> Allocation | None:
        """The pass's IPAM decisions, or None without pools."""
        if not self.settings.pool:
            return None
        return allocate(self.settings, snapshot, self.store, now)[0]

    def desired(self, snapshot: Snapshot, allocated: Mapping[str, tuple[str, ...]], *,
                allocation: Allocation | None = None
                ) -> tuple[dict[str, Mapping[Key, Resource]], dict[str, list[Conflict]]]:
        return planning.desired(self.settings, snapshot, allocated,
                                waiting=planning.withheld(self.settings, allocation))

    def observe_account(self, account_id: str, snapshot: Snapshot,
                        desired: Mapping[str, Mapping[Key, Resource]]) -> dict[str, Observed | str]:
        return scoped.observe_account(account_id, snapshot, desired, targets=self.targets,
                                      store=self.store)

    # -- writing --------------------------------------------------------------------

    def _applier(self) -> Applier:
        return Applier(store=self.store, targets=self.targets, safety=self.safety,
                       memory=self.memory, record_reads=self.global_work)

    def apply(self, pp: PassPlan, *, force: bool = False, mode: str = "apply",
              may_write: MayWrite | None = None, progress: ProgressFactory | None = None,
              note: Mapping[str, Any] | None = None) -> PassResult:
        """Apply a PassPlan (``Applier.apply``): leases first, then every target."""
        return self._applier().apply(pp, force=force, mode=mode, may_write=may_write,
                                     progress=progress, note=note)

    def plan_and_apply(
        self,
        *,
        force: bool = False,
        mode: str = "apply",
        may_write: MayWrite | None = None,
        progress: ProgressFactory | None = None,
        targets: Sequence[str] | None = None,
        accounts: Collection[str] | None = None,
        while_writing: Callable[[PassPlan, Mapping[str, str]], None] | None = None,
    ) -> PassResult:
        """``apply(plan(...))``, with each target written as soon as its own plan is made.

        A scoped pass, and one that will not write (the leader lock lost), plan first
        and apply after. ``while_writing(pp, refused)`` is called once every target is
        planned and the writes are under way (the CLI shows the plan meanwhile); what it
        raises is raised once the pass has ended. Not called for a pass planned first.
        """
        if accounts is not None or (may_write is not None and not may_write()):
            pp = self.plan(targets=targets, accounts=accounts, checksums=False, force=force)
            return self.apply(pp, force=force, mode=mode, may_write=may_write, progress=progress)
        started = time.monotonic()
        applier = self._applier()
        shown: BaseException | None = None
        with ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="apply") as pool, \
                FullRead(self._chosen(targets, None), checksums=False) as reads:
            pp, one = self._prepare_full(reads, None, targets, force=force)
            run = applier.start(pp, force=force, mode=mode, may_write=may_write,
                                progress=progress, pool=pool, started=started)
            try:
                for target, outcome in reads.plans(one):
                    pp.add(target.name, target.kind, outcome)
                    if isinstance(outcome, Plan):
                        run.write(outcome)
                if while_writing is not None:
                    try:
                        while_writing(pp, run.result.refused)
                    except BaseException as exc:  # noqa: BLE001 - raised once the pass has ended
                        shown = exc
                outcomes = run.outcomes()
            except BaseException as exc:
                run.abandon(exc)  # targets may be written already: their journal is kept
                raise
        self._learn(pp)
        applier.end(run.result, run.run_id, outcomes, started)
        if shown is not None:
            raise shown
        return run.result

    def load_saved(self, doc: Mapping[str, Any]) -> PassPlan:
        """Rebuild a saved JSON plan (``saved.load_saved``)."""
        return saved.load_saved(doc, settings=self.settings, source=self.source,
                                read_source=self.read_source, store=self.store,
                                targets=self.targets, memory=self.memory)
