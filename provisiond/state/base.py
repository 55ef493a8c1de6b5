"""The seam between the engine and provisiond's own database.

``engine.Reconciler`` reads the last good billing read and the leases before it
plans, and records the read, the leases, the run and the journal when it applies.
``state.store.StateStore`` is the implementation; ``state.ondemand.WritableOnDemand`` wraps it
so a failed billing read creates nothing. The RADIUS target's ledger is its own,
smaller protocol (``targets.radius.RadiusLedger``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from provisiond.core.changes import Change, Conflict
from provisiond.core.ipam import Allocation, Lease


class Store(Protocol):
    def last_good_read(self) -> int | None: ...

    def record_read(self, accounts: int, rows: int, at: datetime) -> None: ...

    def leases(self, pool: str | None = None) -> list[Lease]: ...

    def reserve(self, allocation: Allocation, now: datetime, *, run_id: str | None = None) -> None:
        """Record the leases, and journal them under ``run_id`` (the pass's run)."""
        ...

    def start_run(self, mode: str) -> str: ...

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first."""
        ...

    def finish_run(self, run_id: str, result: str, summary: Mapping[str, Any]) -> None:
        """Record how the run ended once its journal is written; if the journal could not
        be written, the run is recorded all the same (failed, the error in its summary)
        and the error raised after."""
        ...

    def journal(
        self, run_id: str, target: str, entries: Iterable[Mapping[str, Any]], *,
        at: datetime | None = None,
    ) -> None: ...

    def journal_changes(
        self, run_id: str, target: str, *, applied: Iterable[Change] = (),
        failed: Iterable[tuple[Change, str]] = (), conflicts: Iterable[Conflict] = (),
        at: datetime | None = None, wait: bool = True,
    ) -> None:
        """``wait=False``: queued, written by ``sync_journal`` or ``finish_run`` at the latest."""
        ...

    def sync_journal(self) -> None:
        """Wait until the journal rows queued so far are written (the run goes on)."""
        ...

    def radreply_owned(self) -> set[tuple[str, str]]: ...

    def usernames_written(self, accounts: Collection[str]) -> set[str]: ...

    def radius_accounts(self, usernames: Collection[str]) -> dict[str, str]: ...

    def radreply_record(
        self, *, added: Iterable[tuple[str, str, str]], removed: Iterable[tuple[str, str]]
    ) -> None: ...

    def close(self) -> None: ...
