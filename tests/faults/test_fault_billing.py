"""Billing faults while the routers ALREADY hold provisiond's entries: unreachable,
timing out, no rows, 50% and 60% fewer accounts, one account twice with different
names or statuses. Each is reported with a clear message and nothing is written where
it should not be (50% fewer is not a suspicious read: the lists over the safety
thresholds are held back, and only a list under ``min_existing`` changes); the pass
after the fault is repaired converges to exactly the entries billing asks for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from faultlib import Figures
from world import QUERY, World

ACCOUNTS = range(1, 21)
WRITES = ("/add", "/remove", "/set", "/enable", "/disable", "/unset")


def seeded(world: World) -> None:
    world.router("core-1")
    world.router("core-2")
    for i in ACCOUNTS:
        groups = ["Tower Hosts"] if i % 2 else ["Tower Hosts", "Credit Card Pending"]
        world.account(i, f"Tower {i}", groups=groups, ips=[f"100.64.1.{i}"],
                      status="delinquent" if i % 5 == 0 else "active")
    world.write_config()
    code, out, err = world.run("apply")
    assert code == 0, out + err


def tables(world: World) -> dict[str, list[dict[str, str]]]:
    """Every entry on every router, ids and comments included."""
    return {name: sim.entries("ip") + sim.entries("ipv6") for name, sim in world.sims.items()}


def writes(world: World) -> list[str]:
    return [f"{name} {c.path}" for name, sim in world.sims.items() for c in sim.history
            if c.path.endswith(WRITES)]


@contextmanager
def locked_accounts(world: World) -> Iterator[None]:
    """Another session holds an exclusive lock on the accounts table: reads block."""
    with world.engine.connect() as conn:
        conn.exec_driver_sql("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def test_billing_faults_write_nothing_to_routers_holding_entries(world: World, figures: Figures) -> None:
    seeded(world)
    dead = "postgresql+psycopg://postgres@127.0.0.1:9/nothing"  # discard port: refused

    def unreachable() -> Callable[[], None]:
        world.billing_url, url = dead, world.billing_url
        world.write_config()

        def undo() -> None:
            world.billing_url = url
            world.write_config()
        return undo

    def no_rows() -> Callable[[], None]:
        world.write_config(query=QUERY + " WHERE false")
        return lambda: world.write_config()

    def fewer(share: float) -> Callable[[], Callable[[], None]]:
        def fault() -> Callable[[], None]:
            gone = int(len(ACCOUNTS) * share)
            world.write_config(query=QUERY + f" WHERE a.id > {gone}")
            return lambda: world.write_config()
        return fault

    def twice(column: str, value: str) -> Callable[[], Callable[[], None]]:
        def fault() -> Callable[[], None]:
            row = {"name": "'Tower 3'", "status": "'active'"}
            row[column] = value
            world.write_config(query=QUERY + f" UNION ALL SELECT 3, {row['name']}, {row['status']}, "
                                             "'Tower Hosts', '100.64.1.3', NULL")
            return lambda: world.write_config()
        return fault

    # (fault, its message, the lists it may change: those under min_existing)
    cases: list[tuple[str, Callable[[], Callable[[], None]], str, set[str]]] = [
        ("unreachable", unreachable, "billing read from postgresql+psycopg://postgres@127.0.0.1:9/nothing failed", set()),
        ("no rows", no_rows, "billing returned 0 accounts, last good read had 20", set()),
        ("50% fewer", fewer(0.5), "10 deletes of 20 existing entries (50.0%) exceeds max_delete_ratio",
         {"delinquent"}),
        ("60% fewer", fewer(0.6), "billing returned 8 accounts, last good read had 20", set()),
        ("same account twice, two names", twice("name", "'Somebody Else'"),
         "account 3: billing returns it with different names", set()),
        ("same account twice, two statuses", twice("status", "'delinquent'"),
         "account 3: billing returns it with different statuses", set()),
    ]
    trials = figures.trials("billing faults with routers holding entries")

    def count(outcome: Counter[str], free: set[str] = set()) -> None:  # noqa: B006 - never changed
        """What this trial's routers lost or were sent, against the tables before it
        (lists in ``free`` may change)."""
        now = tables(world)
        outcome["lost"] += sum(1 for name, rows in before.items() for row in rows
                               if row not in now[name] and row["list"] not in free)
        # Removes from a list under min_existing are the held-back pass's to make.
        outcome["allowed_removes" if free else "writes"] += len(writes(world))

    def held(free: set[str]) -> dict[str, list[dict[str, str]]]:
        return {n: [r for r in rows if r["list"] not in free] for n, rows in tables(world).items()}

    def entries() -> dict[str, set[tuple[str, str, str]]]:
        return {n: {(r["list"], r["address"], r.get("comment", "")) for r in rows}
                for n, rows in tables(world).items()}

    before = tables(world)
    wanted = entries()
    for name, fault, message, free in cases:
        with trials.trial() as outcome:
            for sim in world.sims.values():
                sim.reset_history()
            undo = fault()
            for verb in ("plan", "apply"):
                code, out, err = world.run(verb)
                assert "Traceback" not in out + err
                assert message in out + err, f"{name}: {verb}: {out + err}"
            count(outcome, free)
            assert all(w.endswith("/remove") for w in writes(world)) and (free or not writes(world)), \
                f"{name}: {writes(world)}"
            assert held(free) == {n: [r for r in rows if r["list"] not in free]
                                  for n, rows in before.items()}, name
            undo()
            code, out, err = world.run("apply")
            assert code == 0, f"{name}: {out + err}"
            assert entries() == wanted, name
            world.assert_converged()
            before = tables(world)

    with trials.trial() as outcome, locked_accounts(world):  # a read that times out
        for sim in world.sims.values():
            sim.reset_history()
        world.write_config(source_extra='timeout = "1s"')
        code, out, err = world.run("apply")
        count(outcome)
        assert code == 1
        assert "canceling statement due to statement timeout" in err and "nothing written" in err
    assert writes(world) == [] and tables(world) == before
    world.write_config()
    world.assert_converged()
    trials.check("writes")
    assert len(trials.outcomes) == len(cases) + 1
