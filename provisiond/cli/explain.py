"""``provisiond explain ACCOUNT``: why one account is (or is not) where it is, target by target.

The question a support call starts with. Called by ``cli.main``. Reads billing through
the Reconciler (the same suspicious-read check as a pass), computes the pass's IPAM
decisions and desired state, reads only this account's part of every target
(``Reconciler.observe_account``, a scoped observe, in parallel) and diffs just its
entries with ``core.diff``; nothing is written anywhere. In shared mode each target
also names the member whose claim lets it write there (``cli.members``). Out: text
(coloured like ``plan`` on a terminal) or JSON, and an exit code: 0 converged
everywhere, 2 a change is pending or an entry is in conflict, 1 unknown to billing (or
a target could not be read).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from provisiond import settings as settings_mod
from provisiond.cli.commands import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, _reconciler
from provisiond.cli import members
from provisiond.cli.console import painter
from provisiond.cli.members import owner_line
from provisiond.core import render
from provisiond.core.changes import Conflict, Create, Delete, Key, Observed, Resource, Update
from provisiond.core.diff import diff
from provisiond.core.model import Account, Match
from provisiond.errors import ProvisiondError

STATES = ("present", "missing", "update", "delete", "conflict")


@dataclass(slots=True)
class TargetView:
    """One target's entries for the account, each with its state."""

    target: str
    kind: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        states = {e["state"] for e in self.entries}
        if "conflict" in states:
            return "conflict"
        if states - {"present"}:
            return "pending"
        return "converged"


def cmd_explain(settings: settings_mod.Settings, account_id: str, *, fmt: str, color: str = "auto",
                journal: int = 10) -> int:
    rec = _reconciler(settings, readonly=True)
    try:
        doc = explain(rec, account_id, journal=journal)
    finally:
        rec.close()
    if settings.daemon.metrics_listen:  # the running daemon's mirrors, where it answers
        from provisiond.cli.daemonctl import from_daemon, mirrors

        known = mirrors(from_daemon(settings.daemon.metrics_listen).get("metrics") or {})
        for t in doc["targets"]:
            if t["kind"] == "routeros":
                t["mirror"] = known.get(t["target"], "unknown (the daemon does not answer, or "
                                                     "keeps no mirror)")
    if settings.daemon.members == "shared":
        _owners(settings, doc["targets"])
    if fmt == "json":
        print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    else:
        sys.stdout.write(painter(color).text("".join(line + "\n" for line in text_lines(doc))))
    return int(doc["exit"])


def _owners(settings: settings_mod.Settings, targets: list[dict[str, Any]]) -> None:
    """Shared mode: the member writing each target, as the state store's claims say."""
    view, why = members.read(settings)
    for t in targets:
        t["owner"] = (members.owner(view, t["target"], t["kind"]) if view is not None else
                      {"error": why or "the state store has no membership tables yet"})


def explain(rec: Any, account_id: str, *, journal: int = 10) -> dict[str, Any]:
    """Everything provisiond knows and wants about one account, as a JSON-ready dict."""
    s = rec.settings
    # The whole billing read (the same drop check and the same allocation as a pass);
    # on the targets only this account's part (a scoped observe).
    snapshot = rec.read_source()
    allocation = rec.allocate(snapshot, datetime.now(UTC))
    allocated = allocation.addresses if allocation is not None else {}
    desired, conflicts = rec.desired(snapshot, allocated, allocation=allocation)
    account: Account | None = snapshot.accounts.get(account_id)
    problems = [p.message for p in snapshot.problems if p.account_id == account_id]
    observed = rec.observe_account(account_id, snapshot, desired)
    views = [_view(t, observed[t.name], desired.get(t.name, {}), conflicts.get(t.name, []),
                   account_id, tainted=bool(problems))
             for t in rec.targets]
    known = account is not None or bool(problems)
    entries = [e for v in views for e in v.entries]
    pending = sum(1 for e in entries if e["state"] in ("missing", "update", "delete"))
    conflicting = sum(1 for e in entries if e["state"] == "conflict")
    failed = [v.target for v in views if v.error]
    # A pool that had no address for this account: not converged, whatever the targets say.
    short = sorted(pool for pool, ids in (allocation.exhausted if allocation is not None else {}).items()
                   if account_id in ids)
    code = (EXIT_ERROR if not known or failed
            else EXIT_CHANGES if pending or conflicting or short else EXIT_OK)
    history: list[dict[str, Any]] = []
    try:
        history = rec.store.history(account=account_id, limit=journal) if journal > 0 else []
    except ProvisiondError as exc:  # a missing or unreadable store: say so, explain the rest
        history = [{"error": str(exc)}]
    return {
        "account_id": account_id,
        "known": known,
        "billing": _billing(account, problems, snapshot_size=len(snapshot)),
        "mappings": _mappings(s, account),
        "ipam": _ipam(rec, allocation, account_id),
        "targets": [{"target": v.target, "kind": v.kind, "status": v.status,
                     "entries": v.entries, **({"error": v.error} if v.error else {})}
                    for v in views],
        "journal": [_stamped(h) for h in history],
        "summary": {"pending": pending, "conflicts": conflicting, "failed_targets": failed,
                    "exhausted_pools": short},
        "converged": code == EXIT_OK,
        "exit": code,
    }


