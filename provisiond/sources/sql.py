"""The SQL billing source: the operator's one query -> a ``Snapshot``.

First step of every pass. The query returns one row per account × group × address ×
username with the columns in ``REQUIRED_COLUMNS``, and may return the account flags
in ``FLAG_COLUMNS`` (``active``, ``delinquent``: true/false, t/f, 1/0, yes/no; NULL is
false); rows are aggregated into ``Account`` values. A flag a mapping selects on must
be among the query's columns (``needs``), else the read fails naming it. A row with bad data is skipped and reported with its account id;
an account whose rows disagree on its name or status is left out and reported too.
A read that fails or times out raises ``SourceError``: the reconciler then writes
nothing anywhere. SQLAlchemy Core, so PostgreSQL (psycopg 3), MySQL/MariaDB (PyMySQL)
and SQLite all work.

A scoped read (``read(accounts=ids)``) wraps the operator's query, so it stays one
query in the config: ``SELECT * FROM (<query>) AS q WHERE CAST(q.account_id AS <text>)
IN (...)``, with bound parameters, ``SCOPE_CHUNK`` ids per statement. Ids are compared
as text because that is what a Snapshot keys accounts by, whatever the billing column's
type (an integer column must match ``'1042'``).
"""

from __future__ import annotations

import itertools
import logging
import operator
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from provisiond.core import addresses
from provisiond.errors import SourceError
from provisiond.core.model import Account, RowProblem, Snapshot

log = logging.getLogger(__name__)

SCOPE_CHUNK = 500  # ids per scoped statement: well under every driver's parameter limit
_TEXT_TYPE = {"postgresql": "TEXT", "mysql": "CHAR", "mariadb": "CHAR", "sqlite": "TEXT"}

REQUIRED_COLUMNS = (
    "account_id",
    "account_name",
    "status",
    "group_name",
    "ip_address",
    "radius_username",
)
FLAG_COLUMNS = ("active", "delinquent")  # optional; a mapping that selects on one needs it


def make_engine(url: str, *, timeout: float) -> Engine:
    """An engine whose statements give up after ``timeout`` seconds, whatever the dialect."""
    backend = make_url(url).get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        ms = max(1, int(timeout * 1000))
        connect_args = {
            "connect_timeout": max(1, int(timeout)),
            "options": f"-c statement_timeout={ms} -c default_transaction_read_only=on",
        }
    elif backend in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": max(1, int(timeout)), "read_timeout": max(1, int(timeout))}
    elif backend == "sqlite":
        connect_args = {"timeout": timeout}
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)


@dataclass(slots=True)
class _Builder:
    """An account seen on more than one row (most have one: they never get a builder)."""

    id: str
    name: str = ""
    status: str = ""
    groups: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    usernames: set[str] = field(default_factory=set)
    active: bool = False
    delinquent: bool = False

    @classmethod
    def of(cls, a: Account) -> _Builder:
        return cls(a.id, a.name, a.status, set(a.groups), set(a.addresses), set(a.usernames),
                   a.active, a.delinquent)

    def build(self, shared: dict[frozenset[str], frozenset[str]]) -> Account:
        groups = frozenset(self.groups)
        return Account(
            id=self.id,
            name=self.name,
            status=self.status,
            groups=shared.setdefault(groups, groups),  # a few distinct sets, 100,000 accounts
            addresses=tuple(sorted(self.addresses)),
            usernames=tuple(sorted(self.usernames)),
            active=self.active,
            delinquent=self.delinquent,
        )


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


Row = tuple[Any, Any, Any, Any, Any, Any, Any, Any]  # REQUIRED_COLUMNS + FLAG_COLUMNS, in order
_NO_GROUPS: frozenset[str] = frozenset()
# A flag's spellings (strings compared stripped and lower-cased); NULL is false.
_FLAGS: dict[Any, bool] = {
    None: False, True: True, False: False,  # (1 and 0 are the same keys as True and False)
    "true": True, "t": True, "1": True, "yes": True, "y": True,
    "false": False, "f": False, "0": False, "no": False, "n": False, "": False,
}


def flag(value: Any) -> bool | None:
    """A billing flag as a bool; ``None`` when it is none of the spellings."""
    try:
        found = _FLAGS.get(value)
    except TypeError:  # unhashable
        return None
    if found is None and isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        found = _FLAGS.get(text.strip().lower())
    elif found is None and isinstance(value, (int, float)) and value in (0, 1):
        found = bool(value)  # Decimal('1'), 1.0
    return found


