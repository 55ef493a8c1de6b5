"""The mirror (``follow.Follower`` keeping a ``mirror.Mirror``) and the router agree after
any sequence of billing writes, hand edits, lost listens and reboots (hypothesis).

Each example is a random sequence of steps against one simulator (shared by the
examples of a test, its tables emptied in between): provisiond's writes through
``RouterTarget.apply`` (creates, deletes of its own entries, new comments, disabled
and enabled again; IPv4 and IPv6, on three managed lists), hand edits from two other
clients (librouteros and ``routeros-api``: remove, disable/enable, a new comment,
a new address, hand-made entries on managed and unmanaged lists, entries with a
short timeout that expire, dynamic ones), the listen connection dropped, a reboot (every
id renumbered). The follower works on meanwhile; a billing write waits only until the
mirror has heard the steps before it (``heard``: a pass writes what it read), and
checks on the way that a live mirror matches the router. At the end the example waits
for the mirror to settle and checks:

* the mirror holds exactly the router's entries on the managed lists;
* every hand edit of an entry carrying the marker was reported as drift for its
  account (or a refill asked for a full pass of the router after it), and no
  account was reported that no hand edit touched: provisiond's own writes are never
  drift (unless a refill began while they were under way);
* a scoped read from the live mirror prints nothing and finds what a print finds.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import librouteros
import pytest
import routeros_api
from hypothesis import given, settings
from hypothesis import strategies as st
from librouteros.exceptions import TrapError
from routeros_api.exceptions import RouterOsApiCommunicationError

from provisiond.core.addresses import family
from provisiond.core.changes import Change, Create, Delete, Key, Resource, Update
from provisiond.core.desire import address_list_entry
from provisiond.core.model import Account
from provisiond.core.plan import Plan
from provisiond.core.scope import Scope
from provisiond.settings import RouterSettings
from provisiond.sim import RouterSim, SimSettings
from provisiond.targets.routeros import RouterTarget, follow
from provisiond.targets.routeros.follow import Follower
from provisiond.targets.routeros.mirror import Mirror

MANAGED = ("l", "m", "n")
LISTS = (*MANAGED, "x")  # "x" is nobody's: provisiond never reads it
V4 = tuple(f"10.0.0.{i}" for i in range(1, 6))
V6 = tuple(f"2001:db8::{i}/128" for i in range(1, 5))
ADDRESSES = V4 + V6
ACCOUNTS = range(1, 7)
HEAD = "provisiond:"
MENU = {4: "ip", 6: "ipv6"}
PATHS = {4: ("ip", "firewall", "address-list"), 6: ("ipv6", "firewall", "address-list")}
SETTLE = 5.0  # seconds the mirror may take to agree once the steps are done

# A row as the mirror keeps it: (list, address, comment, disabled, dynamic), by (family, .id).
Rows = dict[tuple[int, str], tuple[str, str, str, bool, bool]]

# -- the steps -------------------------------------------------------------------------

_pick = st.integers(0, 63)
_account = st.sampled_from(ACCOUNTS)
_billing = st.one_of(
    st.tuples(st.just("create"), st.lists(st.tuples(st.sampled_from(MANAGED), st.sampled_from(ADDRESSES),
                                                     _account), min_size=1, max_size=3)),
    st.tuples(st.just("delete"), st.lists(_pick, min_size=1, max_size=2)),
    st.tuples(st.just("update"), _pick, st.sampled_from(["rename", "toggle"])),
)
# (who, what, which entry, list, address, comment: 0 marker+name, 1 marker, 2 none, 3 plain, account)
_hand = st.tuples(st.just("hand"), st.sampled_from(["librouteros", "routeros-api"]),
                  st.sampled_from(["remove", "toggle", "comment", "address", "add", "add-timeout",
                                   "add-dynamic"]),
                  _pick, st.sampled_from(LISTS), st.sampled_from(ADDRESSES), st.integers(0, 3), _account)
_outage = st.sampled_from([("drop",), ("reboot",), ("pause",)])
_KINDS = {"billing": _billing, "hand": _hand, "outage": _outage}
_kind = st.sampled_from(["billing", "billing", "hand", "hand", "hand", "outage"])
STEPS = st.lists(_kind.flatmap(lambda kind: _KINDS[kind]), min_size=4, max_size=20)


# -- what the follower says --------------------------------------------------------------


class Counted(Mirror):
    """A ``Mirror`` that counts the fills begun (a write under way across one may be
    reported as drift: the new listen cannot tell it from a hand edit)."""

    def __init__(self, router: str, lists: tuple[str, ...], head: str) -> None:
        super().__init__(router, lists, head)
        self.begun = 0

    def begin_fill(self) -> None:
        self.begun += 1
        super().begin_fill()


class Drift:
    """``on_drift``'s calls, in order: an account set, or None (a refill: a full pass)."""

    def __init__(self) -> None:
        self.calls: list[frozenset[str] | None] = []
        self._lock = threading.Lock()

    def __call__(self, router: str, accounts: frozenset[str] | None) -> None:
        with self._lock:
            self.calls.append(accounts)

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)

    def since(self, mark: int) -> list[frozenset[str] | None]:
        with self._lock:
            return self.calls[mark:]


