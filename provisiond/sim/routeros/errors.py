"""The one error a command can end with: a ``!trap`` sent back to the client.

Raised by the table model and the dispatcher, caught by ``session`` which
turns it into ``!trap =message=... [=category=N]`` followed by ``!done``.
Messages are the router's own wording where it is known (../shared/ROUTEROS.md 1.4,
2.3); the catalogue below names every message the simulator can produce.
"""

from __future__ import annotations

NO_SUCH_ITEM = "no such item (4)"
ALREADY_HAVE = "failure: already have such entry"
NO_SUCH_COMMAND = "no such command"
NO_SUCH_PREFIX = "no such command prefix"
NOT_LOGGED_IN = "not logged in"
BAD_LOGIN = "invalid user name or password (6)"
LEGACY_BAD_LOGIN = "cannot log in"
INTERRUPTED = "interrupted"
NO_SUCH_TAG = "no such command or tag"
#: Not a RouterOS message: a simulator bug surfaced as a trap (category 4).
INTERNAL_ERROR = "failure: simulator internal error"


class Trap(Exception):
    """A command failed; ``category`` is omitted from the reply when None."""

    def __init__(self, message: str, category: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.category = category


def invalid_value(argument: str) -> Trap:
    """Category 1 (argument value failure), worded as RouterOS does."""
    return Trap(f"invalid value for argument {argument}", 1)


def unknown_parameter(name: str) -> Trap:
    return Trap(f"unknown parameter {name}", 1)
