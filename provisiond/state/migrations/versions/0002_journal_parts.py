"""Journal parts: a target's large batch of address-list changes in one row.

A cold apply journals 400,000 changes; one row each (with three indexes) cost more
CPU than writing them to the routers. A part of at least ``PART_ROWS`` address-list
changes is one ``journal_parts`` row: its changes as a JSON array and the accounts
they belong to (``,id,id,``, for ``history --account``). ``StateStore.history``
reads both tables as one journal.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "journal_parts",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("changes", sa.Integer, nullable=False),
        sa.Column("accounts", sa.Text, nullable=False),
        sa.Column("rows", sa.Text, nullable=False),
    )
    op.create_index("ix_journal_parts_at", "journal_parts", ["at"])


def downgrade() -> None:
    op.drop_table("journal_parts")
