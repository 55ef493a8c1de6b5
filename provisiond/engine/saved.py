"""A saved plan (``plan --out``) made a PassPlan again, for ``apply --plan``.

The saved changes are applied as reviewed, or not at all: every target must still be
as it was observed (its checksum), the changes must match their checksum, and with
pools the allocation, recomputed as of the plan's time with the same decisions as a
pass (``planning.decide``), must be the one saved.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from provisiond.core.changes import change_from_json
from provisiond.core.model import Snapshot
from provisiond.core.plan import Plan
from provisiond.core.scope import Scope
from provisiond.engine import planning
from provisiond.engine.memory import ScopedMemory
from provisiond.engine.results import PassPlan, each
from provisiond.engine.scoped import read_scoped, scopes
from provisiond.errors import PlanRefused, StalePlan
from provisiond.settings import Settings
from provisiond.sources.base import Source
from provisiond.state.base import Store
from provisiond.targets.base import Target


def load_saved(doc: Mapping[str, Any], *, settings: Settings, source: Source,
               read_source: Callable[[], Snapshot], store: Store, targets: list[Target],
               memory: ScopedMemory) -> PassPlan:
    """Rebuild a saved JSON plan and check every target is still as it was observed.
    ``read_source()`` is the Reconciler's checked full read."""
    pp = PassPlan(snapshot=None,
                  target_patterns=tuple(doc.get("scope", {}).get("targets", ())))
    by_name = {t.name: t for t in targets}
    saved = {t["target"]: t for t in doc.get("targets", []) if "error" not in t}
    outside = [n for n in saved if pp.target_patterns
               and not any(fnmatch.fnmatchcase(n, p) for p in pp.target_patterns)]
    if outside:
        raise PlanRefused(", ".join(outside), "in the saved plan but outside its scope "
                          f"({', '.join(pp.target_patterns)}): the file was edited; make a new plan")
    made = doc.get("created_at")
    now = datetime.fromisoformat(made) if made else datetime.now(UTC)
    per_target: dict[str, Scope] = {}
    decided: PassPlan | None = None
    if doc.get("accounts") is not None:
        # A scoped plan: each target is checked over the same scope it was planned on.
        accounts = frozenset(str(a) for a in doc["accounts"])
        snapshot = read_scoped(source, accounts)
        decided, desired, _ = planning.prepare(settings, store, snapshot, now, memory)
        per_target = scopes(accounts, snapshot, desired, targets=targets, store=store,
                            memory=memory)
        pp.accounts = accounts
    elif settings.pool:
        decided = planning.decide(settings, store, read_source(), now, memory)
        pp.ipam_refused = decided.ipam_refused
    if settings.pool and decided is not None:
        # The plan's addresses are only safe to push if the same leases get recorded
        # first: the allocation as of the plan's time must be the one saved.
        if decided.ipam_json != doc.get("ipam"):
            raise StalePlan("ipam", "leases or billing changed since the plan was made; make a new plan")
        pp.allocation, pp.ipam_json, pp.now = decided.allocation, decided.ipam_json, now

    def one(target: Target) -> Plan:
        entry = saved[target.name]
        scope = per_target.get(target.name)
        observed = target.observe(scope) if scope is not None else target.observe()
        if observed.checksum != entry.get("observed_checksum"):
            raise StalePlan(target.name,
                            "its managed entries changed since the plan was made; make a new plan")
        plan = Plan(
            target=target.name,
            kind=target.kind,
            changes=tuple(change_from_json(c) for c in entry.get("changes", [])),
            existing=dict(entry.get("existing", {})),
            observed_checksum=observed.checksum,
            conflicts=(),
            followups=tuple(entry.get("followups", [])),
            unmatched=dict(entry.get("unmatched", {})),
        )
        if plan.checksum() != entry.get("checksum"):
            raise PlanRefused(target.name, "the saved plan's changes do not match its checksum "
                              "(the file was edited or truncated); make a new plan")
        return plan

    for name in saved:
        if name not in by_name:
            pp.errors[name] = f"{name}: in the saved plan but not in the configuration"
    wanted = [by_name[n] for n in saved if n in by_name]
    for target, outcome in each(wanted, lambda t: t.name, one):
        pp.add(target.name, target.kind, outcome)
    return pp
