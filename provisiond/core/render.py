"""Plans -> the text diff an operator reads and the JSON a machine (or ``apply --plan``) reads.

Pure. Called by the CLI (``plan``, ``apply``) and the daemon's logs. One line per
change: ``+ tower-hosts 100.64.10.5  acct 1042 "Ridge Tower"`` (``-`` delete, ``~``
update), grouped by target and by list / RADIUS group, then one summary line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from provisiond.core.changes import Change, Conflict, Create, Resource, Update
from provisiond.core.plan import Plan

SYMBOL = {"create": "+", "delete": "-", "update": "~"}


def _who(r: Resource) -> str:
    if not r.account_id:
        return ""
    name = f' "{r.account_name}"' if r.account_name else ""
    return f"  acct {r.account_id}{name}"


def resource_line(r: Resource) -> str:
    if r.kind == "address-list":
        return f"{r.get('list')} {r.get('address')}{_who(r)}"
    if r.kind == "radusergroup":
        return f"{r.get('groupname')} {r.get('username')}  priority {r.get('priority')}{_who(r)}"
    if r.kind == "radreply":
        return f"{r.get('username')} {r.get('attribute')} {r.get('op', '=')} {r.get('value')}{_who(r)}"
    idents = " ".join(v for _, v in r.ident)
    return f"{r.group} {idents}{_who(r)}"


def change_line(change: Change) -> str:
    line = f"{SYMBOL[change.action]} {resource_line(change.resource)}"
    if isinstance(change, Update):
        before, after = dict(change.old.attrs), dict(change.new.attrs)
        diffs = [
            f"{k}: {json.dumps(before.get(k, ''), ensure_ascii=False)} -> "
            f"{json.dumps(after.get(k, ''), ensure_ascii=False)}"
            for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)
        ]
        line += "  (" + "; ".join(diffs) + ")"
    return line


def followup_line(f: Mapping[str, Any]) -> str:
    parts = [f"> {f.get('action', '?')} {f.get('username', '')}"]
    if f.get("acct_session_id"):
        parts.append(f"session {f['acct_session_id']}")
    if f.get("nas"):
        parts.append(f"via NAS {f['nas']}")
    if f.get("reason"):
        parts.append(f"({f['reason']})")
    return " ".join(parts)


def render_text(
    plans: Sequence[Plan],
    *,
    errors: Mapping[str, str] | None = None,
    refused: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    ipam: Sequence[str] = (),
    ipam_changes: int = 0,
) -> str:
    """The human plan as one string (``render_lines`` joined, each line ending in a newline)."""
    return "".join(line + "\n" for line in render_lines(
        plans, errors=errors, refused=refused, notes=notes, ipam=ipam, ipam_changes=ipam_changes))


def render_lines(
    plans: Sequence[Plan],
    *,
    errors: Mapping[str, str] | None = None,
    refused: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    ipam: Sequence[str] = (),
    ipam_changes: int = 0,
) -> Iterator[str]:
    """The human plan, one line at a time (no newlines), for the CLI to stream.

    A cold plan has 400,000 lines: made one at a time, they are never all in memory
    at once (only one plan's changes, by reference, while they are grouped).
    """
    errors = errors or {}
    refused = refused or {}
    # A cold pass creates the same entries (the same Resources) on every router: each
    # create's line is made once.
    created: dict[int, str] = {}
    for note in notes:
        yield f"note: {note}"
    if ipam:
        yield "ipam (state store):"
        for line in ipam:
            yield f"    {line}"
    for plan in plans:
        c = plan.counts()
        yield (
            f"{plan.target} ({plan.kind}): {c['create']} to create, {c['update']} to update, "
            f"{c['delete']} to delete"
            + (f", {len(plan.conflicts)} conflict(s)" if plan.conflicts else "")
        )
        groups: dict[str, list[Change | Conflict]] = {}
        for change in plan.changes:
            groups.setdefault(change.resource.group, []).append(change)
        for conflict in plan.conflicts:
            groups.setdefault(conflict.resource.group, []).append(conflict)
        for group in sorted(groups):
            yield f"  {group}"
            for item in groups[group]:
                if isinstance(item, Create):
                    made = created.get(id(item.new))
                    if made is None:
                        made = created[id(item.new)] = f"    {change_line(item)}"
                    yield made
                elif isinstance(item, Conflict):
                    yield f"    ! {resource_line(item.resource)}: conflict: {item.reason}"
                else:
                    yield f"    {change_line(item)}"
        del groups
        for f in plan.followups:
            yield f"  {followup_line(f)}"
        if plan.target in refused:
            yield f"  REFUSED: {refused[plan.target].removeprefix(plan.target + ': ')}"
    planned = {p.target for p in plans}
    for target, message in refused.items():
        if target not in planned:  # e.g. "ipam": refused, but not a target with a plan
            yield f"{target}: REFUSED: {message.removeprefix(target + ': ')}"
    for target, message in errors.items():
        yield f"{target}: FAILED: {message.removeprefix(target + ': ')}"
    yield summary_line(plans, errors=errors, refused=refused, ipam_changes=ipam_changes)


def totals(plans: Sequence[Plan]) -> dict[str, int]:
    t = {"create": 0, "update": 0, "delete": 0, "conflicts": 0, "followups": 0}
    for plan in plans:
        for k, v in plan.counts().items():
            t[k] += v
        t["conflicts"] += len(plan.conflicts)
        t["followups"] += len(plan.followups)
    return t


def summary_line(
    plans: Sequence[Plan],
    *,
    errors: Mapping[str, str] | None = None,
    refused: Mapping[str, str] | None = None,
    ipam_changes: int = 0,
) -> str:
    """One line: what is planned, lease changes (new, returned, released) included."""
    t = totals(plans)
    changed = sum(1 for p in plans if p.changes)
    line = (
        f"Plan: {t['create']} to create, {t['update']} to update, {t['delete']} to delete "
        f"on {changed} of {len(plans) + len(errors or {})} target(s)"
    )
    if ipam_changes:
        line += f"; {ipam_changes} lease change(s)"
    if t["conflicts"]:
        line += f"; {t['conflicts']} conflict(s)"
    if t["followups"]:
        line += f"; {t['followups']} CoA/Disconnect"
    if refused:
        line += f"; {len(refused)} refused by safety"
    if errors:
        line += f"; {len(errors)} target(s) failed"
    return line + "."


def plan_json(plan: Plan, *, refused: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": plan.target,
        "kind": plan.kind,
        "observed_checksum": plan.observed_checksum,
        "checksum": plan.checksum(),
        "existing": dict(plan.existing),
        "summary": plan.counts(),
        "changes": plan.changes_json(),
        "conflicts": [c.to_json() for c in plan.conflicts],
        "followups": [dict(f) for f in plan.followups],
    }
    if plan.unmatched:
        out["unmatched"] = dict(plan.unmatched)
    if refused:
        out["refused"] = refused
    return out


def render_json(
    plans: Sequence[Plan],
    *,
    errors: Mapping[str, str] | None = None,
    refused: Mapping[str, str] | None = None,
    kinds: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    refused = refused or {}
    kinds = kinds or {}
    doc: dict[str, Any] = {
        "version": 1,
        "targets": [plan_json(p, refused=refused.get(p.target)) for p in plans]
        + [
            {"target": t, "kind": kinds.get(t, ""), "error": m, "changes": []}
            for t, m in (errors or {}).items()
        ],
        "summary": totals(plans),
    }
    if extra:
        doc.update(extra)
    return doc
