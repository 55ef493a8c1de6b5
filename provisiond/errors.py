"""One error tree for provisiond.

Library exceptions are wrapped at the edge that caught them (``raise X(...) from exc``),
and every class says what the pass should do about it: a ``SourceError`` stops the
whole pass before any write, a ``TargetError`` stops one target and leaves the others
alone, a ``PlanRefused`` keeps a plan from being applied until a human looks.
Messages name the thing: the config key, the router, the account.
"""

from __future__ import annotations


class ProvisiondError(Exception):
    """Base of every error provisiond raises on purpose."""


class ConfigError(ProvisiondError):
    """The configuration is invalid; ``problems`` lists every problem with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid configuration")


class SourceError(ProvisiondError):
    """The billing read failed: nothing may be written this pass."""


class SuspiciousSnapshot(SourceError):
    """The billing read succeeded but looks wrong (far fewer accounts than last time)."""


class StoreError(ProvisiondError):
    """provisiond's own state store failed."""


class ClaimRefused(StoreError):
    """Shared members: a state-store write on behalf of a router (or the global work)
    whose claim this member no longer holds; nothing written (``state.claims.ClaimLost``)."""


class LeaseConflict(StoreError):
    """``reserve`` found the leases changed under it: re-read, re-allocate, try again."""

    def __init__(self, message: str, *, pool: str, address: str, account_id: str) -> None:
        self.pool, self.address, self.account_id = pool, address, account_id
        super().__init__(message)


class WorkerDied(ProvisiondError):
    """The daemon's full-pass process ended without a result (killed, out of memory)."""


class WorkerCrashed(ProvisiondError):
    """The daemon's full-pass process failed with an unexpected exception (its traceback inside)."""


class TargetError(ProvisiondError):
    """One target (router, RADIUS database) failed; the others go on. It answered, but
    wrongly (a refused command, a malformed reply): reported, and tried again at the next
    interval without backing off further."""

    def __init__(self, target: str, message: str) -> None:
        self.target = target
        super().__init__(f"{target}: {message}")


class TargetUnavailable(TargetError):
    """The target could not be reached or timed out: back off and retry it."""


class PlanRefused(ProvisiondError):
    """A plan may not be applied as it is."""

    def __init__(self, target: str, message: str) -> None:
        self.target = target
        super().__init__(f"{target}: {message}")


class TooMuchChange(PlanRefused):
    """A plan exceeds a safety threshold; ``--force`` is the only bypass."""


class UnmatchedMapping(PlanRefused):
    """A plan would empty a list, RADIUS group or pool whose mapping's group or status
    matches no account in billing (a typo, most likely); ``--force`` is the only bypass."""


class StalePlan(PlanRefused):
    """The target changed since the saved plan was made."""
