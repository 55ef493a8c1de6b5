"""What one pass produces: a ``PassPlan`` (every target's Plan, or why it has none) and,
once applied, a ``PassResult``. Also the one way the engine runs a step on many targets
at once, where a target's own failure becomes its message instead of an exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from provisiond.core.plan import Plan, Selector
from provisiond.core.model import Snapshot
from provisiond.errors import ConfigError, PlanRefused, TargetError, TargetUnavailable
from provisiond.targets.base import ApplyResult

if TYPE_CHECKING:
    from provisiond.core.ipam import Allocation

log = logging.getLogger("provisiond.engine")  # one name for the whole engine: log filters rely on it

MAX_WORKERS = 8

# ``progress(target, total)`` is called as a target's apply starts and returns the
# callback that target reports completed changes to (the CLI's progress bar).
ProgressFactory = Callable[[str, int], Callable[[int], None]]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Failed:
    """Why one target has no plan or no result this pass. ``unavailable``: it could not
    be reached (``TargetUnavailable``), so retry it later; otherwise it answered wrongly
    (a refused command, a malformed reply, its own configuration)."""

    message: str
    unavailable: bool = False


@dataclass(slots=True)
class PassPlan:
    """Everything ``plan`` found: one Plan per reachable target, errors for the others."""

    snapshot: Snapshot | None
    plans: list[Plan] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # target -> why it could not be planned
    unavailable: set[str] = field(default_factory=set)  # of those, the ones that were unreachable
    kinds: dict[str, str] = field(default_factory=dict)  # target -> kind, failed ones included
    allocation: Allocation | None = None  # when pools are configured
    notes: list[str] = field(default_factory=list)
    ipam_json: dict[str, Any] | None = None
    now: datetime | None = None  # when the allocation was computed
    target_patterns: tuple[str, ...] = ()  # the --target globs this plan was limited to (empty: all)
    accounts: frozenset[str] | None = None  # a scoped pass (--account, NOTIFY): its account ids
    # Mappings whose group/status matches no billing account this pass (typos, mostly).
    unmatched: list[Selector] = field(default_factory=list)
    ipam_refused: str | None = None  # why apply refuses the allocation without --force
    # A scoped pass: pools whose every lease the allocation releases (pool -> releases).
    emptied_pools: dict[str, int] = field(default_factory=dict)

    @property
    def ipam_changes(self) -> int:
        """Lease decisions (new, returned, released) this plan records."""
        return int(self.allocation.change_count) if self.allocation is not None else 0

    @property
    def has_changes(self) -> bool:
        return any(p.changes for p in self.plans) or bool(
            self.ipam_json and self.ipam_json.get("changes")
        )

    def add(self, name: str, kind: str, outcome: Plan | Failed) -> None:
        """File one target's outcome: its Plan, or why it has none."""
        self.kinds[name] = kind
        if isinstance(outcome, Plan):
            self.plans.append(outcome)
        else:
            self.errors[name] = outcome.message
            if outcome.unavailable:
                self.unavailable.add(name)


@dataclass(slots=True)
class PassResult:
    plan: PassPlan
    results: list[ApplyResult] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # target -> why (some of) it was held
    held: dict[str, tuple[str, ...]] = field(default_factory=dict)  # target -> groups held back
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.plan.errors
            and not self.refused
            and all(r.ok for r in self.results)
        )


def guarded(name: str, fn: Callable[..., R], *args: Any) -> R | Failed:
    """``fn(*args)``; a target's own failure becomes a ``Failed``, never an exception."""
    try:
        return fn(*args)
    except (TargetError, PlanRefused) as exc:
        # Reported once, by whoever shows the result (the CLI's output, the daemon's
        # per-target line); a log line here would say it a second time.
        log.debug("%s", exc)
        return Failed(str(exc), unavailable=isinstance(exc, TargetUnavailable))
    except ConfigError as exc:  # e.g. this target's password_file cannot be read
        log.debug("%s: %s", name, exc)
        return Failed(f"{name}: {exc}")


def each(items: Sequence[T], name: Callable[[T], str],
         fn: Callable[[T], R]) -> list[tuple[T, R | Failed]]:
    """Run ``fn`` on every item in parallel; an item's failure becomes a ``Failed``."""
    if not items:
        return []

    def one(item: T) -> R | Failed:
        return guarded(name(item), fn, item)

    workers = min(MAX_WORKERS, len(items))
    if workers == 1:
        return [(items[0], one(items[0]))]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="target") as pool:
        return list(zip(items, pool.map(one, items)))
