"""Building a pass's parts from the settings: the billing Source, the Targets, the
mapping selectors, and the IPAM allocation over the store's leases.

Heavy imports (SQL drivers, librouteros, the allocator) happen here, when a part is
first built, so a pass can send every router its prints before they load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from provisiond.core.model import Match, Snapshot
from provisiond.core.plan import Selector, check_pools, emptied_pools
from provisiond.errors import SourceError, UnmatchedMapping
from provisiond.settings import Settings
from provisiond.sources.base import Source
from provisiond.state.base import Store
from provisiond.targets.base import Target

if TYPE_CHECKING:
    from provisiond.core.ipam import Allocation


def build_source(settings: Settings) -> Source:
    """The billing Source the settings describe (SQL or Sonar)."""
    s = settings.source
    if s.type == "sonar":
        from provisiond.sources.sonar import SonarSource

        return SonarSource(s.resolved_url(), s.sonar_token(), page_size=s.sonar_page_size,
                           timeout=s.timeout)
    from provisiond.sources.sql import SqlSource

    assert s.query is not None  # settings require it for type = "sql"
    try:
        url = s.resolved_url()
    except Exception as exc:  # noqa: BLE001 - a bad URL is a source error, named
        raise SourceError(f"source.url: {exc}") from exc
    return SqlSource(url, s.query, timeout=s.timeout, display=s.display_url(),
                     needs=settings.flags_used())


def build_targets(settings: Settings, store: Store) -> list[Target]:
    """One RouterTarget per router that some list mapping covers, then the RADIUS target."""
    from provisiond.targets.routeros import RouterTarget

    targets: list[Target] = []
    lists_by_router: dict[str, set[str]] = {r.name: set() for r in settings.router}
    for m in settings.address_list:
        for r in settings.routers_for(m):
            lists_by_router[r.name].add(m.list)
    for r in settings.router:
        if lists_by_router[r.name]:
            targets.append(RouterTarget(r, lists=lists_by_router[r.name], marker=settings.marker))
    if settings.radius is not None:
        from provisiond.targets.radius import build_radius_target

        radius = build_radius_target(settings, store)
        if radius is not None:
            targets.append(radius)
    return targets


def selectors(settings: Settings) -> list[Selector]:
    """Every mapping's selector with what it fills and where: the unmatched-mapping rule's input."""
    out = [
        Selector(f"address_list[{i}]", m.list, tuple(r.name for r in settings.routers_for(m)),
                 match=Match.of(m))
        for i, m in enumerate(settings.address_list)
    ]
    out += [Selector(f"radius_group[{i}]", m.radius_group, ("radius",), match=Match.of(m))
            for i, m in enumerate(settings.radius_group)]
    out += [Selector(f"pool[{i}]", p.name, ("ipam",), match=Match.of(p))
            for i, p in enumerate(settings.pool)]
    return out


def pool_matches(settings: Settings) -> dict[str, Match] | None:
    """Pool name -> which accounts it serves; None without pools."""
    return {p.name: Match.of(p) for p in settings.pool} if settings.pool else None


def allocate(
    settings: Settings,
    snapshot: Snapshot,
    store: Store,
    now: datetime,
    *,
    blocked_billing: Sequence[str] = (),
    protected: Mapping[str, str] | None = None,
    force: bool = False,
) -> tuple[Allocation, dict[str, Any], str | None, dict[str, int]]:
    """The allocation, its JSON, why pools are held back (or None), and (a scoped read)
    the pools it would release every lease of, from the same lease read. Unforced, a
    pool it would empty while its mapping matches nobody keeps its leases."""
    from provisiond.core import ipam

    pools = [ipam.Pool.from_settings(p) for p in settings.pool]
    leases = store.leases()
    allocation = ipam.allocate(snapshot.accounts.values(), pools, leases, now,
                               scope=snapshot.scope, blocked_billing=blocked_billing)
    emptied = (emptied_pools(allocation, leases)
               if snapshot.scope is not None and allocation.releases else {})
    try:
        check_pools(allocation, leases, protected or {})
    except UnmatchedMapping as exc:
        if not force:  # the pools that would be emptied keep every lease, and the targets too
            allocation = allocation.keeping(set(emptied_pools(allocation, leases)) & set(protected or {}))
        return allocation, allocation.to_json(), str(exc), emptied
    return allocation, allocation.to_json(), None, emptied


def pool_billing(settings: Settings, snapshot: Snapshot) -> dict[str, tuple[str, ...]] | None:
    """Billing-assigned addresses that fall inside a pool, by account (usually none);
    None without pools."""
    if not settings.pool:
        return None
    from provisiond.core import ipam

    pools = [ipam.Pool.from_settings(p) for p in settings.pool]
    out: dict[str, tuple[str, ...]] = {}
    for account in snapshot.accounts.values():
        inside = tuple(a for a in account.addresses if any(ipam.overlaps(p, a) for p in pools))
        if inside:
            out[account.id] = inside
    return out
