"""The StateStore's first schema: reads, runs, journal, radreply ledger, leases.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "reads",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        _ts("at"),
        sa.Column("accounts", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
    )
    op.create_index("ix_reads_at", "reads", ["at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("mode", sa.String(20), nullable=False),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
        sa.Column("result", sa.String(20)),
        sa.Column("summary", sa.Text),
    )
    op.create_index("ix_runs_started_at", "runs", ["started_at"])
    op.create_table(
        "journal",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        _ts("at"),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("result", sa.String(20), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_journal_at", "journal", ["at"])
    op.create_index("ix_journal_account", "journal", ["account_id", "at"])
    op.create_index("ix_journal_run", "journal", ["run_id"])
    op.create_table(
        "radreply_ledger",
        sa.Column("username", sa.String(253), primary_key=True),
        sa.Column("attribute", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(255), nullable=False),
        _ts("recorded_at"),
    )
    op.create_table(
        "leases",
        # One row per (pool, address): an address is leased or held for one account.
        sa.Column("pool", sa.String(255), primary_key=True),
        sa.Column("address", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(6), nullable=False),
        _ts("leased_at"),
        _ts("released_at", nullable=True),
        _ts("held_until", nullable=True),
        sa.CheckConstraint(
            "(state = 'leased' AND held_until IS NULL) OR (state = 'held' AND held_until IS NOT NULL)",
            name="ck_leases_state",
        ),
        # Pools never overlap, but a pool renamed or redrawn must not let an address that
        # an old pool's lease still holds go to a second account.
        sa.UniqueConstraint("address", name="uq_leases_address"),
    )
    # An account has at most one LEASED address per pool (held ones may linger).
    op.create_index(
        "uq_leases_account_leased",
        "leases",
        ["pool", "account_id"],
        unique=True,
        sqlite_where=sa.text("state = 'leased'"),
        postgresql_where=sa.text("state = 'leased'"),
    )
    op.create_index("ix_leases_account", "leases", ["account_id"])
    op.create_index("ix_leases_held_until", "leases", ["held_until"])


def downgrade() -> None:
    for table in ("leases", "radreply_ledger", "journal", "runs", "reads"):
        op.drop_table(table)
