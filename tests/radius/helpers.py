"""Builders for the RADIUS tests: accounts, an in-memory ledger, one sync pass."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa

from provisiond.core.changes import Conflict
from provisiond.core.diff import diff
from provisiond.core.ipam import Pool
from provisiond.core.model import Account
from provisiond.core.plan import Plan
from provisiond.core.radius import GroupMapping, radius
from provisiond.targets.base import ApplyResult
from provisiond.targets.radius import RadiusTarget

LEGACY = GroupMapping(radius_group="legacy", group="Legacy Customers", priority=1)
TOWER = GroupMapping(radius_group="tower", group="Tower Hosts", priority=2)


def account(
    id: str, *usernames: str, groups: Iterable[str] = ("Legacy Customers",), addresses: Sequence[str] = (),
    status: str = "active",
) -> Account:
    return Account(
        id=id, name=f"Customer {id}", status=status, groups=frozenset(groups),
        addresses=tuple(addresses), usernames=tuple(sorted(usernames)),
    )


class MemoryLedger:
    """The RadiusLedger protocol, in memory (the real one lives in the StateStore)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], str] = {}
        self.fail = False

    def radreply_owned(self) -> set[tuple[str, str]]:
        return set(self.rows)

    def radius_accounts(self, usernames: Iterable[str]) -> dict[str, str]:
        wanted = set(usernames)
        return {u: acct for (u, _), acct in self.rows.items() if u in wanted}

    def radreply_record(
        self, *, added: Iterable[tuple[str, str, str]], removed: Iterable[tuple[str, str]]
    ) -> None:
        if self.fail:
            raise RuntimeError("ledger down")
        for u, a, acct in added:
            self.rows[(u, a)] = acct
        for u, a in removed:
            self.rows.pop((u, a), None)


def make_plan(
    target: RadiusTarget, accounts: Iterable[Account], mappings: Sequence[GroupMapping] = (LEGACY,),
    allocated: Mapping[str, tuple[str, ...]] | None = None, pools: Sequence[Pool] = (),
) -> tuple[Plan, list[Conflict]]:
    desired, conflicts = radius(accounts, allocated or {}, mappings, pools=pools)
    observed = target.observe()
    changes, found = diff(observed, desired)
    plan = Plan(
        target=target.name, kind=target.kind, changes=tuple(changes),
        observed_checksum=observed.checksum, conflicts=tuple(conflicts + found),
    )
    return target.plan_followups(plan), conflicts + found


def sync(
    target: RadiusTarget, accounts: Iterable[Account], mappings: Sequence[GroupMapping] = (LEGACY,),
    allocated: Mapping[str, tuple[str, ...]] | None = None, pools: Sequence[Pool] = (),
) -> tuple[Plan, ApplyResult]:
    accounts = list(accounts)
    plan, _ = make_plan(target, accounts, mappings, allocated, pools)
    result = target.apply(plan)
    return plan, result


def rows(url: str, table: str, *cols: str) -> list[tuple[str, ...]]:
    """Every row of ``table`` as sorted tuples of strings (dialect-neutral)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            got = conn.execute(sa.text(f"SELECT {', '.join(cols)} FROM {table}")).all()
    finally:
        engine.dispose()
    return sorted(tuple(str(v) for v in r) for r in got)


def execute(url: str, *statements: str, **params: object) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for s in statements:
                conn.execute(sa.text(s), params)
    finally:
        engine.dispose()
