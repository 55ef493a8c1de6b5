"""The FreeRADIUS target: ``radusergroup`` / ``radreply`` rows in FreeRADIUS's SQL database.

Sits at the I/O edge of a pass. ``observe`` reads what provisiond owns, ``diff`` (pure)
compares it with ``core.radius.radius``'s desired State, ``plan_followups`` previews
the CoA/Disconnect-Requests for live sessions, ``apply`` writes every change in one
transaction and then acts on the sessions through ``targets.coa``.

Ownership (DESIGN.md "Ownership"):

- every ``radusergroup`` row whose ``groupname`` is a managed ``[[radius_group]]`` is
  provisiond's (a second row for the same user and group is ``surplus`` and deleted);
- a ``radreply`` row is provisiond's only when the StateStore's ledger says provisiond
  wrote that ``(username, attribute)``; any other row of an attribute provisiond writes
  (``REPLY_ATTRIBUTES``: Framed-IP-Address and the pool attributes Framed-Route,
  Framed-IPv6-Prefix, Delegated-IPv6-Prefix) is hand-made: never touched, and reported
  as a conflict when billing or a pool wants that user's attribute.

Works with FreeRADIUS's own ``schema.sql`` for PostgreSQL, MySQL/MariaDB and SQLite
(SQLAlchemy Core, tables declared with the columns the three share). Database errors
become ``TargetUnavailable`` (cannot connect / timed out) or ``TargetError`` naming the
row; a failed apply rolls back entirely. The database URL's password never reaches an
error or a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from provisiond.core.changes import Change, Create, Delete, Key, Observed, Resource, Update
from provisiond.errors import TargetError, TargetUnavailable
from provisiond.core.plan import Plan, observed_digest
from provisiond.core.scope import Scope
from provisiond.core.radius import (
    COA_CHANGEABLE,
    REPLY_ATTRIBUTES,
    canonical,
    effective_reply,
    reply_diff,
    reply_value,
)
from provisiond.settings import CoaMode, Settings
from provisiond.targets.base import ApplyResult
from provisiond.targets.coa import CoaRequest, CoaResult, CoaSender

log = logging.getLogger(__name__)

# Characters FreeRADIUS's default SQL escaping leaves alone (group_membership_query
# always uses it, even with auto_escape): anything else mangles the username.
SAFE_USERNAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@.-_: /")
CHUNK = 1000
_MODE_RANK = {"off": 0, "coa": 1, "disconnect": 2}


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


# -- FreeRADIUS's tables: only the columns every dialect's schema.sql has -------------
metadata = sa.MetaData()
radusergroup = sa.Table(
    "radusergroup", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("groupname", sa.String(64), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
)
radreply = sa.Table(
    "radreply", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("attribute", sa.String(64), nullable=False),
    sa.Column("op", sa.String(2), nullable=False),
    sa.Column("value", sa.String(253), nullable=False),
)
radgroupreply = sa.Table(
    "radgroupreply", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("groupname", sa.String(64)),
    sa.Column("attribute", sa.String(64)),
    sa.Column("op", sa.String(2)),
    sa.Column("value", sa.String(253)),
)
radgroupcheck = sa.Table(
    "radgroupcheck", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("groupname", sa.String(64)),
)
radacct = sa.Table(
    "radacct", metadata,
    sa.Column("radacctid", sa.BigInteger, primary_key=True),
    sa.Column("acctsessionid", sa.String(64)),
    sa.Column("username", sa.String(64)),
    sa.Column("nasipaddress", sa.String(15)),  # inet on PostgreSQL: read as text below
    sa.Column("acctstoptime", sa.DateTime),
    sa.Column("framedipaddress", sa.String(15)),
)
nas = sa.Table(
    "nas", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("nasname", sa.String(128)),
    sa.Column("secret", sa.String(60)),
)

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _reason(exc: BaseException) -> str:
    """The driver's own first line: no SQL, no parameters, no URL."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe(r: Resource) -> str:
    second = r.get("groupname") or r.get("attribute")
    return f"{r.kind} {r.get('username')}/{second}"


class _RowFailed(Exception):
    """One row could not be written; the whole transaction rolls back."""


