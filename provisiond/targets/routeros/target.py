"""RouterOS address lists as a provisiond target: one ``RouterTarget`` per ``[[router]]``.

The reconciler calls ``observe`` / ``observe_against`` and ``apply`` (``base.Target``).
A full read sends one print per family over every managed list (a router scans its
whole table for each print, whatever the query) and compares the rows with the desired
state as they arrive (``reader``); a scoped read sends one print per family and chunk
of the scope's accounts over all lists. Either sorts what it finds into provisiond's
own entries (comment ``<marker>:<account id> …``) and everything else (hand-made and
dynamic entries: never touched; a desired entry that collides with one is a conflict).
``apply`` hands the plan to a ``writer.Writer``. Everything goes over one kept session
(``wire``), its failures classified by ``wire.session_errors``.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from provisiond.core.addresses import family, routeros_form, span
from provisiond.core.changes import Change, Delete, Key, Observed, Resource
from provisiond.core.plan import Plan, observed_digest
from provisiond.core.scope import Scope
from provisiond.errors import TargetError, TargetUnavailable
from provisiond.settings import RouterSettings
from provisiond.targets.base import ApplyResult
from provisiond.targets.routeros import pipeline
from provisiond.targets.routeros.commands import count_prints, list_prints, menu_path, scoped_prints
from provisiond.targets.routeros.mirror import Mirror, parse_uptime
from provisiond.targets.routeros.pipeline import Answer
from provisiond.targets.routeros.reader import ListReader, Recorded
from provisiond.targets.routeros.wire import ApiWire, closed, login, quietly_close, session_errors
from provisiond.targets.routeros.wire import connect as connect_librouteros
from provisiond.targets.routeros.writer import DUPLICATE, Finished, Writer

log = logging.getLogger(__package__)  # one logger for the room: provisiond.targets.routeros


@dataclass(frozen=True, slots=True)
class Marker:
    """The comment prefix that marks an entry as provisiond's: ``provisiond:1042 Ridge Tower``."""

    prefix: str

    def owner(self, comment: str) -> str | None:
        head = f"{self.prefix}:"
        if not comment.startswith(head):
            return None
        return comment[len(head):].split(" ", 1)[0]


