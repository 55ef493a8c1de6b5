"""One pass: Source -> Allocator -> desired State -> per-target observe -> diff -> Plan -> apply.

Called by the CLI (``plan``, ``apply``) and the daemon (every pass). ``Reconciler.plan``
writes nothing anywhere; ``Reconciler.apply`` records leases in the StateStore before
any target write, then applies every target in its own worker so one failing router
never stops the others, and journals every change. A failing or suspicious billing
read raises ``SourceError`` before anything is written.

A scoped pass (``plan(accounts=ids)``: ``--account``, a NOTIFY, a webhook) runs the same
steps over those accounts only: a scoped billing read, allocation for them, and one
``core.scope.Scope`` per target so each reads only their part. It widens to a full pass
when a target finds another account's entry where a scoped account wants one. The
Reconciler remembers from its full passes what scoped ones need: managed counts per
list (the safety check's base) and billing addresses inside pools.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from provisiond.core import desire, render
from provisiond.core.changes import (
    Change,
    Conflict,
    Create,
    Delete,
    Key,
    Observed,
    Resource,
    change_from_json,
)
from provisiond.core.diff import count_by_group, diff
from provisiond.errors import (
    ConfigError,
    PlanRefused,
    UnmatchedMapping,
    SourceError,
    StalePlan,
    SuspiciousSnapshot,
    TargetError,
)
from provisiond.core.model import Snapshot
from provisiond.core.plan import Plan, Safety
from provisiond.core.scope import Scope, UsernameHolders
from provisiond.core.plan import (
    Selector,
    check_pools,
    emptied_pools,
    unmatched,
    unmatched_by_target,
)
from provisiond.settings import Settings
from provisiond.sources.base import Source
from provisiond.state.base import Store
from provisiond.targets.base import ApplyResult, ComparesWhileReading, Target

log = logging.getLogger(__name__)

MAX_WORKERS = 8

# ``progress(target, total)`` is called as a target's apply starts and returns the
# callback that target reports completed changes to (the CLI's progress bar).
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass(slots=True)
class PassPlan:
    """Everything ``plan`` found: one Plan per reachable target, errors for the others."""

    snapshot: Snapshot | None
    plans: list[Plan] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # target -> why it could not be planned
    kinds: dict[str, str] = field(default_factory=dict)  # target -> kind, failed ones included
    allocation: Any = None  # provisiond.core.ipam.Allocation when pools are configured
    notes: list[str] = field(default_factory=list)
    ipam_json: dict[str, Any] | None = None
    now: datetime | None = None  # when the allocation was computed
    scope: tuple[str, ...] = ()  # the --target patterns this plan was limited to (empty: all)
    accounts: frozenset[str] | None = None  # a scoped pass (--account, NOTIFY): its account ids
    # Mappings whose group/status matches no billing account this pass (typos, mostly).
    unmatched: list[Selector] = field(default_factory=list)
    ipam_refused: str | None = None  # why apply refuses the allocation without --force
    # A scoped pass: pools whose every lease the allocation releases (pool -> releases).
    emptied_pools: dict[str, int] = field(default_factory=dict)

    @property
    def ipam_changes(self) -> int:
        """Lease decisions (new, returned, released) this plan records."""
        return int(self.allocation.change_count) if self.allocation is not None else 0

    @property
    def has_changes(self) -> bool:
        return any(p.changes for p in self.plans) or bool(
            self.ipam_json and self.ipam_json.get("changes")
        )


@dataclass(slots=True)
class PassResult:
    plan: PassPlan
    results: list[ApplyResult] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.plan.errors
            and not self.refused
            and all(r.ok for r in self.results)
        )


@dataclass(slots=True)
class Remembered:
    """What a full pass learns that later scoped passes build on (``Reconciler.remembered``):
    managed entries per target and group, billing addresses inside pools by account, and
    who holds each RADIUS username (None without a RADIUS target), the accounts in each
    pool's group (None without pools). Picklable."""

    existing: dict[str, dict[str, int]] = field(default_factory=dict)
    pool_billing: dict[str, tuple[str, ...]] = field(default_factory=dict)
    holders: UsernameHolders | None = None
    pool_members: dict[str, set[str]] | None = None


