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