class RouterTarget:
    """One router's managed address lists (``base.Target``, ``base.ComparesWhileReading``)."""

    kind = "routeros"

    def __init__(
        self,
        settings: RouterSettings,
        *,
        lists: Iterable[str],
        marker: str,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.lists = sorted(set(lists))
        self.marker = Marker(marker)
        self._connect = connect or partial(connect_librouteros, settings)
        self._api: Any = None
        # Command tags never restart (not per pass, not per connection): an answer left
        # over from an earlier command can never be taken for a new one's.
        self._tags = itertools.count()
        # The daemon's copy of this router's lists, kept by a ``listen`` (``follow``):
        # while it is trusted, a scoped read prints nothing.
        self.mirror: Mirror | None = None
        self.gate: Callable[[], bool] | None = None  # shared members: the claim, per batch
        self._scans = 0  # prints sent (each a scan of the router's whole table)

    # -- connection -----------------------------------------------------------------

    def _api_or_connect(self) -> Any:
        if self._api is None:
            self._api = login(self.name, f"{self.settings.host}:{self.settings.api_port}", self._connect)
            if self.mirror is not None and self.mirror.trusted:
                self._check_boot()
        return self._api

    def _check_boot(self) -> None:
        """A new session, and a mirror with ids: did the router boot since its listen last
        looked (a power cut leaves that session half-open for a while)? Then its ids are
        not used until it is read again."""
        with session_errors(self.name, self.close, lost="asking the uptime failed", command="uptime",
                            nothing_planned=True):
            rows = list(self._api.rawCmd("/system/resource/print", "=.proplist=uptime"))
        uptime = parse_uptime(str(rows[0].get("uptime", ""))) if rows else None
        if self.mirror is not None and uptime is not None and self.mirror.rebooted_since(uptime):
            log.warning("router=%s rebooted since its listen last looked: its mirror is not used "
                        "until it is read again", self.name)
            self.mirror.suspect()

    def _wire(self) -> ApiWire:
        return ApiWire(self._api_or_connect())

    def check_connection(self) -> str:
        """Log in and out again, changing nothing (``check-config --connect``). Raises TargetError."""
        self._api_or_connect()
        self.close()
        s = self.settings
        how = "API-SSL" if s.tls else "plain API"
        return f"logged in to {s.host}:{s.api_port} ({how}) as {s.username}"

    def close(self) -> None:
        if self._api is not None:
            quietly_close(self._api)
            self._api = None

    # -- observe --------------------------------------------------------------------

    def observe(self, scope: Scope | None = None) -> Observed:
        """Every managed list as it is: all of provisiond's entries in ``owned``; with a
        ``scope``, only what concerns its accounts."""
        return self._reconnecting(lambda: self._observe(scope))

    def _reconnecting(self, read: Callable[[], Observed]) -> Observed:
        kept = self._api is not None
        try:
            return read()
        except TargetUnavailable as exc:
            if not kept or not closed(exc.__cause__):
                raise
            # The connection kept from the last pass was closed meanwhile (a router
            # reboot, a firewall's idle timeout): one fresh connection before the router
            # counts as down. A timeout is not retried: it would double the wait.
            log.info("%s: connection kept from the last pass was closed; reconnecting", self.name)
            return read()

    def _observe(self, scope: Scope | None) -> Observed:
        if scope is not None:
            return self._observe_scoped(scope)
        nothing: Future[Mapping[str, Mapping[Key, Resource]]] = Future()
        nothing.set_result({})
        return self._observe_against(nothing)

    def observe_against(self, desired: Future[Mapping[str, Mapping[Key, Resource]]], *,
                        checksum: bool = True) -> Observed:
        """Read every managed list, comparing each row with this router's part of
        ``desired`` (every target's desired state, by name, once billing is read).
        The prints (one per family, over every managed list) go out at once, tagged,
        and their answers are received unparsed while billing is read (the router works
        meanwhile); then every row is compared as it comes (``reader.ListReader``).
        ``checksum=False`` (nothing will save the plan) leaves the checksum empty."""
        return self._reconnecting(lambda: self._observe_against(desired, checksum=checksum))

    def _observe_against(self, desired: Future[Mapping[str, Mapping[Key, Resource]]], *,
                         checksum: bool = True) -> Observed:
        wire = self._wire()
        prints = list_prints(self.lists)
        self._scans += len(prints)
        tags = Recorded(self._tags)
        reader = ListReader(wire, desired, [token for token, _ in prints], tags.given, router=self.name,
                            lists=self.lists, head=f"{self.marker.prefix}:", classify=self._classify,
                            checksum=checksum)
        # Billing failing while the prints are out (``desired`` raises) leaves their
        # answers on the connection: ``session_errors`` closes it for any exception.
        with session_errors(self.name, self.close, lost=lambda: f"reading {reader.reading()} failed",
                            command="print", nothing_planned=True):
            pipeline.run(wire, prints, window=max(self.settings.pipeline, len(prints)),
                         on_answer=reader.answered, on_row=reader.row, before_reading=reader.start,
                         tags=tags)
        observed = reader.observed()
        log.debug("%s: observed owned=%d existing=%d foreign=%d", self.name, len(observed.owned),
                  sum((observed.existing or {}).values()), len(observed.foreign))
        return observed

    def _classify(
        self, row: Mapping[str, Any], list_name: str
    ) -> tuple[Key, Resource | None, str, tuple[Any, ...]]:
        """One printed row -> (key, provisiond's Resource or None, why not, digest item)."""
        address = routeros_form(str(row.get("address", "")))
        comment = str(row.get("comment", ""))
        ref = str(row.get(".id", ""))
        disabled = "true" if row.get("disabled") in (True, "true", "yes") else "false"
        dynamic = row.get("dynamic") in (True, "true", "yes")
        key: Key = ("address-list", (("list", list_name), ("address", address)))
        owner = None if dynamic else self.marker.owner(comment)
        item = (ref, list_name, address, comment, disabled, dynamic)
        if owner is not None and (not ref or not _readable(address)):
            # Without an id it cannot be changed; with an address that is not
            # one, it cannot be compared: either way it is left alone.
            why = "no .id" if not ref else f"an address provisiond cannot read ({address!r})"
            log.warning("%s: %s entry %s (comment %r) has %s: left alone",
                        self.name, list_name, ref or "?", comment, why)
            return key, None, f"provisiond's marker but {why}", item
        if owner is None:
            why = "dynamic entry" if dynamic else "entry not created by provisiond"
            return key, None, f"{why} (comment {comment!r})" if comment else why, item
        entry = Resource(
            kind="address-list",
            group=list_name,
            ident=key[1],
            attrs=(("comment", comment), ("disabled", disabled)),
            account_id=owner,
            account_name=comment.split(" ", 1)[1] if " " in comment else "",
            ref=ref,
        )
        return key, entry, "", item

    def _observe_scoped(self, scope: Scope) -> Observed:
        """The entries of the scope's accounts (by comment) and whatever sits on the
        addresses they want, over every list: one print per family and chunk of
        accounts, since a router scans its whole table for every print whatever the
        query (fewer, wider prints are cheaper)."""
        owned: dict[Key, Resource] = {}
        foreign: dict[Key, str] = {}
        surplus: list[Resource] = []
        others: set[str] = set()
        digest: list[tuple[Any, ...]] = []
        seen: set[tuple[int, str]] = set()
        managed = set(self.lists)
        wanted: dict[int, set[str]] = {4: set(), 6: set()}
        for r in scope.wanted.values():
            if r.kind == "address-list":
                wanted[family(r.get("address"))].add(r.get("address"))
        mirrored = None
        if self.mirror is not None and self.mirror.trusted:
            self._api_or_connect()  # a new session checks the router's boot first
            mirrored = self.mirror.rows_for(scope.accounts, wanted[4] | wanted[6])
        if mirrored is not None:
            read = [((0, 0), mirrored)]  # one "print": each row's family is its address's
        else:
            prints = scoped_prints(f"{self.marker.prefix}:", sorted(scope.accounts),
                                   {fam: sorted(addresses) for fam, addresses in wanted.items()})
            read = list(zip((token for token, _ in prints), self._print_all(prints)))
        for (fam, _), rows in read:
            for row in rows:
                if mirrored is not None:
                    fam = family(row["address"])
                ref = row.get(".id", "")
                list_name = row.get("list", "")
                if list_name not in managed or (ref and (fam, ref) in seen):
                    continue  # not a managed list, or matched by comment and address
                seen.add((fam, ref))
                key, entry, why, item = self._classify(row, list_name)
                if entry is not None and entry.account_id in scope.accounts:
                    digest.append(item)
                    if key in owned:
                        surplus.append(entry)
                    else:
                        owned[key] = entry
                elif key in scope.wanted:
                    if entry is not None:
                        others.add(entry.account_id)  # only a full pass may decide
                    else:
                        digest.append(item)
                        foreign.setdefault(key, why)
        if scope.existing is not None:
            existing = dict(scope.existing)
        elif mirrored is not None and self.mirror is not None:
            existing = self.mirror.counts()
        else:
            existing = self._count_lists()
        log.debug("%s: scoped observe accounts=%d owned=%d foreign=%d others=%d mirror=%s",
                  self.name, len(scope.accounts), len(owned), len(foreign), len(others),
                  mirrored is not None)
        return Observed(owned=owned, foreign=foreign, surplus=tuple(surplus),
                        checksum=observed_digest(digest), others=frozenset(others),
                        existing=existing)

    def _print_all(self, prints: Sequence[tuple[tuple[int, int], Sequence[str]]]) -> list[list[dict[str, str]]]:
        """The rows of every print (as printed: text), each print's in the order sent.

        All go out at once, tagged; the rows are handed back in the order of
        ``prints``, so nothing depends on how the router interleaves its answers."""
        rows: dict[tuple[int, int], list[dict[str, str]]] = {token: [] for token, _ in prints}

        def answered(token: tuple[int, int], answer: Answer) -> None:
            if answer.traps:
                raise TargetError(self.name, f"scoped print refused: {answer.traps[0]}")

        def row(token: tuple[int, int], words: Sequence[str]) -> None:
            rows[token].append(dict(word[1:].partition("=")[::2] for word in words if word.startswith("=")))

        self._scans += len(prints)
        if prints:
            with session_errors(self.name, self.close, lost="scoped read failed", command="scoped print",
                                nothing_planned=True):
                pipeline.run(self._wire(), prints, window=max(self.settings.pipeline, len(prints)),
                             on_answer=answered, on_row=row, tags=self._tags)
        return [rows[token] for token, _ in prints]

    def _count_lists(self) -> dict[str, int]:
        """Entries per managed list (hand-made ones included): the safety check's base
        when no full observation has counted provisiond's own. One print per family over
        every list, each row only its list: a table scan per family, where a
        ``count-only`` per list would cost one per list."""
        counts = dict.fromkeys(self.lists, 0)
        rows: Counter[str] = Counter()  # list words (``=list=NAME``) as read

        def answered(token: int, answer: Answer) -> None:
            if answer.traps:
                raise TargetError(self.name, f"count {menu_path(token)} refused: {answer.traps[0]}")

        def row(token: int, words: Sequence[str]) -> None:
            rows.update(words)

        prints = count_prints(self.lists)
        self._scans += len(prints)
        if prints:
            with session_errors(self.name, self.close, lost="counting the lists failed", command="count",
                                nothing_planned=True):
                pipeline.run(self._wire(), prints, window=max(self.settings.pipeline, len(prints)),
                             on_answer=answered, on_row=row, tags=self._tags)
        for text, n in rows.items():
            name = text[len("=list="):]
            if text.startswith("=list=") and name in counts:
                counts[name] += n
        return counts

    def plan_followups(self, plan: Plan) -> Plan:
        return plan

    def take_scans(self) -> int:
        """Prints sent since the last call: each cost the router a scan of its table."""
        n, self._scans = self._scans, 0
        return n

    # -- apply ----------------------------------------------------------------------

    def apply(self, plan: Plan, *, progress: Callable[[int], None] | None = None,
              report: Callable[[ApplyResult], None] | None = None) -> ApplyResult:
        """Deletes, then creates, then updates (``writer.Writer``). A trap fails its own
        change; a lost connection fails every change not yet answered. Answered changes
        go to ``report`` in parts (``writer.REPORT_EVERY``)."""
        result = ApplyResult(target=self.name)
        if self.mirror is not None:  # its reports are provisiond's own, not drift
            self.mirror.expect(_keys(plan.changes), [c.resource.account_id for c in plan.changes])
        done = Finished(self.name, progress, report)
        writer = Writer(self.name, self.settings, tags=self._tags, connect=self._connect, done=done,
                        gate=self.gate)
        try:
            with session_errors(self.name, self.close, lost="connection lost"):
                writer.write(self._wire(), plan.changes, result)
        except TargetError as exc:
            done.failed_rest(result, plan.changes, str(exc))
            result.unavailable = isinstance(exc, TargetUnavailable)  # back off, or retry at the interval
        done.flush()
        if self.mirror is not None:
            _taught(self.mirror, self.name, result)
        return result


def _taught(mirror: Mirror, router: str, result: ApplyResult) -> None:
    """What an apply taught the mirror: writes that did not happen may drift again;
    removed entries are gone (no report comes for one already gone); an entry the router
    already had means the mirror missed it."""
    mirror.unexpect(_keys([c for c, _ in result.failed] + [c.resource for c in result.conflicts]))
    mirror.forget((family(c.old.get("address")), c.old.ref)
                  for c in result.applied if isinstance(c, Delete))
    if any(DUPLICATE in c.reason for c in result.conflicts):
        log.warning("router=%s an add found an entry the mirror did not know: reading the "
                    "router again", router)
        mirror.suspect()


def _keys(items: Iterable[Change | Resource]) -> list[tuple[str, str]]:
    """The (list, address) keys of changes or resources."""
    out = []
    for item in items:
        r = item.resource if isinstance(item, Change) else item
        out.append((r.group, r.get("address")))
    return out


def _readable(address: str) -> bool:
    """An IP address, network or range (not a DNS name, not garbage)."""
    return bool(address) and all(span(part) is not None for part in address.split("-", 1))
