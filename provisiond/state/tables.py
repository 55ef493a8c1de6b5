"""The state store's tables (SQLAlchemy Core), as the migrations leave them.

Mirrors ``migrations/versions``: a new migration changes both.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite keeps it as naive UTC text."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
metadata = sa.MetaData()

reads = sa.Table(
    "reads", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("accounts", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
)
runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("result", sa.String(20)),
    sa.Column("summary", sa.Text),
)
journal_t = sa.Table(
    "journal", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("group_name", sa.String(255), nullable=False),
    sa.Column("account_id", sa.String(255), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("result", sa.String(20), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)
journal_parts = sa.Table(  # a part of PART_ROWS or more address-list changes, one row
    "journal_parts", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("changes", sa.Integer, nullable=False),
    sa.Column("accounts", sa.Text, nullable=False),  # ",id,id,…,": a superset filter for LIKE
    sa.Column("rows", sa.Text, nullable=False),  # JSON, the changes column by column (parts.py)
)
radreply_ledger = sa.Table(
    "radreply_ledger", metadata,
    sa.Column("username", sa.String(253), primary_key=True),
    sa.Column("attribute", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(255), nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
)
leases_t = sa.Table(
    "leases", metadata,
    sa.Column("pool", sa.String(255), primary_key=True),
    sa.Column("address", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(255), nullable=False),
    sa.Column("state", sa.String(6), nullable=False),
    sa.Column("leased_at", UTCDateTime, nullable=False),
    sa.Column("released_at", UTCDateTime),
    sa.Column("held_until", UTCDateTime),
)

pass_requests = sa.Table(  # provisiond pass -> the leading daemon (state.requests)
    "pass_requests", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    sa.Column("requested_by", sa.String(255), nullable=False),
    sa.Column("targets", sa.Text),
    sa.Column("accounts", sa.Text),
    sa.Column("state", sa.String(10), nullable=False),
    sa.Column("taken_at", UTCDateTime),
    sa.Column("done_at", UTCDateTime),
    sa.Column("pass_number", sa.Integer),
    sa.Column("result", sa.String(20)),
    sa.Column("status", sa.Text),
)
sa.Index("ix_pass_requests_state", pass_requests.c.state)

# Shared membership (daemon.members, state.claims): PostgreSQL state stores only.
members_t = sa.Table(
    "provisiond_members", metadata,
    sa.Column("member_id", sa.String(255), primary_key=True),
    sa.Column("incarnation", sa.String(32), nullable=False),  # one process's tenure of the id
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("renewed_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime),  # NULL: stopped gracefully, still in the roster
)
claims_t = sa.Table(
    "provisiond_claims", metadata,
    sa.Column("resource", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(255)),
    sa.Column("token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("wanted_by", sa.String(255)),  # the member asking the owner to hand it over
)
sa.Index("ix_provisiond_claims_owner", claims_t.c.owner)
