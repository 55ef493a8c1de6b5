"""Several ``provisiond run`` members on one PostgreSQL state store (issue #25): twelve
simulated routers, billing with the notify trigger, one config file per member, and
what the tests read back afterwards:

- who wrote to which router, when: each member logs in to the routers as its own user
  (``member-a`` ...), and each router's own history records every command's user and
  arrival time (``time.monotonic()``, the same clock in every process on Linux);
- who held which claim, when: a trigger the test installs on ``provisiond_claims`` logs
  every change of a claim row with the database's clock (``clock_timestamp()``),
  turned into ``Tenure``s on the same monotonic clock (the database runs on this
  machine: its wall clock is ours);
- whether every router holds exactly what billing (and the leases) ask for.

Built on ``harness`` (billing, config files, ``DaemonProc``); ``netproxy`` puts a
breakable link between one member and the state store.
"""

from __future__ import annotations

import math
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from harness import Billing, DaemonProc, pg_kwargs, wait_until, write_config
from sqlalchemy.engine import make_url

from provisiond.sim import RouterSim

ROUTERS = tuple(f"r{i:02d}" for i in range(12))
LISTS = {"Tower Hosts": "tower-hosts", "Legacy Customers": "legacy", "Credit Card Pending": "pending"}
# A pool for the accounts of "Credit Card Pending" (they have no billing address).
POOL = '[[pool]]\nname = "pending"\ngroup = "Credit Card Pending"\nnetworks = ["100.80.0.0/22"]\n'

USER_PREFIX = "member-"
GLOBAL = "global"
WRITE_PATHS = frozenset(f"/{family}/firewall/address-list/{verb}"
                        for family in ("ip", "ipv6") for verb in ("add", "remove", "set"))
PASS_LINE = r"pass=\d+ result=(\w+) duration=\S+ changes=(\d+)"

CLAIM_LOG = """
CREATE TABLE test_claim_log (
    id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), op text NOT NULL,
    resource text NOT NULL, owner text, token bigint, expires_at timestamptz,
    old_owner text, old_token bigint, old_expires_at timestamptz);
CREATE FUNCTION test_log_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO test_claim_log (op, resource, owner, token, expires_at)
        VALUES (TG_OP, NEW.resource, NEW.owner, NEW.token, NEW.expires_at);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO test_claim_log (op, resource, owner, token, expires_at, old_owner, old_token,
                                    old_expires_at)
        VALUES (TG_OP, NEW.resource, NEW.owner, NEW.token, NEW.expires_at, OLD.owner, OLD.token,
                OLD.expires_at);
    ELSE
        INSERT INTO test_claim_log (op, resource, old_owner, old_token, old_expires_at)
        VALUES (TG_OP, OLD.resource, OLD.owner, OLD.token, OLD.expires_at);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER test_log_claim AFTER INSERT OR UPDATE OR DELETE ON provisiond_claims
    FOR EACH ROW EXECUTE FUNCTION test_log_claim();
-- When each journal row was written (its own ``at`` is when it was queued).
ALTER TABLE journal ADD COLUMN test_written_at timestamptz DEFAULT clock_timestamp();
ALTER TABLE journal_parts ADD COLUMN test_written_at timestamptz DEFAULT clock_timestamp();
"""


def member_of(user: str | None) -> str:
    """The member id behind a router login (``member-a`` -> ``a``)."""
    if user is None:
        return "?"
    return user[len(USER_PREFIX):] if user.startswith(USER_PREFIX) else user


def monotonic_of(at: datetime) -> float:
    """A database timestamp on this process's ``time.monotonic()`` clock."""
    return at.timestamp() - (time.time() - time.monotonic())


@dataclass(frozen=True, slots=True)
class Write:
    """One address-list write a router received."""

    router: str
    member: str
    at: float  # time.monotonic() at arrival
    path: str
    peer: str


@dataclass(frozen=True, slots=True)
class Tenure:
    """One member's hold of one resource's claim (one fencing token), on the monotonic
    clock: from the grant to its release or expiry (None: still held)."""

    resource: str
    owner: str
    token: int
    start: float
    end: float | None

    def covers(self, at: float) -> bool:
        return self.start <= at and (self.end is None or at <= self.end)


@dataclass(frozen=True, slots=True)
class Violation:
    write: Write
    why: str

    def __str__(self) -> str:
        w = self.write
        return f"{w.router}: {w.member} {w.path} at {w.at:.3f} ({w.peer}): {self.why}"


