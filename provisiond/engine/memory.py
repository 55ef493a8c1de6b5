"""What a full pass learns that later scoped passes build on: ``ScopedMemory``.

A scoped pass (a NOTIFY, a webhook, ``--account``) reads only its accounts, so some
facts come from the last full pass and are moved by the scoped writes since:

- the managed entries per target and group (the safety check's base), and the
  changes scoped passes applied since (``count_applied``, ``would_empty``);
- billing addresses inside pools, by account (an allocation must not take them);
- the accounts in each pool's group (``pools_left_unmatched``);
- who holds each RADIUS username (``holders_outside``).

One mapping rule lives here for scoped passes: a scoped pass never empties a list,
group or pool whose mapping may match nobody; only a full read can tell. The daemon
owns one ``ScopedMemory`` and hands it to its Reconciler; it is picklable, so a full
pass run in a process of its own sends back what it learnt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from provisiond.core.changes import Create, Delete
from provisiond.core.model import Match, Snapshot
from provisiond.core.plan import Plan
from provisiond.core.scope import UsernameHolders
from provisiond.targets.base import ApplyResult

Counts = dict[str, int]  # group -> managed entries


@dataclass(slots=True)
class ScopedMemory:
    existing: dict[str, Counts] = field(default_factory=dict)  # target -> group -> entries
    # Changes (creates too) scoped passes applied since the last full plan, per target,
    # group and action: they count towards every later scoped pass's safety check.
    since_full: dict[str, dict[str, Counts]] = field(default_factory=dict)
    pool_billing: dict[str, tuple[str, ...]] = field(default_factory=dict)  # account -> addresses
    # Pool -> accounts in its group; None until a full pass with pools.
    pool_members: dict[str, set[str]] | None = None
    # RADIUS username -> accounts listing it; None until a full pass with a RADIUS target.
    holders: UsernameHolders | None = None

    # -- learning from a full pass ----------------------------------------------------

    def learn(self, plans: list[Plan], snapshot: Snapshot | None, *,
              pool_matches: Mapping[str, Match] | None,
              pool_billing: dict[str, tuple[str, ...]] | None,
              radius: bool) -> None:
        """Keep what a full plan learnt: each target's managed counts, and (with the
        snapshot) the pools' members and billing addresses and the username holders.
        ``pool_matches``: pool -> which accounts it serves (None without pools)."""
        for plan in plans:  # a target left out (back-off) keeps what it had
            self.existing[plan.target] = dict(plan.existing)
            self.since_full.pop(plan.target, None)
        if snapshot is None:
            return
        if radius:
            self.holders = UsernameHolders(
                {a.id: a.usernames for a in snapshot.accounts.values() if a.usernames})
        if pool_matches:
            self.pool_billing = pool_billing or {}
            self.pool_members = {pool: {a.id for a in snapshot.accounts.values() if m.selects(a)}
                                 for pool, m in pool_matches.items()}

    def forget_counts(self) -> None:
        """After a pass that failed part-way: no count is trusted until the next full
        pass (scoped passes count each list on the target meanwhile)."""
        self.existing = {}
        self.since_full = {}

    # -- counting what was applied ------------------------------------------------------

    def count_applied(self, outcome: ApplyResult, *, scoped: bool) -> None:
        """Keep the counts in step with writes.

        A full apply moves the managed counts to what the target holds after it (its
        plan counted before it); a scoped apply adds its changes to those since the last
        full pass. A target whose apply failed may hold writes it never acknowledged (a
        reply lost with the connection): its counts are forgotten.
        """
        if outcome.error is not None:
            self.existing.pop(outcome.target, None)
            self.since_full.pop(outcome.target, None)
            return
        if scoped:
            since = self.since_full.setdefault(outcome.target, {})
            for change in outcome.applied:  # creates too: would_empty counts them
                n = since.setdefault(change.resource.group, {})
                n[change.action] = n.get(change.action, 0) + 1
            return
        counts = self.existing.get(outcome.target)
        if counts is None:
            return
        # One tally per action and group: deletes apply first, a count never goes below 0.
        created: Counts = {}
        deleted: Counts = {}
        for change in outcome.applied:
            if type(change) is Create:
                created[change.new.group] = created.get(change.new.group, 0) + 1
            elif type(change) is Delete:
                deleted[change.old.group] = deleted.get(change.old.group, 0) + 1
        for group in deleted.keys() | created.keys():
            counts[group] = max(0, counts.get(group, 0) - deleted.get(group, 0)) + created.get(group, 0)

    def since(self, target: str) -> dict[str, Counts] | None:
        """What scoped passes applied to ``target`` since the last full pass."""
        return self.since_full.get(target)

    # -- the rule: a scoped pass never empties what may match nobody --------------------

    def would_empty(self, plan: Plan) -> list[str]:
        """Groups a scoped plan would empty (with what scoped passes since the last full
        one did), creating nothing there: ``"target group"`` each."""
        since = self.since_full.get(plan.target, {})
        per_group: dict[str, Counts] = {}
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

    def pools_left_unmatched(self, accounts: frozenset[str], snapshot: Snapshot,
                             pool_matches: Mapping[str, Match], emptied: Mapping[str, int]) -> list[str]:
        """Pools a scoped pass would release every lease of while their group may match
        no account (from the last full read, moved by the scoped reads since; without
        one, every such pool). Moves the members as it goes."""
        members = self.pool_members
        if members is not None:
            for pool, match in pool_matches.items():
                held = members.setdefault(pool, set())
                for account_id in accounts:
                    account = snapshot.accounts.get(account_id)
                    if account is not None and match.selects(account):
                        held.add(account_id)
                    else:
                        held.discard(account_id)
        return [p for p in emptied if members is None or not members.get(p)]

    def billing_outside(self, scope: frozenset[str] | None) -> list[str]:
        """Billing addresses inside pools, of accounts outside ``scope`` (last full read)."""
        if scope is None:
            return []
        return [a for aid, addrs in self.pool_billing.items() if aid not in scope for a in addrs]

    def holders_outside(self, accounts: frozenset[str], snapshot: Snapshot,
                        names: set[str]) -> dict[str, set[str]] | None:
        """Usernames among ``names`` also held by accounts outside ``accounts`` (None:
        no full pass with RADIUS yet, so nobody to tell). Moves the holders of
        ``accounts`` to what the scoped read says."""
        if self.holders is None:
            return None
        for account_id in accounts:
            account = snapshot.accounts.get(account_id)
            self.holders.replace(account_id, account.usernames if account is not None else ())
        return self.holders.outside(names, accounts)
