"""Pipelined and one-at-a-time writing leave a router identical (property-based).

Two simulated routers on a slow link start from the same random table (provisiond's
entries, some duplicated, some disabled or renamed; hand-made and dynamic entries;
entries that vanish behind provisiond's back after it looked), get the plan ``diff``
makes for a random desired state, and are written with a window of several tagged
commands and with ``pipeline = 1``. Tables and outcomes must be the same.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisiond.core.changes import Key, Resource
from provisiond.core.desire import address_list_entry
from provisiond.core.diff import diff
from provisiond.core.model import Account
from provisiond.core.plan import Plan
from provisiond.settings import RouterSettings
from provisiond.sim import RouterSim, SimSettings
from provisiond.targets.base import ApplyResult
from provisiond.targets.routeros import RouterTarget

LISTS = ("a", "b")
ADDRESSES = [f"10.0.0.{i}" for i in range(12)] + ["2001:db8::1/128", "2001:db8::2/128"]

entry = st.tuples(
    st.sampled_from(LISTS),
    st.sampled_from(ADDRESSES),
    st.sampled_from(["mine", "mine-renamed", "mine-disabled", "hand", "dynamic"]),
    st.booleans(),  # vanishes after observe
)
wanted = st.tuples(st.sampled_from(LISTS), st.sampled_from(ADDRESSES), st.integers(1, 4))
# A trap injected into the n-th add / set / remove the router runs.
fault = st.none() | st.tuples(st.sampled_from(["add", "set", "remove"]), st.integers(0, 4))


def _seed(sim: RouterSim, table: list[tuple[str, str, str, bool]]) -> None:
    for i, (lst, address, kind, _) in enumerate(table):
        menu = "ipv6" if ":" in address else "ip"
        comment = {"mine": f"provisiond:{i % 4 + 1} Site {i % 4 + 1}", "mine-disabled": f"provisiond:{i % 4 + 1} Site {i % 4 + 1}",
                   "mine-renamed": f"provisiond:{i % 4 + 1} Old", "hand": "hand-made"}.get(kind)
        try:
            sim.add_entry(menu, list_name=lst, address=address, comment=comment, dynamic=kind == "dynamic",
                          disabled=kind == "mine-disabled", allow_duplicate=kind.startswith("mine"))
        except Exception:  # noqa: BLE001 - a hand-made/dynamic twin of an existing key: skip it
            pass


def _vanish(sim: RouterSim, table: list[tuple[str, str, str, bool]]) -> None:
    for lst, address, _, gone in table:
        if not gone:
            continue
        menu = "ipv6" if ":" in address else "ip"
        for row in sim.entries(menu, lst):
            if row["address"] == address and row.get("comment", "").startswith("provisiond:"):
                sim.remove_entry(menu, row[".id"])
                break


def _outcome(result: ApplyResult) -> dict[str, Any]:
    return {
        "applied": sorted((c.action, c.resource.group, c.resource.get("address")) for c in result.applied),
        "failed": sorted(m for _, m in result.failed),
        "conflicts": sorted((c.resource.group, c.resource.get("address")) for c in result.conflicts),
        "error": result.error,
    }


def _rows(sim: RouterSim) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "creation-time"}
            for menu in ("ip", "ipv6") for row in sim.entries(menu)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.lists(entry, min_size=2, max_size=14), want=st.lists(wanted, min_size=2, max_size=14),
       window=st.integers(2, 6), faults=st.lists(fault, max_size=2))
def test_pipelined_and_one_at_a_time_leave_the_router_identical(
    table: list[tuple[str, str, str, bool]], want: list[tuple[str, str, int]], window: int,
    faults: list[tuple[str, int] | None],
) -> None:
    desired: dict[Key, Resource] = {}
    for lst, address, account in want:
        r = address_list_entry(lst, address, Account(str(account), f"Site {account}"), "provisiond")
        desired.setdefault(r.key, r)
    outcomes, tables = [], []
    for pipeline in (window, 1):
        sim = RouterSim(SimSettings(username="u", password="p", log_commands=False,
                                    command_latency=0.002)).start()
        try:
            _seed(sim, table)
            settings_ = RouterSettings(name="core-1", host="127.0.0.1", port=sim.port, username="u",
                                       password="p", timeout=5, connect_timeout=2, pipeline=pipeline,
                                       connections=1)
            target = RouterTarget(settings_, lists=LISTS, marker="provisiond")
            observed = target.observe()
            changes, _ = diff(observed, desired)
            _vanish(sim, table)
            for f in faults:
                if f is not None:
                    for menu in ("/ip", "/ipv6"):
                        sim.fail_next(f"{menu}/firewall/address-list/{f[0]}", "failure: injected", after=f[1])
            result = target.apply(Plan("core-1", "routeros", tuple(changes)))
            target.close()
            outcomes.append(_outcome(result))
            tables.append(_rows(sim))
        finally:
            sim.stop()
    assert outcomes[0] == outcomes[1]
    assert tables[0] == tables[1]