class Reconciler:
    """Holds the settings, the source, the targets and the store for one or many passes."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: Source | None = None,
        targets: Sequence[Target] | None = None,
        store: Store | None = None,
        readonly: bool = True,
    ) -> None:
        self.settings = settings
        # The source and the store are made when first used: a pass sends every
        # router its prints first, and the routers answer while the billing driver and
        # the store's SQLAlchemy are still being imported.
        self._source = source
        self.store: Store = store if store is not None else _open_store(settings, readonly=readonly)
        self.targets: list[Target] = list(targets) if targets is not None else build_targets(
            settings, self.store
        )
        # Learnt by every full plan, used by scoped ones: managed entries per target
        # and group (the safety check's base), billing addresses inside pools.
        self._existing: dict[str, dict[str, int]] = {}
        # Changes (creates too) scoped passes applied since the last full plan, per target
        # and group: they count towards every later scoped pass's safety check.
        self._since_full: dict[str, dict[str, dict[str, int]]] = {}
        self._pool_billing: dict[str, tuple[str, ...]] = {}
        # Pool -> accounts in its group (last full read, moved by scoped reads): a scoped
        # pass releasing a pool's last lease widens only when the group matches nobody.
        self._pool_members: dict[str, set[str]] | None = None
        # RADIUS username -> accounts listing it (last full read, moved by scoped reads):
        # a scoped pass touching a username held outside its scope widens.
        self._holders: UsernameHolders | None = None

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = build_source(self.settings)
        return self._source

    def close(self) -> None:
        for t in self.targets:
            t.close()
        if self._source is not None:
            self._source.close()
        self.store.close()

    # -- reading --------------------------------------------------------------------

    def read_source(self) -> Snapshot:
        snapshot: Snapshot = self.source.read()
        last = self.store.last_good_read() if self.store is not None else None
        drop = self.settings.source.max_account_drop
        # Accounts whose every row was bad still exist in billing: count them.
        seen = len(snapshot) + len(
            {p.account_id for p in snapshot.problems if p.account_id} - snapshot.accounts.keys()
        )
        if last and seen < last * (1 - drop):
            raise SuspiciousSnapshot(
                f"billing returned {seen} accounts, last good read had {last}: "
                f"a drop of more than {drop:.0%} (source.max_account_drop); nothing written"
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
        on_prepared: Callable[[PassPlan], None] | None = None,
        on_planned: Callable[[Plan], None] | None = None,
    ) -> PassPlan:
        """Read billing, allocate, observe every target and diff. Writes nothing.

        ``skip(name)`` true leaves that target out of this pass (the daemon's back-off).
        ``targets`` (names or globs, ``--target``) limits the pass to those targets.
        ``accounts``: a scoped pass for those account ids only (None: a full pass). It
        widens itself to a full pass when another account's entry sits where a scoped
        account wants one (only a full pass decides between the two).
        ``checksums=False``: the plan will not be saved (``plan`` without ``--out``,
        ``apply``, the daemon), so the targets that can skip the observed checksum do.
        A full pass calls ``on_prepared(pp)`` once billing is read and allocated (before
        any target is planned) and ``on_planned(plan)`` as each target's plan is made,
        in target order: ``plan_and_apply`` starts a target's writes there.
        """
        if accounts is not None:
            scoped = self.plan_scoped(accounts, now=now, skip=skip, targets=targets)
            if scoped is not None:
                return scoped
        chosen = self.in_scope(targets)
        targets_ = [t for t in chosen if skip is None or not skip(t.name)]
        # Targets are read while billing is read and desire is computed: a pass costs
        # the longer of the two, not their sum. Reads only; nothing is written. A target
        # that can compare while it reads (``ComparesWhileReading``) reads its answers at
        # once and compares them with the desired state once ``wanted`` is done.
        wanted: Future[Mapping[str, Mapping[Key, Resource]]] = Future()

        def observe(target: Target) -> Observed:
            if isinstance(target, ComparesWhileReading):
                return target.observe_against(wanted, checksum=checksums)
            return target.observe()

        with ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="observe") as pool:
            observing = [(t, pool.submit(_guarded, t, observe, t)) for t in targets_]
            try:
                snapshot = self.read_source()
                pp, desired, conflicts = self._prepare(snapshot, now or datetime.now(UTC))
            except BaseException as exc:
                wanted.set_exception(exc)  # the readers stop waiting, and the pass fails
                raise
            wanted.set_result(desired)
            pp.scope = tuple(targets or ())
            if on_prepared is not None:
                on_prepared(pp)
            one = self._planner(snapshot, desired, conflicts, unmatched_by_target(pp.unmatched))
            for target, future in observing:
                observed = future.result()
                outcome = (_guarded(target, one, target, observed)
                           if isinstance(observed, Observed) else observed)
                pp.kinds[target.name] = target.kind
                if isinstance(outcome, Plan):
                    pp.plans.append(outcome)
                    if on_planned is not None:
                        on_planned(outcome)
                else:
                    pp.errors[target.name] = str(outcome)
        self._remember(pp)
        return pp

    def plan_scoped(
        self,
        accounts: Collection[str],
        *,
        now: datetime | None = None,
        skip: Callable[[str], bool] | None = None,
        targets: Sequence[str] | None = None,
    ) -> PassPlan | None:
        """``plan(accounts=...)`` without the widening: None when only a full pass may
        decide (the daemon then runs that full pass where it runs full passes)."""
        chosen = [t for t in self.in_scope(targets) if skip is None or not skip(t.name)]
        scoped = self._plan_scoped(frozenset(accounts), chosen, now=now)
        if scoped is not None:
            scoped.scope = tuple(targets or ())
        return scoped

    def remembered(self) -> Remembered:
        """What this Reconciler's full passes learnt that scoped passes need."""
        return Remembered(existing={t: dict(c) for t, c in self._existing.items()},
                          pool_billing=dict(self._pool_billing), holders=self._holders,
                          pool_members=self._pool_members)

    def absorb(self, learnt: Remembered) -> None:
        """Take what a full pass made elsewhere (the daemon's full-pass process) learnt,
        as if this Reconciler had made it: scoped passes build on it."""
        self._existing = {t: dict(c) for t, c in learnt.existing.items()}
        self._pool_billing = dict(learnt.pool_billing)
        self._pool_members = learnt.pool_members
        self._holders = learnt.holders
        self._since_full = {}

    def _prepare(
        self, snapshot: Snapshot, now: datetime
    ) -> tuple[PassPlan, dict[str, Mapping[Key, Resource]], dict[str, list[Conflict]]]:
        """Allocation, desire and notes for a snapshot (full or scoped)."""
        pp = PassPlan(snapshot=snapshot, now=now, accounts=snapshot.scope)
        if snapshot.scope is None:
            # Only a full read can tell that a group matches nobody; a scoped pass deletes
            # only its own accounts' entries and is checked again by the next full pass.
            pp.unmatched = unmatched(
                selectors(self.settings),
                groups={g for a in snapshot.accounts.values() for g in a.groups},
                statuses={a.status for a in snapshot.accounts.values()},
            )
        protected = unmatched_by_target(pp.unmatched)
        allocated: Mapping[str, tuple[str, ...]] = {}
        if self.settings.pool:
            pp.allocation, pp.ipam_json, pp.ipam_refused, pp.emptied_pools = _allocate(
                self.settings, snapshot, self.store, now,
                blocked_billing=self._billing_outside(snapshot.scope),
                protected=protected.get("ipam", {}),
            )
            allocated = pp.allocation.addresses
        desired, conflicts = self.desired(snapshot, allocated)
        for p in snapshot.problems:
            pp.notes.append(f"skipped billing row: {p}")
        pp.notes.extend(snapshot.notes)
        bare = self.without_address(snapshot, allocated)
        if bare:
            pp.notes.append(
                f"{len(bare)} account(s) in mapped groups have no address, so no list "
                f"entry: {', '.join(bare[:10])}{' …' if len(bare) > 10 else ''}"
            )
        return pp, desired, conflicts

    def _planner(
        self,
        snapshot: Snapshot,
        desired: Mapping[str, Mapping[Key, Resource]],
        conflicts: Mapping[str, list[Conflict]],
        protected: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Callable[[Target, Observed], Plan]:
        # An account with a bad billing row keeps what it has on every target this
        # pass: a typo in billing must not take a customer off the network.
        tainted = {p.account_id for p in snapshot.problems if p.account_id}
        # RADIUS rows read back carry no account id: a tainted account's are known by
        # its usernames (billing's, and those provisiond wrote for it before).
        tainted_names: set[str] = set()
        if tainted and any(t.kind == "radius" for t in self.targets):
            tainted_names = {u for aid in tainted if (a := snapshot.accounts.get(aid)) is not None
                             for u in a.usernames}
            written = getattr(self.store, "usernames_written", None)
            if written is not None:
                tainted_names |= written(tainted)

        def kept(c: Change) -> bool:
            if isinstance(c, Create):
                return True
            if c.resource.account_id in tainted:
                return False
            return not (c.resource.kind in ("radusergroup", "radreply")
                        and c.resource.get("username") in tainted_names)

        def one(target: Target, observed: Observed) -> Plan:
            changes, found = diff(observed, desired.get(target.name, {}))
            if tainted:
                changes = [c for c in changes if kept(c)]
            existing = observed.existing
            if existing is None:
                existing = count_by_group(observed.owned.values())
            plan = Plan(
                target=target.name,
                kind=target.kind,
                changes=tuple(changes),
                existing=existing,
                observed_checksum=observed.checksum,
                conflicts=tuple(conflicts.get(target.name, []) + found),
                unmatched=(protected or {}).get(target.name, {}),
            )
            return target.plan_followups(plan)

        return one

    def _plan_scoped(
        self, accounts: frozenset[str], targets: Sequence[Target], *, now: datetime | None
    ) -> PassPlan | None:
        """A pass over ``accounts`` only; None when it must widen to a full pass.

        Billing is read for those ids; each target reads only their part (``Scope``):
        deletes can only hit entries of those accounts, and the safety check still
        counts each group's whole managed size.
        """
        snapshot = self.read_scoped(accounts)
        pp, desired, conflicts = self._prepare(snapshot, now or datetime.now(UTC))
        pools = self._pools_left_unmatched(accounts, snapshot, pp)
        if pools:
            # As for a list: a pool whose group may match nobody now (a typo'd group in
            # billing) is for a full pass to refuse, not to release event by event.
            log.info("scoped pass widened to a full pass: it would release every lease of "
                     "pool(s) %s, whose group may match no account", ", ".join(pools))
            return None
        scopes = self._scopes(accounts, snapshot, desired)
        observed = dict(_each(targets, lambda t: t.observe(scopes[t.name])))
        others = sorted({o for x in observed.values() if isinstance(x, Observed) for o in x.others}
                        | self._shared_usernames(accounts, snapshot, targets, observed))
        if others:
            log.info("scoped pass widened to a full pass: entries of account(s) %s sit where "
                     "account(s) of the scope want theirs", ", ".join(others[:10]))
            return None
        one = self._planner(snapshot, desired, conflicts, unmatched_by_target(pp.unmatched))
        for target in targets:
            seen = observed[target]
            outcome = _guarded(target, one, target, seen) if isinstance(seen, Observed) else seen
            pp.kinds[target.name] = target.kind
            if isinstance(outcome, Plan):
                pp.plans.append(outcome)
            else:
                pp.errors[target.name] = str(outcome)
        emptied = [e for plan in pp.plans for e in self._would_empty(plan)]
        if emptied:
            # Only a full read can tell whether the group's mapping still matches anyone
            # (a typo'd group in billing would otherwise empty the list event by event).
            log.info("scoped pass widened to a full pass: it would empty %s",
                     ", ".join(emptied[:10]))
            return None
        return pp

    def _pools_left_unmatched(
        self, accounts: frozenset[str], snapshot: Snapshot, pp: PassPlan
    ) -> list[str]:
        """Pools this scoped pass would release every lease of while their group may
        match no account (known from the last full read of this process, moved by the
        scoped reads since; without one, every such pool)."""
        members = self._pool_members
        if members is not None:
            for p in self.settings.pool:
                held = members.setdefault(p.name, set())
                for account_id in accounts:
                    account = snapshot.accounts.get(account_id)
                    if account is not None and p.group in account.groups:
                        held.add(account_id)
                    else:
                        held.discard(account_id)
        return [p for p in pp.emptied_pools if members is None or not members.get(p)]

    def _shared_usernames(
        self,
        accounts: frozenset[str],
        snapshot: Snapshot,
        targets: Sequence[Target],
        observed: Mapping[Target, Observed | str],
    ) -> set[str]:
        """Accounts outside ``accounts`` that list a RADIUS username this pass touches.

        Desire for a username billing lists on two accounts needs both (the lowest id
        keeps it), and a row read by username may be another account's: only a full
        pass decides. The holders are remembered from the last full pass of this process
        (the daemon's); ``apply --account`` from the shell, with none, reads billing for
        its accounts only and cannot tell (like billing addresses inside pools).
        """
        radius = [t for t in targets if t.kind == "radius"]
        if not radius or self._holders is None:
            return set()
        for account_id in accounts:
            account = snapshot.accounts.get(account_id)
            self._holders.replace(account_id, account.usernames if account is not None else ())
        names = {u for a in snapshot.accounts.values() for u in a.usernames}
        for target in radius:
            seen = observed.get(target)
            if isinstance(seen, Observed):
                names |= {r.get("username") for r in seen.owned.values()}
        held = self._holders.outside(names, accounts)
        if held:
            log.debug("scoped pass: usernames also held outside the scope: %s",
                      ", ".join(f"{u} ({', '.join(sorted(a))})" for u, a in sorted(held.items())[:10]))
        return {a for ids in held.values() for a in ids}

    def _would_empty(self, plan: Plan) -> list[str]:
        """Groups a scoped plan would empty (with what scoped passes since the last full
        one did), creating nothing there."""
        since = self._since_full.get(plan.target, {})
        per_group: dict[str, dict[str, int]] = {}
        for c in plan.changes:
            n = per_group.setdefault(c.resource.group, {"create": 0, "delete": 0})
            if c.action in n:
                n[c.action] += 1
        out = []
        for group, n in sorted(per_group.items()):
            held = plan.existing.get(group, 0)
            before = since.get(group, {})
            left = held + before.get("create", 0) - before.get("delete", 0) - n["delete"]
            if held and n["delete"] and not n["create"] and left <= 0:
                out.append(f"{plan.target} {group}")
        return out

    def read_scoped(self, accounts: frozenset[str]) -> Snapshot:
        """The source's read of ``accounts`` only, marked as scoped whatever the source."""
        snapshot = self.source.read(accounts=accounts)
        # Everything downstream (allocation, the drop check) tells a scoped read by its
        # scope: a source that forgets to set it must not look like a full read.
        return snapshot if snapshot.scope == accounts else replace(snapshot, scope=accounts)

    def _scopes(
        self,
        accounts: frozenset[str],
        snapshot: Snapshot,
        desired: Mapping[str, Mapping[Key, Resource]],
    ) -> dict[str, Scope]:
        """One Scope per target for a scoped pass over ``accounts``."""
        usernames = {u for a in snapshot.accounts.values() for u in a.usernames}
        if any(t.kind == "radius" for t in self.targets):
            written = getattr(self.store, "usernames_written", None)
            if written is not None:
                usernames |= written(accounts)
        return {
            t.name: Scope(
                accounts=accounts,
                wanted=desired.get(t.name, {}),
                usernames=frozenset(usernames),
                existing=self._existing.get(t.name),
            )
            for t in self.targets
        }

    def _remember(self, pp: PassPlan) -> None:
        """Keep what a full plan learnt that scoped passes need (a few numbers per list)."""
        for plan in pp.plans:
            self._existing[plan.target] = dict(plan.existing)
        self._since_full = {}
        if pp.snapshot is not None and any(t.kind == "radius" for t in self.targets):
            self._holders = _holders(pp.snapshot)
        if pp.snapshot is not None and self.settings.pool:
            self._pool_billing = _pool_billing(self.settings, pp.snapshot)
            self._pool_members = {p.name: {a.id for a in pp.snapshot.accounts.values()
                                           if p.group in a.groups} for p in self.settings.pool}

    def _count_applied(self, outcome: ApplyResult, *, scoped: bool) -> None:
        """Keep the numbers scoped passes check safety against in step with writes.

        A full apply moves the managed counts to what the target holds after it (its
        plan counted before: an empty router would stay 0); a scoped apply adds its
        deletes and updates to those since the last full pass, checked against the
        counts as that full pass left them. A target whose apply failed part-way may
        hold writes it never acknowledged (a reply lost with the connection): its counts
        are forgotten, and scoped passes count it on the target until the next full pass.
        """
        if outcome.error is not None:
            self._existing.pop(outcome.target, None)
            self._since_full.pop(outcome.target, None)
            return
        if scoped:
            since = self._since_full.setdefault(outcome.target, {})
            for change in outcome.applied:  # creates too: _would_empty counts them
                n = since.setdefault(change.resource.group, {})
                n[change.action] = n.get(change.action, 0) + 1
            return
        counts = self._existing.get(outcome.target)
        if counts is None:
            return
        # A cold apply hands over 100,000 changes per router: one tally per action and
        # group, then deletes (as applied, first) and creates once per group.
        created: dict[str, int] = {}
        deleted: dict[str, int] = {}
        for change in outcome.applied:
            if type(change) is Create:
                created[change.new.group] = created.get(change.new.group, 0) + 1
            elif type(change) is Delete:
                deleted[change.old.group] = deleted.get(change.old.group, 0) + 1
        for group in deleted.keys() | created.keys():
            counts[group] = max(0, counts.get(group, 0) - deleted.get(group, 0)) + created.get(group, 0)

    def _billing_outside(self, scope: frozenset[str] | None) -> list[str]:
        """Billing addresses inside pools, of accounts outside ``scope`` (last full read)."""
        if scope is None:
            return []
        return [a for aid, addrs in self._pool_billing.items() if aid not in scope for a in addrs]

    def in_scope(self, patterns: Sequence[str] | None) -> list[Target]:
        """The targets whose name matches any of ``patterns`` (globs); all when None.

        A pattern that matches nothing is an error: a typo must not plan nothing and
        look converged.
        """
        if not patterns:
            return list(self.targets)
        unmatched = [p for p in patterns
                     if not any(fnmatch.fnmatchcase(t.name, p) for t in self.targets)]
        if unmatched:
            known = ", ".join(t.name for t in self.targets) or "none"
            raise ConfigError([f"--target {p!r} matches no target (targets: {known})"
                               for p in unmatched])
        return [t for t in self.targets if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]

    def allocate(self, snapshot: Snapshot, now: datetime) -> Any:
        """The pass's IPAM decisions (``core.ipam.Allocation``), or None without pools."""
        if not self.settings.pool:
            return None
        return _allocate(self.settings, snapshot, self.store, now)[0]

    def observe_account(
        self, account_id: str, snapshot: Snapshot, desired: Mapping[str, Mapping[Key, Resource]]
    ) -> dict[str, Observed | str]:
        """Each target's part for one account, for ``explain``: its entries and whatever
        sits where it wants one (a scoped observe). A target that finds another account's
        entry there is read whole, so the diff sees that entry as the full pass would. A
        target's failure becomes its message."""
        accounts = frozenset({account_id})
        account = snapshot.accounts.get(account_id)
        usernames = set(account.usernames if account is not None else ())
        written = getattr(self.store, "usernames_written", None)
        if written is not None:  # a renamed username's old rows
            usernames |= written(accounts)

        def one(target: Target) -> Observed:
            wanted = {k: r for k, r in desired.get(target.name, {}).items()
                      if r.account_id == account_id}
            seen = target.observe(Scope(accounts=accounts, wanted=wanted,
                                        usernames=frozenset(usernames)))
            return target.observe() if seen.others else seen

        return {t.name: o for t, o in _each(self.targets, one)}

    def without_address(
        self, snapshot: Snapshot, allocated: Mapping[str, tuple[str, ...]]
    ) -> list[str]:
        """Ids of accounts an address list wants but that have no address at all."""
        groups = {m.group for m in self.settings.address_list if m.group is not None}
        statuses = {m.status for m in self.settings.address_list if m.status is not None}
        return sorted(
            (a.id for a in snapshot.accounts.values()
             if not a.addresses and not allocated.get(a.id)
             and (a.groups & groups or a.status in statuses)),
            key=lambda i: (len(i), i),
        )

    def desired(
        self, snapshot: Snapshot, allocated: Mapping[str, tuple[str, ...]]
    ) -> tuple[dict[str, Mapping[Key, Resource]], dict[str, list[Conflict]]]:
        s = self.settings
        mappings = [
            desire.ListMapping(
                list=m.list,
                routers=tuple(r.name for r in s.routers_for(m)),
                group=m.group,
                status=m.status,
            )
            for m in s.address_list
        ]
        per_router = desire.address_lists(
            snapshot.accounts.values(), allocated, mappings, [r.name for r in s.router],
            marker=s.marker,
        )
        desired: dict[str, Mapping[Key, Resource]] = {n: d.desired for n, d in per_router.items()}
        conflicts: dict[str, list[Conflict]] = {n: d.conflicts for n, d in per_router.items()}
        if s.radius is not None:
            from provisiond.core.radius import radius as radius_desire

            want, found = radius_desire(snapshot.accounts.values(), allocated, s.radius_group, pools=s.pool)
            desired["radius"] = want
            conflicts["radius"] = list(found)
        return desired, conflicts

    # -- writing --------------------------------------------------------------------

    def apply(
        self,
        pp: PassPlan,
        *,
        force: bool = False,
        mode: str = "apply",
        may_write: Callable[[], bool] | None = None,
        progress: ProgressFactory | None = None,
    ) -> PassResult:
        """Apply a PassPlan: leases first, then every target in parallel.

        ``may_write`` (the daemon's leader check) is asked again right before each
        target is written; a target that may not be written is reported, untouched.
        ``progress`` gets each target's number of changes and its completions.
        """
        started = time.monotonic()
        result = PassResult(plan=pp)
        if self._held(pp, result, force=force, may_write=may_write):
            result.duration = time.monotonic() - started
            return result
        run_id = self._begin(pp, mode)
        todo = [plan for plan in pp.plans if self._cleared(pp, plan, result, force=force)]
        write = self._writer(run_id, may_write, progress)
        try:
            outcomes = _each(todo, write)
        except BaseException as exc:
            self._abandon(run_id, exc)
            raise
        self._end(result, run_id, outcomes, started)
        return result

    def plan_and_apply(
        self,
        *,
        force: bool = False,
        mode: str = "apply",
        may_write: Callable[[], bool] | None = None,
        progress: ProgressFactory | None = None,
        targets: Sequence[str] | None = None,
        accounts: Collection[str] | None = None,
        while_writing: Callable[[PassPlan, Mapping[str, str]], None] | None = None,
    ) -> PassResult:
        """``apply(plan(...))``, with each target's writes started as soon as its own plan
        is made: a cold apply's routers are written while the others are still diffed.

        The same steps in the same order for every target: billing read and checked,
        leases recorded and the read recorded before any write, the safety check per
        plan. A scoped pass (``accounts``), and a pass that will not write at all (the
        leader lock lost, or an IPAM plan refused), plan first and apply after.

        ``while_writing(pp, refused)`` is called once every target is planned and the
        writes are under way (the CLI shows the plan meanwhile); what it raises is
        raised once the pass has ended. Not called for a pass planned first, nor for one
        that writes nothing (held: the leader lock lost, or its IPAM plan refused).
        """
        if accounts is not None or (may_write is not None and not may_write()):
            pp = self.plan(targets=targets, accounts=accounts, checksums=False)
            return self.apply(pp, force=force, mode=mode, may_write=may_write, progress=progress)
        started = time.monotonic()
        # Made once billing is read and allocated: the pass's result, its run's id and
        # writer (none while the pass is held: nothing is written).
        box: dict[str, Any] = {}
        writing: list[tuple[Plan, Future[Any]]] = []
        with ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="apply") as pool:

            def prepared(pp: PassPlan) -> None:
                box["result"] = PassResult(plan=pp)
                if not (pp.ipam_refused and not force):  # else held: see below
                    box["run"] = self._begin(pp, mode)
                    box["write"] = self._writer(box["run"], may_write, progress)

            def planned(plan: Plan) -> None:
                result = box["result"]
                if "run" in box and self._cleared(result.plan, plan, result, force=force):
                    writing.append((plan, pool.submit(_guarded, plan, box["write"], plan)))

            try:
                pp = self.plan(targets=targets, checksums=False, on_prepared=prepared, on_planned=planned)
            except BaseException as exc:
                if "run" in box:  # targets may be written already: their journal is kept
                    for _, future in writing:
                        future.exception()  # waits; a target's own error is in its journal
                    self._abandon(box["run"], exc)
                raise
            shown: BaseException | None = None
            if while_writing is not None and "run" in box:
                try:
                    while_writing(pp, box["result"].refused)
                except BaseException as exc:  # noqa: BLE001 - raised once the pass has ended
                    shown = exc
            outcomes = [(plan, future.result()) for plan, future in writing]
        if shown is not None:
            self._end(box["result"], box["run"], outcomes, started)
            raise shown
        if "run" not in box:  # held: apply says why, and writes nothing
            return self.apply(pp, force=force, mode=mode, may_write=may_write, progress=progress)
        result: PassResult = box["result"]
        self._end(result, box["run"], outcomes, started)
        return result

    def _held(self, pp: PassPlan, result: PassResult, *, force: bool,
              may_write: Callable[[], bool] | None) -> bool:
        """True (``result`` says why) when nothing of ``pp`` may be written."""
        if may_write is not None and not may_write():
            result.results = [ApplyResult(target=p.target, error=f"{p.target}: not applied: lost the "
                                          "leader lock") for p in pp.plans if p.changes or p.followups]
            return True
        if pp.ipam_refused and not force:
            # Every target's desired state was built from this allocation: pushing it
            # without recording its leases would break "leases before any write".
            result.refused["ipam"] = pp.ipam_refused
            for plan in pp.plans:
                if plan.changes or plan.followups:
                    result.refused[plan.target] = (f"{plan.target}: not applied: the IPAM plan "
                                                   "it builds on was refused (see ipam)")
            return True
        return False

    def _begin(self, pp: PassPlan, mode: str) -> str:
        """Start a run: its id, leases and the billing read recorded, before any write.
        A run that cannot record them ends at once, failed, with the reason."""
        if self.store is None:
            return uuid.uuid4().hex
        run_id = self.store.start_run(mode)
        try:
            if pp.allocation is not None:
                # Leases are recorded before any target write: a crash after this point
                # never hands an address out twice. A LeaseConflict (another process
                # reserved first) stops the pass before any write; the next pass re-plans.
                self.store.reserve(pp.allocation, pp.now or datetime.now(UTC))
            if pp.snapshot is not None and pp.snapshot.scope is None:
                # A scoped read's few accounts are no yardstick for the next full read.
                self.store.record_read(len(pp.snapshot), pp.snapshot.rows, pp.snapshot.read_at)
        except BaseException as exc:
            self._abandon(run_id, exc)
            raise
        return run_id

    def _abandon(self, run_id: str, exc: BaseException) -> None:
        """A run that stops on an error of its own (not a target's) is finished as failed,
        with that error: ``history`` never shows it as still running."""
        if self.store is None:
            return
        try:
            self.store.finish_run(run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"})
        except Exception as also:  # noqa: BLE001 - the first error is the one to raise
            log.warning("run %s: could not be recorded as failed: %s", run_id, also)

    def _cleared(self, pp: PassPlan, plan: Plan, result: PassResult, *, force: bool) -> bool:
        """True when ``plan`` is to be written: it has something to write, and it passes
        the safety check (unless forced; a refusal goes into ``result``)."""
        if not force:
            try:
                plan.check_safety(self.safety, earlier=(
                    self._since_full.get(plan.target) if pp.accounts is not None else None))
            except PlanRefused as exc:
                result.refused[plan.target] = str(exc)
                log.debug("%s", exc)  # shown by the CLI, logged by the daemon: once
                return False
        return bool(plan.changes or plan.followups)

    def _writer(self, run_id: str, may_write: Callable[[], bool] | None,
                progress: ProgressFactory | None) -> Callable[[Plan], ApplyResult]:
        by_name = {t.name: t for t in self.targets}

        def one(plan: Plan) -> ApplyResult:
            if may_write is not None and not may_write():
                return ApplyResult(target=plan.target,
                                   error=f"{plan.target}: not applied: lost the leader lock")
            tick = progress(plan.target, len(plan.changes)) if progress is not None else None
            # Journalled as it goes: the target hands over what it did in parts, and the
            # store writes them in the background while the target applies the rest.
            outcome = by_name[plan.target].apply(
                plan, progress=tick, report=lambda part: self._journal(run_id, part, wait=False))
            if self.store is not None:
                # A finished target's journal is on disk before its result counts: a
                # crash while slower targets still apply loses none of it.
                self.store.sync_journal()
            return outcome

        return one

    def _end(self, result: PassResult, run_id: str, outcomes: Iterable[tuple[Plan, Any]],
             started: float) -> None:
        """Every target's outcome (an ApplyResult, or its failure's message) into
        ``result``, the counts scoped passes check against, and the run finished."""
        scoped = result.plan is not None and result.plan.accounts is not None
        for plan, outcome in outcomes:
            if isinstance(outcome, str):
                outcome = ApplyResult(target=plan.target, error=outcome)
                self._journal(run_id, outcome)
            result.results.append(outcome)
            _log_result(outcome)
            self._count_applied(outcome, scoped=scoped)
        result.duration = time.monotonic() - started
        if self.store is not None:
            self.store.finish_run(run_id, "ok" if result.ok else "failed", _summary(result))

    @property
    def safety(self) -> Safety:
        s = self.settings.safety
        return Safety(s.max_delete_ratio, s.max_update_ratio, s.min_existing)

    def _journal(self, run_id: str, outcome: ApplyResult, *, wait: bool = True) -> None:
        if self.store is None:
            return
        if outcome.applied or outcome.failed or outcome.conflicts:
            # A cold apply journals 100,000 changes per router: the store makes the rows
            # straight from the changes, in chunks, never one list of dicts.
            self.store.journal_changes(run_id, outcome.target, applied=outcome.applied,
                                       failed=outcome.failed, conflicts=outcome.conflicts,
                                       wait=wait)

    def load_saved(self, doc: Mapping[str, Any]) -> PassPlan:
        """Rebuild a saved JSON plan and check every target is still as it was observed."""
        pp = PassPlan(snapshot=None, scope=tuple(doc.get("scope", {}).get("targets", ())))
        by_name = {t.name: t for t in self.targets}
        saved = {t["target"]: t for t in doc.get("targets", []) if "error" not in t}
        outside = [n for n in saved if pp.scope
                   and not any(fnmatch.fnmatchcase(n, p) for p in pp.scope)]
        if outside:
            raise PlanRefused(", ".join(outside), "in the saved plan but outside its scope "
                              f"({', '.join(pp.scope)}): the file was edited; make a new plan")
        made = doc.get("created_at")
        now = datetime.fromisoformat(made) if made else datetime.now(UTC)
        scopes: dict[str, Scope] = {}
        if doc.get("accounts") is not None:
            # A scoped plan: each target is checked over the same scope it was planned on.
            accounts = frozenset(str(a) for a in doc["accounts"])
            snapshot = self.read_scoped(accounts)
            scoped, desired, _ = self._prepare(snapshot, now)
            scopes = self._scopes(accounts, snapshot, desired)
            pp.accounts = accounts
            if self.settings.pool:
                if scoped.ipam_json != doc.get("ipam"):
                    raise StalePlan(
                        "ipam", "leases or billing changed since the plan was made; make a new plan"
                    )
                pp.allocation, pp.ipam_json, pp.now = scoped.allocation, scoped.ipam_json, now
        elif self.settings.pool:
            # The plan's addresses are only safe to push if the same leases get recorded
            # first: recompute the allocation as of the plan's time and insist it matches.
            snapshot = self.read_source()
            found = unmatched(
                selectors(self.settings),
                groups={g for a in snapshot.accounts.values() for g in a.groups},
                statuses={a.status for a in snapshot.accounts.values()},
            )
            allocation, ipam_json, pp.ipam_refused, _ = _allocate(
                self.settings, snapshot, self.store, now,
                protected=unmatched_by_target(found).get("ipam", {}))
            if ipam_json != doc.get("ipam"):
                raise StalePlan(
                    "ipam", "leases or billing changed since the plan was made; make a new plan"
                )
            pp.allocation, pp.ipam_json, pp.now = allocation, ipam_json, now

        def one(target: Target) -> Plan:
            entry = saved[target.name]
            scope = scopes.get(target.name)
            observed = target.observe(scope) if scope is not None else target.observe()
            if observed.checksum != entry.get("observed_checksum"):
                raise StalePlan(
                    target.name,
                    "its managed entries changed since the plan was made; make a new plan",
                )
            plan = Plan(
                target=target.name,
                kind=target.kind,
                changes=tuple(change_from_json(c) for c in entry.get("changes", [])),
                existing=dict(entry.get("existing", {})),
                observed_checksum=observed.checksum,
                conflicts=(),
                followups=tuple(entry.get("followups", [])),
                unmatched=dict(entry.get("unmatched", {})),
            )
            if plan.checksum() != entry.get("checksum"):
                raise PlanRefused(
                    target.name, "the saved plan's changes do not match its checksum "
                    "(the file was edited or truncated); make a new plan",
                )
            return plan

        unknown = [name for name in saved if name not in by_name]
        for name in unknown:
            pp.errors[name] = f"{name}: in the saved plan but not in the configuration"
        wanted = [by_name[n] for n in saved if n in by_name]
        for target, outcome in _each(wanted, one):
            pp.kinds[target.name] = target.kind
            if isinstance(outcome, Plan):
                pp.plans.append(outcome)
            else:
                pp.errors[target.name] = outcome
        return pp


def _guarded(item: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; a target's own failure becomes its message (str), never an exception."""
    try:
        return fn(*args)
    except (TargetError, PlanRefused) as exc:
        # Reported once, by whoever shows the result (the CLI's output, the daemon's
        # per-target line); a log line here would say it a second time.
        log.debug("%s", exc)
        return str(exc)
    except ConfigError as exc:  # e.g. this target's password_file cannot be read
        name = getattr(item, "name", getattr(item, "target", "?"))
        log.debug("%s: %s", name, exc)
        return f"{name}: {exc}"


def _each(items: Sequence[Any], fn: Callable[[Any], Any]) -> list[tuple[Any, Any]]:
    """Run ``fn`` on every item in parallel; a target's failure becomes its message (str)."""
    if not items:
        return []

    def guarded(item: Any) -> Any:
        return _guarded(item, fn, item)

    workers = min(MAX_WORKERS, len(items))
    if workers == 1:
        return [(items[0], guarded(items[0]))]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="target") as pool:
        return list(zip(items, pool.map(guarded, items)))


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


# -- building the parts from settings ------------------------------------------------


def build_source(settings: Settings) -> Source:
    """The billing Source the settings describe (SQL or Sonar)."""
    s = settings.source
    if s.type == "sonar":
        from provisiond.sources.sonar import SonarSource

        return SonarSource(s.resolved_url(), s.sonar_token(), page_size=s.sonar_page_size,
                           timeout=s.timeout)
    from provisiond.sources.sql import SqlSource

    assert s.query is not None  # settings require it for type = "sql"
    try:
        url = s.resolved_url()
    except Exception as exc:  # noqa: BLE001 - a bad URL is a source error, named
        raise SourceError(f"source.url: {exc}") from exc
    return SqlSource(url, s.query, timeout=s.timeout, display=s.display_url())


def _open_store(settings: Settings, *, readonly: bool) -> Store:
    return WritableOnDemand(settings.state.url.get_secret_value(), writable=not readonly)


class WritableOnDemand:
    """The state store, opened when first used, and read-only until the first write.

    ``apply`` reads the store (last good read, leases, the RADIUS ledger) before it
    knows whether billing can be trusted; a failed or suspicious read must leave even
    provisiond's own store untouched, so the read-write open (which creates and
    migrates the database) waits for the first write. ``writable=False`` (``plan``,
    ``explain``) never opens it read-write: a write fails as the read-only store fails it.
    """

    READS = frozenset({"last_good_read", "leases", "radreply_owned", "history", "runs",
                       "usernames_written"})

    def __init__(self, url: str, *, writable: bool = True) -> None:
        self._url = url
        self._writable = writable
        self._ro: Any = None
        self._rw: Any = None
        self._lock = threading.Lock()

    def _store(self, write: bool) -> Any:
        if self._rw is not None:
            return self._rw
        with self._lock:
            return self._open(write and self._writable)

    def _open(self, write: bool) -> Any:
        from provisiond.state.store import StateStore

        if self._rw is not None:
            return self._rw
        if write:
            if self._ro is not None:
                self._ro.close()
                self._ro = None
            self._rw = StateStore.open(self._url, readonly=False)
            return self._rw
        if self._ro is None:
            self._ro = StateStore.open(self._url, readonly=True)
        return self._ro

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store(write=name not in self.READS), name)

    def close(self) -> None:
        for store in (self._ro, self._rw):
            if store is not None:
                store.close()
        self._ro = self._rw = None


def build_targets(settings: Settings, store: Store) -> list[Target]:
    from provisiond.targets.routeros import RouterTarget

    targets: list[Target] = []
    lists_by_router: dict[str, set[str]] = {r.name: set() for r in settings.router}
    for m in settings.address_list:
        for r in settings.routers_for(m):
            lists_by_router[r.name].add(m.list)
    for r in settings.router:
        if lists_by_router[r.name]:
            targets.append(RouterTarget(r, lists=lists_by_router[r.name], marker=settings.marker))
    if settings.radius is not None:
        from provisiond.targets.radius import build_radius_target

        radius = build_radius_target(settings, store)
        if radius is not None:
            targets.append(radius)
    return targets


def _allocate(
    settings: Settings,
    snapshot: Snapshot,
    store: Store | None,
    now: datetime,
    *,
    blocked_billing: Sequence[str] = (),
    protected: Mapping[str, str] | None = None,
) -> tuple[Any, dict[str, Any], str | None, dict[str, int]]:
    """The allocation, its JSON, why apply must refuse it unforced (or None), and (a
    scoped read) the pools it would release every lease of, from the same lease read."""
    from provisiond.core import ipam

    pools = [ipam.Pool.from_settings(p) for p in settings.pool]
    leases = store.leases() if store is not None else []
    allocation = ipam.allocate(snapshot.accounts.values(), pools, leases, now,
                               scope=snapshot.scope, blocked_billing=blocked_billing)
    emptied = (emptied_pools(allocation, leases)
               if snapshot.scope is not None and allocation.releases else {})
    try:
        check_pools(allocation, leases, protected or {})
    except UnmatchedMapping as exc:
        return allocation, allocation.to_json(), str(exc), emptied
    return allocation, allocation.to_json(), None, emptied


def _holders(snapshot: Snapshot) -> UsernameHolders:
    return UsernameHolders({a.id: a.usernames for a in snapshot.accounts.values() if a.usernames})


def selectors(settings: Settings) -> list[Selector]:
    """Every mapping's selector with what it fills and where: the unmatched-mapping rule's input."""
    out = [
        Selector(f"address_list[{i}]", m.list, tuple(r.name for r in settings.routers_for(m)),
                 group=m.group, status=m.status)
        for i, m in enumerate(settings.address_list)
    ]
    out += [Selector(f"radius_group[{i}]", m.radius_group, ("radius",), group=m.group, status=m.status)
            for i, m in enumerate(settings.radius_group)]
    out += [Selector(f"pool[{i}]", p.name, ("ipam",), group=p.group)
            for i, p in enumerate(settings.pool)]
    return out


def _pool_billing(settings: Settings, snapshot: Snapshot) -> dict[str, tuple[str, ...]]:
    """Billing-assigned addresses that fall inside a pool, by account (usually none)."""
    from provisiond.core import ipam

    pools = [ipam.Pool.from_settings(p) for p in settings.pool]
    out: dict[str, tuple[str, ...]] = {}
    for account in snapshot.accounts.values():
        inside = tuple(a for a in account.addresses if any(ipam.overlaps(p, a) for p in pools))
        if inside:
            out[account.id] = inside
    return out