def aggregate(
    rows: Iterable[Row], *, read_at: datetime, scope: frozenset[str] | None = None
) -> Snapshot:
    """Rows of REQUIRED_COLUMNS -> a Snapshot; bad rows become ``RowProblem``s. Pure.

    An account's first row makes its ``Account`` at once; only an account seen on a
    second row gets a ``_Builder`` to merge its rows in (billing sends most accounts
    on one row: 100,000 accounts, 100,000 values).
    """
    accounts: dict[str, Account] = {}
    merging: dict[str, _Builder] = {}
    problems: list[RowProblem] = []
    clashes: dict[str, tuple[set[str], set[str], set[bool], set[bool]]] = {}  # names, statuses, flags
    notes: dict[tuple[str, str], str] = {}
    one_group: dict[str, frozenset[str]] = {}  # group name -> {group name}, shared
    count = 0
    canonical_v4 = addresses.CANONICAL_V4  # the common address, already in RouterOS form
    new_account = Account.make
    flags = _FLAGS
    for raw_id, name, status, group, ip_raw, username, active_raw, delinquent_raw in rows:
        count += 1
        if type(raw_id) is int:
            account_id = str(raw_id)  # digits (and a sign): one word, printable
        else:
            account_id = raw_id.strip() if type(raw_id) is str else _text(raw_id)
            if not account_id:
                problems.append(RowProblem("", f"row {count}: account_id is empty"))
                continue
            if not account_id.isprintable() or " " in account_id:
                # The id is written into router comments ("provisiond:<id> <name>") and
                # read back up to the first space: it must be one word.
                problems.append(RowProblem(account_id, "account_id has spaces or control characters"))
                continue
        ip = ""
        if type(ip_raw) is str and canonical_v4(ip_raw) is not None:
            ip = ip_raw
        elif ip_raw is not None and ip_raw != "":
            given = ip_raw if type(ip_raw) is str else str(ip_raw)
            try:
                ip = addresses.billing_form(given)
            except ValueError as exc:
                problems.append(RowProblem(account_id, str(exc)))
                continue
            if "/" in given and (account_id, ip) not in notes:
                given = given.strip()
                if addresses.has_host_bits(given):
                    notes[(account_id, ip)] = (
                        f"account {account_id}: {given} has host bits set; used as the network {ip}")
        active = flags[active_raw] if active_raw is None or type(active_raw) is bool else flag(active_raw)
        if active is None:
            problems.append(RowProblem(account_id, f"active is not true or false: {active_raw!r:.40}"))
            continue
        delinquent = (flags[delinquent_raw] if delinquent_raw is None or type(delinquent_raw) is bool
                      else flag(delinquent_raw))
        if delinquent is None:
            problems.append(RowProblem(account_id,
                                       f"delinquent is not true or false: {delinquent_raw!r:.40}"))
            continue
        name_ = name.strip() if type(name) is str else _text(name)
        status_ = status.strip() if type(status) is str else _text(status)
        if type(group) is str:
            group_ = group.strip() if group else None
        else:
            group_ = None if group is None else _text(group)
        if username is None:
            username_ = None
        else:
            username_ = (username.strip() if type(username) is str else _text(username)) if username != "" else None
        acc = accounts.get(account_id)
        if acc is None:
            groups = _NO_GROUPS
            if group_ is not None:
                groups = one_group.get(group_) or one_group.setdefault(group_, frozenset((group_,)))
            accounts[account_id] = new_account(
                account_id, name_, status_, groups, (ip,) if ip else (),
                (username_,) if username_ is not None else (), active, delinquent)
            continue
        more = merging.get(account_id)
        if more is None:
            more = merging[account_id] = _Builder.of(acc)
        if (name_ != more.name or status_ != more.status or active != more.active
                or delinquent != more.delinquent):
            seen = clashes.setdefault(account_id, ({more.name}, {more.status}, {more.active},
                                                   {more.delinquent}))
            seen[0].add(name_)
            seen[1].add(status_)
            seen[2].add(active)
            seen[3].add(delinquent)
        if group_ is not None:
            more.groups.add(group_)
        if ip:
            more.addresses.add(ip)
        if username_ is not None:
            more.usernames.add(username_)
    shared = {g: g for g in one_group.values()}
    for account_id, more in merging.items():
        accounts[account_id] = more.build(shared)
    for account_id, (names, statuses, actives, delinquents) in clashes.items():
        # Which row is right is anyone's guess (and their order may change from read
        # to read): the account is left as it is on every target until billing agrees.
        del accounts[account_id]
        what = [f"different {kind} ({', '.join(repr(v) for v in sorted(values))})"
                for kind, values in (("names", names), ("statuses", statuses),
                                     ("active flags", actives), ("delinquent flags", delinquents))
                if len(values) > 1]
        problems.append(RowProblem(account_id, f"billing returns it with {' and '.join(what)}; "
                                               "left as it is this pass"))
    return Snapshot(
        accounts=accounts,
        read_at=read_at,
        rows=count,
        problems=tuple(problems),
        scope=scope,
        notes=tuple(notes.values()),
    )