@dataclass(slots=True)
class _UserPolicy:
    """One username's rows before and after a plan (all groups, not only managed ones)."""

    groups_before: list[tuple[int, str]] = field(default_factory=list)
    groups_after: list[tuple[int, str]] = field(default_factory=list)
    reply_before: list[tuple[str, str, str]] = field(default_factory=list)
    reply_after: list[tuple[str, str, str]] = field(default_factory=list)


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
        self.ledger = ledger
        self.coa = coa
        self.coa_mode: CoaMode = coa_mode
        self.coa_modes: dict[str, CoaMode] = dict(coa_modes or {})
        self.nas_secrets = nas_secrets
        self.timeout = timeout
        url_obj = sa.engine.make_url(url)
        self.display_url = url_obj.render_as_string(hide_password=True)
        self.engine: Engine = sa.create_engine(
            url_obj, pool_pre_ping=True, connect_args=_connect_args(url_obj, timeout)
        )
        if url_obj.get_backend_name() == "sqlite":
            _sqlite_transactions(self.engine)

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
            batches = [list(chunk) for chunk in _chunks(names)]
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
                requests = self._requests(conn, plan.changes)
        except sa.exc.SQLAlchemyError as exc:
            raise self._wrap(exc, "read sessions") from exc
        return replace(plan, followups=tuple(_followup_json(r, why) for r, why in requests))

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

    def _requests(self, conn: Connection, changes: Sequence[Change]) -> list[tuple[CoaRequest, str]]:
        touched = sorted({c.resource.get("username") for c in changes})
        sessions: dict[str, list[Any]] = {}
        for part in _chunks(touched):
            for s in conn.execute(
                sa.select(radacct.c.username, radacct.c.acctsessionid, radacct.c.nasipaddress,
                          radacct.c.framedipaddress)
                .where(radacct.c.username.in_(part), radacct.c.acctstoptime.is_(None))
                .order_by(radacct.c.radacctid)
            ):
                sessions.setdefault(s.username, []).append(s)
        if not sessions:
            return []
        users = sorted(sessions)
        policies = self._policies(conn, users, [c for c in changes if c.resource.get("username") in sessions])
        groups = {g for p in policies.values() for _, g in (*p.groups_before, *p.groups_after)}
        greply, gchecked = self._group_rows(conn, sorted(groups))
        out: list[tuple[CoaRequest, str]] = []
        for user in users:
            decided = self._decide(user, policies[user], greply, gchecked)
            if decided is None:
                continue
            action, attrs, why = decided
            for s in sessions[user]:
                out.append((
                    CoaRequest(
                        action=action, nas=str(s.nasipaddress), username=user,
                        acct_session_id=s.acctsessionid,
                        framed_ip=str(s.framedipaddress or ""), attributes=attrs if action == "coa" else (),
                    ),
                    why,
                ))
        return out

    def _policies(self, conn: Connection, users: Sequence[str], changes: Sequence[Change]) -> dict[str, _UserPolicy]:
        out = {u: _UserPolicy() for u in users}
        ug: dict[str, list[Any]] = {}
        rr: dict[str, list[Any]] = {}
        for part in _chunks(users):
            for row in conn.execute(sa.select(radusergroup).where(radusergroup.c.username.in_(part))):
                ug.setdefault(row.username, []).append(row)
            for row in conn.execute(sa.select(radreply).where(radreply.c.username.in_(part))):
                rr.setdefault(row.username, []).append(row)
        gone = {(c.resource.kind, c.resource.ref) for c in changes if isinstance(c, (Delete, Update))}
        for user, p in out.items():
            for row in sorted(ug.get(user, []), key=lambda r: r.id):
                p.groups_before.append((row.priority, row.groupname))
                if ("radusergroup", str(row.id)) not in gone:
                    p.groups_after.append((row.priority, row.groupname))
            for row in sorted(rr.get(user, []), key=lambda r: r.id):
                p.reply_before.append((row.attribute, row.op, row.value))
                if ("radreply", str(row.id)) not in gone:
                    p.reply_after.append((row.attribute, row.op, row.value))
        for c in changes:
            if isinstance(c, Delete):
                continue
            r, p = c.resource, out[c.resource.get("username")]
            if r.kind == "radusergroup":
                p.groups_after.append((int(r.get("priority", "0")), r.get("groupname")))
            else:
                p.reply_after.append((r.get("attribute"), r.get("op", "="), r.get("value")))
        for p in out.values():  # FreeRADIUS: ORDER BY priority (ties: row order, kept stable)
            p.groups_before.sort(key=lambda g: g[0])
            p.groups_after.sort(key=lambda g: g[0])
        return out

    def _group_rows(
        self, conn: Connection, groups: Sequence[str]
    ) -> tuple[dict[str, list[tuple[str, str, str]]], set[str]]:
        reply: dict[str, list[tuple[str, str, str]]] = {}
        checked: set[str] = set()
        for part in _chunks(groups):
            for row in conn.execute(
                sa.select(radgroupreply).where(radgroupreply.c.groupname.in_(part)).order_by(radgroupreply.c.id)
            ):
                reply.setdefault(row.groupname, []).append((row.attribute, row.op, row.value))
            for row in conn.execute(
                sa.select(radgroupcheck.c.groupname).where(radgroupcheck.c.groupname.in_(part)).distinct()
            ):
                checked.add(row.groupname)
        return reply, checked

    def _mode_for(self, p: _UserPolicy) -> CoaMode:
        before = {g for _, g in p.groups_before}
        after = {g for _, g in p.groups_after}
        considered = (after ^ before) or (after & set(self.groups))  # joined and left alike
        modes = [self.coa_modes.get(g, self.coa_mode) for g in considered if g in self.groups]
        if not modes:
            return self.coa_mode
        return max(modes, key=lambda m: _MODE_RANK[m])

    def _decide(
        self,
        user: str,
        p: _UserPolicy,
        greply: Mapping[str, list[tuple[str, str, str]]],
        gchecked: set[str],
    ) -> tuple[Any, tuple[tuple[str, str], ...], str] | None:
        mode = self._mode_for(p)
        if mode == "off":
            return None
        old_reply, old_groups = effective_reply(p.reply_before, p.groups_before, greply)
        new_reply, new_groups = effective_reply(p.reply_after, p.groups_after, greply)
        if old_reply == new_reply:
            return None
        why = reply_diff(old_reply, new_reply)
        if mode == "disconnect":
            return "disconnect", (), why
        if (old_groups | new_groups) & gchecked:
            return "disconnect", (), why + " (radgroupcheck rows: reply not predictable, CoA unsafe)"
        changed = {a for a in old_reply.keys() | new_reply.keys() if old_reply.get(a) != new_reply.get(a)}
        removed = old_reply.keys() - new_reply.keys()
        if removed or not changed <= COA_CHANGEABLE:
            return "disconnect", (), why
        attrs = tuple((a, v) for a in sorted(new_reply) if a in COA_CHANGEABLE for v in new_reply[a])
        return "coa", attrs, why

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
                    requests = self._requests(conn, changes)
                    if requests and self.nas_secrets:
                        nas_secrets = self._nas_secrets(conn, {r.nas for r, _ in requests})
            except sa.exc.SQLAlchemyError as exc:
                log.warning("radius target=%s cannot read sessions for CoA: %s", self.name, _reason(exc))
                result.followups.append({"action": "none", "reason": f"cannot read sessions: {_reason(exc)}"})
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
                removed = self._write(conn, changes)
        except (_RowFailed, sa.exc.SQLAlchemyError) as exc:
            wrapped = None if isinstance(exc, _RowFailed) else self._wrap(exc, "apply")
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
                out = _followup_json(req, why)
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

    def _write(self, conn: Connection, changes: Sequence[Change]) -> list[tuple[str, str]]:
        """Delete -> Create -> Update; returns the radreply keys no row holds any more."""
        deletes = [c for c in changes if isinstance(c, Delete)]
        creates = [c for c in changes if isinstance(c, Create)]
        updates = [c for c in changes if isinstance(c, Update)]
        for table, kind in ((radusergroup, "radusergroup"), (radreply, "radreply")):
            mine = [c for c in deletes if c.old.kind == kind]
            self._checked(conn, table, "delete", mine,
                          table.delete().where(*self._where(table)), [self._params(table, c.old) for c in mine])
        for table, kind in ((radusergroup, "radusergroup"), (radreply, "radreply")):
            self._insert(conn, table, [c.new for c in creates if c.new.kind == kind])
        for table, kind in ((radusergroup, "radusergroup"), (radreply, "radreply")):
            mine_u = [c for c in updates if c.new.kind == kind]
            values: dict[str, Any] = {"priority": sa.bindparam("n_priority")} if table is radusergroup else {
                "op": sa.bindparam("n_op"), "value": sa.bindparam("n_value")}
            params = [self._params(table, c.old) | {f"n_{k}": v for k, v in c.new.attrs} for c in mine_u]
            for p in params:
                if "n_priority" in p:
                    p["n_priority"] = int(p["n_priority"])
            self._checked(conn, table, "update", mine_u,
                          table.update().where(*self._where(table)).values(**values), params)
        gone = sorted({(c.old.get("username"), c.old.get("attribute")) for c in deletes if c.old.kind == "radreply"})
        still: set[tuple[str, str]] = set()
        for part in _chunks(gone):
            users = sorted({u for u, _ in part})
            for row in conn.execute(
                sa.select(radreply.c.username, radreply.c.attribute).where(radreply.c.username.in_(users))
            ):
                still.add((row.username, row.attribute))
        return [k for k in gone if k not in still]

    @staticmethod
    def _where(table: sa.Table) -> list[Any]:
        second = table.c.groupname if table is radusergroup else table.c.attribute
        return [table.c.id == sa.bindparam("k_id"), table.c.username == sa.bindparam("k_username"),
                second == sa.bindparam("k_second")]

    @staticmethod
    def _params(table: sa.Table, r: Resource) -> dict[str, Any]:
        second = r.get("groupname") if table is radusergroup else r.get("attribute")
        try:
            ref = int(r.ref)
        except ValueError:
            raise _RowFailed(f"{describe(r)} has no row id (ref {r.ref!r}); re-plan") from None
        return {"k_id": ref, "k_username": r.get("username"), "k_second": second}

    def _checked(
        self, conn: Connection, table: sa.Table, verb: str, changes: Sequence[Change], stmt: Any,
        params: list[dict[str, Any]],
    ) -> None:
        """Run ``stmt`` for every row; each must hit exactly the row observe saw."""
        for part_c, part_p in zip(_chunks(changes), _chunks(params)):
            try:
                hit = conn.execute(stmt, list(part_p)).rowcount
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                raise _RowFailed(f"{verb} {describe(part_c[0].resource)} (or a row after it) failed: {_reason(exc)}") from exc
            if hit == len(part_p):
                continue
            ids = [p["k_id"] for p in part_p]
            present = {row.id for row in conn.execute(sa.select(table.c.id).where(table.c.id.in_(ids)))}
            for c, p in zip(part_c, part_p):
                if (verb == "delete" and p["k_id"] in present) or (verb == "update" and p["k_id"] not in present):
                    raise _RowFailed(f"{verb} {describe(c.resource)} (id {p['k_id']}) failed: row changed or gone since observe")
            raise _RowFailed(f"{verb} {describe(part_c[0].resource)}: {hit} of {len(part_p)} rows matched; "
                             "rows changed since observe")

    def _insert(self, conn: Connection, table: sa.Table, rows: Sequence[Resource]) -> None:
        def values(r: Resource) -> dict[str, Any]:
            if table is radusergroup:
                return {"username": r.get("username"), "groupname": r.get("groupname"),
                        "priority": int(r.get("priority", "0"))}
            return {"username": r.get("username"), "attribute": r.get("attribute"),
                    "op": r.get("op", "="), "value": r.get("value")}

        for part in _chunks(rows, 5000):
            batch = [values(r) for r in part]
            try:
                with conn.begin_nested():
                    conn.execute(table.insert(), batch)
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated:  # the database went away: no row to blame
                    raise
                for r, v in zip(part, batch):  # find the row to name
                    try:
                        with conn.begin_nested():
                            conn.execute(table.insert(), [v])
                    except sa.exc.DBAPIError as row_exc:
                        raise _RowFailed(f"create {describe(r)} failed: {_reason(row_exc)}") from row_exc
                raise _RowFailed(f"create {describe(part[0])} (batch) failed: {_reason(exc)}") from exc

    def _nas_secrets(self, conn: Connection, addresses: set[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for row in conn.execute(sa.select(nas.c.nasname, nas.c.secret).where(nas.c.nasname.in_(sorted(addresses)))):
            if row.secret:
                out.setdefault(str(row.nasname), str(row.secret))
        return out

    def _wrap(self, exc: sa.exc.SQLAlchemyError, doing: str) -> TargetError:
        if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
            return TargetUnavailable(self.name, f"{doing} on {self.display_url} failed: {_reason(exc)}")
        return TargetError(self.name, f"{doing} failed: {_reason(exc)}")


def _followup_json(req: CoaRequest, why: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": req.action, "username": req.username, "acct_session_id": req.acct_session_id,
        "nas": req.nas, "reason": why,
    }
    if req.framed_ip:
        out["framed_ip"] = req.framed_ip
    if req.attributes:
        out["attributes"] = [[a, v] for a, v in req.attributes]
    return out


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, open transactions (SQLAlchemy's pysqlite recipe).

    pysqlite (Python < 3.12) sends no BEGIN before a SAVEPOINT, so SQLite takes the
    first ``begin_nested`` as the outer transaction and its RELEASE commits: inserts
    written before a later failing row would stay. With an explicit BEGIN the whole
    apply is one transaction again.
    """

    @sa.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi: Any, _record: object) -> None:
        dbapi.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def _connect_args(url: sa.engine.URL, timeout: float) -> dict[str, Any]:
    backend = url.get_backend_name()
    secs = max(1, int(timeout))
    if backend == "postgresql":
        return {"connect_timeout": secs, "options": f"-c statement_timeout={int(timeout * 1000)}"}
    if backend in ("mysql", "mariadb"):
        return {"connect_timeout": secs, "read_timeout": secs, "write_timeout": secs}
    if backend == "sqlite":
        return {"timeout": timeout}
    return {}


# -- wiring for the lead ----------------------------------------------------------------------
def build_radius_target(settings: Settings, ledger: RadiusLedger) -> RadiusTarget | None:
    """The ``radius`` target from ``[radius]``, ``[[radius_group]]`` and ``[coa]``; None without them."""
    if settings.radius is None:
        return None
    modes: dict[str, CoaMode] = {}
    for m in settings.radius_group:
        if m.coa is not None:
            prev = modes.get(m.radius_group)
            modes[m.radius_group] = m.coa if prev is None or _MODE_RANK[m.coa] > _MODE_RANK[prev] else prev
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


def check_connection(url: str, *, timeout: float) -> str:
    """Connect and read one row of each table provisiond writes, changing nothing
    (``check-config --connect``). Raises TargetError naming the database, never its password."""
    url_obj = sa.engine.make_url(url)
    display = url_obj.render_as_string(hide_password=True)
    engine = sa.create_engine(url_obj, connect_args=_connect_args(url_obj, timeout))
    try:
        with engine.connect() as conn:
            for table in (radusergroup, radreply):
                conn.execute(sa.select(table.c.id).limit(1)).all()
    except sa.exc.SQLAlchemyError as exc:
        raise TargetError("radius", f"{display}: {_reason(exc)}") from exc
    finally:
        engine.dispose()
    return f"connected to {display}; radusergroup and radreply readable"


def check_radius_config(settings: Settings, engine: Engine, usernames: Iterable[str] = ()) -> list[str]:
    """Warnings an operator should act on: empty managed groups, usernames rlm_sql mangles."""
    out: list[str] = []
    managed = sorted({m.radius_group for m in settings.radius_group})
    if managed:
        try:
            with engine.connect() as conn:
                have = {
                    row.groupname
                    for row in conn.execute(
                        sa.select(radgroupreply.c.groupname).where(radgroupreply.c.groupname.in_(managed)).distinct()
                    )
                }
        except sa.exc.SQLAlchemyError as exc:
            return [f"radius: cannot check radgroupreply: {_reason(exc)}"]
        for g in managed:
            if g not in have:
                out.append(
                    f"radius_group {g!r} has no radgroupreply rows: when it sorts first for a user it "
                    "silences every later group (FreeRADIUS stops at a group without reply rows)"
                )
    bad = sorted({u for u in usernames if not set(u) <= SAFE_USERNAME_CHARS})
    for u in bad[:20]:
        odd = "".join(sorted(set(u) - SAFE_USERNAME_CHARS))
        out.append(
            f"radius username {u!r} has characters FreeRADIUS's SQL escaping mangles ({odd!r}): "
            "its groups will not be found; use only A-Z a-z 0-9 @ . - _ : / and space"
        )
    if len(bad) > 20:
        out.append(f"... and {len(bad) - 20} more such radius usernames")
    return out
