"""The statements of shared membership, on one member's own autocommit psycopg
connection (``daemon.members`` runs them from its thread; ``provisiond status`` may
call ``read_view`` on a connection of its own).

Every time is the database's: ``now()`` decides what is live and what expired, so no
two hosts' clocks are compared. Each statement is atomic on its own: a renewal renews
the member row and its live claims together; a claim is granted only to a member whose
row is live with this incarnation, and only when the claim is free or expired, and its
fencing token grows by one with every grant.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import psycopg
from psycopg import sql

from provisiond.daemon.pg import connect_kwargs
from provisiond.daemon.shares import ClaimRow, MemberRow, View, member_state
from provisiond.state.claims import CLAIM_LOCKS, lock_key

Conn = psycopg.Connection[tuple[Any, ...]]

_SECONDS = "make_interval(secs => %(ttl)s)"

_REGISTER = f"""
INSERT INTO provisiond_members AS m
    (member_id, incarnation, host, pid, started_at, renewed_at, expires_at)
VALUES (%(me)s, %(inc)s, %(host)s, %(pid)s, now(), now(), now() + {_SECONDS})
ON CONFLICT (member_id) DO UPDATE
SET incarnation = EXCLUDED.incarnation, host = EXCLUDED.host, pid = EXCLUDED.pid,
    started_at = EXCLUDED.started_at, renewed_at = EXCLUDED.renewed_at,
    expires_at = EXCLUDED.expires_at
WHERE m.expires_at IS NULL OR m.expires_at < now() OR m.incarnation = EXCLUDED.incarnation
RETURNING expires_at"""

# The member row and its live claims, one statement: a claim never outlives its
# member's lease (a claim's expires_at is always its member row's, or older).
_RENEW = f"""
WITH m AS (
    UPDATE provisiond_members SET renewed_at = now(), expires_at = now() + {_SECONDS}
    WHERE member_id = %(me)s AND incarnation = %(inc)s
    RETURNING expires_at
), c AS (
    UPDATE provisiond_claims SET expires_at = (SELECT expires_at FROM m)
    WHERE owner = %(me)s AND expires_at >= now() AND EXISTS (SELECT 1 FROM m)
    RETURNING resource, token
)
SELECT m.expires_at, c.resource, c.token FROM m LEFT JOIN c ON true"""

# Free, released or expired claims proposed to this member; a resource whose advisory
# lock a writer holds (state.claims.lock_claim) is skipped until the next try.
_CLAIM = """
WITH me AS (
    SELECT expires_at FROM provisiond_members
    WHERE member_id = %(me)s AND incarnation = %(inc)s AND expires_at >= now()
)
INSERT INTO provisiond_claims AS c (resource, owner, token, expires_at, claimed_at)
SELECT t.resource, %(me)s, 1, me.expires_at, now()
FROM me, unnest(%(resources)s::text[], %(keys)s::int[]) AS t(resource, key)
WHERE pg_try_advisory_xact_lock(%(space)s::int, t.key)
ON CONFLICT (resource) DO UPDATE
SET owner = EXCLUDED.owner, token = c.token + 1, expires_at = EXCLUDED.expires_at,
    claimed_at = EXCLUDED.claimed_at, wanted_by = NULL
