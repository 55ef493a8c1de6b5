"""Fencing for state-store writes made on behalf of a router (or ``global``) when
several daemons share a PostgreSQL state store (``daemon.members`` keeps the claims).

A member hands a ``Fence`` (resource, owner, token: what ``Membership.fence`` gives)
to the write; the write goes through only while that claim still stands, so a member
that lost its claim (paused past its ttl, cut off, taken over) has its stale writes
refused instead of landing after the new owner's:

- a transaction (the journal's inserts, a checkpoint): ``lock_claim`` first, inside
  it, in READ COMMITTED. It takes the resource's advisory lock shared, then checks
  owner, token and expiry; a claim (``daemon.membersql.claim``) needs that lock
  exclusively and skips the resource while a writer holds it, so it is granted
  before this transaction or after it commits, never in the middle. A writer that
  stops inside the transaction (SIGSTOP, a hang) is ended by the server after
  ``idle_timeout`` and its lock goes with it. ``ClaimLost`` when the claim is gone.
- one statement: ``AND`` its WHERE clause with ``claim_held(fence)``; a check at the
  statement's start, without the ordering the lock gives.

PostgreSQL only (the members tables exist everywhere; membership itself does not).
``resource_of`` names the claim a target's writes need: its router's, or ``global``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from provisiond.errors import StoreError
from provisiond.state.tables import claims_t

GLOBAL = "global"  # the claim of the billing read, IP allocation, RADIUS rows and CoA
CLAIM_LOCKS = 0x70726F76  # "prov": the first key of every claim's two-key advisory lock


@dataclass(frozen=True, slots=True)
class Fence:
    resource: str
    owner: str
    token: int


class ClaimLost(StoreError):
    """A write on behalf of a resource whose claim this member no longer holds (another
    member owns it now, or the claim expired), or never held (``fence`` None): refused,
    nothing written."""

    def __init__(self, fence: Fence | None, *, resource: str = "") -> None:
        self.fence = fence
        self.resource = fence.resource if fence is not None else resource
        if fence is None:
            super().__init__(f"{resource}: write refused: this member holds no claim on it")
        else:
            super().__init__(f"{fence.resource}: write refused: {fence.owner} no longer holds "
                             f"its claim (token {fence.token})")


def resource_of(target: str) -> str:
    """The claim a target's writes need: its router's, or (RADIUS, IPAM) the global one."""
    return GLOBAL if target in ("radius", "ipam") else target


def lock_key(resource: str) -> int:
    """The second key of ``resource``'s advisory lock (a signed 32-bit hash: a collision
    only makes two resources wait for each other)."""
    return int.from_bytes(hashlib.blake2b(resource.encode(), digest_size=4).digest(), "big", signed=True)


def claim_held(fence: Fence) -> sa.ColumnElement[bool]:
    """``EXISTS`` (the claim row has this owner and token and has not expired)."""
    return sa.exists().where(
        claims_t.c.resource == fence.resource,
        claims_t.c.owner == fence.owner,
        claims_t.c.token == fence.token,
        claims_t.c.expires_at >= sa.func.now(),
    )


def lock_claim(conn: Connection, fence: Fence, *, idle_timeout: float = 10.0) -> None:
    """Inside the caller's transaction: raise ``ClaimLost`` unless the claim stands, and
    keep any other member from claiming it until the transaction ends."""
    if lock_claims(conn, [fence], idle_timeout=idle_timeout):
        raise ClaimLost(fence)


def lock_claims(conn: Connection, fences: Iterable[Fence], *, idle_timeout: float = 10.0) -> list[Fence]:
    """``lock_claim`` for several claims at once (a journal batch of several routers),
    in two statements whatever their number: the claims lost, in order; the others
    stand, and stay standing until the transaction ends."""
    fences = list(fences)
    if not fences:
        return []
    timeout = str(max(1, int(idle_timeout * 1000)))
    conn.execute(sa.select(sa.func.set_config("idle_in_transaction_session_timeout", timeout, True),
                           *(sa.func.pg_advisory_xact_lock_shared(CLAIM_LOCKS, lock_key(f.resource))
                             for f in fences)))
    # A statement of its own: its snapshot is taken after the locks are granted.
    held = conn.execute(sa.select(*(claim_held(f).label(f"held_{i}") for i, f in enumerate(fences)))).one()
    return [f for f, ok in zip(fences, held, strict=True) if ok is not True]
