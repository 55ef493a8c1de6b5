"""The RADIUS database lost in the middle of provisiond's transaction, and the state
store unreachable or read-only.

``provisiond apply`` runs as a real process (forked from a warm server,
``apply_worker.py``). Another session holds a lock at one of
three points of the RADIUS transaction (the first statement, after the radusergroup
changes, at the very last update), so the apply waits there with part of its work
done inside the transaction; the test then terminates its database session. Nothing
is half-written: radusergroup, radreply and the ownership ledger are exactly as
before, the failure names the RADIUS target, and the next pass converges.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbservers import Server, fresh_database
from faultlib import Figures, Worker
from harness import wait_until
from world import World

sys.path.insert(0, str(Path(__file__).parent.parent / "radius"))

from freeradius import load_schema  # noqa: E402

RADIUS = """
[radius]
url = "{url}"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
priority = 1

[[radius_group]]
group = "Legacy Customers"
radius_group = "legacy"
priority = 2
"""

# (where the apply is held, the lock that holds it there)
POINTS = [
    ("first statement", "LOCK TABLE radusergroup IN EXCLUSIVE MODE"),
    ("after the radusergroup changes", "LOCK TABLE radreply IN EXCLUSIVE MODE"),
    ("the last update", "SELECT 1 FROM radreply WHERE username = 'carol' FOR UPDATE"),
]


@pytest.fixture
def radius_url(pg_server: Server) -> Iterator[str]:
    with fresh_database(pg_server, prefix="radius") as url:
        load_schema(url, "INSERT INTO radgroupreply (groupname, attribute, op, value) "
                         "VALUES ('tower', 'Mikrotik-Rate-Limit', ':=', '100M/100M'), "
                         "('legacy', 'Mikrotik-Rate-Limit', ':=', '10M/10M')")
        yield url


def radius_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return {t: sorted(tuple(r) for r in c.exec_driver_sql(f"SELECT * FROM {t}"))
                    for t in ("radusergroup", "radreply")}
    finally:
        engine.dispose()


def ledger(world: World) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(world.state_url)
    try:
        with engine.connect() as c:
            return sorted(tuple(r) for r in c.exec_driver_sql("SELECT * FROM radreply_ledger"))
    finally:
        engine.dispose()


def seed(world: World) -> None:
    world.account(1, "Alice", groups=["Tower Hosts"], ips=["100.64.3.1"], usernames=["alice"])
    world.account(2, "Bob", groups=["Tower Hosts"], ips=["100.64.3.2"], usernames=["bob"])
    world.account(3, "Carol", groups=["Legacy Customers"], ips=["100.64.3.3"], usernames=["carol"])


def churn(world: World, round_: int) -> None:
    """Deletes, creates and updates in both tables, different each round."""
    flip = round_ % 2
    world.account(1, "Alice", groups=["Legacy Customers"] if flip else ["Tower Hosts"],
                  ips=["100.64.3.1"], usernames=["alice"])
    world.account(2, "Bob", groups=[] if flip else ["Tower Hosts"], ips=["100.64.3.2"], usernames=["bob"])
    world.account(3, "Carol", groups=["Legacy Customers"], ips=[f"100.64.3.{30 + round_}"], usernames=["carol"])
    world.account(10 + round_, f"New {round_}", groups=["Tower Hosts"], ips=[f"100.64.3.{100 + round_}"],
                  usernames=[f"new{round_}"])


def test_radius_database_lost_mid_transaction(world: World, radius_url: str, figures: Figures) -> None:
    world.router("core-1")
    seed(world)
    world.write_config(extra=RADIUS.format(url=radius_url), lists=[("group", "Tower Hosts", "tower-hosts")])
    code, out, err = world.run("apply")
    assert code == 0, out + err
    admin = sa.create_engine(radius_url, isolation_level="AUTOCOMMIT")
    trials = figures.trials("RADIUS database lost mid-transaction")
    worker = Worker(world.config, world.tmp)  # applies forked from a warm server
    for round_, (point, lock) in enumerate(POINTS, start=1):
        with trials.trial() as outcome:
            churn(world, round_)
            code, plan_text, _ = world.run("plan")
            assert code == 2 and "radius (radius)" in plan_text
            before, owned = radius_rows(radius_url), ledger(world)
            with admin.connect() as blocker, admin.connect() as watch:
                blocker.exec_driver_sql("BEGIN")
                blocker.exec_driver_sql(lock)
                worker.go()
                pid = wait_until(lambda: not worker.alive() or watch.exec_driver_sql(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'").scalar(), timeout=30, what=f"the apply held at {point}")
                assert worker.alive(), worker.wait()
                watch.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")  # the database is gone
                code, text = worker.wait()
                blocker.exec_driver_sql("ROLLBACK")
            assert code == 1, text
            assert "Traceback" not in text
            assert "radius: " in text and "rolled back, nothing written" in text, text
            after = radius_rows(radius_url)
            outcome["lost"] += sum(1 for table, rows in before.items() for row in rows
                                   if row not in after.get(table, []))
            outcome["half_written"] += after != before
            outcome["ledger_changed"] += ledger(world) != owned
            assert after == before, f"{point}: half-written"
            assert ledger(world) == owned, f"{point}: the ledger kept claims of a rolled-back apply"
            code, out, err = world.run("apply")
            assert code == 0, out + err
            world.assert_converged()
    worker.close()
    admin.dispose()
    trials.check("half_written", "ledger_changed")
    assert len(trials.outcomes) == len(POINTS)


@pytest.mark.parametrize("how", ["unreachable", "read-only"])
def test_state_store_failing_writes_no_target(world: World, radius_url: str, pg_server: Server,
                                              how: str) -> None:
    sim = world.router("core-1")
    seed(world)
    with fresh_database(pg_server, prefix="state") as state_url:
        world.state_url = state_url
        world.write_config(extra=RADIUS.format(url=radius_url), lists=[("group", "Tower Hosts", "tower-hosts")])
        assert world.run("apply")[0] == 0
        churn(world, 1)
        before, entries = radius_rows(radius_url), world.entries()
        sim.reset_history()
        admin = sa.create_engine(pg_server.admin_url(), isolation_level="AUTOCOMMIT")
        name = sa.engine.make_url(state_url).database
        if how == "unreachable":
            world.state_url = "postgresql+psycopg://postgres@127.0.0.1:9/state"
            world.write_config(extra=RADIUS.format(url=radius_url), lists=[("group", "Tower Hosts", "tower-hosts")])
        else:
            with admin.connect() as c:
                c.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        code, out, err = world.run("apply")
        assert code == 1, out + err
        assert "state store" in err, err
        assert "Traceback" not in out + err
        assert [c.path for c in sim.history if not c.path.endswith(("/print", "/login"))] == []
        assert world.entries() == entries and radius_rows(radius_url) == before
        if how == "unreachable":
            world.state_url = state_url
            world.write_config(extra=RADIUS.format(url=radius_url), lists=[("group", "Tower Hosts", "tower-hosts")])
        else:
            with admin.connect() as c:
                c.exec_driver_sql(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        admin.dispose()
        assert world.run("apply")[0] == 0
        world.assert_converged()
