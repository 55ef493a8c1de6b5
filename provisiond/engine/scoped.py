"""Scoped passes: a pass over a few accounts (a NOTIFY, a webhook, ``--account``).

Billing is read for those ids only, and each target reads only their part (one
``core.scope.Scope`` per target): deletes can only hit entries of those accounts, and
the safety check still counts each group's whole managed size (``ScopedMemory``).
A scoped pass must leave every target as a full pass would; where only a full pass
can decide (another account's entry where a scoped one wants one, a username held
outside the scope, a list or pool it would empty), ``plan_scoped`` returns None and
the caller widens to a full pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from provisiond.core.changes import Key, Observed, Resource
from provisiond.core.model import Snapshot
from provisiond.core.scope import Scope
from provisiond.engine import planning
from provisiond.engine.assembly import pool_matches
from provisiond.engine.memory import ScopedMemory
from provisiond.engine.results import Failed, PassPlan, each, guarded
from provisiond.settings import Settings
from provisiond.sources.base import Source
from provisiond.state.base import Store
from provisiond.targets.base import Target

log = logging.getLogger("provisiond.engine")  # one name for the whole engine: log filters rely on it


def read_scoped(source: Source, accounts: frozenset[str]) -> Snapshot:
    """The source's read of ``accounts`` only, marked as scoped whatever the source."""
    snapshot = source.read(accounts=accounts)
    # Everything downstream (allocation, the drop check) tells a scoped read by its
    # scope: a source that forgets to set it must not look like a full read.
    return snapshot if snapshot.scope == accounts else replace(snapshot, scope=accounts)


def scopes(accounts: frozenset[str], snapshot: Snapshot,
           desired: Mapping[str, Mapping[Key, Resource]], *, targets: Sequence[Target],
           store: Store, memory: ScopedMemory) -> dict[str, Scope]:
    """One Scope per target for a scoped pass over ``accounts``."""
    usernames = {u for a in snapshot.accounts.values() for u in a.usernames}
    if any(t.kind == "radius" for t in targets):
        usernames |= store.usernames_written(accounts)  # a renamed username's old rows
    return {
        t.name: Scope(accounts=accounts, wanted=desired.get(t.name, {}),
                      usernames=frozenset(usernames), existing=memory.existing.get(t.name))
        for t in targets
    }


def plan_scoped(settings: Settings, source: Source, store: Store, memory: ScopedMemory, *,
                accounts: frozenset[str], targets: Sequence[Target],
                every_target: Sequence[Target], now: datetime,
                force: bool = False, global_work: bool = True) -> PassPlan | None:
    """A pass over ``accounts`` on ``targets``; None when it must widen to a full pass."""
    snapshot = read_scoped(source, accounts)
    pp, desired, conflicts = planning.prepare(settings, store, snapshot, now, memory, force=force,
                                              global_work=global_work)
    matches = pool_matches(settings)
    pools = memory.pools_left_unmatched(accounts, snapshot, matches, pp.emptied_pools) if matches else []
    if pools:
        # As for a list: a pool whose group may match nobody now (a typo'd group in
        # billing) is for a full pass to refuse, not to release event by event.
        log.info("scoped pass widened to a full pass: it would release every lease of "
                 "pool(s) %s, whose group may match no account", ", ".join(pools))
        return None
    per_target = scopes(accounts, snapshot, desired, targets=every_target, store=store,
                        memory=memory)
    observed = dict(each(targets, _name, lambda t: t.observe(per_target[t.name])))
    others = sorted({o for x in observed.values() if isinstance(x, Observed) for o in x.others}
                    | _shared_usernames(accounts, snapshot, observed, memory))
    if others:
        log.info("scoped pass widened to a full pass: entries of account(s) %s sit where "
                 "account(s) of the scope want theirs", ", ".join(others[:10]))
        return None
    one = planning.planner(pp, desired, conflicts, targets=every_target, store=store)
    for target in targets:
        seen = observed[target]
        pp.add(target.name, target.kind,
               guarded(target.name, one, target, seen) if isinstance(seen, Observed) else seen)
    emptied = [e for plan in pp.plans for e in memory.would_empty(plan)]
    if emptied:
        # Only a full read can tell whether the group's mapping still matches anyone
        # (a typo'd group in billing would otherwise empty the list event by event).
        log.info("scoped pass widened to a full pass: it would empty %s", ", ".join(emptied[:10]))
        return None
    return pp


def _name(target: Target) -> str:
    return target.name


def _shared_usernames(accounts: frozenset[str], snapshot: Snapshot,
                      observed: Mapping[Target, Observed | Failed], memory: ScopedMemory) -> set[str]:
    """Accounts outside ``accounts`` that list a RADIUS username this pass touches.

    Desire for a username billing lists on two accounts needs both (the lowest id
    keeps it), and a row read by username may be another account's: only a full pass
    decides. Known from the last full pass of this process (the daemon's); ``apply
    --account`` from the shell has none and cannot tell.
    """
    radius = [t for t in observed if t.kind == "radius"]
    if not radius:
        return set()
    names = {u for a in snapshot.accounts.values() for u in a.usernames}
    for target in radius:
        seen = observed[target]
        if isinstance(seen, Observed):
            names |= {r.get("username") for r in seen.owned.values()}
    held = memory.holders_outside(accounts, snapshot, names)
    if not held:
        return set()
    log.debug("scoped pass: usernames also held outside the scope: %s",
              ", ".join(f"{u} ({', '.join(sorted(a))})" for u, a in sorted(held.items())[:10]))
    return {a for ids in held.values() for a in ids}


def observe_account(account_id: str, snapshot: Snapshot,
                    desired: Mapping[str, Mapping[Key, Resource]], *,
                    targets: Sequence[Target], store: Store) -> dict[str, Observed | str]:
    """Each target's part for one account, for ``explain``: its entries and whatever
    sits where it wants one. A target that finds another account's entry there is read
    whole, so the diff sees that entry as the full pass would. A target's failure
    becomes its message."""
    accounts = frozenset({account_id})
    account = snapshot.accounts.get(account_id)
    usernames = set(account.usernames if account is not None else ())
    usernames |= store.usernames_written(accounts)  # a renamed username's old rows

    def one(target: Target) -> Observed:
        wanted = {k: r for k, r in desired.get(target.name, {}).items()
                  if r.account_id == account_id}
        seen = target.observe(Scope(accounts=accounts, wanted=wanted,
                                    usernames=frozenset(usernames)))
        return target.observe() if seen.others else seen

    return {t.name: o if isinstance(o, Observed) else o.message for t, o in each(targets, _name, one)}