class SqlSource:
    """Runs the operator's billing query. ``display`` is the URL with the password hidden."""

    def __init__(self, url: str, query: str, *, timeout: float, display: str,
                 needs: Mapping[str, str] | None = None) -> None:
        """``needs``: flag column -> the config key that selects on it (``address_list[2].delinquent``)."""
        self._engine = make_engine(url, timeout=timeout)
        self._query = sa.text(query)
        self._scoped = _scoped_query(query, self._engine.dialect.name)
        self.display = display
        self.needs = dict(needs or {})

    def check_columns(self) -> list[str]:
        """Problems with the query's result columns (runs it with no rows fetched)."""
        try:
            with self._engine.connect() as conn:
                result = conn.execute(self._query)
                columns = {c.lower() for c in result.keys()}
                result.close()
        except SQLAlchemyError as exc:
            return [f"source.query: failed against {self.display}: {_reason(exc)}"]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        out = []
        if missing:
            out.append(
                "source.query: missing column(s) "
                + ", ".join(missing)
                + f" (it returns {', '.join(sorted(columns)) or 'none'}; alias them with AS)"
            )
        out += [_flag_problem(column, where) for column, where in sorted(self.needs.items())
                if column not in columns]
        return out

    def read(self, *, accounts: Collection[str] | None = None) -> Snapshot:
        read_at = datetime.now(UTC)
        scope = None if accounts is None else frozenset(str(a).strip() for a in accounts)
        try:
            with self._engine.connect() as conn:
                if scope is None:
                    rows: Iterable[Row] = self._rows(conn, self._query, {})
                else:
                    ids = sorted(scope)
                    rows = itertools.chain.from_iterable(
                        self._rows(conn, self._scoped, {"ids": ids[i:i + SCOPE_CHUNK]})
                        for i in range(0, len(ids), SCOPE_CHUNK)
                    )
                snapshot = aggregate(rows, read_at=read_at, scope=scope)
        except SQLAlchemyError as exc:
            raise SourceError(
                f"billing read from {self.display} failed: {_reason(exc)}"
            ) from exc
        for p in snapshot.problems:
            log.warning("source: skipped billing row: %s", p)
        log.log(
            logging.INFO if scope is None else logging.DEBUG,
            "source: read accounts=%d rows=%d skipped=%d%s",
            len(snapshot), snapshot.rows, len(snapshot.problems),
            "" if scope is None else f" scope={len(scope)}",
        )
        return snapshot

    def _rows(self, conn: Connection, query: Any, params: dict[str, Any]) -> Iterable[Row]:
        """The REQUIRED_COLUMNS and FLAG_COLUMNS of every row, streamed, in that order:
        the result's own rows when the query returns just those columns in that order
        (they unpack like tuples), else each row's columns picked by one ``itemgetter``
        (a flag column it lacks reads as NULL)."""
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(
            query, params
        )
        keys = [k.lower() for k in result.keys()]
        missing = [c for c in REQUIRED_COLUMNS if c not in keys]
        if missing:
            result.close()
            raise SourceError(
                f"billing query returns no column(s) {', '.join(missing)}"
            )
        lacking = [c for c in sorted(self.needs) if c not in keys]
        if lacking:
            result.close()
            raise SourceError("; ".join(_flag_problem(c, self.needs[c]) for c in lacking)
                              + "; nothing written")
        columns = REQUIRED_COLUMNS + FLAG_COLUMNS
        if any(c not in keys for c in FLAG_COLUMNS):
            # A missing flag column is a NULL at the end of each row (index len(keys)).
            get = operator.itemgetter(*(keys.index(c) if c in keys else len(keys) for c in columns))
            return (get((*r, None)) for r in result)
        idx = [keys.index(c) for c in columns]
        if idx == list(range(len(columns))) and len(keys) == len(idx):
            rows: Iterable[Row] = result  # Rows unpack as tuples
            return rows
        return map(operator.itemgetter(*idx), result)

    def close(self) -> None:
        self._engine.dispose()


def _flag_problem(column: str, where: str) -> str:
    return (f"source.query: returns no column {column}, which {where} selects on "
            f"(add it to the query, true or false per account, or drop {where})")


def _scoped_query(query: str, dialect: str) -> Any:
    """The operator's query narrowed to ``:ids`` (an expanding parameter)."""
    inner = query.strip().rstrip(";").rstrip()
    as_text = _TEXT_TYPE.get(dialect, "VARCHAR(255)")
    return sa.text(
        # Newlines around the query: a trailing ``-- comment`` must not eat the ``)``.
        f"SELECT * FROM (\n{inner}\n) AS q WHERE CAST(q.account_id AS {as_text}) IN :ids"
    ).bindparams(sa.bindparam("ids", expanding=True))


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's own message, one line, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return " ".join(text.split())[:300]