WHERE c.owner IS NULL OR c.expires_at IS NULL OR c.expires_at < now()
RETURNING c.resource, c.token"""

_RELEASE = """
UPDATE provisiond_claims SET owner = NULL, expires_at = now()
WHERE owner = %(me)s AND resource = ANY(%(resources)s::text[])
RETURNING resource"""

_WANT = """
UPDATE provisiond_claims
SET wanted_by = CASE WHEN resource = ANY(%(want)s::text[]) THEN %(me)s END
WHERE (resource = ANY(%(want)s::text[]) AND owner IS DISTINCT FROM %(me)s
       AND wanted_by IS DISTINCT FROM %(me)s)
   OR (wanted_by = %(me)s AND NOT resource = ANY(%(want)s::text[]))"""

# Graceful stop: every claim released, the row kept as "stopped" (its home resources
# come back to it when it returns) or deleted (it leaves: they are shared out anew).
_RELEASE_ALL = """, c AS (
    UPDATE provisiond_claims SET owner = NULL, expires_at = now(), wanted_by = NULL
    WHERE owner = %(me)s AND EXISTS (SELECT 1 FROM m) RETURNING resource
)
SELECT count(*) FROM c"""
_STOP = """WITH m AS (
    UPDATE provisiond_members SET expires_at = NULL, renewed_at = now()
    WHERE member_id = %(me)s AND incarnation = %(inc)s RETURNING member_id
)""" + _RELEASE_ALL
_LEAVE = """WITH m AS (
    DELETE FROM provisiond_members
    WHERE member_id = %(me)s AND incarnation = %(inc)s RETURNING member_id
)""" + _RELEASE_ALL

_FORGET = f"""
DELETE FROM provisiond_members
WHERE coalesce(expires_at, renewed_at) < now() - {_SECONDS} AND member_id <> %(me)s"""

_MEMBERS = """
SELECT member_id, host, pid, started_at, renewed_at, expires_at, now()
FROM provisiond_members ORDER BY member_id"""

_CLAIMS = """
SELECT resource, owner, token, expires_at, claimed_at, wanted_by,
       owner IS NOT NULL AND expires_at >= now(), now()
FROM provisiond_claims ORDER BY resource"""

_STILL_OWNER = """
SELECT EXISTS (SELECT 1 FROM provisiond_claims WHERE resource = %s AND owner = %s
               AND token = %s AND expires_at >= now())"""


def connect(url: str, *, member_id: str, ttl: float, margin: float) -> Conn:
    """The member's own connection: a renewal that takes longer than ``ttl - margin``
    is useless (it would leave the member fenced), so the server cancels it; unacked
    packets fail the connection after ``ttl`` (a cut cable shows up within a lease)."""
    kwargs = connect_kwargs(url, connect_timeout=max(1.0, ttl - margin))
    kwargs["application_name"] = f"provisiond member {member_id}"[:63]
    kwargs["tcp_user_timeout"] = int(ttl * 1000)
    conn: Conn = psycopg.connect(**kwargs)
    conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(int((ttl - margin) * 1000))))
    return conn


def listen(conn: Conn, channel: str) -> None:
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def notify(conn: Conn, channel: str, payload: str) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def register(conn: Conn, *, me: str, inc: str, host: str, pid: int, ttl: float) -> bool:
    """Take the member row: a new one, or one whose lease ran out or that stopped.
    False while another incarnation of ``me`` holds a live lease."""
    row = conn.execute(_REGISTER, {"me": me, "inc": inc, "host": host, "pid": pid, "ttl": ttl}).fetchone()
    return row is not None


def holder(conn: Conn, me: str) -> str:
    row = conn.execute("SELECT host, pid, expires_at FROM provisiond_members WHERE member_id = %s",
                       (me,)).fetchone()
    return "nobody" if row is None else f"host={row[0]} pid={row[1]} expires_at={row[2]:%H:%M:%S.%f}"


def renew(conn: Conn, *, me: str, inc: str, ttl: float) -> dict[str, int] | None:
    """The live claims renewed with the row ({resource: token}); None when the row is
    no longer this incarnation's (deleted, or taken over after this one lapsed)."""
    rows = conn.execute(_RENEW, {"me": me, "inc": inc, "ttl": ttl}).fetchall()
    if not rows:
        return None
    return {str(r[1]): int(r[2]) for r in rows if r[1] is not None}


def claim(conn: Conn, resources: Collection[str], *, me: str, inc: str) -> dict[str, int]:
    """The claims granted, {resource: new token}."""
    names = sorted(set(resources))
    if not names:
        return {}
    rows = conn.execute(_CLAIM, {"me": me, "inc": inc, "resources": names,
                                 "keys": [lock_key(r) for r in names], "space": CLAIM_LOCKS}).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