class Cluster:
    """The members' world. ``start(member)`` runs ``provisiond run`` for member id
    ``member`` (a config of its own; routers logged in to as ``member-<id>``)."""

    def __init__(self, tmp: Path, *, billing: Billing, state_url: str, sims: dict[str, RouterSim],
                 password_file: Path, ttl: float, pool: str = "", daemon: dict[str, Any] | None = None,
                 router_options: dict[str, Any] | None = None, members: str = "shared") -> None:
        self.tmp = tmp
        self.billing = billing
        self.state_url = state_url
        self.sims = sims
        self.password_file = password_file
        self.ttl = ttl
        self.pool = pool
        self.daemon = daemon or {}
        self.router_options = router_options or {}
        self.mode = members
        self.procs: dict[str, DaemonProc] = {}
        self.every: list[DaemonProc] = []
        self.started = time.monotonic()

    # -- members ------------------------------------------------------------------------

    def config(self, member: str, *, state_url: str | None = None) -> Path:
        settings: dict[str, Any] = {
            "interval": "300s", "notify_channel": "provisiond", "members": self.mode,
            "member_id": member, "member_ttl": f"{self.ttl}s",
        }
        settings.update(self.daemon)
        return write_config(
            self.tmp, billing_url=with_app(self.billing.url, f"pvd-{member}-billing"),
            password_file=self.password_file, routers=[(r, self.sims[r].port) for r in ROUTERS],
            username=USER_PREFIX + member, router_options=self.router_options,
            state_url=with_app(state_url or self.state_url, f"pvd-{member}-state"),
            lists=LISTS, daemon=settings, name=f"member-{member}.toml", extra=self.pool)

    def start(self, member: str, *, state_url: str | None = None) -> DaemonProc:
        n = sum(1 for p in self.every if p.log.name.startswith(f"member-{member}-"))
        proc = DaemonProc(self.config(member, state_url=state_url), log=self.tmp / f"member-{member}-{n}.log",
                          verbosity="-v")
        self.procs[member] = proc
        self.every.append(proc)
        return proc

    def kill(self, member: str) -> None:
        proc = self.procs[member]
        proc.signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.every:
            if proc.proc.poll() is None:
                try:
                    proc.signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
            proc.stop()

    def logs(self) -> str:
        """Every member's log, for a failure message."""
        return "\n".join(f"==== {p.log.name}\n" + "\n".join(p.text().splitlines()[-40:]) for p in self.every)

    def terminate_backends(self, member: str) -> int:
        """``pg_terminate_backend`` every connection of ``member`` (billing, state store,
        its membership thread); how many were ended."""
        # Only this cluster's databases: tests and benches run beside it on the same server.
        databases = [make_url(self.state_url).database, make_url(self.billing.url).database]
        with self.admin() as c:
            rows = c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND datname = ANY(%s) AND (application_name LIKE %s OR application_name = %s)",
                (databases, f"pvd-{member}-%", f"provisiond member {member}")).fetchall()
        return sum(1 for r in rows if r[0])

    # -- the state store ----------------------------------------------------------------

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(**pg_kwargs(self.state_url))

    def install_claim_log(self) -> None:
        with self.admin() as c:
            c.execute(CLAIM_LOG)

    def claims(self) -> dict[str, tuple[str | None, int, bool]]:
        """resource -> (owner, token, live) as the database has it now."""
        with self.admin() as c:
            rows = c.execute("SELECT resource, owner, token, owner IS NOT NULL AND expires_at >= now() "
                             "FROM provisiond_claims").fetchall()
        return {r[0]: (r[1], int(r[2]), bool(r[3])) for r in rows}

    def owners(self) -> dict[str, str]:
        """resource -> owner, live claims only."""
        return {r: o for r, (o, _, live) in self.claims().items() if live and o is not None}

    def spread(self, members: Iterable[str]) -> dict[str, list[str]] | None:
        """member -> routers it holds, once every router (and global) is held by one of
        ``members`` and none is asked for; else None."""
        owners = self.owners()
        wanted = self._wanted()
        chosen = set(members)
        if wanted or not {*ROUTERS, GLOBAL} <= set(owners) or not set(owners.values()) <= chosen:
            return None
        out: dict[str, list[str]] = {m: [] for m in chosen}
        for r in ROUTERS:
            out[owners[r]].append(r)
        return out

    def _wanted(self) -> bool:
        with self.admin() as c:
            return c.execute("SELECT 1 FROM provisiond_claims WHERE wanted_by IS NOT NULL").fetchone() is not None

    def tenures(self) -> list[Tenure]:
        """Every claim's tenures from the trigger's log, oldest first."""
        with self.admin() as c:
            rows = c.execute("SELECT at, resource, owner, token, expires_at FROM test_claim_log "
                             "ORDER BY id").fetchall()
            now = c.execute("SELECT now()").fetchone()
        assert now is not None
        out: list[Tenure] = []
        open_: dict[str, tuple[str, int, float, datetime | None]] = {}
        for at, resource, owner, token, expires in rows:
            cur = open_.get(resource)
            if cur is not None and (cur[0], cur[1]) == (owner, token):
                open_[resource] = (*cur[:3], expires)  # a renewal
                continue
            if cur is not None:
                end = monotonic_of(at)
                if cur[3] is not None:
                    end = min(end, monotonic_of(cur[3]))
                out.append(Tenure(resource, cur[0], cur[1], cur[2], end))
                del open_[resource]
            if owner is not None:
                open_[resource] = (owner, int(token), monotonic_of(at), expires)
        for resource, (owner, token, start, expires) in open_.items():
            ended = expires is not None and expires < now[0]
            out.append(Tenure(resource, owner, token, start, monotonic_of(expires) if ended and expires else None))
        return sorted(out, key=lambda t: (t.start, t.resource))

    def handovers(self, resource: str, since: float = 0.0) -> int:
        """Grants of ``resource`` after ``since`` (monotonic)."""
        return sum(1 for t in self.tenures() if t.resource == resource and t.start >= since)

    def journal(self) -> list[dict[str, Any]]:
        """Journalled changes, a part's changes as rows of their own (``part_entries``)."""
        from provisiond.state.parts import part_entries
        import json

        with self.admin() as c:
            members = {r[0]: json.loads(r[1]).get("member") for r in c.execute(
                "SELECT id, summary FROM runs WHERE summary IS NOT NULL")}
            rows = [{"target": r[0], "action": r[1], "kind": r[2], "account_id": r[3],
                     "detail": json.loads(r[4]), "result": r[5], "run_id": r[6], "at": r[7],
                     "written_at": r[8], "member": members.get(r[6])}
                    for r in c.execute("SELECT target, action, kind, account_id, detail, result, run_id, at, "
                                       "test_written_at FROM journal ORDER BY id")]
            for target, encoded, run_id, at, written in c.execute(
                    "SELECT target, rows, run_id, at, test_written_at FROM journal_parts ORDER BY id"):
                rows += [{"target": target, "run_id": run_id, "at": at, "written_at": written,
                          "member": members.get(run_id), **e} for e in part_entries(encoded)]
        return rows

    def adds(self) -> dict[tuple[str, str, str, str | None], float]:
        """(router, list, address, member) -> when that member's first add of it arrived;
        member None: whoever sent the first."""
        out: dict[tuple[str, str, str, str | None], float] = {}
        for name, sim in self.sims.items():
            for c in sim.history:
                if c.path.endswith("/add"):
                    a = dict(c.attributes)
                    key = (name, a.get("list", ""), a.get("address", ""))
                    out.setdefault((*key, member_of(c.user)), c.at)
                    out.setdefault((*key, None), c.at)
        return out

    def first_adder(self) -> dict[tuple[str, str, str], str]:
        out: dict[tuple[str, str, str], str] = {}
        for name, sim in self.sims.items():
            for c in sim.history:
                if c.path.endswith("/add"):
                    a = dict(c.attributes)
                    out.setdefault((name, a.get("list", ""), a.get("address", "")), member_of(c.user))
        return out

    def leases(self) -> list[tuple[str, str, str, str]]:
        with self.admin() as c:
            return [tuple(r) for r in c.execute("SELECT pool, address, account_id, state FROM leases")]  # type: ignore[misc]

    # -- the routers --------------------------------------------------------------------

    def writes(self, *, since: float = 0.0) -> list[Write]:
        out = [Write(name, member_of(c.user), c.at, c.path, c.peer)
               for name, sim in self.sims.items() for c in sim.history
               if c.path in WRITE_PATHS and c.at >= since]
        return sorted(out, key=lambda w: w.at)

    def desired(self) -> dict[str, set[str]]:
        """list -> addresses billing asks for: a member's billing address, or for an
        account without one, its lease (pooled accounts)."""
        leased: dict[str, str] = {acct: addr for _, addr, acct, state in self.leases() if state == "leased"}
        out: dict[str, set[str]] = {name: set() for name in LISTS.values()}
        with self.billing.connect() as c:
            rows = c.execute("SELECT g.name, ag.account_id, ip.address FROM account_groups ag "
                             "JOIN groups g ON g.id = ag.group_id "
                             "LEFT JOIN ip_assignments ip ON ip.account_id = ag.account_id").fetchall()
        for group, account, address in rows:
            if group not in LISTS:
                continue
            if address is None:
                address = leased.get(str(account))
                if address is None:
                    out[LISTS[group]].add(f"<no lease for {account}>")
                    continue
            out[LISTS[group]].add(address)
        return out

    def mismatches(self) -> dict[str, str]:
        """router -> what differs from billing (missing, surplus, duplicate entries)."""
        want = self.desired()
        bad: dict[str, str] = {}
        for name, sim in self.sims.items():
            problems = []
            for list_name, addresses in want.items():
                got = Counter(e["address"] for e in sim.entries("ip", list_name))
                doubled = sorted(a for a, n in got.items() if n > 1)
                missing, surplus = addresses - set(got), set(got) - addresses
                if missing or surplus or doubled:
                    problems.append(f"{list_name}: missing={len(missing)} surplus={len(surplus)} "
                                    f"doubled={doubled[:5]}")
            if problems:
                bad[name] = "; ".join(problems)
        return bad

    def wait_converged(self, timeout: float, what: str = "every router equal to billing") -> float:
        """Seconds until every router matches billing."""
        t0 = time.monotonic()
        try:
            wait_until(lambda: not self.mismatches(), timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.mismatches()}\n{self.logs()}") from None
        return time.monotonic() - t0

    def assert_idempotent(self, members: Iterable[str]) -> None:
        """A full pass in each of ``members`` (SIGHUP) changes nothing and writes nothing."""
        since = time.monotonic()
        marks = {m: self.procs[m].mark() for m in members}
        for m in marks:
            self.procs[m].signal(signal.SIGHUP)
        for m, mark in marks.items():
            # The reload's own pass: the one that swaps the configuration in (a pass in
            # flight at the signal logs its line before this).
            swapped = self.procs[m].wait_log(r"configuration swapped in", after=mark, timeout=30)
            line = self.procs[m].wait_log(PASS_LINE, after=swapped.end(), timeout=30)
            assert line.group(1) == "ok" and line.group(2) == "0", f"member {m}: {line.group(0)}"
        assert self.writes(since=since) == [], [str(w) for w in self.writes(since=since)][:10]
        assert not self.mismatches()