@dataclass
class Touch:
    """A hand edit of entries carrying the marker: their accounts, and ``Drift.mark``
    just before it."""

    step: int
    what: str
    accounts: frozenset[str]
    mark: int


@dataclass
class Run:
    """One example's world: the router, provisiond's target and mirror, the hands."""

    sim: RouterSim
    target: RouterTarget
    mirror: Counted
    drift: Drift
    hands: Hands
    touches: list[Touch] = field(default_factory=list)
    unsure: list[Touch] = field(default_factory=list)  # provisiond's writes across a refill
    expires: float = 0.0  # when the last entry with a timeout is gone
    renames: Iterator[int] = field(default_factory=itertools.count)


class Hands:
    """Two other API clients making hand edits; reopened after a reboot."""

    def __init__(self, sim: RouterSim) -> None:
        self._sim = sim
        self._lr: Any = None
        self._pool: Any = None
        self.reopen()

    def reopen(self) -> None:
        self.close()
        self._lr = librouteros.connect("127.0.0.1", "u", "p", port=self._sim.port, timeout=5)
        self._pool = routeros_api.RouterOsApiPool("127.0.0.1", username="u", password="p",
                                                  port=self._sim.port, plaintext_login=True)

    def close(self) -> None:
        if self._lr is not None:
            self._lr.close()
        if self._pool is not None:
            self._pool.disconnect()
        self._lr = self._pool = None

    def add(self, who: str, fam: int, **attrs: str) -> bool:
        """An ``add``; False when the router refused it (a key already held)."""
        if who == "librouteros":
            return self._lr_call(lambda: self._lr.path(*PATHS[fam]).add(**attrs))
        return self._ra_call(lambda: self._resource(fam).add(**attrs))

    def set(self, who: str, fam: int, ident: str, **attrs: str) -> bool:
        if who == "librouteros":
            return self._lr_call(lambda: self._lr.path(*PATHS[fam]).update(**{".id": ident}, **attrs))
        return self._ra_call(lambda: self._resource(fam).set(id=ident, **attrs))

    def remove(self, who: str, fam: int, ident: str) -> bool:
        if who == "librouteros":
            return self._lr_call(lambda: self._lr.path(*PATHS[fam]).remove(ident))
        return self._ra_call(lambda: self._resource(fam).remove(id=ident))

    def remove_all(self) -> None:
        for fam in (4, 6):
            ids = [r[".id"] for r in self._sim.entries(MENU[fam])]
            if ids:
                self._lr.path(*PATHS[fam]).remove(*ids)

    def _resource(self, fam: int) -> Any:
        return self._pool.get_api().get_resource("/" + "/".join(PATHS[fam]))

    @staticmethod
    def _lr_call(call: Callable[[], object]) -> bool:
        try:
            call()
        except TrapError:
            return False
        return True

    @staticmethod
    def _ra_call(call: Callable[[], object]) -> bool:
        try:
            call()
        except RouterOsApiCommunicationError:
            return False
        return True


# -- the router, read in-process ---------------------------------------------------------


def router_rows(sim: RouterSim) -> Rows:
    """The router's entries on the managed lists, as the mirror keeps them."""
    return {(fam, r[".id"]): (r["list"], r["address"], r.get("comment", ""), r["disabled"] == "true",
                              r["dynamic"] == "true")
            for fam in (4, 6) for r in sim.entries(MENU[fam]) if r["list"] in MANAGED}