# The backends still holding the fencing lock of a claim that expired more than
# ``grace`` seconds ago: a writer cut off mid-transaction (a half-open connection the
# server does not see end) that would hold every new claim of it back. Ending them is
# safe: whatever they were writing is refused anyway (its claim is gone); a member
# that released a claim gracefully commits within the grace.
_EVICT = """
SELECT c.resource, l.pid, pg_terminate_backend(l.pid)
FROM provisiond_claims c
JOIN unnest(%(resources)s::text[], %(keys)s::bigint[]) AS t(resource, key) ON t.resource = c.resource
JOIN pg_locks l ON l.locktype = 'advisory' AND l.classid = %(space)s::bigint::oid
    AND l.objid = t.key::oid AND l.objsubid = 2 AND l.granted
WHERE (c.expires_at IS NULL OR c.expires_at < now() - make_interval(secs => %(grace)s))
  AND l.pid <> pg_backend_pid()"""


def evict(conn: Conn, resources: Collection[str], *, grace: float) -> list[tuple[str, int]]:
    """End the backends that hold ``resources``' fencing locks past their claims' expiry
    (``_EVICT``); (resource, pid) of each."""
    names = sorted(set(resources))
    if not names:
        return []
    keys = [lock_key(r) & 0xFFFFFFFF for r in names]  # as pg_locks shows them (an oid)
    rows = conn.execute(_EVICT, {"resources": names, "keys": keys, "space": CLAIM_LOCKS,
                                 "grace": grace}).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def release(conn: Conn, resources: Collection[str], *, me: str) -> list[str]:
    rows = conn.execute(_RELEASE, {"me": me, "resources": sorted(set(resources))}).fetchall()
    return sorted(str(r[0]) for r in rows)


def want(conn: Conn, resources: Collection[str], *, me: str) -> None:
    """Ask the holders of ``resources`` to hand them over; withdraw every other ask."""
    conn.execute(_WANT, {"me": me, "want": sorted(set(resources))})


def stop(conn: Conn, *, me: str, inc: str, leave: bool) -> int:
    """Release every claim and mark the row stopped (or delete it); the count released."""
    row = conn.execute(_LEAVE if leave else _STOP, {"me": me, "inc": inc}).fetchone()
    return int(row[0]) if row else 0


def forget(conn: Conn, *, me: str, after: float) -> int:
    """Delete rows of members stopped or dead for longer than ``after`` seconds: their
    home resources are shared out among the others."""
    return conn.execute(_FORGET, {"me": me, "ttl": after}).rowcount


def read_view(conn: Conn, *, ttl: float) -> View:
    """Both tables, each member's state on the database clock."""
    members = conn.execute(_MEMBERS).fetchall()
    claims = conn.execute(_CLAIMS).fetchall()
    first = members[0] if members else claims[0] if claims else conn.execute("SELECT now()").fetchone()
    assert first is not None  # SELECT now() has its row
    now = first[-1]
    return View(
        now=now,
        members=tuple(MemberRow(member_id=r[0], host=r[1], pid=r[2], started_at=r[3], renewed_at=r[4],
                                expires_at=r[5], state=member_state(r[5], r[6], ttl)) for r in members),
        claims={r[0]: ClaimRow(resource=r[0], owner=r[1], token=int(r[2]), expires_at=r[3],
                               claimed_at=r[4], wanted_by=r[5], live=bool(r[6])) for r in claims},
    )


def still_owner(conn: psycopg.Connection[Any], resource: str, member_id: str, token: int) -> bool:
    """True while ``member_id`` holds ``resource``'s claim with this fencing token."""
    row = conn.execute(_STILL_OWNER, (resource, member_id, token)).fetchone()
    return bool(row and row[0])


def ids(rows: Iterable[str]) -> str:
    """Resources for a log line: ``r1,r2`` or ``-``."""
    return ",".join(rows) or "-"
