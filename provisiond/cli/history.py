"""``provisiond history``: the change journal from the state store, as text or JSON.

Reads ``state.store.StateStore.history`` (read-only); called by ``cli.main``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

from provisiond import settings as settings_mod
from provisiond.cli.commands import EXIT_ERROR, EXIT_OK
from provisiond.core import render


def cmd_history(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from provisiond.state.store import StateStore

    since = None
    if args.since:
        try:
            since = datetime.now(UTC) - timedelta(seconds=settings_mod.parse_duration(args.since))
        except ValueError:
            try:
                since = datetime.fromisoformat(args.since)
            except ValueError:
                print(f"error: --since: not a time or duration: {args.since!r}", file=sys.stderr)
                return EXIT_ERROR
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
    store = StateStore.open(settings.state.url.get_secret_value(), readonly=True)
    try:
        rows = store.history(since=since, account=args.account, limit=args.limit)
    finally:
        store.close()
    for row in rows:
        if isinstance(row.get("at"), datetime):
            row["at"] = row["at"].isoformat(timespec="seconds")
    if args.format == "json":
        print(json.dumps({"entries": rows}, indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    for row in rows:
        detail = row.get("detail") or {}
        ident = " ".join(str(detail.get(k, "")) for k in ("list", "groupname", "username", "address")
                         if detail.get(k))
        print(f"{row['at']}  {row['target']}  {render.SYMBOL.get(row['action'], '?')} {ident}  "
              f"acct {row.get('account_id', '')}  {row['result']}"
              + (f"  {row['message']}" if row.get("message") else ""))
    return EXIT_OK
