"""The seam between the reconciler and the things provisiond writes: the template
every target follows.

A Target reads what it manages (``observe``) and applies a ``Plan`` to it (``apply``).
The reconciler calls every target in its own worker, so one failing router never holds
up the others. ``routeros.RouterTarget`` and ``radius.RadiusTarget`` are two
variations of this one template; a new target is a third.

A target MUST provide (``Target``):

- ``name`` (unique: it keys the target's desired state, plans and journal) and
  ``kind`` (``"routeros"``, ``"radius"``, as plans name it);
- ``observe(scope=None)``: everything it manages; with a ``Scope``, only the scope's
  part (its accounts' entries and whatever sits on the keys they want; other accounts
  found there go to ``Observed.others``, which widens the pass to a full one). It fails
  by raising ``TargetError``, or ``TargetUnavailable`` for "try again later";
- ``apply(plan, *, progress=None, report=None)``: Delete, then Create, then Update;
  never raises for one change (failures and conflicts go into the ``ApplyResult``,
  a whole-target failure into ``ApplyResult.error``), and hands every finished change
  to ``report`` (the journal) exactly once;
- ``plan_followups(plan)``: the plan with its follow-up actions; a target without any
  returns ``plan`` as it is (RouterTarget does; RadiusTarget adds CoA/Disconnect);
- ``close()``: let go of connections; safe to call again, and the next ``observe``
  connects afresh.

A target MAY, and otherwise the default holds:

- compare while it reads (``ComparesWhileReading.observe_against``): a full pass then
  calls it instead of ``observe()`` and starts its reads before billing is read;
- call ``progress`` as changes finish (the CLI's bar), or all at once at the end
  (RadiusTarget: one transaction); likewise ``report`` may get one part or many
  (RouterTarget: every ``writer.REPORT_EVERY`` changes);
- keep a connection between passes (RouterTarget does, and reconnects once when it was
  closed meanwhile);
- offer ``check_connection() -> str`` for ``check-config --connect`` (log in, change
  nothing, say how). It is not part of ``Target``: the CLI calls RouterTarget's, and
  RADIUS's is a module function (``radius.check_connection``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol, runtime_checkable

from provisiond.core.changes import Change, Conflict, Key, Observed, Resource
from provisiond.core.plan import Plan
from provisiond.core.scope import Scope


@dataclass(slots=True)
class ApplyResult:
    """What happened to one target's plan. ``failed`` and ``conflicts`` carry messages."""

    target: str
    applied: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    followups: list[Mapping[str, Any]] = field(default_factory=list)  # e.g. CoA results
    error: str | None = None  # the whole target failed (unreachable, refused, rolled back)
    unavailable: bool = False  # ... because it could not be reached: retry it later

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed

    def counts(self) -> dict[str, int]:
        """Applied changes by action."""
        out = {"create": 0, "update": 0, "delete": 0}
        out.update(Counter(map(attrgetter("action"), self.applied)))
        return out


class Target(Protocol):
    """What every target MUST provide (the module docstring says what each promises)."""

    name: str
    kind: str

    def observe(self, scope: Scope | None = None) -> Observed:
        """Read what provisiond manages on this target. Raises TargetError.

        With a ``Scope`` (a scoped pass) only the scope's part: the entries of its
        accounts, and whatever sits on the keys they want; ``Observed.existing`` then
        carries the managed size per group for the safety check.
        """
        ...

    def plan_followups(self, plan: Plan) -> Plan:
        """Add follow-up actions (CoA/Disconnect) to a plan; most targets return it as is."""
        ...

    def apply(
        self,
        plan: Plan,
        *,
        progress: Callable[[int], None] | None = None,
        report: Callable[[ApplyResult], None] | None = None,
    ) -> ApplyResult:
        """Apply the plan's changes (Delete -> Create -> Update). Never raises for one change.

        ``progress(n)`` is called as ``n`` more changes complete (applied, failed or
        collided), from any thread; it only feeds a display and must be cheap.
        ``report(part)`` (the journal) gets every applied, failed and collided change of
        the returned result exactly once, in parts (an ``ApplyResult`` of changes that
        finished since the last part), the last part before ``apply`` returns. Parts
        come from any of the target's threads, maybe at once; ``report`` must not block
        for long.
        """
        ...

    def close(self) -> None:
        """Let go of connections; safe to call again. The next ``observe`` reconnects."""
        ...


@runtime_checkable
class ComparesWhileReading(Protocol):
    """What a target MAY add: it compares what it reads with the desired state as it
    reads it.

    ``observe_against(desired)`` starts its reads at once; ``desired`` is done once
    billing has been read (every target's desired state, by target name; its exception
    when the read failed). It returns an ``Observed`` whose ``owned`` holds only what
    differs; the rest is in ``in_step``. The reconciler prefers it to ``observe`` for a
    pass; ``observe`` stays for everything else. ``checksum=False``: no saved plan
    will be checked against this observation, so its ``checksum`` may be left empty.
    """

    def observe_against(self, desired: Future[Mapping[str, Mapping[Key, Resource]]], *,
                        checksum: bool = True) -> Observed: ...


DesiredState = Mapping[Key, Resource]
