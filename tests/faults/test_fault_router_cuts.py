"""The router connection cut at 20 points of one apply: the login, the prints, the
removes, the first / middle / last add of a pipelined window, the sets, on one router
or both, with the cut command run or not (the reply lost on its way back, or the
command lost on its way there).

Each cut is reported naming the router (exit 1) while the other router converges in
the same apply; the next apply converges exactly (a plan after it is empty); no
entry is ever held twice; the hand-made and dynamic entries in the managed lists are
never touched.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from faultlib import Figures
from harness import wait_until
from world import World

from provisiond.sim import RouterSim

ACCOUNTS = range(1, 37)
LISTS = [("group", "Tower Hosts", "tower-hosts"), ("group", "Credit Card Pending", "cc-pending")]
GROUP_LIST = {"Tower Hosts": "tower-hosts", "Credit Card Pending": "cc-pending"}
KINDS: dict[str, Callable[[str], bool]] = {
    "login": lambda path: path == "/login",
    "print": lambda path: path.endswith("/print"),
    "remove": lambda path: path.endswith("/remove"),
    "add": lambda path: path.endswith("/add"),
    "set": lambda path: path.endswith("/set"),
}
# (router, command kind, which one: 1st, 2nd, "mid", "last", run the cut command?)
Cut = tuple[str, str, int | str, bool]
CUTS: list[list[Cut]] = [
    [("core-1", "login", 1, False)], [("core-1", "login", 1, True)],
    [("core-2", "print", 1, False)], [("core-2", "print", 2, True)], [("core-1", "print", "last", False)],
    [("core-1", "remove", 1, True)], [("core-1", "remove", 1, False)], [("core-2", "remove", "last", True)],
    [("core-1", "add", 1, False)], [("core-1", "add", 1, True)],
    [("core-2", "add", "mid", True)], [("core-2", "add", "mid", False)],
    [("core-1", "add", "last", True)], [("core-2", "add", "last", False)],
    [("core-1", "set", 1, True)], [("core-2", "set", "last", False)], [("core-1", "set", "last", True)],
    [("core-2", "login", 1, False)],
    [("core-1", "add", "mid", True), ("core-2", "print", 1, False)],
    [("core-1", "remove", 1, False), ("core-2", "set", 1, True)],
]


def address(i: int) -> str:
    return f"100.64.5.{i}" if i % 2 else f"2001:db8:5::{i:x}/128"


class Billing:
    """What billing says, mirrored into the world's database."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.groups = {i: {"Tower Hosts"} if i % 3 else {"Credit Card Pending"} for i in ACCOUNTS}
        self.names = {i: f"Tower {i}" for i in ACCOUNTS}
        for i in ACCOUNTS:
            self.save(i)

    def save(self, i: int) -> None:
        self.world.account(i, self.names[i], groups=sorted(self.groups[i]), ips=[address(i).split("/")[0]])

    def expected(self) -> dict[tuple[str, str], str]:
        return {(GROUP_LIST[g], address(i)): f"provisiond:{i} {self.names[i]}"
                for i in ACCOUNTS for g in self.groups[i]}

    def churn(self, rng: random.Random, trial: int) -> None:
        """Leaves in both families, joins, renames: every kind of write, on both routers."""
        inside = [i for i in ACCOUNTS if "Tower Hosts" in self.groups[i]]
        outside = [i for i in ACCOUNTS if "Tower Hosts" not in self.groups[i]]
        leave = rng.sample([i for i in inside if i % 2], 2) + rng.sample([i for i in inside if not i % 2], 2)
        join = rng.sample(outside, 4)
        for i in leave:
            self.groups[i].discard("Tower Hosts")
        for i in join:
            self.groups[i].add("Tower Hosts")
        for i in rng.sample([i for i in inside if i not in leave], 3):
            self.names[i] = f"Tower {i} v{trial}"
            self.save(i)
        for i in leave + join:
            self.save(i)


def held(sim: RouterSim) -> list[dict[str, str]]:
    return sim.entries("ip") + sim.entries("ipv6")


def mine(sim: RouterSim) -> dict[tuple[str, str], str]:
    rows = [r for r in held(sim) if r.get("comment", "").startswith("provisiond:")]
    out = {(r["list"], r["address"]): r["comment"] for r in rows}
    assert len(out) == len(rows), f"duplicates: {Counter((r['list'], r['address']) for r in rows)}"
    return out


def duplicated(sim: RouterSim) -> int:
    """How many of provisiond's entries on a router repeat a (list, address) it already holds."""
    rows = [r for r in held(sim) if r.get("comment", "").startswith("provisiond:")]
    return len(rows) - len({(r["list"], r["address"]) for r in rows})


def counts(current: dict[tuple[str, str], str], want: dict[tuple[str, str], str]) -> dict[str, int]:
    """How many commands of each kind the apply will send to one router."""
    gone = current.keys() - want.keys()
    return {"login": 1, "print": 2,  # one per family, over every list
            "remove": len({"6" if ":" in a else "4" for _, a in gone}),
            "add": len(want.keys() - current.keys()),
            "set": sum(1 for k in want.keys() & current.keys() if want[k] != current[k])}