def _stamped(entry: dict[str, Any]) -> dict[str, Any]:
    at = entry.get("at")
    return {**entry, "at": at.isoformat(timespec="seconds")} if isinstance(at, datetime) else entry


def _view(target: Any, observed: Observed | str, want_all: Mapping[Key, Resource],
          conflicts: Sequence[Conflict], account_id: str, *, tainted: bool) -> TargetView:
    view = TargetView(target.name, target.kind)
    if isinstance(observed, str):
        view.error = observed
        return view
    want = {k: r for k, r in want_all.items() if r.account_id == account_id}
    mine = {k: r for k, r in observed.owned.items() if r.account_id == account_id}
    # Only this account's keys (and whoever holds them) go into the diff: cheap, and the
    # same answer the pass's full diff gives for these entries.
    keys = want.keys() | mine.keys()
    sub = Observed(
        owned={k: r for k, r in observed.owned.items() if k in keys},
        foreign={k: why for k, why in observed.foreign.items() if k in keys},
        surplus=tuple(r for r in observed.surplus if r.account_id == account_id),
    )
    changes, found = diff(sub, want)
    if tainted:  # the pass keeps what the account has while a billing row is bad
        changes = [c for c in changes if isinstance(c, Create)]
    changed = {c.resource.key for c in changes if not isinstance(c, Delete)}
    for c in changes:
        if isinstance(c, Delete):
            why = ("a duplicate of an entry provisiond already has"
                   if any(c.old is r for r in sub.surplus)
                   else "no mapping selects the account for it any more")
            view.entries.append(_entry("delete", c.old, why))
        elif isinstance(c, Update):
            view.entries.append(_entry("update", c.new, render.change_line(c).split("  (", 1)[-1]
                                       .rstrip(")")))
        else:
            view.entries.append(_entry("missing", c.new, "will be created"))
    clashing = {c.resource.key for c in found}
    for conflict in [*found, *(c for c in conflicts if c.resource.account_id == account_id)]:
        view.entries.append(_entry("conflict", conflict.resource, conflict.reason))
        clashing.add(conflict.resource.key)
    for key, r in want.items():
        if key not in changed and key not in clashing:
            view.entries.append(_entry("present", r, ""))
    if tainted:
        for key, r in mine.items():
            if key not in want:
                view.entries.append(_entry("present", r, "kept as is: a billing row of this "
                                                          "account was skipped"))
    view.entries.sort(key=lambda e: (STATES.index(e["state"]), e["resource"]["group"], e["line"]))
    return view


def _entry(state: str, r: Resource, why: str) -> dict[str, Any]:
    return {"state": state, "line": render.resource_line(r), "reason": why, "resource": r.to_json()}


def _billing(account: Account | None, problems: list[str], *, snapshot_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"accounts_read": snapshot_size, "skipped_rows": problems}
    if account is not None:
        out.update(name=account.name, status=account.status, active=account.active,
                   delinquent=account.delinquent, groups=sorted(account.groups),
                   addresses=list(account.addresses), usernames=list(account.usernames))
    return out


def _mappings(s: settings_mod.Settings, account: Account | None) -> list[dict[str, Any]]:
    """Each mapping, whether it selects the account, and each of its keys: held or not."""
    out = []
    nobody = Account("")

    def one(kind: str, what: str, m: Any, **extra: Any) -> None:
        match = Match.of(m)
        checks = match.checks(account if account is not None else nobody)
        keys = [{"key": k, "holds": held, "why": why} for k, held, why in checks]
        selects = account is not None and match.selects(account)
        failed = [why for _, held, why in checks if not held]
        why = ("; ".join(w for _, _, w in checks) if selects
               else "; ".join(failed) if failed else "unknown to billing")
        out.append({"kind": kind, "name": what, "selector": match.describe(), "selects": selects,
                    "why": why, "keys": keys, **extra})

    for a in s.address_list:
        one("address_list", a.list, a, routers=[r.name for r in s.routers_for(a)])
    for g in s.radius_group:
        one("radius_group", g.radius_group, g, priority=g.priority)
    for p in s.pool:
        one("pool", p.name, p, networks=list(p.networks),
            **({"prefix_length": p.prefix_length} if p.prefix_length is not None else {}),
            **({"radius_attribute": p.radius_attribute} if p.radius_attribute is not None else {}))
    return out


def _ipam(rec: Any, allocation: Any, account_id: str) -> dict[str, Any]:
    if not rec.settings.pool:
        return {}
    try:
        leases = [x.to_json() for x in rec.store.leases() if x.account_id == account_id]
    except ProvisiondError as exc:
        leases = [{"error": str(exc)}]
    decisions = [line for line in (allocation.lines() if allocation is not None else ())
                 if f"acct {account_id} " in line + " " or line.startswith(f"! {account_id}:")]
    return {"leases": leases, "addresses": list(allocation.addresses.get(account_id, ())
                                                 if allocation is not None else ()),
            "this_pass": decisions}