def with_app(url: str, name: str) -> str:
    """``url`` with an ``application_name`` (a test finds a member's backends by it)."""
    return make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


def outside_tenures(writes: Iterable[Write], tenures: Iterable[Tenure]) -> list[Violation]:
    """Writes made while their member did not hold the router's claim."""
    held: dict[tuple[str, str], list[Tenure]] = defaultdict(list)
    for t in tenures:
        held[(t.resource, t.owner)].append(t)
    out = []
    for w in writes:
        mine = held.get((w.router, w.member), [])
        if not any(t.covers(w.at) for t in mine):
            near = ", ".join(f"token {t.token} {t.start:.3f}..{t.end if t.end is None else round(t.end, 3)}"
                             for t in mine) or "never held it"
            out.append(Violation(w, f"outside its tenures ({near})"))
    return out


@dataclass(frozen=True, slots=True)
class StaleRow:
    """A journal row a stale token wrote; ``late``: seconds after the router's next grant
    (None: the change itself was sent without a claim)."""

    router: str
    address: str
    member: str
    queued: float
    written: float
    late: float | None
    tenures: str = ""  # the router's tenures around the write, for the message

    def __str__(self) -> str:
        late = "change sent without the claim" if self.late is None else f"{self.late:.3f}s after the next grant"
        return (f"{self.router} {self.address} by {self.member}: queued {self.queued:.3f}, "
                f"written {self.written:.3f}, {late} (tenures: {self.tenures})")