def all_rows(sim: RouterSim) -> list[tuple[int, dict[str, str]]]:
    return [(fam, r) for fam in (4, 6) for r in sim.entries(MENU[fam])]


def owner(row: dict[str, str]) -> str | None:
    """The account whose entry ``row`` is for provisiond (and for the mirror's drift)."""
    comment = row.get("comment", "")
    if row["list"] not in MANAGED or row["dynamic"] == "true" or not comment.startswith(HEAD):
        return None
    return comment[len(HEAD):].split(" ", 1)[0]


def own_entries(sim: RouterSim) -> list[Resource]:
    """provisiond's entries on the router as a read would find them (with their ids)."""
    out = []
    for _, r in all_rows(sim):
        account = owner(r)
        if account is None:
            continue
        comment = r.get("comment", "")
        out.append(Resource(kind="address-list", group=r["list"],
                            ident=(("list", r["list"]), ("address", r["address"])),
                            attrs=(("comment", comment), ("disabled", r["disabled"])), account_id=account,
                            account_name=comment.split(" ", 1)[1] if " " in comment else "", ref=r[".id"]))
    return out


def diff_text(mirrored: Rows, actual: Rows) -> str:
    lines = []
    for key in sorted(mirrored.keys() | actual.keys()):
        if mirrored.get(key) != actual.get(key):
            lines.append(f"  {key}: mirror {mirrored.get(key)}  router {actual.get(key)}")
    return "\n".join(lines)


# -- the steps, done ---------------------------------------------------------------------


def heard(run: Run) -> None:
    """Wait until the mirror has heard what happened so far: live and equal to the router,
    or down (the pass prints). A pass writes what it read, and a scoped pass reads the
    mirror: a hand edit whose report is still on its way when provisiond writes the
    same key is taken for provisiond's write (drift then names the accounts of the
    write's report): a race of milliseconds the daemon cannot tell apart."""
    deadline = time.monotonic() + SETTLE
    while run.mirror.state == "filling" or (run.mirror.trusted
                                            and (mirrored := run.mirror.entries()) != router_rows(run.sim)):
        if time.monotonic() > deadline:
            pytest.fail(f"the live mirror ({run.mirror.state}) does not follow the router:\n"
                        f"{diff_text(mirrored, router_rows(run.sim))}")
        time.sleep(0.005)


def billing(run: Run, index: int, step: tuple[Any, ...]) -> None:
    """A plan as a pass would make it, applied through the target (whose mirror is ours)."""
    heard(run)
    changes: list[Change] = []
    own = own_entries(run.sim)
    if step[0] == "create":
        keys: set[tuple[str, str]] = set()
        for list_name, address, account in step[1]:
            if (list_name, address) in keys:
                continue
            keys.add((list_name, address))
            # A key held by a hand-made entry is refused (a conflict): a write that did not happen.
            changes.append(Create(address_list_entry(list_name, address, Account(str(account), f"A{account}"),
                                                     "provisiond")))
    elif step[0] == "delete" and own:
        refs = {own[i % len(own)].ref: own[i % len(own)] for i in step[1]}
        changes = [Delete(r) for r in refs.values()]
    elif step[0] == "update" and own:
        old = own[step[1] % len(own)]
        comment, disabled = old.get("comment"), old.get("disabled")
        if step[2] == "rename":
            comment = f"{HEAD}{old.account_id} A{old.account_id}-{next(run.renames)}"
        else:
            disabled = "false" if disabled == "true" else "true"
        new = Resource(kind=old.kind, group=old.group, ident=old.ident,
                       attrs=(("comment", comment), ("disabled", disabled)), account_id=old.account_id,
                       account_name=old.account_name, ref=old.ref)
        changes = [Update(old, new)]
    if not changes:
        return
    plan = Plan("core-1", "routeros", tuple(changes))
    mark, begun = run.drift.mark(), run.mirror.begun
    result = run.target.apply(plan)
    if result.unavailable:  # the kept session died with a reboot: the next pass tries again
        result = run.target.apply(plan)
    if run.mirror.begun != begun:
        # A refill began while these writes were under way: the ones it did not see
        # (the new listen opened before they arrived) may come back as drift.
        run.unsure.append(Touch(index, step[0], frozenset(c.resource.account_id for c in changes), mark))
    assert not result.unavailable, result.error
    assert not result.failed, result.failed


