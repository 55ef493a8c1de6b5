"""``provisiond ipam``: look at the lease table, and release an account's address by hand.

An edge, like the rest of the CLI: ``cli.main`` adds the subcommand (``add_parser``) and
dispatches to ``run`` with the loaded Settings. ``list`` and ``show`` open the
StateStore read-only (nothing is created or migrated); ``release`` writes, putting the
account's leased address(es) into hold for the pool's ``hold`` — the next pass gives
a released address back if the account is still in the pool's group and the address
is still in the pool, so ``release`` is how an operator frees a lease that a shrunk
pool reported as out of pool, or one whose pool was removed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from provisiond.errors import StoreError
from provisiond.core.ipam import Lease, Pool, pool_usage
from provisiond.core.model import Match
from provisiond.settings import Settings

EXIT_OK, EXIT_ERROR = 0, 1


def add_parser(subparsers: Any) -> None:
    """Add ``ipam list|show|release`` to the top-level subparsers."""
    p = subparsers.add_parser("ipam", help="show IP pool leases; release one by hand")
    sub = p.add_subparsers(dest="ipam_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", help="leases and pool utilisation (read-only)")
    ls.add_argument("--pool", metavar="NAME", help="only this pool")
    ls.add_argument("--format", choices=["text", "json"], default="text")
    show = sub.add_parser("show", help="one account's leases (read-only)")
    show.add_argument("account", metavar="ACCOUNT")
    show.add_argument("--format", choices=["text", "json"], default="text")
    rel = sub.add_parser("release", help="release an account's address into hold")
    rel.add_argument("account", metavar="ACCOUNT")
    rel.add_argument("--pool", metavar="NAME", help="only in this pool")


def run(args: argparse.Namespace, settings: Settings, *, now: datetime | None = None) -> int:
    """Run one ``ipam`` action; the exit code (1: error or nothing found)."""
    now = now or datetime.now(UTC)
    pools = [Pool.from_settings(p) for p in settings.pool]
    url = settings.state.url.get_secret_value()
    # Imported here: every command builds this parser, and the store's SQLAlchemy is a
    # large part of a ``plan``'s start-up.
    from provisiond.state.store import StateStore

    try:
        if args.ipam_command == "release":
            return _release(url, args.account, args.pool, pools, now, settings=settings)
        with StateStore.open(url, readonly=True) as store:
            leases = store.leases()
        if args.ipam_command == "list":
            return _list(leases, pools, args.pool, args.format, now)
        return _show(leases, args.account, args.format, now)
    except StoreError as exc:
        print(f"provisiond ipam: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _list(
    leases: Sequence[Lease], pools: Sequence[Pool], only: str | None, fmt: str, now: datetime
) -> int:
    if only is not None:
        if not any(p.name == only for p in pools) and not any(x.pool == only for x in leases):
            print(f"provisiond ipam: no pool named {only!r} in the config or the leases", file=sys.stderr)
            return EXIT_ERROR
        leases = [x for x in leases if x.pool == only]
        pools = [p for p in pools if p.name == only]
    usage = [pool_usage(p, leases, now) for p in pools]
    if fmt == "json":
        print(json.dumps({"leases": [x.to_json() for x in leases], "pools": usage}, indent=2))
        return EXIT_OK
    _table(leases, now)
    for p, u in zip(pools, usage):
        unit = "addresses" if p.step == 1 else f"/{p.length} prefixes"
        print(
            f"pool {u['name']}: {u['size']} {unit}, {u['leased']} leased, {u['held']} held, "
            f"{u['free']} free ({u['utilisation']:.1%} used)"
        )
    return EXIT_OK


def _show(leases: Sequence[Lease], account: str, fmt: str, now: datetime) -> int:
    mine = [x for x in leases if x.account_id == account]
    if fmt == "json":
        print(json.dumps({"account_id": account, "leases": [x.to_json() for x in mine]}, indent=2))
    elif mine:
        _table(mine, now)
    else:
        print(f"account {account} holds no address or prefix in any pool")
    return EXIT_OK if mine else EXIT_ERROR


def _release(url: str, account: str, pool: str | None, pools: Sequence[Pool], now: datetime,
             *, settings: Settings) -> int:
    from provisiond.state.store import StateStore

    holds = {p.name: p.hold.total_seconds() for p in pools}
    with StateStore.open(url) as store:
        released = store.release(account, pool, now=now, hold=holds)
        held = [x for x in store.leases(pool) if x.account_id == account and x.state == "held"
                and x not in released]
    where = f" in pool {pool}" if pool else ""
    if not released:
        if held:  # released before (by hand or by a pass): it is held, say so
            for x in held:
                until = x.held_until.isoformat() if x.held_until else "?"
                print(f"{x.pool} {x.address}  acct {x.account_id} is already held (until {until})")
            return EXIT_OK
        print(f"account {account} has no leased address{where}", file=sys.stderr)
        return EXIT_ERROR
    for x in released:
        until = x.held_until.isoformat() if x.held_until else "?"
        print(f"released {x.pool} {x.address}  acct {x.account_id}: held until {until}")
    for warning in _still_in_group(settings, account, {x.pool for x in released}):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _still_in_group(settings: Settings, account: str, released: set[str]) -> list[str]:
    """Warn when billing still puts the account in a released pool's group: the next
    pass gives the held address straight back (the hold keeps it for the account)."""
    from provisiond.engine import build_source

    try:
        source = build_source(settings)
        try:
            acct = source.read().accounts.get(account)
        finally:
            source.close()
    except Exception as exc:  # noqa: BLE001 - the release is done; this is only advice
        return [f"could not read billing to check account {account}'s groups: {exc}"]
    if acct is None:
        return []
    return [
        f"account {account} is still selected by pool {p.name} ({Match.of(p).describe()}) in "
        "billing: the next pass hands its address back; change the account in billing to free "
        "the address"
        for p in settings.pool if p.name in released and Match.of(p).selects(acct)
    ]


def _table(leases: Sequence[Lease], now: datetime) -> None:
    rows = [("POOL", "ADDRESS", "STATE", "ACCOUNT", "HELD UNTIL")]
    for x in leases:
        until = ""
        if x.held_until is not None:
            until = x.held_until.isoformat() + (" (expired)" if x.held_until <= now else "")
        rows.append((x.pool, x.address, x.state, x.account_id, until))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print(("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4]).rstrip())
