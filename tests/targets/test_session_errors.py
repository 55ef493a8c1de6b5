"""``wire.session_errors``: what a failure inside becomes, word for word, and when the
connection is closed. The messages are those the RouterOS target gives (``reading
/ip/firewall/address-list failed: timed out``, ``print: malformed reply from the router
(...); nothing planned``), so logs, alerts and tests that match them keep matching."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from librouteros.exceptions import ConnectionClosed, FatalError, TrapError

from provisiond.errors import TargetError, TargetUnavailable
from provisiond.targets.routeros.pipeline import UnexpectedReply
from provisiond.targets.routeros.wire import session_errors


def _raised(exc: BaseException, **kw: object) -> tuple[BaseException, int]:
    """What leaves ``session_errors`` when ``exc`` is raised inside, and how many times
    it closed the connection."""
    closes: list[None] = []
    with pytest.raises(BaseException) as caught:
        with session_errors("core-1", lambda: closes.append(None), **kw):  # type: ignore[arg-type]
            raise exc
    return caught.value, len(closes)


READ = {"lost": "reading /ip/firewall/address-list failed", "command": "print", "nothing_planned": True}
COUNT = {"lost": "counting l failed", "command": "count l", "refused": "count l refused"}
APPLY = {"lost": "connection lost"}


@pytest.mark.parametrize(("exc", "kw", "kind", "message", "closes"), [
    (TimeoutError(), READ, TargetUnavailable, "core-1: reading /ip/firewall/address-list failed: timed out", 1),
    (socket.timeout("x"), APPLY, TargetUnavailable, "core-1: connection lost: timed out", 1),
    (ConnectionClosed("Connection unexpectedly closed."), APPLY, TargetUnavailable,
     "core-1: connection lost: Connection unexpectedly closed.", 1),
    (ConnectionResetError(), READ, TargetUnavailable,
     "core-1: reading /ip/firewall/address-list failed: ConnectionResetError", 1),
    (FatalError("session terminated"), READ, TargetUnavailable,
     "core-1: reading /ip/firewall/address-list failed: session terminated", 1),
    (TrapError("no such command"), COUNT, TargetError, "core-1: count l refused: no such command", 0),
    (TrapError("no such command"), APPLY, TargetUnavailable, "core-1: connection lost: no such command", 1),
    (UnexpectedReply("!done for tag 7, which is not in flight"), READ, TargetError,
     "core-1: print: malformed reply from the router (UnexpectedReply: !done for tag 7, which is not in "
     "flight); nothing planned", 1),
    (KeyError("message"), COUNT, TargetError,
     "core-1: count l: malformed reply from the router (KeyError: 'message')", 1),
    (ValueError("x"), APPLY, TargetError, "core-1: malformed reply from the router (ValueError: x)", 1),
])
def test_a_failure_becomes_provisiond_s_error(exc: BaseException, kw: dict[str, object],
                                              kind: type[TargetError], message: str, closes: int) -> None:
    raised, closed = _raised(exc, **kw)
    assert type(raised) is kind and str(raised) == message
    assert raised.__cause__ is exc
    assert closed == closes


@pytest.mark.parametrize("exc", [TargetError("core-1", "print l refused: x"), KeyboardInterrupt(),
                                 RuntimeError("billing failed")])
def test_anything_else_leaves_as_it_is_and_closes_the_connection(exc: BaseException) -> None:
    raised, closed = _raised(exc, **READ)
    assert raised is exc and closed == 1


def test_the_lost_message_is_made_only_when_the_connection_is_lost() -> None:
    asked: list[None] = []

    def lost() -> str:
        asked.append(None)
        return "reading /ipv6/firewall/address-list failed"

    with session_errors("core-1", lambda: None, lost=lost):
        pass
    assert not asked
    raised, _ = _raised(TimeoutError(), lost=lost)
    assert str(raised) == "core-1: reading /ipv6/firewall/address-list failed: timed out" and len(asked) == 1


def test_nothing_failed_nothing_closed() -> None:
    closes: list[None] = []
    close: Callable[[], None] = lambda: closes.append(None)  # noqa: E731
    with session_errors("core-1", close, lost="x"):
        pass
    assert closes == []
