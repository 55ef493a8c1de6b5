"""``provisiond history``: the change journal from the state store, as text or JSON.

Reads ``state.store.StateStore.history`` (read-only); called by ``cli.main``. Shows the
newest ``--limit`` entries and says so (on stderr; ``truncated`` in JSON) when there
are more; an update's text line ends with what changed, before -> after.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

from provisiond import settings as settings_mod
from provisiond.cli.commands import EXIT_ERROR, EXIT_OK
from provisiond.core import render

# A journal row's identity in its detail, in the order a line shows it.
IDENT_KEYS = ("list", "groupname", "username", "attribute", "pool", "address")
_NOT_ATTRS = frozenset({*IDENT_KEYS, "account_name", "id", "before", "reason"})


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
    if args.limit < 1:
        print(f"error: --limit: at least 1, got {args.limit}", file=sys.stderr)
        return EXIT_ERROR
    store = StateStore.open(settings.state.url.get_secret_value(), readonly=True)
    try:
        rows = store.history(since=since, account=args.account, limit=args.limit + 1)
    finally:
        store.close()
    truncated = len(rows) > args.limit
    rows = rows[:args.limit]
    for row in rows:
        if isinstance(row.get("at"), datetime):
            row["at"] = row["at"].isoformat(timespec="seconds")
    if args.format == "json":
        print(json.dumps({"entries": rows, "limit": args.limit, "truncated": truncated},
                         indent=2, ensure_ascii=False, default=str))
    else:
        for row in rows:
            print(entry_line(row))
    if truncated:
        print(f"(showing the newest {args.limit} entries; there are older ones: --limit N shows "
              "more, --since and --account narrow it down)", file=sys.stderr)
    return EXIT_OK


def entry_line(row: dict[str, object]) -> str:
    """One journal entry as a line: time, target, +/-/~, what, account, result, and an
    update's changed attributes (before -> after)."""
    detail = row.get("detail")
    detail = detail if isinstance(detail, dict) else {}
    ident = " ".join(str(detail[k]) for k in IDENT_KEYS if detail.get(k))
    line = (f"{row['at']}  {row['target']}  {render.SYMBOL.get(str(row['action']), '?')} {ident}  "
            f"acct {row.get('account_id', '')}  {row['result']}")
    before = detail.get("before")
    if row["action"] == "update" and isinstance(before, dict):
        after = {k: v for k, v in detail.items() if k not in _NOT_ATTRS}
        changed = [f"{k}: {json.dumps(before.get(k, ''), ensure_ascii=False)} -> "
                   f"{json.dumps(after.get(k, ''), ensure_ascii=False)}"
                   for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        if changed:
            line += "  " + "; ".join(changed)
    if row.get("message"):
        line += f"  {row['message']}"
    return line
