"""One target's Changes, the safety check on them, and the checksum that ties an apply
to what was reviewed.

Built by the reconciler from ``diff``; rendered by ``render``; applied by the target.
Safety follows octoDNS: the share of deletes and of updates against the managed
entries that exist in a group (an address list, a RADIUS group) may not exceed the
configured ratios once that group holds ``min_existing`` entries. A second rule knows
no size: a mapping whose group or status matches no account in billing (a typo such as
``"Tower Host"``) never empties its list, RADIUS group or pool. ``--force`` is the only
bypass, and the daemon never forces.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from typing import Any

from provisiond.core.changes import Change, Conflict, change_to_json
from provisiond.core.ipam import Allocation, Lease
from provisiond.core.model import Match
from provisiond.errors import TooMuchChange, UnmatchedMapping


@dataclass(frozen=True, slots=True)
class Safety:
    max_delete_ratio: float = 0.3
    max_update_ratio: float = 0.3
    min_existing: int = 10


@dataclass(frozen=True, slots=True)
class Plan:
    """The changes for one target. ``existing`` counts managed entries per group."""

    target: str
    kind: str
    changes: tuple[Change, ...]
    existing: Mapping[str, int] = field(default_factory=dict)
    observed_checksum: str = ""
    conflicts: tuple[Conflict, ...] = ()
    # Follow-up actions a target does after its changes (CoA/Disconnect for RADIUS);
    # each is a flat JSON object, rendered on its own line.
    followups: tuple[Mapping[str, Any], ...] = ()
    # Groups (list names, RADIUS groups) filled by a mapping that matches no billing
    # account this pass -> which mapping and why; such a group is never emptied unforced.
    unmatched: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        out = {"create": 0, "update": 0, "delete": 0}
        for c in self.changes:
            out[c.action] += 1
        return out

    def changes_json(self) -> list[dict[str, Any]]:
        return [change_to_json(c) for c in self.changes]

    def checksum(self) -> str:
        blob = json.dumps(
            {
                "target": self.target,
                "observed": self.observed_checksum,
                "changes": self.changes_json(),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def refusals(
        self, safety: Safety, *, earlier: Mapping[str, Mapping[str, int]] | None = None
    ) -> dict[str, str]:
        """The groups this plan may not change unforced, each with why (empty: none).

        A group is held when its changes exceed a threshold (the share of deletes or
        updates against the managed entries it holds, once it holds ``min_existing``),
        or when its changes would empty it while its mapping matches nobody in billing.
        ``earlier``: changes per group and action already applied by scoped passes since
        the last full one; they count with this plan's, so a run of small scoped passes
        cannot together do what one full pass would be refused.
        """
        per_group: dict[str, dict[str, int]] = {}
        for c in self.changes:
            g = per_group.setdefault(c.resource.group, {"delete": 0, "update": 0, "create": 0})
            g[c.action] += 1
        held: dict[str, list[str]] = {}
        for group, why in sorted(self.unmatched.items()):
            existing, mine = self.existing.get(group, 0), per_group.get(group)
            if existing and mine and mine["delete"] >= existing and not mine["create"]:
                held.setdefault(group, []).append(
                    f"{group}: {mine['delete']} deletes would empty it, but {why}")
        for group, n in (earlier or {}).items():
            if group in per_group:
                for action in ("delete", "update"):
                    per_group[group][action] += n.get(action, 0)
        for group, n in sorted(per_group.items()):
            existing = self.existing.get(group, 0)
            if existing < safety.min_existing or existing == 0:  # min_existing = 0: nothing to lose
                continue
            for action, limit in (
                ("delete", safety.max_delete_ratio),
                ("update", safety.max_update_ratio),
            ):
                ratio = n[action] / existing
                if ratio > limit:
                    held.setdefault(group, []).append(
                        f"{group}: {n[action]} {action}s of {existing} existing entries "
                        f"({ratio:.1%}) exceeds max_{action}_ratio {limit:.1%}"
                    )
        return {group: "; ".join(why) for group, why in sorted(held.items())}

    def check_safety(
        self, safety: Safety, *, earlier: Mapping[str, Mapping[str, int]] | None = None
    ) -> None:
        """Raise ``UnmatchedMapping`` (a group whose mapping matches nobody would be
        emptied) or ``TooMuchChange`` (over a threshold), naming the target, the groups
        and the numbers, when ``refusals`` holds any group."""
        held = self.refusals(safety, earlier=earlier)
        if held:
            raise refused(self, held)

    def without(self, groups: Set[str]) -> Plan:
        """This plan less the changes of ``groups``, and of the RADIUS usernames whose
        membership they change (a held group's reply rows stay with it), and the
        follow-ups only those called for: what is written while ``groups`` are held."""
        if not groups:
            return self
        held_users = {u for c in self.changes if c.resource.group in groups
                      if (u := c.resource.get("username"))}
        changes = tuple(c for c in self.changes if c.resource.group not in groups
                        and c.resource.get("username") not in held_users)
        touched = {c.resource.get("username") for c in changes}
        followups = tuple(f for f in self.followups
                          if "username" not in f or f["username"] in touched)
        return replace(self, changes=changes, followups=followups)


def refused(plan: Plan, held: Mapping[str, str]) -> TooMuchChange | UnmatchedMapping:
    """The error that says which groups of ``plan`` are held and why; the rest of the
    target is written (unless the caller refuses the whole plan)."""
    reasons = "; ".join(held.values())
    rest = "; everything else on this target is applied" if plan.without(held.keys()).changes else ""
    names = ", ".join(held)
    if any(plan.unmatched.get(group) and "would empty it" in why for group, why in held.items()):
        return UnmatchedMapping(
            plan.target, f"{reasons} (held back: {names}{rest}; a typo in the config? "
            "use --force to apply anyway)")
    return TooMuchChange(plan.target, f"{reasons} (held back: {names}{rest}; "
                         "use --force to apply anyway)")


@dataclass(frozen=True, slots=True)
class Selector:
    """One mapping's selector, for the unmatched-mapping rule.

    ``where`` is its config path (``address_list[0]``), ``fills`` the list, RADIUS group
    or pool it fills, ``targets`` the target names it writes to (routers, ``radius``,
    ``ipam`` for a pool). ``match`` is the mapping's selector (``Match.of(mapping)``);
    without one, ``group`` or ``status`` make it.
    """

    where: str
    fills: str
    targets: tuple[str, ...]
    group: str | None = None
    status: str | None = None
    match: Match | None = None

    def __post_init__(self) -> None:
        if self.match is None:
            object.__setattr__(self, "match", Match.of(self))

    def _names(self) -> list[tuple[str, frozenset[str]]]:
        m = self.match
        assert m is not None
        return [(k, names) for k, names in (("group", m.groups), ("status", m.statuses))
                if names is not None]

    def describe(self) -> str:
        parts = []
        for key, names in self._names():
            shown = ", ".join(json.dumps(n, ensure_ascii=False) for n in sorted(names))
            parts.append(f"{self.where}.{key} {shown}" if len(names) == 1
                         else f"{self.where}.{key}s [{shown}]")
        return " and ".join(parts) or self.where

    def missing(self, groups: Set[str], statuses: Set[str]) -> list[tuple[str, str]]:
        """(``group`` or ``status``, name) of each name the mapping gives that billing has not."""
        have = {"group": groups, "status": statuses}
        return [(key, n) for key, names in self._names() for n in sorted(names) if n not in have[key]]

    def matches(self, groups: Set[str], statuses: Set[str]) -> bool:
        """Whether the names it selects on can match: for each of ``group(s)`` and
        ``status(es)`` given, billing has at least one. The flags (``active``,
        ``delinquent``) never make a mapping unmatched: no delinquent account is news,
        not a typo."""
        have = {"group": groups, "status": statuses}
        return all(not names.isdisjoint(have[key]) for key, names in self._names())


def unmatched(
    selectors: Iterable[Selector], *, groups: Set[str], statuses: Set[str]
) -> list[Selector]:
    """The selectors that match no account: billing has none of its groups (or statuses)."""
    return [s for s in selectors if not s.matches(groups, statuses)]


def unmatched_by_target(found: Iterable[Selector]) -> dict[str, dict[str, str]]:
    """target -> group it fills -> why it is protected; what ``Plan.unmatched`` takes."""
    out: dict[str, dict[str, str]] = {}
    for s in found:
        for target in s.targets:
            why = f"{s.describe()} matches no account in billing"
            mine = out.setdefault(target, {})
            mine[s.fills] = f"{mine[s.fills]}; {why}" if s.fills in mine else why
    return out


def closest(name: str, candidates: Iterable[str], *, limit: int = 10) -> list[str]:
    """``candidates`` most similar to ``name`` first (case-insensitive), at most ``limit``."""

    def score(c: str) -> float:
        return difflib.SequenceMatcher(None, name.casefold(), c.casefold()).ratio()

    return sorted(set(candidates), key=lambda c: (-score(c), c))[:limit]


def check_pools(
    allocation: Allocation, leases: Sequence[Lease], unmatched_pools: Mapping[str, str]
) -> None:
    """Raise ``UnmatchedMapping`` when the allocation would release every address of a
    pool whose group matches no account (and give none out in it)."""
    problems = [f"pool {pool}: {n} releases would empty it, but {unmatched_pools[pool]}"
                for pool, n in emptied_pools(allocation, leases).items() if pool in unmatched_pools]
    if problems:
        raise UnmatchedMapping(
            "ipam", "; ".join(problems) + " (held back: the pool keeps its leases, everything "
            "else is applied; a typo in the config? use --force to apply anyway)"
        )


def emptied_pools(allocation: Allocation, leases: Sequence[Lease]) -> dict[str, int]:
    """Pools whose every leased address the allocation releases, giving none out there
    (pool -> releases)."""
    out: dict[str, int] = {}
    for pool in sorted({x.pool for x in allocation.releases}):
        leased = {x.address for x in leases if x.pool == pool and x.state == "leased"}
        released = {x.address for x in allocation.releases if x.pool == pool}
        kept = any(x.pool == pool for x in (*allocation.new, *allocation.returns))
        if leased and leased <= released and not kept:
            out[pool] = len(released)
    return out


def observed_digest(items: list[tuple[Any, ...]]) -> str:
    """A stable digest of a target's observed state; order-independent."""
    h = hashlib.sha256()
    for item in sorted(json.dumps(i, sort_keys=True, default=str) for i in items):
        h.update(item.encode())
        h.update(b"\n")
    return h.hexdigest()


class DigestSum:
    """An order-independent digest fed one item at a time (a sum of 128-bit hashes).

    For targets that read too much to keep: the same items in any order give the same
    ``hexdigest``, and nothing but a number is held while reading.
    """

    __slots__ = ("_sum", "_count")

    def __init__(self) -> None:
        self._sum = 0
        self._count = 0

    def add(self, item: str) -> None:
        h = hashlib.blake2b(item.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        self._sum += int.from_bytes(h, "big")
        self._count += 1

    def hexdigest(self) -> str:
        return f"{self._count:x}-{self._sum & ((1 << 128) - 1):032x}"
