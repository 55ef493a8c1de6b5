"""Pass requests: ``provisiond pass`` asks the running daemon for a pass through the
state store, and waits there for its result.

The state store is the one thing every daemon and every CLI of one installation share,
whatever the billing source (SQL with NOTIFY, Sonar with webhooks) and whatever the
store (SQLite on one host, PostgreSQL for a leader and standbys): a request row is
written by the CLI, taken by the leading daemon (which polls), and answered with the
pass that served it (its number, result and status line).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from provisiond.state.plumbing import StoreBase
from provisiond.state.tables import pass_requests


class PassRequests(StoreBase):
    """The StateStore's part for pass requests (a mixin of ``StateStore``)."""

    def request_pass(self, *, by: str, targets: Collection[str] | None = None,
                     accounts: Collection[str] | None = None) -> str:
        """A request for a pass (of ``targets``, of ``accounts``; None: all); its id."""
        request_id = uuid.uuid4().hex
        with self._write("request a pass") as conn:
            conn.execute(pass_requests.insert().values(
                id=request_id, requested_at=datetime.now(UTC), requested_by=by[:255],
                targets=None if targets is None else json.dumps(sorted(targets)),
                accounts=None if accounts is None else json.dumps(sorted(accounts)),
                state="pending"))
        return request_id

    def take_pass_requests(self) -> list[dict[str, Any]]:
        """The pending requests, now taken (by the leading daemon), oldest first. A look
        that finds none writes nothing (the daemon looks every second)."""
        with self._errors("look for pass requests"), self._read("pass_requests") as look:
            if look is None or look.execute(
                    sa.select(pass_requests.c.id).where(pass_requests.c.state == "pending")
                    .limit(1)).first() is None:
                return []
        with self._write("take pass requests") as conn:
            rows = [dict(r) for r in conn.execute(
                sa.select(pass_requests).where(pass_requests.c.state == "pending")
                .order_by(pass_requests.c.requested_at)).mappings()]
            if rows:
                conn.execute(pass_requests.update()
                             .where(pass_requests.c.id.in_([r["id"] for r in rows]))
                             .values(state="taken", taken_at=datetime.now(UTC)))
        return [_decoded(r) for r in rows]

    def finish_pass_requests(self, ids: Collection[str], *, number: int, result: str,
                             status: str) -> None:
        if not ids:
            return
        with self._write("answer pass requests") as conn:
            conn.execute(pass_requests.update().where(pass_requests.c.id.in_(list(ids)))
                         .values(state="done", done_at=datetime.now(UTC), pass_number=number,
                                 result=result, status=status[:4000]))

    def pass_request(self, request_id: str) -> dict[str, Any] | None:
        with self._errors("read a pass request"), self._read("pass_requests") as conn:
            if conn is None:
                return None
            row = conn.execute(sa.select(pass_requests)
                               .where(pass_requests.c.id == request_id)).mappings().first()
            return None if row is None else _decoded(dict(row))


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("targets", "accounts"):
        row[key] = None if row[key] is None else json.loads(row[key])
    return row