def test_router_connection_cut_at_20_points(world: World, figures: Figures) -> None:
    rng = random.Random(1126)
    sims = {name: world.router(name) for name in ("core-1", "core-2")}
    billing = Billing(world)
    foreign: dict[str, list[dict[str, str]]] = {}
    for name, sim in sims.items():
        sim.add_entry(list_name="tower-hosts", address="100.64.6.1", comment="NOC", dynamic=False)
        sim.add_entry(list_name="tower-hosts", address="100.64.6.2")  # dynamic
        sim.add_entry("ipv6", list_name="tower-hosts", address="2001:db8:6::1/128", comment="NOC", dynamic=False)
        foreign[name] = [r for r in held(sim)]
    world.write_config(lists=LISTS, safety={"max_delete_ratio": 1.0, "max_update_ratio": 1.0, "min_existing": 0})
    code, out, err = world.run("apply")
    assert code == 0, out + err
    trials = figures.trials(
        "router connection cut (login, print, removes, add window, sets; one or both routers)")
    for trial, cuts in enumerate(CUTS, start=1):
        with trials.trial() as outcome:
            billing.churn(rng, trial)
            want = billing.expected()
            fired: list[str] = []
            for name, sim in sims.items():
                sim.reset_history()
                sim.on_sentence(None)
            for router, kind, which, run in cuts:
                n = counts(mine(sims[router]), want)[kind]
                assert n, f"trial {trial}: no {kind} planned for {router}"
                k = {"mid": (n + 1) // 2, "last": n}.get(str(which), which)
                assert isinstance(k, int)
                seen = Counter[str]()

                def observe(number: int, words: list[str], *, router: str = router, kind: str = kind,
                            k: int = k, run: bool = run, seen: Counter[str] = seen) -> None:
                    if KINDS[kind](words[0]):
                        seen[kind] += 1
                        if seen[kind] == k:
                            fired.append(f"{router} {kind}#{k}")
                            sims[router].cut_after(0, run=run)

                sims[router].on_sentence(observe)
            code, out, err = world.run("apply")
            text = out + err
            assert "Traceback" not in text
            assert len(fired) == len(cuts), f"trial {trial}: cut {fired}, wanted {cuts}"
            cut_routers = {c[0] for c in cuts}
            assert code == 1, f"trial {trial} {cuts}: {text}"
            for router in cut_routers:
                # Reported once, on stdout with the target's name (not repeated in the log).
                outcome["unreported"] += f"{router}: FAILED" not in out
                assert f"{router}: FAILED" in out, f"trial {trial}: the cut of {router} is not reported: {text}"
            for name in sims.keys() - cut_routers:
                assert mine(sims[name]) == want, f"trial {trial}: {name} did not converge beside the cut"
            for sim in sims.values():
                sim.on_sentence(None)
            code, out, err = world.run("apply")
            assert code == 0, f"trial {trial} {cuts}: {out + err}"
            world.assert_converged()
            for name, sim in sims.items():
                outcome["duplicates"] += duplicated(sim)
                got = mine(sim)
                outcome["lost"] += len(want.keys() - got.keys())
                outcome["wrong"] += sum(1 for k in want.keys() & got.keys() if want[k] != got[k])
                assert got == want, f"trial {trial}: {name}"
                others = [r for r in held(sim) if not r.get("comment", "").startswith("provisiond:")]
                ids = {(menu, r[".id"]) for menu in ("ip", "ipv6") for r in sim.entries(menu)
                       if not r.get("comment", "").startswith("provisiond:")}
                hits = [c for c in sim.history if c.path.endswith(("/remove", "/set"))
                        and ids & {(c.path.split("/")[1], i)
                                   for i in dict(c.attributes).get(".id", "").split(",")}]
                outcome["foreign_touched"] += len(hits) + (others != foreign[name])
                assert others == foreign[name] and not hits, f"trial {trial}: {name} touched {hits}"
    trials.check("duplicates", "wrong", "foreign_touched", "unreported")
    assert len(trials.outcomes) == len(CUTS)


def test_connection_closed_between_passes_costs_no_pass(world: World, figures: Figures) -> None:
    """The daemon keeps one Reconciler, and each router's connection, from pass to pass.
    A connection closed while idle (a router reboot, a firewall's idle timeout) is
    replaced at the next pass: the router is not reported down, nor put in back-off."""
    from provisiond import settings as settings_mod
    from provisiond.engine import Reconciler

    sims = {name: world.router(name) for name in ("core-1", "core-2")}
    billing = Billing(world)
    world.write_config(lists=LISTS)
    rec = Reconciler(settings_mod.load(world.config), readonly=False)
    trials = figures.trials("router connection closed between daemon passes")
    try:
        for trial in range(3):
            with trials.trial() as outcome:
                pp = rec.plan()
                assert not pp.errors, pp.errors
                assert rec.apply(pp).ok
                for name, sim in sims.items():
                    held_now = mine(sim)
                    outcome["lost"] += len(billing.expected().keys() - held_now.keys())
                    assert held_now == billing.expected(), name
                sims["core-1"].drop_connections()  # idle: between passes
                billing.churn(random.Random(trial), 100 + trial)
                wait_until(lambda: sims["core-1"].connection_count == 0, what="the connection gone")
                outcome["failed_passes"] += bool(rec.plan().errors)
        pp = rec.plan()
        assert not pp.errors, pp.errors
    finally:
        rec.close()
    trials.check("failed_passes")
    assert len(trials.outcomes) == 3
