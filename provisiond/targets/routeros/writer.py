"""One apply on one router: its plan's changes as pipelined commands, and where their
answers go.

``RouterTarget.apply`` makes a ``Writer`` (and a ``Finished``) per apply and runs it
inside ``wire.session_errors``. Deletes, then creates, then updates, each phase a
window of tagged commands (``pipeline``); a phase ends before the next begins, so a
surplus entry is gone before its key is added again. A trap fails its own change; a
lost connection raises out of ``write``, and ``Finished.failed_rest`` fails every
change not yet answered (the next pass observes what did arrive: nothing is added
twice).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from provisiond.core.addresses import family
from provisiond.core.changes import Change, Conflict, Create, Delete, Resource, Update
from provisiond.errors import TargetError
from provisiond.settings import RouterSettings
from provisiond.targets.base import ApplyResult
from provisiond.targets.routeros import pipeline
from provisiond.targets.routeros.commands import AddWords, remove_words, set_words
from provisiond.targets.routeros.pipeline import Answer
from provisiond.targets.routeros.wire import WIRE_ERRORS, ApiWire, quietly_close

REMOVE_BATCH = 200
ADDS_PER_SESSION = 20_000  # a batch of adds this large gets a second session (up to `connections`)
REPORT_EVERY = 2_000  # answered changes per part handed to apply's ``report`` (the journal)
DUPLICATE = "already have such entry"
NO_SUCH_ITEM = "no such item"
_T = TypeVar("_T")


class ClaimLostWrites(TargetError):
    """Shared members: the gate said no before a batch; the rest of the apply is not sent."""


class Writer:
    """The commands of one apply and what their answers mean, over ``wire`` (and, for
    a very large batch of adds, more sessions from ``connect``)."""

    def __init__(self, router: str, settings: RouterSettings, *, tags: Iterator[int],
                 connect: Callable[[], Any], done: Finished,
                 gate: Callable[[], bool] | None = None) -> None:
        self._router = router
        self._gate = gate
        self._settings = settings
        self._tags = tags
        self._connect = connect
        self._done = done

    def write(self, wire: ApiWire, changes: Sequence[Change], result: ApplyResult) -> None:
        """Deletes, then creates, then updates; raises when the session is lost."""
        deletes = [c for c in changes if isinstance(c, Delete)]
        creates = [c for c in changes if isinstance(c, Create)]
        updates = [c for c in changes if isinstance(c, Update)]
        self._remove(wire, deletes, result)
        self._add_all(creates, wire, result)
        self._pipeline(wire, ((c, set_words(c)) for c in updates), result, self._set_done)

    def _pipeline(self, wire: ApiWire, commands: Iterable[tuple[_T, Sequence[str] | bytes]], result: ApplyResult,
                  done: Callable[[ApplyResult, _T, Answer], None], stop: threading.Event | None = None) -> None:
        gated = pipeline.run(wire, commands, window=self._settings.pipeline, on_answer=partial(done, result),
                             stop=stop, tags=self._tags, gate=self._gate)
        if gated:
            raise ClaimLostWrites(self._router, "writes stopped: this member no longer holds its "
                                  "claim on the router (another member takes it over)")

    def _remove(self, wire: ApiWire, deletes: list[Delete], result: ApplyResult) -> None:
        """Comma-joined ids in batches; a batch that traps is retried one id at a time."""
        batches = [same[i:i + REMOVE_BATCH] for fam in (4, 6)
                   for same in [[c for c in deletes if family(c.old.get("address")) == fam]]
                   for i in range(0, len(same), REMOVE_BATCH)]
        retry: list[Delete] = []

        def done(result: ApplyResult, batch: list[Delete], answer: Answer) -> None:
            if not answer.traps:
                for c in batch:
                    self._done.applied(result, c)
            elif len(batch) > 1:
                retry.extend(batch)  # one id in the batch is gone: one at a time below
            else:
                message = answer.traps[0]
                if message.startswith(NO_SUCH_ITEM):
                    self._done.applied(result, batch[0])  # already gone: the goal is met
                else:
                    self._done.failed(result, batch[0], self._refused("remove", batch[0].old, message))

        self._pipeline(wire, ((b, remove_words(b)) for b in batches), result, done)
        self._pipeline(wire, (([c], remove_words([c])) for c in retry), result, done)

    def _add_all(self, creates: list[Create], wire: ApiWire, result: ApplyResult) -> None:
        """Adds, pipelined; very large batches over up to ``settings.connections`` sessions.

        Extra sessions let a router work on several commands at once; they are opened
        for the batch and closed after it. A session lost stops the others from
        sending more: the router's remaining adds fail, as with one session.
        """
        workers = min(self._settings.connections, max(1, len(creates) // ADDS_PER_SESSION))
        words = AddWords(wire.encoding)
        if workers <= 1:
            self._pipeline(wire, zip(creates, map(words, creates)), result, self._add_done)
            return
        shares = [creates[i::workers] for i in range(workers)]
        parts = [ApplyResult(target=self._router) for _ in shares]
        lost = threading.Event()
        errors: list[BaseException] = []

        def work(i: int) -> None:
            api = None
            try:
                session = wire if i == 0 else ApiWire(api := self._connect())
                self._pipeline(session, zip(shares[i], map(words, shares[i])), parts[i],
                               self._add_done, stop=lost)
            except (*WIRE_ERRORS, ClaimLostWrites) as exc:
                lost.set()
                errors.append(exc)
            finally:
                if api is not None:
                    quietly_close(api)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self._router}-add") as pool:
            list(pool.map(work, range(workers)))
        for p in parts:
            result.applied += p.applied
            result.failed += p.failed
            result.conflicts += p.conflicts
        if errors:
            raise errors[0]

    def _add_done(self, result: ApplyResult, change: Create, answer: Answer) -> None:
        if not answer.traps:
            self._done.applied(result, change)
        elif any(DUPLICATE in t for t in answer.traps):
            self._done.conflict(result, Conflict(change.new, f"{answer.traps[0]} (not provisiond's)"))
        else:
            self._done.failed(result, change, self._refused("add", change.new, answer.traps[0]))

    def _set_done(self, result: ApplyResult, change: Update, answer: Answer) -> None:
        if answer.traps:
            self._done.failed(result, change, self._refused("set", change.new, answer.traps[0]))
        else:
            self._done.applied(result, change)

    def _refused(self, verb: str, r: Resource, message: str) -> str:
        return f"{self._router}: {verb} {r.get('list')} {r.get('address')} refused: {message}"


class Finished:
    """Where an apply's answered changes go: its result (a session's share of it, while
    several sessions add), the progress display, and ``report`` (the journal) in parts
    of ``REPORT_EVERY``. Called from every session's thread; a full part is taken under
    the lock and reported by the thread that filled it, outside the lock."""

    def __init__(self, target: str, progress: Callable[[int], None] | None = None,
                 report: Callable[[ApplyResult], None] | None = None) -> None:
        self._target = target
        self._progress = progress
        self._report = report
        self._lock = threading.Lock()
        self._part = ApplyResult(target=target)
        self._count = 0

    def applied(self, result: ApplyResult, change: Change) -> None:
        """The one called for nearly every change: ``_counted`` inlined."""
        result.applied.append(change)
        if self._report is not None:
            with self._lock:
                self._part.applied.append(change)
                self._count += 1
                full = self._counted(0) if self._count >= REPORT_EVERY else None
            if full is not None:
                self._report(full)
        if self._progress is not None:
            self._progress(1)

    def failed(self, result: ApplyResult, change: Change, message: str) -> None:
        result.failed.append((change, message))
        if self._report is not None:
            with self._lock:
                self._part.failed.append((change, message))
                full = self._counted(1)
            if full is not None:
                self._report(full)
        if self._progress is not None:
            self._progress(1)

    def conflict(self, result: ApplyResult, conflict: Conflict) -> None:
        result.conflicts.append(conflict)
        if self._report is not None:
            with self._lock:
                self._part.conflicts.append(conflict)
                full = self._counted(1)
            if full is not None:
                self._report(full)
        if self._progress is not None:
            self._progress(1)

    def failed_rest(self, result: ApplyResult, changes: Iterable[Change], why: str) -> None:
        """The target failed mid-way: every change not yet applied, failed or collided
        fails with ``why`` (reported by ``flush``; not counted as progress: the bar
        stops there)."""
        done = {id(c) for c in result.applied} | {id(c) for c, _ in result.failed}
        done |= {id(c.resource) for c in result.conflicts}
        result.error = why
        rest = [(c, "not applied: " + why) for c in changes
                if id(c) not in done and id(c.resource) not in done]
        result.failed += rest
        if self._report is not None:
            with self._lock:
                self._part.failed += rest
                self._count += len(rest)

    def flush(self) -> None:
        """Report what is left (the last part)."""
        if self._report is not None:
            with self._lock:
                part, self._part, self._count = self._part, ApplyResult(target=self._target), 0
            if part.applied or part.failed or part.conflicts:
                self._report(part)

    def _counted(self, n: int) -> ApplyResult | None:
        """Under the lock: ``n`` more in the part; the part, if that filled it."""
        self._count += n
        if self._count < REPORT_EVERY:
            return None
        part, self._part, self._count = self._part, ApplyResult(target=self._target), 0
        return part
