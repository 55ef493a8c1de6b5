"""Who should serve what, among several daemons sharing one PostgreSQL state store:
pure functions from the membership tables (a ``View``) to one member's moves.

``daemon.membersql`` reads the View; ``daemon.members`` renews, then asks ``decide``
what to claim, ask for and release, and writes that back. Every member computes the
same proposals from the same View, so no member has to tell another what to do:

- ``rendezvous``: highest-random-weight hashing (blake2b of member and resource), the
  ranking everything else uses; deterministic across processes and hosts.
- ``assign``: each resource's *home* over the roster (every member row, also stopped
  and dead ones until forgotten), rendezvous with bounded loads, so no member is home
  to more than ``ceil(n/m) + 1`` resources (plain rendezvous gives one member 6 of 12
  resources over 3 members about half the time).
- ``propose``: the home when it is available (live, or uncertain: expired for less
  than one more ttl); otherwise rendezvous over the available members. The roster
  only changes when a member joins or is forgotten, so a member that stops or dies
  and comes back takes exactly its own resources back and nobody else moves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from provisiond.state.claims import GLOBAL as GLOBAL  # the billing read, IPAM, RADIUS, CoA: one member

LIVE, UNCERTAIN, DEAD, STOPPED = "live", "uncertain", "dead", "stopped"


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One daemon's row; ``state`` on the database clock when it was read."""

    member_id: str
    host: str
    pid: int
    started_at: datetime
    renewed_at: datetime
    expires_at: datetime | None  # None: stopped gracefully
    state: str  # LIVE, UNCERTAIN (expired less than one ttl ago), DEAD or STOPPED


@dataclass(frozen=True, slots=True)
class ClaimRow:
    resource: str
    owner: str | None
    token: int
    expires_at: datetime | None
    claimed_at: datetime | None
    wanted_by: str | None
    live: bool  # an owner whose claim has not expired, on the database clock


@dataclass(frozen=True, slots=True)
class View:
    """Both tables as one member last read them; ``now`` is the database clock then."""

    now: datetime
    members: tuple[MemberRow, ...]
    claims: Mapping[str, ClaimRow]

    def ids(self, *states: str) -> set[str]:
        return {m.member_id for m in self.members if m.state in states}


@dataclass(frozen=True, slots=True)
class Moves:
    """What one member does after a renewal (resources sorted, for stable logs)."""

    claim: tuple[str, ...] = ()  # proposed to it, and the claim is free or expired
    want: tuple[str, ...] = ()  # proposed to it, and another member holds a live claim
    release: tuple[str, ...] = ()  # held, and wanted by the live member it is proposed to


def member_state(expires_at: datetime | None, now: datetime, ttl: float) -> str:
    if expires_at is None:
        return STOPPED
    left = (expires_at - now).total_seconds()
    return LIVE if left >= 0 else UNCERTAIN if left >= -ttl else DEAD


def _weight(member: str, resource: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{resource}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(resource: str, members: Iterable[str]) -> str:
    """The member with the highest weight for ``resource`` (ties: the greater id)."""
    best = max(members, key=lambda m: (_weight(m, resource), m), default=None)
    if best is None:
        raise ValueError(f"no member to serve {resource}")
    return best


def assign(resources: Iterable[str], members: Iterable[str], *, slack: int = 1) -> dict[str, str]:
    """Rendezvous with bounded loads: (resource, member) pairs by falling weight, each
    resource to the first member not yet at ``ceil(n/m) + slack``, n counting the
    routers only (``GLOBAL`` takes a place too, so no member is home to more routers
    than that). Deterministic in the two sets, whatever their order."""
    rs, ms = sorted(set(resources)), sorted(set(members))
    if not ms:
        return {}
    cap = math.ceil(len(set(rs) - {GLOBAL}) / len(ms)) + slack
    pairs = sorted(((_weight(m, r), m, r) for r in rs for m in ms), reverse=True)
    load = dict.fromkeys(ms, 0)
    out: dict[str, str] = {}
    for _, m, r in pairs:
        if r not in out and load[m] < cap:
            out[r] = m
            load[m] += 1
    return out


def propose(resources: Iterable[str], roster: Collection[str],
            available: Collection[str]) -> dict[str, str]:
    """Each resource's proposed owner: its home over ``roster`` when that member is
    available, else the rendezvous choice among the available ones."""
    if not available:
        return {}
    homes = assign(resources, roster)
    return {r: home if home in available else rendezvous(r, available) for r, home in homes.items()}


def decide(view: View, *, me: str, resources: Sequence[str], held: Collection[str]) -> Moves:
    """``me``'s moves, given what its renewal confirmed it ``held``. A live claim is
    only handed over on request (``wanted_by``) of the live member it is proposed to:
    two members whose configurations disagree for a moment leave it where it is."""
    live = view.ids(LIVE)
    if me not in live:  # a lapsed member holds nothing new and hands nothing over
        return Moves()
    proposed = propose(resources, view.ids(LIVE, UNCERTAIN, DEAD, STOPPED), view.ids(LIVE, UNCERTAIN))
    claim, want, release = [], [], []
    for r in sorted(set(resources)):
        row = view.claims.get(r)
        if proposed.get(r) == me and r not in held:
            if row is None or not row.live:
                claim.append(r)
            elif row.owner != me:
                want.append(r)
    for r in sorted(held):
        to = proposed.get(r)
        row = view.claims.get(r)
        if r not in proposed or (to != me and to in live and row is not None and row.wanted_by == to):
            release.append(r)
    return Moves(claim=tuple(claim), want=tuple(want), release=tuple(release))


def owners(view: View) -> dict[str, dict[str, int]]:
    """member id -> {resource: token} of its live claims."""
    out: dict[str, dict[str, int]] = {}
    for row in view.claims.values():
        if row.live and row.owner is not None:
            out.setdefault(row.owner, {})[row.resource] = row.token
    return out
