"""Scoped passes: the values that narrow one pass to a few accounts.

A billing change names accounts (a NOTIFY payload, ``apply --account``); a scoped pass
reads, plans and writes only what belongs to them. Pure: the daemon parses payloads
and coalesces requests here, the reconciler builds one ``Scope`` per target and hands
it to ``Target.observe(scope)``, which reads only that part of the target.

Correctness rests on one rule: a scoped pass must leave every target exactly as a full
pass would. Where that would need knowledge of accounts outside the scope (another
account's entry sits on an address a scoped account wants), the target reports that
account in ``Observed.others`` and the reconciler widens the pass to a full one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from provisiond.core.changes import Key, Resource

# An account id as a payload may carry it: printable, no separator, no whitespace.
_ID = re.compile(r"[^\s,;'\"\\]{1,255}")
MAX_PAYLOAD_IDS = 100_000


@dataclass(frozen=True, slots=True)
class Scope:
    """What one target needs to read for a scoped pass.

    ``accounts``: the account ids of the pass. ``wanted``: this target's desired
    resources for them (so the target also reads whatever sits on those keys).
    ``usernames``: RADIUS usernames of those accounts, from billing and from what
    provisiond wrote for them before (a renamed username's old rows). ``existing``:
    managed entries per group, as the last full observation counted them, for the
    safety check (None: the target counts them itself).
    """

    accounts: frozenset[str]
    wanted: Mapping[Key, Resource] = field(default_factory=dict)
    usernames: frozenset[str] = frozenset()
    existing: Mapping[str, int] | None = None


def ids_text(accounts: Iterable[str] | None, limit: int = 20) -> str:
    """Account ids for a log line: ``all`` (a full pass), or the first ``limit`` and a count."""
    if accounts is None:
        return "all"
    ids = sorted(accounts, key=lambda a: (len(a), a))
    shown = ",".join(ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def parse_payload(payload: str) -> frozenset[str] | None:
    """A NOTIFY payload -> the account ids it names, or None for "full pass".

    Ids are separated by commas (whitespace around them is ignored). An empty payload,
    or one with anything that is not an id (quotes, JSON, a stray separator), means a
    full pass: an unreadable event must never narrow what gets reconciled.
    """
    text = payload.strip()
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > MAX_PAYLOAD_IDS or not all(_ID.fullmatch(p) for p in parts):
        return None
    return frozenset(parts)


@dataclass(slots=True)
class Pending:
    """Pass requests gathered while a pass runs (the daemon holds one, under its lock).

    ``add(None)`` asks for a full pass; ``add(ids)`` for those accounts. ``take`` hands
    over what to run next and starts over: a full pass when one was asked for or when
    more than ``limit`` accounts are waiting (one full read is then cheaper than
    narrowed reads of that many), else the gathered ids in one scoped pass.
    """

    full: bool = False
    accounts: set[str] = field(default_factory=set)
    # Targets whose back-off ended: a pass of those targets only (a full billing read).
    targets: set[str] = field(default_factory=set)

    def add_targets(self, names: Iterable[str]) -> None:
        self.targets.update(names)

    def take_targets(self) -> frozenset[str] | None:
        """The targets waiting for a pass of their own (None: none), when nothing else waits."""
        if self.full or self.accounts or not self.targets:
            return None
        out, self.targets = frozenset(self.targets), set()
        return out

    def add(self, accounts: Iterable[str] | None) -> None:
        if accounts is None:
            self.full = True
            self.accounts.clear()
        elif not self.full:
            self.accounts.update(accounts)

    @property
    def empty(self) -> bool:
        return not self.full and not self.accounts and not self.targets

    def take(self, limit: int) -> frozenset[str] | None:
        """The next pass's scope (None: full) and an empty queue."""
        full = self.full or len(self.accounts) > limit or not self.accounts
        out = None if full else frozenset(self.accounts)
        self.full = False
        self.accounts = set()
        if full:
            self.targets = set()  # a full pass covers them too
        return out


class UsernameHolders:
    """RADIUS username -> the billing accounts that list it, as the reads so far left it.

    A scoped read returns only its accounts, so it cannot tell that a username is also
    another account's (``core.radius`` gives a shared username to the lowest account id).
    The reconciler fills this from every full read and moves each scoped read's accounts
    to what that read says; a scoped pass touching a username held outside its scope
    widens to a full pass.
    """

    __slots__ = ("_by_account", "_by_name")

    # Kept by the daemon between passes for every account with a username, so compact:
    # a lone username or holder is stored as itself, only the rare shared ones as sets.

    def __init__(self, accounts: Mapping[str, Iterable[str]] | None = None) -> None:
        self._by_account: dict[str, str | frozenset[str]] = {}
        self._by_name: dict[str, str | frozenset[str]] = {}
        for account_id, names in (accounts or {}).items():
            self.replace(account_id, names)

    def replace(self, account_id: str, usernames: Iterable[str]) -> None:
        """``account_id`` now lists ``usernames`` (none: it has none, or is gone)."""
        new = frozenset(usernames)
        old = _many(self._by_account.pop(account_id, frozenset()))
        for name in old - new:
            rest = _many(self._by_name.pop(name, frozenset())) - {account_id}
            if rest:
                self._by_name[name] = _one(rest)
        for name in new - old:
            self._by_name[name] = _one(_many(self._by_name.get(name, frozenset())) | {account_id})
        if new:
            self._by_account[account_id] = _one(new)

    def outside(self, usernames: Iterable[str], scope: Set[str]) -> dict[str, set[str]]:
        """Of ``usernames``, those an account outside ``scope`` lists -> those accounts."""
        out: dict[str, set[str]] = {}
        for name in usernames:
            held = self._by_name.get(name)
            others = set() if held is None else _many(held) - scope
            if others:
                out[name] = set(others)
        return out


def _one(values: frozenset[str]) -> str | frozenset[str]:
    """A set of one as its only member (what ``_many`` reads back)."""
    return next(iter(values)) if len(values) == 1 else values


def _many(value: str | frozenset[str]) -> frozenset[str]:
    return frozenset((value,)) if isinstance(value, str) else value