# -- text --------------------------------------------------------------------------------------

_SYMBOL = {"present": "=", "missing": "+", "update": "~", "delete": "-", "conflict": "!"}
_WORD = {"present": "present", "missing": "missing", "update": "pending update",
         "delete": "pending delete", "conflict": "conflict"}


def text_lines(doc: Mapping[str, Any]) -> list[str]:
    b = doc["billing"]
    aid = doc["account_id"]
    out: list[str] = []
    if not doc["known"]:
        out.append(f"account {aid}: unknown to billing (not among the {b['accounts_read']} "
                   "accounts read)")
    else:
        name = f' "{b["name"]}"' if b.get("name") else ""
        out.append(f"account {aid}{name} (billing):")
        if "status" in b:
            activates = "activates the account" if b["active"] else "does not activate the account"
            out += [f"    status: {b['status'] or '-'} ({activates})",
                    f"    delinquent: {'yes' if b['delinquent'] else 'no'}",
                    f"    groups: {', '.join(b['groups']) or '-'}",
                    f"    addresses: {', '.join(b['addresses']) or '-'}",
                    f"    RADIUS usernames: {', '.join(b['usernames']) or '-'}"]
        for p in b["skipped_rows"]:
            out.append(f"  warning: skipped billing row: {p}")
    if doc["mappings"] and doc["known"]:
        out.append("mappings:")
        for m in doc["mappings"]:
            where = (f" on {', '.join(m['routers'])}" if m["kind"] == "address_list" else
                     f" priority {m['priority']}" if m["kind"] == "radius_group" else
                     f" {', '.join(m['networks'])}"
                     + (f" as /{m['prefix_length']}s" if m.get("prefix_length") else "")
                     + (f" ({m['radius_attribute']})" if m.get("radius_attribute") else ""))
            label = m["kind"].replace("_", " ")
            out.append(f"    {'selects' if m['selects'] else 'no'}: {label} {m['name']}{where} "
                       f"[{m['selector']}]")
            for k in m["keys"]:
                out.append(f"        {k['key']} {'holds' if k['holds'] else 'fails'}: {k['why']}")
    ipam = doc["ipam"]
    if ipam:
        out.append("ipam:")
        for x in ipam["leases"]:
            if "error" in x:
                out.append(f"  error: {x['error']}")
                continue
            until = f" until {x['held_until']}" if x.get("held_until") else ""
            out.append(f"    {x['state']} {x['pool']} {x['address']}{until}")
        if not ipam["leases"]:
            out.append("    no lease")
        out += [f"    this pass: {line}" for line in ipam["this_pass"]]
    for t in doc["targets"]:
        entries = t["entries"]
        if t.get("error"):
            out.append(f"{t['target']} ({t['kind']}): FAILED: {t['error']}")
            if "owner" in t:
                out.append(f"    {owner_line(t['owner'])}")
            continue
        counts = {s: sum(1 for e in entries if e["state"] == s) for s in STATES}
        detail = ", ".join(f"{n} {_WORD[s]}" for s, n in counts.items() if n)
        out.append(f"{t['target']} ({t['kind']}): {t['status']}" + (f": {detail}" if detail else ""))
        if "owner" in t:
            out.append(f"    {owner_line(t['owner'])}")
        if "mirror" in t:
            out.append(f"    the daemon's mirror: {t['mirror']}")
        if not entries:
            out.append("    nothing wanted, nothing there")
        for e in entries:
            why = f": {e['reason']}" if e["reason"] else ""
            out.append(f"  {_SYMBOL[e['state']]} {e['line']}  {_WORD[e['state']]}{why}")
    if doc["journal"]:
        out.append(f"journal (last {len(doc['journal'])}):")
        for j in doc["journal"]:
            if "error" in j:
                out.append(f"  error: {j['error']}")
                continue
            d = j.get("detail") or {}
            ident = " ".join(str(d.get(k)) for k in ("list", "groupname", "username", "pool",
                                                     "address", "value") if d.get(k))
            msg = f"  {j['message']}" if j.get("message") else ""
            out.append(f"    {j['at']}  {j['target']}  {j['action']} {ident}  {j['result']}{msg}")
    s = doc["summary"]
    if not doc["known"]:
        verdict = "unknown to billing"
    elif s["failed_targets"]:
        verdict = f"cannot tell: {', '.join(s['failed_targets'])} could not be read"
    elif doc["converged"]:
        verdict = "converged on every target"
    else:
        verdict = f"{s['pending']} pending change(s), {s['conflicts']} conflict(s)"
        if s.get("exhausted_pools"):
            verdict += (f"; no address: pool {', '.join(s['exhausted_pools'])} exhausted "
                        "(widen it, or free addresses with `ipam release`)")
    out.append(f"Explain: account {aid}: {verdict} (exit {doc['exit']}).")
    return out
