"""The billing checks ``check-config`` runs and a daemon's reload runs again: every
mapping that names a group or status billing has no account in, with billing's closest
names first, and every mapping whose keys can never hold together.
"""

from __future__ import annotations

import json

from provisiond.core.model import Snapshot
from provisiond.core.plan import closest
from provisiond.engine.assembly import build_source, selectors
from provisiond.settings import Settings


def unmatched_problems(settings: Settings, snapshot: Snapshot) -> list[str]:
    """Every mapping that names a group or status billing has no account in (billing's
    closest names first), and every mapping whose status(es) cannot hold with its
    ``active`` (no account in billing has that status and that flag)."""
    groups = {g for a in snapshot.accounts.values() for g in a.groups}
    statuses = {a.status for a in snapshot.accounts.values()}
    pairs = {(a.status, a.active) for a in snapshot.accounts.values()}
    out = []
    for sel in selectors(settings):
        never = not sel.matches(groups, statuses)
        match = sel.match
        assert match is not None
        for key, name in sel.missing(groups, statuses):
            have, what = (groups, "groups") if key == "group" else (statuses, "statuses")
            several = (match.groups if key == "group" else match.statuses) or ()
            label = f"{sel.where}.{key}{'s' if len(several) > 1 else ''} {json.dumps(name, ensure_ascii=False)}"
            listed = closest(name, have)
            billing = (", ".join(json.dumps(n, ensure_ascii=False) for n in listed)
                       + (", …" if len(have) > len(listed) else "")) if listed else "none"
            guard = (f"plan and apply will not empty {sel.fills} without --force; " if never
                     else "")
            out.append(f"{label} matches no account in billing; {guard}billing's {what}, "
                       f"closest first: {billing}")
        if (match.statuses is not None and match.active is not None
                and not match.statuses.isdisjoint(statuses)
                and not any((st, match.active) in pairs for st in match.statuses)):
            names = ", ".join(json.dumps(n, ensure_ascii=False) for n in sorted(match.statuses))
            out.append(f"{sel.where}: status {names} with active = {str(match.active).lower()} can "
                       f"never match: every account of {'that status' if len(match.statuses) == 1 else 'those statuses'} "
                       f"in billing is {'inactive' if match.active else 'active'} (drop one of the two keys)")
    return out


def billing_findings(settings: Settings) -> list[str]:
    """``unmatched_problems`` against a fresh billing read (raises ``SourceError``)."""
    source = build_source(settings)
    try:
        return unmatched_problems(settings, source.read())
    finally:
        source.close()
