"""A full pass's reads of every target, started before billing is read.

Targets are read while billing is read and desire is computed: a pass costs the longer
of the two, not their sum. A target that can compare while it reads
(``ComparesWhileReading``) gets the desired state as soon as it is known; the others
are diffed once both are in. Reads only; nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from provisiond.core.changes import Key, Observed, Resource
from provisiond.core.plan import Plan
from provisiond.engine.results import MAX_WORKERS, Failed, guarded
from provisiond.targets.base import ComparesWhileReading, Target


class FullRead:
    """``with FullRead(targets) as reads:`` every target's read under way; ``want``
    hands them the desired state; ``plans`` yields each target's Plan (or why it has
    none) in target order. Leaving the block on an error stops the readers waiting."""

    def __init__(self, targets: Sequence[Target], *, checksums: bool) -> None:
        self._targets = targets
        self._checksums = checksums
        self._wanted: Future[Mapping[str, Mapping[Key, Resource]]] = Future()
        self._pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="observe")
        self._observing: list[tuple[Target, Future[Observed | Failed]]] = []

    def __enter__(self) -> FullRead:
        self._observing = [(t, self._pool.submit(guarded, t.name, self._observe, t))
                           for t in self._targets]
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not self._wanted.done():
            self._wanted.set_exception(exc)  # the readers stop waiting, and the pass fails
        self._pool.shutdown(wait=True)

    def _observe(self, target: Target) -> Observed:
        if isinstance(target, ComparesWhileReading):
            return target.observe_against(self._wanted, checksum=self._checksums)
        return target.observe()

    def want(self, desired: Mapping[str, Mapping[Key, Resource]]) -> None:
        self._wanted.set_result(desired)

    def plans(self, one: Callable[[Target, Observed], Plan]) -> Iterator[tuple[Target, Plan | Failed]]:
        for target, future in self._observing:
            observed = future.result()
            yield target, (guarded(target.name, one, target, observed)
                           if isinstance(observed, Observed) else observed)
