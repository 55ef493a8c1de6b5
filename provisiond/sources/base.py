"""The seam between the engine and billing.

``engine.Reconciler`` calls ``read()`` once per pass, before anything is written. A
Source returns a whole ``Snapshot`` or raises ``SourceError`` (failed, timed out,
missing columns): there is no partial read. Bad rows are not errors; they travel in
``Snapshot.problems`` with their account id.
"""

from __future__ import annotations

from typing import Protocol

from provisiond.core.model import Snapshot


class Source(Protocol):
    def read(self) -> Snapshot: ...

    def close(self) -> None: ...
