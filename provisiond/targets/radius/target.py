"""The FreeRADIUS target: ``radusergroup`` / ``radreply`` rows in FreeRADIUS's SQL database.

Sits at the I/O edge of a pass. ``observe`` reads what provisiond owns, ``diff`` (pure)
compares it with ``core.radius.radius``'s desired State, ``plan_followups`` previews
the CoA/Disconnect-Requests for live sessions, ``apply`` writes every change in one
transaction (``rows``) and then acts on the sessions (``sessions``) through
``targets.coa``.

Ownership:

- every ``radusergroup`` row whose ``groupname`` is a managed ``[[radius_group]]`` is
  provisiond's (a second row for the same user and group is ``surplus`` and deleted);
- a ``radreply`` row is provisiond's only when the StateStore's ledger says provisiond
  wrote that ``(username, attribute)``; any other row of an attribute provisiond writes
  (``REPLY_ATTRIBUTES``: Framed-IP-Address (and -Netmask) and the pool attributes Framed-Route,
  Framed-IPv6-Prefix, Delegated-IPv6-Prefix) is hand-made: never touched, and reported
  as a conflict when billing or a pool wants that user's attribute.

Works with FreeRADIUS's own ``schema.sql`` for PostgreSQL, MySQL/MariaDB and SQLite
(``tables``; the engine from ``connect``). Database errors become ``TargetUnavailable``
(cannot connect / timed out) or ``TargetError`` naming the row; a failed apply rolls
back entirely. The database URL's password never reaches an error or a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from provisiond.core.changes import Create, Delete, Key, Observed, Resource
from provisiond.core.plan import Plan, observed_digest
from provisiond.core.radius import REPLY_ATTRIBUTES, canonical, reply_value
from provisiond.core.scope import Scope
from provisiond.errors import TargetError, TargetUnavailable
from provisiond.settings import CoaMode, Settings
from provisiond.targets.base import ApplyResult
from provisiond.targets.coa import CoaRequest, CoaResult, CoaSender
from provisiond.targets.radius import rows, sessions
from provisiond.targets.radius.connect import open_engine
from provisiond.targets.radius.sessions import MODE_RANK, CoaModes, UserPolicy, followup_json
from provisiond.targets.radius.tables import chunks, radreply, radusergroup, reason

log = logging.getLogger(__package__)  # one logger for the package: provisiond.targets.radius


class RadiusLedger(Protocol):
    """The StateStore's record of which radreply rows provisiond wrote."""

    def radreply_owned(self) -> set[tuple[str, str]]: ...  # {(username, attribute)}

    def radreply_record(
        self, *, added: Iterable[tuple[str, str, str]], removed: Iterable[tuple[str, str]]
    ) -> None: ...  # added: (username, attribute, account_id)

    def radius_accounts(self, usernames: Collection[str]) -> dict[str, str]: ...  # username -> account


class CoaClient(Protocol):
    """What the target needs of ``coa.CoaSender`` (a test may pass its own)."""

    def send(
        self, requests: Sequence[CoaRequest], *, nas_secrets: Mapping[str, str] | None = None
    ) -> list[CoaResult]: ...


