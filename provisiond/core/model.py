"""Billing-side values: what the Source reads and everything downstream consumes.

``Source.read()`` returns a ``Snapshot`` of ``Account`` values; the allocator, desire
and the targets only ever see these frozen values, never database rows.
"""

from __future__ import annotations

from collections.abc import Mapping
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

    @classmethod
    def make(cls, id: str, name: str, status: str, groups: frozenset[str],
             addresses: tuple[str, ...], usernames: tuple[str, ...]) -> Account:
        """``Account(...)`` with every field given, at half the cost of the frozen
        dataclass's ``__init__`` (the billing read makes 100,000 of them)."""
        account = _new(cls)
        _set_id(account, id)
        _set_name(account, name)
        _set_status(account, status)
        _set_groups(account, groups)
        _set_addresses(account, addresses)
        _set_usernames(account, usernames)
        return account


# The slots' own setters: they bypass the frozen ``__setattr__`` (as its ``__init__`` does).
_new = object.__new__
_set_id, _set_name, _set_status, _set_groups, _set_addresses, _set_usernames = (
    Account.__dict__[f].__set__ for f in ("id", "name", "status", "groups", "addresses", "usernames"))


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