def stale_journal(cluster: Cluster, tenures: Iterable[Tenure]) -> list[StaleRow]:
    """Journal rows of address-list creates that a stale token should have had refused.
    The member is the run's (``runs.summary``), or for a run that never finished, the
    one whose add the router received first; the add is that member's (the router's log:
    when it arrived). A row is stale when written (``test_written_at``) once the router
    was granted again after the tenure that add was sent in (to another member, or to the
    same one under a new token), or when the add was sent outside any tenure of its
    sender at all. (A row written after a release but before the next grant is not:
    the claim's lock orders it before that grant, ``state.claims``.)"""
    by_router: dict[str, list[Tenure]] = defaultdict(list)
    for t in tenures:
        by_router[t.resource].append(t)
    for ts in by_router.values():
        ts.sort(key=lambda t: t.start)
    adds, firsts = cluster.adds(), cluster.first_adder()
    out = []
    for r in cluster.journal():
        d = r.get("detail") or {}
        if r.get("action") != "create" or "list" not in d or r.get("written_at") is None:
            continue
        key = (r["target"], d["list"], d["address"])
        member = r.get("member") or firsts.get(key)  # the run's member, else the router's log
        sent = adds.get((*key, member))
        if member is None or sent is None:
            continue
        at = monotonic_of(r["written_at"])
        ts = by_router.get(r["target"], [])
        under = next((i for i, t in enumerate(ts) if t.owner == member and t.covers(sent)), None)
        regranted = None if under is None or under + 1 >= len(ts) else ts[under + 1].start
        if under is None or (regranted is not None and at >= regranted):
            near = " ".join(f"{t.owner}:{t.token}@{t.start:.3f}..{'-' if t.end is None else f'{t.end:.3f}'}"
                            for t in ts if t.start <= at + 1 and (t.end is None or t.end >= sent - 1))
            out.append(StaleRow(r["target"], d["address"], member, monotonic_of(r["at"]), at,
                                None if under is None or regranted is None else at - regranted, near))
    return out


