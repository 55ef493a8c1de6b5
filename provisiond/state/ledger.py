"""The radreply ownership ledger: which ``radreply`` rows provisiond wrote, so it only
ever changes those (the RADIUS target reads and records it around its writes). In
shared membership a record needs the ``global`` claim (``ClaimLost`` without it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa

from provisiond.state.claims import GLOBAL
from provisiond.state.plumbing import StoreBase
from provisiond.state.tables import radreply_ledger


class LedgerMixin(StoreBase):
    """The StateStore's radreply ledger (a part of ``StateStore``)."""

    def radreply_owned(self) -> set[tuple[str, str]]:
        """Every (username, attribute) whose radreply rows provisiond created."""
        with self._errors("read radreply ledger"), self._read("radreply_ledger") as conn:
            if conn is None:
                return set()
            rows = conn.execute(sa.select(radreply_ledger.c.username, radreply_ledger.c.attribute))
            return {(str(u), str(a)) for u, a in rows}

    def radreply_record(
        self,
        *,
        added: Iterable[tuple[str, str, str]],
        removed: Iterable[tuple[str, str]],
    ) -> None:
        """Record radreply rows provisiond created (username, attribute, account_id) or deleted."""
        added, removed = list(added), list(removed)
        if not added and not removed:
            return
        now = datetime.now(UTC)
        with self._write("record radreply ledger", target=GLOBAL) as conn:
            gone = {(u, a) for u, a in removed} | {(u, a) for u, a, _ in added}
            if gone:  # one executemany, not a round trip per row (100k users on a first run)
                conn.execute(
                    radreply_ledger.delete().where(
                        radreply_ledger.c.username == sa.bindparam("k_username"),
                        radreply_ledger.c.attribute == sa.bindparam("k_attribute"),
                    ),
                    [{"k_username": u, "k_attribute": a} for u, a in sorted(gone)],
                )
            if added:
                latest = {(u, a): acct for u, a, acct in added}
                conn.execute(
                    radreply_ledger.insert(),
                    [
                        {"username": u, "attribute": a, "account_id": acct, "recorded_at": now}
                        for (u, a), acct in sorted(latest.items())
                    ],
                )
