"""One client connection's conversation: login, dispatch, replies.

The server's connection loop reads a sentence with ``codec`` and passes its
words to ``Session.handle``; it gets back a ``Reply`` (sentences to write in
one go, whether to close afterwards, and how long the router works on it
before answering) or None for an ignored empty sentence. The link latency
(``command_latency``) is the server's business, not the session's. The
session owns what is per connection (logged in or not, the login challenge,
pre-login traffic) and runs menu commands from ``commands`` under the shared
state lock.

Choices where RouterOS behaviour is undocumented (ROUTEROS.md [inf]):

* a command before login gets ``!trap =message=not logged in`` (no
  category) then ``!done``; more than ``max_pre_login_sentences`` sentences
  before login get ``!fatal`` ``too many commands before login`` and close;
* a failed login leaves the connection open;
* without ``legacy_login`` a bare ``/login`` still returns a challenge (as a
  6.47 router did) but any ``=response=`` fails with
  ``invalid user name or password (6)``;
* commands run one at a time per connection, so by the time ``/cancel
  =tag=X`` is read, X has finished: the reply is ``!trap =category=0
  =message=no such command or tag`` then ``!done``; ``/cancel`` without
  ``=tag=`` (cancel everything) finds nothing running and answers ``!done``.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .commands import Command, Result, run
from .errors import BAD_LOGIN, INTERNAL_ERROR, LEGACY_BAD_LOGIN, NO_SUCH_TAG, NOT_LOGGED_IN, Trap
from .state import ReceivedCommand, RouterState

log = logging.getLogger(__name__)

_SECRET_ATTRIBUTES = frozenset({"password", "response"})

_Handler = Callable[[Command], Result]


@dataclass(frozen=True, slots=True)
class Reply:
    sentences: tuple[tuple[str, ...], ...]
    close: bool = False
    drop: bool = False  # close the connection now, without this reply or any later one
    delay: float = 0.0  # the router's own work (rows scanned), before the link latency


def parse_command(words: Sequence[str]) -> Command:
    """Split a sentence into command word, ``=attr=`` words, ``?`` words, tag."""
    attributes: dict[str, str] = {}
    queries: list[str] = []
    tag: str | None = None
    for word in words[1:]:
        if word.startswith("="):
            name, _, value = word[1:].partition("=")
            attributes[name] = value
        elif word.startswith("?"):
            queries.append(word)
        elif word.startswith(".tag="):
            tag = word[5:]
    return Command(words[0], attributes, tuple(queries), tag)


def legacy_response(password: str, challenge: str) -> str:
    """The pre-6.43 answer: ``00`` + md5(0x00 + password + challenge bytes)."""
    digest = hashlib.md5(b"\x00" + password.encode() + binascii.unhexlify(challenge))
    return "00" + digest.hexdigest()


class Session:
    def __init__(self, state: RouterState, *, peer: str) -> None:
        self.state = state
        self.peer = peer
        self.logged_in = False
        self._challenge: str | None = None
        self._pre_login = 0

    def handle(self, words: Sequence[str]) -> Reply | None:
        if not words:
            return None
        command = parse_command(words)
        self._record(command)
        if not self.logged_in:
            self._pre_login += 1
            if self._pre_login > self.state.settings.max_pre_login_sentences:
                log.warning("sim peer=%s too many commands before login", self.peer)
                return Reply((("!fatal", "too many commands before login"),), close=True)
        if command.path == "/quit":
            return Reply((self._tagged("!fatal", command.tag, "session terminated on request"),), close=True)
        if command.path == "/login":
            return self._reply(command, self._login)
        if not self.logged_in:
            return self._reply(command, _raise(Trap(NOT_LOGGED_IN)))
        if command.path == "/cancel":
            return self._reply(command, _cancel)
        return self._reply(command, self._run)

    # -- internals -------------------------------------------------------

    def _record(self, command: Command) -> None:
        attributes = tuple(
            (k, "<redacted>" if command.path == "/login" and k in _SECRET_ATTRIBUTES else v)
            for k, v in command.attributes.items()
        )
        with self.state.lock:
            self.state.record(ReceivedCommand(command.path, attributes, command.queries, command.tag))
        if self.state.settings.log_commands:
            log.info("sim peer=%s command=%s tag=%s", self.peer, command.path, command.tag)

    def _run(self, command: Command) -> Result:
        with self.state.lock:
            fault = self.state.take_fault(command.path)
            if isinstance(fault, Trap):
                raise fault
            if fault is not None:
                run(self.state, command)
                raise _Dropped
            return run(self.state, command)

    def _reply(self, command: Command, handler: _Handler) -> Reply:
        tag = command.tag
        try:
            result = handler(command)
        except _Dropped:
            return Reply((), drop=True)
        except Trap as trap:
            return self._trap(trap, tag)
        except Exception:  # a bug in one command must not kill the connection
            log.exception("sim peer=%s command=%s failed", self.peer, command.path)
            return self._trap(Trap(INTERNAL_ERROR, 4), tag)
        data = tuple(self._tagged(s[0], tag, *s[1:]) for s in result.data)
        return Reply((*data, self._tagged("!done", tag, *result.done)), delay=result.delay)

    def _trap(self, trap: Trap, tag: str | None) -> Reply:
        words = [f"=message={trap.message}"]
        if trap.category is not None:
            words.append(f"=category={trap.category}")
        sentences = (self._tagged("!trap", tag, *words), self._tagged("!done", tag))
        return Reply(sentences)

    def _tagged(self, kind: str, tag: str | None, *words: str) -> tuple[str, ...]:
        if tag is None:
            return (kind, *words)
        if self.state.settings.tag_last:
            return (kind, *words, f".tag={tag}")
        return (kind, f".tag={tag}", *words)

    def _login(self, command: Command) -> Result:
        settings = self.state.settings
        attrs = command.attributes
        if "response" in attrs:
            challenge, self._challenge = self._challenge, None
            if not settings.legacy_login:
                raise Trap(BAD_LOGIN)
            expected = legacy_response(settings.password, challenge) if challenge else None
            if attrs.get("name") != settings.username or attrs["response"] != expected:
                log.warning("sim peer=%s login failed user=%s", self.peer, attrs.get("name"))
                raise Trap(LEGACY_BAD_LOGIN)
            return self._logged_in(attrs["name"])
        if settings.legacy_login or "name" not in attrs:
            self._challenge = settings.login_challenge or secrets.token_hex(16)
            return Result(done=(f"=ret={self._challenge}",))
        if attrs.get("name") != settings.username or attrs.get("password", "") != settings.password:
            log.warning("sim peer=%s login failed user=%s", self.peer, attrs.get("name"))
            raise Trap(BAD_LOGIN)
        return self._logged_in(attrs["name"])

    def _logged_in(self, user: str) -> Result:
        self.logged_in = True
        log.info("sim peer=%s logged in user=%s", self.peer, user)
        return Result()


class _Dropped(Exception):
    """The command ran; the connection is to be cut before its reply leaves."""


def _cancel(command: Command) -> Result:
    if "tag" in command.attributes:
        raise Trap(NO_SUCH_TAG, 0)
    return Result()


def _raise(trap: Trap) -> _Handler:
    def handler(command: Command) -> Result:
        raise trap

    return handler


