"""SIGKILL of ``provisiond apply`` (a real process) at 20 random moments, with a pool
configured and a PostgreSQL state store, over two simulated routers. Run twice: a pool
of single addresses, and a pool of routed /29 blocks (issue #24).

The applies are forked from a warm server (``apply_worker.py``), so a kill lands in
the apply, not in Python's imports. Kill moments (seeded): at a random command a router receives (the process dies right
after sending it; the router still runs it), at a random time within a whole apply's
duration, and while waiting for the lease lock inside the lease reservation. After
each kill an apply must converge, and over all trials:

- no lease lost: every account keeps the address it first got (hold is 24 h, so an
  account that leaves and comes back gets it back), and every member has exactly one;
- no lease doubled: no address belongs to two accounts;
- no duplicate entry on a router, and the hand-made and dynamic entries untouched;
- the journal records no change that did not happen: every ``ok`` create, delete and
  update of a router matches a command the router received (lease changes, journalled
  with the leases in one transaction, carry their account), whether it is a ``journal`` row or one
  of a ``journal_parts`` row's changes (the worker's applies write a part from
  ``PART_ROWS`` changes on, so the first apply's creates are parts; read back with the
  store's ``part_entries``).
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from dbservers import Server, fresh_database
from faultlib import Figures, Worker
from harness import wait_until
from world import World

from provisiond.sim import RouterSim
from provisiond.state.parts import part_entries
from provisiond.state.store import LEASE_LOCK, StateStore

TRIALS = 20
POOLED = range(1, 31)  # no billing address: one from the pool
BILLED = range(31, 41)  # a billing address each
# The worker's applies journal parts of this many address-list changes or more as
# journal_parts rows (200 outside this test): a few dozen accounts write them too.
PART_ROWS = 3
POOL = """
[[pool]]
name = "towers"
group = "Tower Hosts"
networks = ["100.80.0.0/24"]
hold = "24h"
"""
PREFIX_POOL = POOL.replace('"100.80.0.0/24"', '"100.80.0.0/22"') + 'prefix_length = 29\n'


@pytest.fixture
def state_url(pg_server: Server) -> Iterator[str]:
    with fresh_database(pg_server, prefix="state") as url:
        yield url


def members(world: World) -> set[int]:
    with world.engine.connect() as c:
        return {r[0] for r in c.execute(sa.text(
            "SELECT ag.account_id FROM account_groups ag JOIN groups g ON g.id = ag.group_id "
            "WHERE g.name = 'Tower Hosts'"))}


def churn(world: World, rng: random.Random, trial: int) -> None:
    """A few accounts join or leave Tower Hosts (one with a pool address at least),
    a couple are renamed."""
    inside = members(world)
    for account in [rng.choice(POOLED), *rng.sample(list(POOLED) + list(BILLED), 6)]:
        if account in inside:
            world.sql("DELETE FROM account_groups WHERE account_id = :a", a=account)
        else:
            world.sql("INSERT INTO account_groups SELECT :a, id FROM groups WHERE name = 'Tower Hosts'",
                      a=account)
    for account in rng.sample(list(POOLED) + list(BILLED), 2):
        world.sql("UPDATE accounts SET name = :n WHERE id = :a", n=f"Tower {account} v{trial}", a=account)


def journal(state_url: str, after: tuple[int, int]) -> tuple[list[dict[str, Any]], int, tuple[int, int]]:
    """Journal rows written since ``after`` (the last journal and journal_parts ids seen),
    a part's changes as rows of their own (read back by the store's ``part_entries``),
    each with its detail as a dict; how many of them came from parts; and the ids seen now."""
    engine = sa.create_engine(state_url)
    try:
        with engine.connect() as c:
            rows = [{**r, "detail": json.loads(r["detail"])} for r in c.execute(sa.text(
                "SELECT id, target, action, kind, account_id, detail, result FROM journal "
                "WHERE id > :a ORDER BY id"),
                {"a": after[0]}).mappings()]
            parts = list(c.execute(sa.text("SELECT id, target, changes, rows FROM journal_parts "
                                           "WHERE id > :a ORDER BY id"), {"a": after[1]}))
    finally:
        engine.dispose()
    seen = (max([after[0]] + [r["id"] for r in rows]), max([after[1]] + [p[0] for p in parts]))
    from_parts = 0
    for part_id, target, changes, encoded in parts:
        entries = part_entries(encoded)
        assert len(entries) == changes, f"journal_parts {part_id}: {len(entries)} of {changes} changes read"
        rows += [{"target": target, **e} for e in entries]
        from_parts += len(entries)
    return rows, from_parts, seen


def unrecorded(rows: list[dict[str, Any]], sims: dict[str, RouterSim],
               ids: dict[str, dict[str, tuple[str, str]]]) -> list[str]:
    """Journalled ``ok`` changes no router command matches."""
    bad = []
    for row in rows:
        if row["result"] != "ok":
            continue
        d = row["detail"]
        history = sims[row["target"]].history
        attrs = [dict(c.attributes) for c in history]
        if row["action"] == "create":
            hit = any(c.path.endswith("/add") and a.get("list") == d["list"]
                      and a.get("address") == d["address"] for c, a in zip(history, attrs))
        elif row["action"] == "delete":
            removed = {i for c, a in zip(history, attrs) if c.path.endswith("/remove")
                       for i in a.get(".id", "").split(",")}
            hit = d.get("id") in removed and ids[row["target"]].get(d["id"]) == (d["list"], d["address"])
        else:
            hit = any(c.path.endswith("/set") and a.get(".id") == d.get("id") for c, a in zip(history, attrs))
        if not hit:
            bad.append(f"{row['target']} {row['action']} {d.get('list')} {d.get('address')}")
    return bad


@pytest.mark.parametrize("pool", ["address", "prefix"])
def test_sigkill_apply_at_random_moments(world: World, state_url: str, pg_server: Server,
                                         figures: Figures, monkeypatch: pytest.MonkeyPatch, pool: str) -> None:
    rng = random.Random(20261126)
    sims = {name: world.router(name, command_latency=0.002) for name in ("core-1", "core-2")}
    for i in POOLED:
        world.account(i, f"Tower {i}", groups=["Tower Hosts"] if i % 3 else [])
    for i in BILLED:
        world.account(i, f"Tower {i}", groups=["Tower Hosts"] if i % 2 else [], ips=[f"100.64.2.{i}"])
    foreign = {}
    for name, sim in sims.items():
        sim.add_entry(list_name="tower-hosts", address="100.80.0.200", comment="NOC", dynamic=False)
        sim.add_entry(list_name="tower-hosts", address="100.80.0.201")  # dynamic, no comment
        foreign[name] = [e for e in sim.entries("ip", "tower-hosts")]
    world.state_url = state_url
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")],
                       extra=POOL if pool == "address" else PREFIX_POOL,
                       safety={"max_delete_ratio": 1.0, "max_update_ratio": 1.0, "min_existing": 10})
    first: dict[str, str] = {}  # account -> the address it first got from the pool
    ids: dict[str, dict[str, tuple[str, str]]] = {n: {} for n in sims}  # every .id ever seen
    duration = 0.0
    kinds: Counter[str] = Counter()
    journal_seen = (0, 0)
    trials = figures.trials("SIGKILL of apply (pool, PostgreSQL state store)" if pool == "address"
                            else "SIGKILL of apply (/29 prefix pool, PostgreSQL state store)")
    monkeypatch.setenv("PROVISIOND_TEST_PART_ROWS", str(PART_ROWS))  # read by apply_worker.py
    worker = Worker(world.config, world.tmp)
    for trial in range(TRIALS + 1):
        with trials.trial() as outcome:
            churn(world, rng, trial)
            for name, sim in sims.items():
                sim.reset_history()
                ids[name].update({e[".id"]: (e["list"], e["address"]) for e in sim.entries("ip")})
            kind = "none" if trial == 0 else rng.choice(["command"] * 3 + ["time"] * 2 + ["lease"] * 1)
            kinds[kind] += 1
            blocker = None
            if kind == "command":
                target = rng.choice(list(sims))
                sim = sims[target]
                at = sim.sentences_received + rng.randint(1, 8)
                sim.on_sentence(lambda n, words, at=at: worker.kill() if n == at else None)
            elif kind == "lease":
                blocker = sa.create_engine(state_url).connect()
                blocker.begin()
                blocker.execute(sa.select(sa.func.pg_advisory_xact_lock(LEASE_LOCK)))
            started = worker.go()
            if kind == "time":
                time.sleep(rng.uniform(0, 0.9 * duration))
                worker.kill()
            elif kind == "lease":
                assert blocker is not None
                watcher = sa.create_engine(state_url, isolation_level="AUTOCOMMIT")
                with watcher.connect() as w:  # outside the blocker's transaction: a fresh view
                    wait_until(lambda: not worker.alive() or w.execute(sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' "
                        "AND datname = current_database()")).scalar(),
                        what="the apply waiting for the lease lock")
                watcher.dispose()
                assert worker.alive(), worker.wait()
                worker.kill()
            code, err = worker.wait()
            if trial == 0:
                assert code == 0, err
            if code == 0:  # the shortest whole apply so far bounds the random moments
                elapsed = time.monotonic() - started
                duration = elapsed if trial == 0 else min(duration, elapsed)
            if blocker is not None:
                blocker.rollback()
                blocker.close()
                blocker.engine.dispose()
            for sim in sims.values():
                sim.on_sentence(None)
            outcome["killed"] += code == -signal.SIGKILL
            assert "Traceback" not in err
            for name, sim in sims.items():
                ids[name].update({e[".id"]: (e["list"], e["address"]) for e in sim.entries("ip")})
            code, out, err = world.run("apply")
            assert code == 0, f"trial {trial} ({kind}): {out + err}"
            world.assert_converged()
            # -- what was lost, doubled or made up
            with StateStore.open(state_url, readonly=True) as store:
                leases = store.leases()
            inside = {str(a) for a in members(world) if a in POOLED}
            leased = [x for x in leases if x.state == "leased"]
            by_account = Counter(x.account_id for x in leased)
            outcome["doubled"] += sum(n - 1 for n in by_account.values() if n > 1)
            outcome["doubled"] += len(leases) - len({x.address for x in leases})
            outcome["lost"] += len(inside - by_account.keys())
            for x in leases:
                if first.setdefault(x.account_id, x.address) != x.address:
                    outcome["lost"] += 1
            want = {first[a] for a in inside} | {f"100.64.2.{a}" for a in members(world) if a in BILLED}
            for name, sim in sims.items():
                rows = sim.entries("ip", "tower-hosts")
                mine = [r["address"] for r in rows if r.get("comment", "").startswith("provisiond:")]
                outcome["duplicates"] += len(mine) - len(set(mine))
                outcome["lost"] += len(want - set(mine))
                outcome["foreign_touched"] += [r for r in rows if not r.get("comment", "").startswith(
                    "provisiond:")] != foreign[name]
                assert set(mine) == want, f"trial {trial}: {name}"
                assert [r for r in rows if not r.get("comment", "").startswith("provisiond:")] == foreign[name]
            rows, from_parts, journal_seen = journal(state_url, journal_seen)
            outcome["journalled"] += len(rows)
            outcome["journalled_in_parts"] += from_parts
            if trial == 0:  # the first apply's creates, a part per router, read back as they were
                assert from_parts == len(rows) >= 2 * PART_ROWS, (from_parts, len(rows))
                assert {(r["action"], r["result"]) for r in rows} == {("create", "ok")}
            # Lease changes are journalled (target ipam) in the transaction that records
            # the leases themselves: each with its account; the routers' rows are checked
            # against the commands the routers received.
            leases_journalled = [r for r in rows if r["target"] == "ipam"]
            assert all(r["kind"] == "lease" and r["account_id"] for r in leases_journalled), trial
            rows = [r for r in rows if r["target"] != "ipam"]
            bad = unrecorded(rows, sims, ids)
            outcome["journal_made_up"] += len(bad)
            assert not bad, f"trial {trial} ({kind}): journalled but never sent: {bad}"
    worker.close()
    trials.note(moments=dict(kinds))
    totals = trials.check("doubled", "duplicates", "foreign_touched", "journal_made_up")
    assert len(trials.outcomes) == TRIALS + 1
    assert totals["killed"] >= TRIALS * 3 // 4, f"only {totals['killed']} of {TRIALS} applies were killed mid-way"