class RadiusTarget:
    """FreeRADIUS SQL rows for the managed ``[[radius_group]]`` groups. See module docstring."""

    kind = "radius"

    def __init__(
        self,
        url: str,
        *,
        groups: Iterable[str],
        ledger: RadiusLedger,
        coa: CoaClient | None = None,
        coa_mode: CoaMode = "off",
        coa_modes: Mapping[str, CoaMode] | None = None,
        nas_secrets: bool = False,
        timeout: float = 30.0,
        name: str = "radius",
    ) -> None:
        self.name = name
        self.groups = tuple(sorted(set(groups)))
        self.gate: Callable[[], bool] | None = None  # shared members: the global claim
        self.ledger = ledger
        self.coa = coa
        self.coa_mode: CoaMode = coa_mode
        self.coa_modes: dict[str, CoaMode] = dict(coa_modes or {})
        self.nas_secrets = nas_secrets
        self.timeout = timeout
        self.engine: Engine
        self.engine, self.display_url = open_engine(url, timeout=timeout)

    def __repr__(self) -> str:
        return f"RadiusTarget({self.name!r}, {self.display_url!r}, groups={list(self.groups)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # -- observe -----------------------------------------------------------------------
    def observe(self, scope: Scope | None = None) -> Observed:
        """Managed rows; with ``scope`` only those of its usernames (a scoped pass)."""
        if scope is None:
            batches: list[list[str] | None] = [None]
        else:
            names = sorted(scope.usernames | {r.get("username") for r in scope.wanted.values()})
            batches = [list(chunk) for chunk in chunks(names)]
        ug_rows: list[Any] = []
        rr_rows: list[Any] = []
        counts: dict[str, int] = {}
        try:
            with self.engine.connect() as conn:
                for batch in batches:
                    ug = sa.select(radusergroup).where(radusergroup.c.groupname.in_(self.groups))
                    # FreeRADIUS reads attribute names case-insensitively: framed-ip-address
                    # is the same attribute.
                    rr = sa.select(radreply).where(
                        sa.func.lower(radreply.c.attribute).in_([a.lower() for a in REPLY_ATTRIBUTES]))
                    if batch is not None:
                        ug = ug.where(radusergroup.c.username.in_(batch))
                        rr = rr.where(radreply.c.username.in_(batch))
                    if self.groups:
                        ug_rows += conn.execute(ug).all()
                    rr_rows += conn.execute(rr).all()
                if scope is not None and scope.existing is None and self.groups:
                    counts = {
                        str(g): int(n) for g, n in conn.execute(
                            sa.select(radusergroup.c.groupname, sa.func.count())
                            .where(radusergroup.c.groupname.in_(self.groups))
                            .group_by(radusergroup.c.groupname)
                        )
                    }
        except sa.exc.SQLAlchemyError as exc:
            raise self._wrap(exc, "observe") from exc
        ledger = self.ledger.radreply_owned()
        if scope is not None and scope.existing is None:
            for attribute in REPLY_ATTRIBUTES:
                counts[attribute] = sum(1 for _, attr in ledger if attr == attribute)
        owned: dict[Key, Resource] = {}
        foreign: dict[Key, str] = {}
        surplus: list[Resource] = []
        digest: list[tuple[Any, ...]] = []
        managed = set(self.groups)
        for row in sorted(ug_rows, key=lambda r: r.id):
            if row.groupname not in managed:
                continue  # MySQL's collation matched 'Legacy' for 'legacy': not provisiond's
            res = Resource(
                kind="radusergroup",
                group=row.groupname,
                ident=(("username", row.username), ("groupname", row.groupname)),
                attrs=(("priority", str(row.priority)),),
                ref=str(row.id),
            )
            digest.append(("radusergroup", row.id, row.username, row.groupname, row.priority))
            if res.key in owned:
                surplus.append(res)  # the same membership twice: the later row goes
            else:
                owned[res.key] = res
        for row in sorted(rr_rows, key=lambda r: r.id):
            attribute = canonical(row.attribute)
            res = Resource(
                kind="radreply",
                group=attribute,
                ident=(("username", row.username), ("attribute", attribute)),
                # Compared by value: ``10.0.0.1 `` in the table is the address desire wants.
                attrs=(("op", row.op), ("value", reply_value(attribute, row.value or ""))),
                ref=str(row.id),
            )
            # The ledger knows (username, attribute), not row ids: provisiond writes one row
            # per key and only where none existed, so its row is the first one with the
            # exact spelling; any other row for the key is hand-made.
            mine = (row.username, row.attribute) in ledger and row.attribute == attribute
            mine = mine and res.key not in owned and res.key not in foreign
            digest.append(("radreply", row.id, row.username, row.attribute, row.op, row.value, mine))
            if mine:
                owned[res.key] = res
            else:
                foreign.setdefault(
                    res.key,
                    f"hand-made {row.attribute} row (id {row.id}, {row.op} {row.value}) not created "
                    "by provisiond: left alone",
                )
                # With a hand-made row beside it, provisiond's own row is left as it is too
                # (FreeRADIUS would send both): the conflict is reported until a human acts.
                owned.pop(res.key, None)
        log.debug("radius observe target=%s owned=%d foreign=%d surplus=%d",
                  self.name, len(owned), len(foreign), len(surplus))
        existing = None if scope is None else (scope.existing if scope.existing is not None else counts)
        return Observed(owned=owned, foreign=foreign, surplus=tuple(surplus),
                        checksum=observed_digest(digest), existing=existing)

    # -- follow-ups ------------------------------------------------------------------------
    def plan_followups(self, plan: Plan) -> Plan:
        """The plan with its deletes' accounts, and the CoA/Disconnect-Requests its
        changes call for (a preview)."""
        plan = self._accounts_of_deletes(plan)
        if self.coa is None and self.coa_mode == "off" and not self.coa_modes:
            return plan
        try:
            with self.engine.connect() as conn:
                requests = sessions.requests(conn, plan.changes, self._coa_modes())
        except sa.exc.SQLAlchemyError as exc:
            raise self._wrap(exc, "read sessions") from exc
        return replace(plan, followups=tuple(followup_json(r, why) for r, why in requests))

    def _accounts_of_deletes(self, plan: Plan) -> Plan:
        """Rows read back carry no account id: a delete gets the account the ledger
        (the state store) says its username was written for, so the journal, ``history
        --account`` and ``explain`` find it. Creates and updates have billing's."""
        names = {c.old.get("username") for c in plan.changes
                 if isinstance(c, Delete) and not c.old.account_id}
        if not names:
            return plan
        try:
            owner = self.ledger.radius_accounts(names)
        except Exception as exc:  # noqa: BLE001 - only the journal's account is lost
            log.warning("radius target=%s cannot read the accounts of deleted rows: %s",
                        self.name, exc)
            return plan
        if not owner:
            return plan
        changes = tuple(
            Delete(replace(c.old, account_id=owner[u]))
            if isinstance(c, Delete) and not c.old.account_id and (u := c.old.get("username")) in owner
            else c
            for c in plan.changes)
        return replace(plan, changes=changes)

    def _coa_modes(self) -> CoaModes:
        return CoaModes(groups=self.groups, default=self.coa_mode, per_group=self.coa_modes)

    def _mode_for(self, p: UserPolicy) -> CoaMode:
        return self._coa_modes().mode_for(p)

    # -- apply -------------------------------------------------------------------------------
    def apply(self, plan: Plan, *, progress: Callable[[int], None] | None = None,
              report: Callable[[ApplyResult], None] | None = None) -> ApplyResult:
        """One transaction: the whole result is one part for ``report``."""
        result = self._apply(plan, progress)
        if report is not None:
            report(result)
        return result

    def _apply(self, plan: Plan, progress: Callable[[int], None] | None) -> ApplyResult:
        result = ApplyResult(target=self.name)
        changes = list(plan.changes)
        if not changes:
            return result
        requests: list[tuple[CoaRequest, str]] = []
        nas_secrets: dict[str, str] = {}
        if self.coa is not None:
            try:  # sessions as they are now, before the rows change
                with self.engine.connect() as conn:
                    requests = sessions.requests(conn, changes, self._coa_modes())
                    if requests and self.nas_secrets:
                        nas_secrets = sessions.nas_secrets(conn, {r.nas for r, _ in requests})
            except sa.exc.SQLAlchemyError as exc:
                log.warning("radius target=%s cannot read sessions for CoA: %s", self.name, reason(exc))
                result.followups.append({"action": "none", "reason": f"cannot read sessions: {reason(exc)}"})
        added = [
            (c.new.get("username"), c.new.get("attribute"), c.new.account_id)
            for c in changes if isinstance(c, Create) and c.new.kind == "radreply"
        ]
        # The ledger lives in another database, so no transaction spans both. Claim new
        # rows *before* they are committed: a crash in between leaves a claim on a row
        # that does not exist (harmless: the next pass creates it), never a row of ours
        # that looks hand-made for ever. Releases are recorded after the commit.
        try:
            self.ledger.radreply_record(added=added, removed=())
        except Exception as exc:  # noqa: BLE001 - any store failure: write nothing
            result.error = (f"{self.name}: cannot record ownership in the state store "
                            f"({type(exc).__name__}: {exc}); nothing written")
            return result
        try:
            with self.engine.begin() as conn:
                removed = rows.write(conn, changes)
        except (rows.RowFailed, sa.exc.SQLAlchemyError) as exc:
            wrapped = None if isinstance(exc, rows.RowFailed) else self._wrap(exc, "apply")
            result.error = f"{wrapped or f'{self.name}: {exc}'} (rolled back, nothing written)"
            result.unavailable = isinstance(wrapped, TargetUnavailable)
            self._unclaim(added)
            return result
        result.applied = changes
        if progress is not None:  # one transaction: every change completes at the commit
            progress(len(changes))
        try:
            self.ledger.radreply_record(added=(), removed=removed)
        except Exception as exc:  # noqa: BLE001 - any store failure: rows are committed, say so
            result.error = (
                f"{self.name}: rows committed but the ownership ledger was not updated "
                f"({type(exc).__name__}: {exc}); deleted radreply rows stay recorded as provisiond's"
            )
        counts = plan.counts()
        log.info("radius apply target=%s create=%d update=%d delete=%d",
                 self.name, counts["create"], counts["update"], counts["delete"])
        if requests and self.coa is not None:
            try:
                sent = self.coa.send([r for r, _ in requests], nas_secrets=nas_secrets)
            except Exception as exc:  # noqa: BLE001 - rows are committed: report, never lose the result
                log.warning("radius target=%s CoA/Disconnect failed: %s", self.name, type(exc).__name__)
                sent = [CoaResult(r, "error", f"{type(exc).__name__}: {exc}") for r, _ in requests]
            for (req, why), res in zip(requests, sent):
                out = followup_json(req, why)
                out["result"] = res.outcome
                if res.detail:
                    out["detail"] = res.detail
                result.followups.append(out)
        return result

    def _unclaim(self, added: Sequence[tuple[str, str, str]]) -> None:
        """Take back the claims of a rolled-back apply (best effort: a stale claim is harmless)."""
        if not added:
            return
        try:
            self.ledger.radreply_record(added=(), removed=[(u, a) for u, a, _ in added])
        except Exception as exc:  # noqa: BLE001 - the apply already failed; say why, go on
            log.warning("radius target=%s cannot take back ledger claims: %s", self.name, type(exc).__name__)

    def _wrap(self, exc: sa.exc.SQLAlchemyError, doing: str) -> TargetError:
        if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
            return TargetUnavailable(self.name, f"{doing} on {self.display_url} failed: {reason(exc)}")
        return TargetError(self.name, f"{doing} failed: {reason(exc)}")


# -- wiring for the lead ----------------------------------------------------------------------
def build_radius_target(settings: Settings, ledger: RadiusLedger) -> RadiusTarget | None:
    """The ``radius`` target from ``[radius]``, ``[[radius_group]]`` and ``[coa]``; None without them."""
    if settings.radius is None:
        return None
    modes: dict[str, CoaMode] = {}
    for m in settings.radius_group:
        if m.coa is not None:
            prev = modes.get(m.radius_group)
            modes[m.radius_group] = m.coa if prev is None or MODE_RANK[m.coa] > MODE_RANK[prev] else prev
    coa_wanted = settings.coa.mode != "off" or any(m != "off" for m in modes.values())
    sender = (
        CoaSender(
            shared_secret=settings.coa.shared_secret(),
            port=settings.coa.port,
            timeout=settings.coa.timeout,
            retries=settings.coa.retries,
        )
        if coa_wanted
        else None
    )
    return RadiusTarget(
        settings.radius.resolved_url(),
        groups=[m.radius_group for m in settings.radius_group],
        ledger=ledger,
        coa=sender,
        coa_mode=settings.coa.mode,
        coa_modes=modes,
        nas_secrets=settings.coa.nas_secrets,
        timeout=settings.radius.timeout,
    )

