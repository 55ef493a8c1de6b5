"""Pass requests: ``provisiond pass`` asks the leading daemon for a pass and reads its
answer here (``state.requests``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pass_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.Column("targets", sa.Text),
        sa.Column("accounts", sa.Text),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True)),
        sa.Column("done_at", sa.DateTime(timezone=True)),
        sa.Column("pass_number", sa.Integer),
        sa.Column("result", sa.String(20)),
        sa.Column("status", sa.Text),
    )
    op.create_index("ix_pass_requests_state", "pass_requests", ["state"])


def downgrade() -> None:
    op.drop_table("pass_requests")
