"""The seam between the engine and billing.

``engine.Reconciler`` calls ``read()`` once per pass, before anything is written. A
Source returns a whole ``Snapshot`` or raises ``SourceError`` (failed, timed out,
missing columns): there is no partial read. Bad rows are not errors; they travel in
``Snapshot.problems`` with their account id.

``read(accounts=ids)`` is the scoped read of a scoped pass (a NOTIFY naming accounts,
``apply --account``): only those accounts' rows, with ``Snapshot.scope`` set to the ids;
``None`` reads everything.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from provisiond.core.model import Snapshot


class Source(Protocol):
    def read(self, *, accounts: Collection[str] | None = None) -> Snapshot: ...

    def close(self) -> None: ...