def hand(run: Run, index: int, step: tuple[Any, ...]) -> None:
    """One edit by someone else; remembered when it touches an entry with the marker."""
    _, who, what, pick, list_name, address, comment_kind, account = step
    comment = (f"{HEAD}{account} by hand", f"{HEAD}{account}", "", "hand-made")[comment_kind]
    rows = all_rows(run.sim)
    mark = run.drift.mark()
    before: dict[str, str] | None = None
    after: dict[str, str] | None = None
    done = False
    if what.startswith("add"):
        fam = family(address)
        attrs = {"list": list_name, "address": address}
        if comment:
            attrs["comment"] = comment
        if what == "add-timeout":
            attrs["timeout"] = f"{200 + 100 * (pick % 4)}ms"
        elif what == "add-dynamic":
            attrs["dynamic"] = "yes"
        done = run.hands.add(who, fam, **attrs)
        dynamic = what == "add-dynamic" or (what == "add-timeout" and run.sim.settings.timeout_marks_dynamic)
        after = {"list": list_name, "comment": comment, "dynamic": "true" if dynamic else "false"}
        if done and what == "add-timeout":
            run.expires = max(run.expires, time.monotonic() + 0.2 + 0.1 * (pick % 4))
    elif rows:
        marked = [(fam, r) for fam, r in rows if owner(r) is not None]
        # An even pick edits one of provisiond's entries (when there is one), an odd one any.
        fam, before = marked[pick // 2 % len(marked)] if marked and pick % 2 == 0 else rows[pick % len(rows)]
        ident = before[".id"]
        after = dict(before)
        if what == "remove":
            done, after = run.hands.remove(who, fam, ident), None
        elif what == "toggle":
            after["disabled"] = "false" if before["disabled"] == "true" else "true"
            done = run.hands.set(who, fam, ident, disabled="yes" if after["disabled"] == "true" else "no")
        elif what == "comment":
            after["comment"] = comment
            done = before.get("comment", "") != comment and run.hands.set(who, fam, ident, comment=comment)
        elif what == "address":
            pool = V4 if fam == 4 else V6
            moved = address if family(address) == fam else pool[pick % len(pool)]
            after["address"] = moved
            done = before["address"] != moved and run.hands.set(who, fam, ident, address=moved)
    accounts = frozenset(a for r in (before, after) if r is not None and (a := owner(r)) is not None)
    if done and accounts:
        run.touches.append(Touch(index, what, accounts, mark))


def outage(run: Run, step: tuple[Any, ...]) -> None:
    if step[0] == "drop":
        run.sim.drop_listening()
    elif step[0] == "reboot":
        run.sim.reboot()  # every connection drops, every id is renumbered
        run.hands.reopen()
    else:
        time.sleep(0.05)


# -- settling and the checks ---------------------------------------------------------------

SENTINELS = itertools.count(1)


def settle(run: Run) -> None:
    """Wait until every report of the steps has been heard and handed on: a hand-made
    entry with the marker of a fresh account (``sentinel-N``) is added last; once its
    drift is reported, so is everything before it (or a refill asked for a full pass)."""
    wait = run.expires - time.monotonic()
    if wait > 0:
        time.sleep(wait + 2 * run.sim.settings.expiry_poll)  # every timeout has run out
    n = next(SENTINELS)
    deadline = time.monotonic() + SETTLE
    while not run.mirror.trusted:
        assert time.monotonic() < deadline, f"the mirror is not live again: {run.mirror.state}"
        time.sleep(0.01)
    mark = run.drift.mark()
    sentinel = f"sentinel-{n}"
    run.sim.add_entry(list_name="l", address=f"198.51.100.{n % 250 + 1}", comment=f"{HEAD}{sentinel}",
                      dynamic=False)
    while not any(c is None or sentinel in c for c in run.drift.since(mark)):
        assert time.monotonic() < deadline, "the sentinel's drift was never reported"
        time.sleep(0.01)
    actual = router_rows(run.sim)
    while (mirrored := run.mirror.entries()) != actual or not run.mirror.trusted:
        if time.monotonic() > deadline:
            pytest.fail(f"mirror ({run.mirror.state}) and router disagree after {SETTLE}s:\n"
                        f"{diff_text(mirrored, actual)}")
        time.sleep(0.01)
        actual = router_rows(run.sim)


def check_drift(run: Run, steps: list[tuple[Any, ...]]) -> None:
    calls = run.drift.since(0)
    for touch in run.touches:
        later = calls[touch.mark:]
        if None in later:
            continue  # a refill came after it: the router gets a full pass
        reported = {a for c in later if c for a in c}
        assert touch.accounts <= reported, (
            f"step {touch.step} ({steps[touch.step]}) changed entries of {sorted(touch.accounts)} "
            f"by hand; drift reported after it: {later}")
    for i, accounts in enumerate(calls):
        touched = {a for t in run.touches + run.unsure if t.mark <= i for a in t.accounts}
        extra = {a for a in accounts or () if not a.startswith("sentinel-")} - touched
        assert not extra, (f"drift call {i} reports {sorted(extra)}, whose entries only provisiond "
                           f"changed (calls: {calls}; hand edits: {run.touches})")


def check_scoped_read(run: Run) -> None:
    """A scoped read from the live mirror prints nothing and finds what a print finds."""
    wanted: dict[Key, Resource] = {}
    for i, address in enumerate(ADDRESSES):
        r = address_list_entry(MANAGED[i % len(MANAGED)], address, Account("1", "A1"), "provisiond")
        wanted[r.key] = r
    scope = Scope(accounts=frozenset(str(a) for a in ACCOUNTS), wanted=wanted)
    run.sim.reset_history()
    from_mirror = run.target.observe(scope)
    printed_meanwhile = [c.path for c in run.sim.history if c.path.endswith("address-list/print")]
    run.target.mirror = None
    try:
        printed = run.target.observe(scope)
    finally:
        run.target.mirror = run.mirror
    assert from_mirror.owned == printed.owned
    assert {k: r.ref for k, r in from_mirror.owned.items()} == {k: r.ref for k, r in printed.owned.items()}
    assert from_mirror.foreign == printed.foreign
    assert from_mirror.others == printed.others
    assert sorted(r.ref for r in from_mirror.surplus) == sorted(r.ref for r in printed.surplus)
    assert printed_meanwhile == [], "the scoped read printed although the mirror was live"


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The follower's pauses shortened, so an example takes well under a second."""
    monkeypatch.setattr(follow, "DEBOUNCE", 0.02)
    monkeypatch.setattr(follow, "RETRY_FIRST", 0.02)
    monkeypatch.setattr(follow, "RETRY_MAX", 0.2)
    monkeypatch.setattr(follow, "HEARTBEAT", 0.3)


@pytest.mark.parametrize("router", [
    SimSettings(username="u", password="p", log_commands=False, expiry_poll=0.05),
    SimSettings(username="u", password="p", log_commands=False, expiry_poll=0.05, version="6.49.10",
                dead_to_all_listeners=True, timeout_marks_dynamic=True),
], ids=["v7", "v6-dead-to-all"])
def test_the_mirror_agrees_with_the_router_after_any_sequence(router: SimSettings, quick: None) -> None:
    sim = RouterSim(router).start()
    router_settings = RouterSettings(name="core-1", host="127.0.0.1", port=sim.port, username="u", password="p",
                                     timeout=5, connect_timeout=2)
    target = RouterTarget(router_settings, lists=MANAGED, marker="provisiond")
    hands = Hands(sim)

    @settings(max_examples=25, deadline=None)
    @given(steps=STEPS)
    def example(steps: list[tuple[Any, ...]]) -> None:
        hands.reopen()
        hands.remove_all()
        target.close()
        mirror = Counted("core-1", MANAGED, HEAD)
        drift = Drift()
        target.mirror = mirror
        follower = Follower(target.settings, mirror, on_drift=drift).start()
        run = Run(sim, target, mirror, drift, hands)
        try:
            deadline = time.monotonic() + SETTLE
            while not mirror.trusted:
                assert time.monotonic() < deadline, "the first fill never completed"
                time.sleep(0.01)
            for i, step in enumerate(steps):
                if step[0] == "hand":
                    hand(run, i, step)
                elif step[0] in ("drop", "reboot", "pause"):
                    outage(run, step)
                else:
                    billing(run, i, step)
            settle(run)
            check_drift(run, steps)
            check_scoped_read(run)
        finally:
            follower.stop()
            target.mirror = None

    try:
        example()
    finally:
        hands.close()
        target.close()
        sim.stop()
