"""Billing-side values: what the Source reads and everything downstream consumes.

``Source.read()`` returns a ``Snapshot`` of ``Account`` values; the allocator, desire
and the targets only ever see these frozen values, never database rows. ``Match`` is
the one rule by which a mapping (address list, RADIUS group, pool) selects accounts:
desire, radius, ipam, the unmatched-mapping check and ``explain`` all ask it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Account:
    """One billing account, aggregated from every row the billing query returned for it."""

    id: str
    name: str = ""
    status: str = ""
    groups: frozenset[str] = frozenset()
    addresses: tuple[str, ...] = ()  # billing-assigned, normalised, sorted
    usernames: tuple[str, ...] = ()  # RADIUS usernames, sorted
    active: bool = False  # its status activates it (Sonar's AccountStatus.activates_account)
    delinquent: bool = False  # billing flags it delinquent (Sonar's Account.is_delinquent)

    @classmethod
    def make(cls, id: str, name: str, status: str, groups: frozenset[str],
             addresses: tuple[str, ...], usernames: tuple[str, ...],
             active: bool, delinquent: bool) -> Account:
        """``Account(...)`` with every field given, at half the cost of the frozen
        dataclass's ``__init__`` (the billing read makes 100,000 of them)."""
        account = _new(cls)
        _set_id(account, id)
        _set_name(account, name)
        _set_status(account, status)
        _set_groups(account, groups)
        _set_addresses(account, addresses)
        _set_usernames(account, usernames)
        _set_active(account, active)
        _set_delinquent(account, delinquent)
        return account


# The slots' own setters: they bypass the frozen ``__setattr__`` (as its ``__init__`` does).
_new = object.__new__
(_set_id, _set_name, _set_status, _set_groups, _set_addresses, _set_usernames, _set_active,
 _set_delinquent) = (Account.__dict__[f].__set__ for f in (
    "id", "name", "status", "groups", "addresses", "usernames", "active", "delinquent"))

# The selector keys of a mapping (``[[address_list]]``, ``[[radius_group]]``, ``[[pool]]``).
SELECTOR_KEYS = ("group", "groups", "status", "statuses", "active", "delinquent")


@dataclass(frozen=True, slots=True)
class Match:
    """Which accounts a mapping selects: the one rule, for every kind of mapping.

    Each key given must hold (AND); ``None`` is a key not given. ``groups``: the account
    is in any of them; ``statuses``: its status is any of them (by name); ``active``: its
    status activates it, or not; ``delinquent``: billing flags it delinquent, or not.
    """

    groups: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    active: bool | None = None
    delinquent: bool | None = None

    @classmethod
    def of(cls, mapping: object) -> Match:
        """The Match of a mapping's settings (``group``/``groups``, ``status``/``statuses``,
        ``active``, ``delinquent``; any it lacks are not given)."""
        def names(one: str, many: str) -> frozenset[str] | None:
            single, several = getattr(mapping, one, None), getattr(mapping, many, None)
            if single is None and several is None:
                return None
            return frozenset(([single] if single is not None else []) + list(several or ()))
        return cls(names("group", "groups"), names("status", "statuses"),
                   getattr(mapping, "active", None), getattr(mapping, "delinquent", None))

    def selects(self, account: Account) -> bool:
        return ((self.groups is None or not self.groups.isdisjoint(account.groups))
                and (self.statuses is None or account.status in self.statuses)
                and (self.active is None or account.active == self.active)
                and (self.delinquent is None or account.delinquent == self.delinquent))

    def checks(self, account: Account) -> list[tuple[str, bool, str]]:
        """Each key given: (key, whether the account meets it, why), for ``explain``."""
        out = []
        if self.groups is not None:
            hit = sorted(self.groups & account.groups)
            word = "group" if len(self.groups) == 1 else "groups"
            out.append(("groups", bool(hit), f"member of group {_names(hit)}" if hit else
                        f"not in {word} {_names(self.groups, 'or')}"))
        if self.statuses is not None:
            held = account.status in self.statuses
            out.append(("status", held, f"status is {_quote(account.status)}"
                        + ("" if held else f", not {_names(self.statuses, 'or')}")))
        if self.active is not None:
            held = account.active == self.active
            out.append(("active", held, f"its status {'activates' if account.active else 'does not activate'} "
                        f"it (active = {str(self.active).lower()})"))
        if self.delinquent is not None:
            held = account.delinquent == self.delinquent
            out.append(("delinquent", held, f"{'delinquent' if account.delinquent else 'not delinquent'} "
                        f"(delinquent = {str(self.delinquent).lower()})"))
        return out

    def flags(self) -> frozenset[str]:
        """The account flags it reads: ``active``, ``delinquent`` (billing must provide them)."""
        return frozenset(k for k, v in (("active", self.active), ("delinquent", self.delinquent))
                         if v is not None)

    def describe(self) -> str:
        parts = []
        if self.groups is not None:
            parts.append(f"group {_names(self.groups, 'or')}")
        if self.statuses is not None:
            parts.append(f"status {_names(self.statuses, 'or')}")
        parts += [f"{k} = {str(v).lower()}" for k, v in (("active", self.active),
                                                          ("delinquent", self.delinquent))
                  if v is not None]
        return " and ".join(parts) or "every account"


def _quote(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def _names(names: Iterable[str], joiner: str = "and") -> str:
    quoted = [_quote(n) for n in sorted(names)]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} {joiner} {quoted[-1]}"


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A billing row that was skipped, and why. ``account_id`` is empty when the row had none."""

    account_id: str
    message: str

    def __str__(self) -> str:
        ident = self.account_id
        if not ident.isprintable() or " " in ident:
            ident = repr(ident)
        who = f"account {ident}" if self.account_id else "row without account_id"
        return f"{who}: {self.message}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every account read from billing in one go, or (``scope`` set) every account of a
    scoped read: those ids only. An id of ``scope`` missing from ``accounts`` has no
    billing rows (any more)."""

    accounts: Mapping[str, Account]
    read_at: datetime
    rows: int = 0
    problems: tuple[RowProblem, ...] = field(default=())
    scope: frozenset[str] | None = None
    # Rows used, but not quite as billing wrote them (an address with host bits set).
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.accounts)
