"""One client connection's conversation: login, dispatch, replies.

The server's connection loop reads a sentence with ``codec`` and passes its
words to ``Session.handle``; it gets back a ``Reply`` (sentences to write in
one go, whether to close afterwards, how long the router works on it
before answering, and when the router's CPU queue is done with it) or None
for an ignored empty sentence. The link latency (``command_latency``) is the
server's business, not the session's. The session owns what is per
connection (logged in or not, the login challenge, pre-login traffic, its
open listens) and runs menu commands from ``commands`` under the shared
state lock. A ``listen`` or follow print gets no ``!done``: the session opens
a ``listen.Listener`` that streams to the connection through ``deliver``
until ``/cancel`` names its tag (``!trap =category=2 =message=interrupted``
for it, ``!done`` for the cancel, then its ``!done``: ../shared/ROUTEROS.md 1.6) or
the connection ends.

Choices where RouterOS behaviour is undocumented (../shared/ROUTEROS.md [inf]):

* a command before login gets ``!trap =message=not logged in`` (no
  category) then ``!done``; more than ``max_pre_login_sentences`` sentences
  before login get ``!fatal`` ``too many commands before login`` and close;
* a failed login leaves the connection open;
* without ``legacy_login`` a bare ``/login`` still returns a challenge (as a
  6.47 router did) but any ``=response=`` fails with
  ``invalid user name or password (6)``;
* commands run one at a time per connection, so by the time ``/cancel
  =tag=X`` is read, X has finished unless it is a listen/follow: for a
  finished or unknown X the reply is ``!trap =message=no such command or tag
  =category=0`` then ``!done``; ``/cancel`` without ``=tag=`` cancels every
  open listen of the connection (a trap for each, the cancel's ``!done``,
  then their ``!done``s) and answers a bare ``!done`` when there is none.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .commands import Command, Result, run
from .errors import BAD_LOGIN, INTERNAL_ERROR, INTERRUPTED, LEGACY_BAD_LOGIN, NO_SUCH_TAG, NOT_LOGGED_IN, Trap
from .listen import Deliver, Listener
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
    ready: float = 0.0  # monotonic time the router's CPU queue is done with it (0: no cost)
    listener: Listener | None = None  # opened by this command: ``arm`` it once the reply is queued


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
    def __init__(self, state: RouterState, *, peer: str, deliver: Deliver) -> None:
        self.state = state
        self.peer = peer
        self.logged_in = False
        self.user: str | None = None  # who logged in on this connection
        self._challenge: str | None = None
        self._pre_login = 0
        self._deliver = deliver
        self._listening: list[Listener] = []
        self._ready = 0.0

    @property
    def listening(self) -> bool:
        """True while a listen or follow of this connection is open."""
        with self.state.lock:
            return bool(self._listening)

    def close(self) -> None:
        """The connection ended: its listens stop."""
        with self.state.lock:
            for listener in self._listening:
                self.state.unlisten(listener)
            self._listening.clear()

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
            return self._cancel(command)
        return self._reply(command, self._run)

    # -- internals -------------------------------------------------------

    def _record(self, command: Command) -> None:
        attributes = tuple(
            (k, "<redacted>" if command.path == "/login" and k in _SECRET_ATTRIBUTES else v)
            for k, v in command.attributes.items()
        )
        with self.state.lock:
            self.state.record(ReceivedCommand(command.path, attributes, command.queries, command.tag,
                                              user=self.user, peer=self.peer, at=time.monotonic()))
        if self.state.settings.log_commands:
            log.info("sim peer=%s user=%s command=%s tag=%s", self.peer, self.user or "-", command.path,
                     command.tag)

    def _run(self, command: Command) -> Result:
        state = self.state
        with state.lock:
            fault = state.take_fault(command.path)
            if isinstance(fault, Trap):
                raise fault
            cpu, busy = state.cpu, state.cpu.busy_until
            state.listeners.hold()  # what listeners hear of it leaves when the router is done
            try:
                result = run(state, command)
            finally:
                self._ready = cpu.busy_until if cpu.busy_until != busy else 0.0
                state.listeners.release(self._ready)
            if fault is not None:
                raise _Dropped
            if result.watch is not None:  # in the same hold as a follow's rows: no change is missed
                listener = Listener(result.watch, tag=command.tag, frame=self._tagged,
                                    deliver=self._deliver, lock=state.lock)
                state.listen(listener)
                self._listening.append(listener)
            return result

    def _reply(self, command: Command, handler: _Handler) -> Reply:
        tag = command.tag
        self._ready = 0.0
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
        if result.watch is not None:
            return Reply(data, delay=result.delay, ready=self._ready, listener=self._listening[-1])
        return Reply((*data, self._tagged("!done", tag, *result.done)), delay=result.delay, ready=self._ready)

    def _trap(self, trap: Trap, tag: str | None) -> Reply:
        words = [f"=message={trap.message}"]
        if trap.category is not None:
            words.append(f"=category={trap.category}")
        sentences = (self._tagged("!trap", tag, *words), self._tagged("!done", tag))
        return Reply(sentences, ready=self._ready)

    def _cancel(self, command: Command) -> Reply:
        target = command.attributes.get("tag")
        with self.state.lock:
            chosen = [l for l in self._listening if target is None or l.tag == target]
            for listener in chosen:
                self.state.unlisten(listener)
                self._listening.remove(listener)
        if target is not None and not chosen:
            return self._trap(Trap(NO_SUCH_TAG, 0), command.tag)
        traps = [self._tagged("!trap", l.tag, "=category=2", f"=message={INTERRUPTED}") for l in chosen]
        dones = [self._tagged("!done", l.tag) for l in chosen]
        return Reply((*traps, self._tagged("!done", command.tag), *dones))

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
            password = settings.password_of(attrs.get("name"))
            expected = legacy_response(password, challenge) if challenge and password is not None else None
            if expected is None or attrs["response"] != expected:
                log.warning("sim peer=%s login failed user=%s", self.peer, attrs.get("name"))
                raise Trap(LEGACY_BAD_LOGIN)
            return self._logged_in(attrs["name"])
        if settings.legacy_login or "name" not in attrs:
            self._challenge = settings.login_challenge or secrets.token_hex(16)
            return Result(done=(f"=ret={self._challenge}",))
        password = settings.password_of(attrs.get("name"))
        if password is None or attrs.get("password", "") != password:
            log.warning("sim peer=%s login failed user=%s", self.peer, attrs.get("name"))
            raise Trap(BAD_LOGIN)
        return self._logged_in(attrs["name"])

    def _logged_in(self, user: str) -> Result:
        self.logged_in = True
        self.user = user
        log.info("sim peer=%s logged in user=%s", self.peer, user)
        return Result()


class _Dropped(Exception):
    """The command ran; the connection is to be cut before its reply leaves."""


def _raise(trap: Trap) -> _Handler:
    def handler(command: Command) -> Result:
        raise trap

    return handler