def summarise(rows: list[StaleRow]) -> str:
    by: dict[str, list[StaleRow]] = defaultdict(list)
    for row in rows:
        by[row.member].append(row)
    parts = []
    for member, mine in sorted(by.items()):
        lates = [r.late for r in mine if r.late is not None]
        parts.append(f"{member}: {len(mine)} rows on {sorted({r.router for r in mine})}, "
                     f"late by {min(lates, default=0):.3f}..{max(lates, default=0):.3f}s")
    firsts = {r.member: r for r in reversed(rows)}
    return "; ".join(parts) + "\ne.g.\n" + "\n".join(str(r) for r in firsts.values())


def interleaved(writes: Iterable[Write]) -> dict[str, list[str]]:
    """router -> the members whose runs of writes alternate (A B A), from the routers'
    histories alone: a member that writes again after another member wrote."""
    runs: dict[str, list[str]] = defaultdict(list)
    for w in sorted(writes, key=lambda w: w.at):
        seq = runs[w.router]
        if not seq or seq[-1] != w.member:
            seq.append(w.member)
    return {r: seq for r, seq in runs.items() if len(seq) != len(set(seq))}


def max_share(members: int) -> int:
    return math.ceil(len(ROUTERS) / members) + 1


def gaps(samples: Iterable[tuple[float, dict[str, str]]]) -> dict[str, float]:
    """resource -> the longest time it went without a live owner, from (time, owners)
    samples taken one after another."""
    longest: dict[str, float] = defaultdict(float)
    since: dict[str, float] = {}
    at = 0.0
    for at, owners in samples:
        for r in (*ROUTERS, GLOBAL):
            if r in owners:
                if r in since:
                    longest[r] = max(longest[r], at - since.pop(r))
            else:
                since.setdefault(r, at)
    for r, start in since.items():
        longest[r] = max(longest[r], at - start)
    return dict(longest)


class Background:
    """``step()`` every ``period`` seconds in a thread until ``stop`` (a sampler, churn)."""

    def __init__(self, step: Any, period: float) -> None:
        import threading

        self._step, self._period = step, period
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.errors:
            raise AssertionError(f"background step failed: {self.errors[0]!r}") from self.errors[0]

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - reported by stop()
                self.errors.append(exc)
                return


class Churn:
    """New accounts joining Tower Hosts a few at a time (``step``): every member keeps
    having something to write to its routers."""

    def __init__(self, billing: Billing, *, first: int, per_step: int = 2) -> None:
        self.billing, self.next, self.per_step = billing, first, per_step

    def step(self) -> None:
        ids = range(self.next, self.next + self.per_step)
        self.next += self.per_step
        self.billing.add(ids, "Tower Hosts")


class OwnerSampler:
    """(time, live owners) of every claim, every ``period`` seconds (``step``)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.samples: list[tuple[float, dict[str, str]]] = []

    def step(self) -> None:
        owners = self.cluster.owners()
        self.samples.append((time.monotonic(), owners))
