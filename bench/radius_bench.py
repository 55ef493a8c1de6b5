"""Time a RADIUS pass at scale: plan and apply N users (one managed group each) on PostgreSQL.

    python bench/radius_bench.py [--users 100000] [--addresses] [--url postgresql+psycopg://...]

Without ``--url`` it makes a throwaway database on the test PostgreSQL (tests/dbservers.py)
and loads FreeRADIUS's own postgresql/schema.sql. Phases timed: desire (pure), observe,
diff, plan_followups (session lookup), apply (one transaction), then a second pass that
must plan nothing, then moving 10% of users to another group, then removing everyone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "radius")]

from dbservers import fresh_database, postgres_server  # noqa: E402
from freeradius import load_schema  # noqa: E402
from helpers import MemoryLedger  # noqa: E402

from provisiond.core.diff import diff  # noqa: E402
from provisiond.core.model import Account  # noqa: E402
from provisiond.core.plan import Plan  # noqa: E402
from provisiond.core.radius import GroupMapping, radius  # noqa: E402
from provisiond.targets.radius import RadiusTarget  # noqa: E402

T = TypeVar("T")
MAPS = [GroupMapping("legacy", group="Legacy Customers", priority=1),
        GroupMapping("tower", group="Tower Hosts", priority=2)]


def timed(label: str, fn: Callable[[], T]) -> T:
    t = time.perf_counter()
    out = fn()
    print(f"  {label:<16} {time.perf_counter() - t:8.2f} s")
    return out


def accounts(n: int, addresses: bool, moved: int = 0) -> list[Account]:
    out = []
    for i in range(n):
        group = "Tower Hosts" if i < moved else "Legacy Customers"
        addr = (f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}",) if addresses else ()
        out.append(Account(id=str(i + 1), name=f"Customer {i + 1}", status="active",
                           groups=frozenset({group}), addresses=addr, usernames=(f"user{i + 1:06d}",)))
    return out


def one_pass(title: str, target: RadiusTarget, accts: list[Account]) -> Plan:
    print(title)
    t0 = time.perf_counter()
    desired, _ = timed("desire", lambda: radius(accts, {}, MAPS))
    observed = timed("observe", target.observe)
    changes, conflicts = timed("diff", lambda: diff(observed, desired))
    plan = Plan(target=target.name, kind=target.kind, changes=tuple(changes),
                observed_checksum=observed.checksum, conflicts=tuple(conflicts))
    plan = timed("plan_followups", lambda: target.plan_followups(plan))
    t_plan = time.perf_counter() - t0
    result = timed("apply", lambda: target.apply(plan)) if changes else None
    if result is not None and not result.ok:
        raise SystemExit(f"apply failed: {result.error}")
    print(f"  = plan {t_plan:.2f} s, total {time.perf_counter() - t0:.2f} s; changes {plan.counts()}")
    return plan


def run(url: str, n: int, addresses: bool) -> None:
    target = RadiusTarget(url, groups=["legacy", "tower"], ledger=MemoryLedger(), coa_mode="disconnect",
                          coa_modes={"legacy": "disconnect"}, timeout=600)
    try:
        one_pass(f"pass 1: create {n} users", target, accounts(n, addresses))
        second = one_pass("pass 2: nothing to do", target, accounts(n, addresses))
        assert second.changes == (), "second pass planned changes"
        one_pass(f"pass 3: move {n // 10} users to another group", target, accounts(n, addresses, n // 10))
        one_pass("pass 4: everyone leaves", target, [])
    finally:
        target.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--addresses", action="store_true", help="also a Framed-IP-Address per user")
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.url:
        run(args.url, args.users, args.addresses)
        return
    with postgres_server() as server, fresh_database(server, prefix="radbench") as url:
        load_schema(url)
        run(url, args.users, args.addresses)


if __name__ == "__main__":
    main()
