"""From a billing Snapshot to each target's Plan: the mapping check, the allocation,
the desired state, and the diff of one target's observation against it.

``prepare`` runs once per pass (full or scoped) and ``planner`` makes the function that
turns one target's ``Observed`` into its ``Plan``. Pure but for the store's lease and
ledger reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from provisiond.core import desire
from provisiond.core.changes import Change, Conflict, Create, Key, Observed, Resource
from provisiond.core.diff import count_by_group, diff
from provisiond.core.ipam import Allocation
from provisiond.core.model import Match, Snapshot
from provisiond.core.plan import Plan, unmatched, unmatched_by_target
from provisiond.engine.assembly import allocate, selectors
from provisiond.engine.memory import ScopedMemory
from provisiond.engine.results import PassPlan
from provisiond.settings import Settings
from provisiond.state.base import Store
from provisiond.targets.base import Target

Desired = dict[str, Mapping[Key, Resource]]  # target -> its desired resources
Conflicts = dict[str, list[Conflict]]


def decide(settings: Settings, store: Store, snapshot: Snapshot, now: datetime,
           memory: ScopedMemory, *, force: bool = False, global_work: bool = True) -> PassPlan:
    """The pass's decisions before any target: which mappings match nobody (a full read
    only) and the allocation. A mapping that matches nobody protects what it fills
    (unless ``force``: ``apply --force``). Without ``global_work`` (another member holds
    the global claim) the allocation only reads the leases (``Allocation.standing``)."""
    pp = PassPlan(snapshot=snapshot, now=now, accounts=snapshot.scope)
    if snapshot.scope is None:
        # Only a full read can tell that a group matches nobody; a scoped pass deletes
        # only its own accounts' entries and is checked again by the next full pass.
        pp.unmatched = unmatched(
            selectors(settings),
            groups={g for a in snapshot.accounts.values() for g in a.groups},
            statuses={a.status for a in snapshot.accounts.values()},
        )
    if settings.pool:
        pp.allocation, pp.ipam_json, pp.ipam_refused, pp.emptied_pools = allocate(
            settings, snapshot, store, now,
            blocked_billing=memory.billing_outside(snapshot.scope),
            protected=unmatched_by_target(pp.unmatched).get("ipam", {}), force=force,
        )
        if not global_work:
            pp.allocation = pp.allocation.standing()
            pp.ipam_json, pp.ipam_refused = pp.allocation.to_json(), None
    return pp


def prepare(settings: Settings, store: Store, snapshot: Snapshot, now: datetime,
            memory: ScopedMemory, *, force: bool = False,
            global_work: bool = True) -> tuple[PassPlan, Desired, Conflicts]:
    """``decide``, then every target's desired state and the pass's notes."""
    pp = decide(settings, store, snapshot, now, memory, force=force, global_work=global_work)
    allocated = pp.allocation.addresses if pp.allocation is not None else {}
    wanted, conflicts = desired(settings, snapshot, allocated,
                                waiting=withheld(settings, pp.allocation))
    for p in snapshot.problems:
        pp.notes.append(f"skipped billing row: {p}")
    pp.notes.extend(snapshot.notes)
    exhausted = pp.allocation.exhausted if pp.allocation is not None else {}
    for pool, ids in sorted(exhausted.items()):
        pp.notes.append(f"pool {pool} exhausted: {len(ids)} account(s) got no address: "
                        f"{_some(ids)} (widen the pool, or free addresses with `ipam release`)")
    bare = without_address(settings, snapshot, allocated)
    if bare:
        short = {a for ids in exhausted.values() for a in ids}.intersection(bare)
        pp.notes.append(
            f"{len(bare)} account(s) in mapped groups have no address, so no list "
            f"entry: {_some(bare)}"
            + (f" ({len(short)} of them because a pool is exhausted)" if short else "")
        )
    return pp, wanted, conflicts


def _some(ids: Sequence[str], n: int = 10) -> str:
    return ", ".join(ids[:n]) + (f" … ({len(ids) - n} more)" if len(ids) > n else "")


def withheld(settings: Settings, allocation: Allocation | None) -> frozenset[str]:
    """Accounts whose RADIUS rows wait for an address: an exhausted pool had none for
    them and says ``on_exhausted = "withhold"``."""
    if allocation is None or not allocation.exhausted:
        return frozenset()
    waiting = {p.name for p in settings.pool if p.on_exhausted == "withhold"}
    return frozenset(a for pool, ids in allocation.exhausted.items() if pool in waiting for a in ids)


def desired(settings: Settings, snapshot: Snapshot,
            allocated: Mapping[str, tuple[str, ...]], *,
            waiting: frozenset[str] = frozenset()) -> tuple[Desired, Conflicts]:
    """Every target's desired resources, and the conflicts desire itself found.
    ``waiting``: accounts whose RADIUS rows are withheld (``withheld``)."""
    s = settings
    mappings = [
        desire.ListMapping(list=m.list, routers=tuple(r.name for r in s.routers_for(m)),
                           match=Match.of(m))
        for m in s.address_list
    ]
    per_router = desire.address_lists(
        snapshot.accounts.values(), allocated, mappings, [r.name for r in s.router],
        marker=s.marker,
    )
    wanted: Desired = {n: d.desired for n, d in per_router.items()}
    conflicts: Conflicts = {n: d.conflicts for n, d in per_router.items()}
    if s.radius is not None:
        from provisiond.core.radius import radius as radius_desire

        want, found = radius_desire(snapshot.accounts.values(), allocated, s.radius_group,
                                    pools=s.pool, withheld=waiting)
        wanted["radius"] = want
        conflicts["radius"] = list(found)
    return wanted, conflicts


def without_address(settings: Settings, snapshot: Snapshot,
                    allocated: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Ids of accounts an address list wants but that have no address at all."""
    matches = [Match.of(m) for m in settings.address_list]
    return sorted(
        (a.id for a in snapshot.accounts.values()
         if not a.addresses and not allocated.get(a.id)
         and any(m.selects(a) for m in matches)),
        key=lambda i: (len(i), i),
    )


def planner(pp: PassPlan, desired: Mapping[str, Mapping[Key, Resource]],
            conflicts: Mapping[str, list[Conflict]], *, targets: Sequence[Target],
            store: Store) -> Callable[[Target, Observed], Plan]:
    """The function that turns one target's observation into its Plan."""
    snapshot = pp.snapshot
    assert snapshot is not None
    protected = unmatched_by_target(pp.unmatched)
    # An account with a bad billing row keeps what it has on every target this
    # pass: a typo in billing must not take a customer off the network.
    tainted = {p.account_id for p in snapshot.problems if p.account_id}
    # RADIUS rows read back carry no account id: a tainted account's are known by
    # its usernames (billing's, and those provisiond wrote for it before).
    tainted_names: set[str] = set()
    if tainted and any(t.kind == "radius" for t in targets):
        tainted_names = {u for aid in tainted if (a := snapshot.accounts.get(aid)) is not None
                         for u in a.usernames}
        tainted_names |= store.usernames_written(tainted)

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
            unmatched=protected.get(target.name, {}),
        )
        return target.plan_followups(plan)

    return one
