"""Shared membership: several daemons on one PostgreSQL state store, each a row in
``provisiond_members`` renewed on the database clock, and one ``provisiond_claims`` row
per router (and ``global``) naming its owner and fencing token (``daemon.members``).

The tables exist on every backend so the schema is one; only PostgreSQL uses them.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-11
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provisiond_members",
        sa.Column("member_id", sa.String(255), primary_key=True),
        sa.Column("incarnation", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),  # NULL: stopped gracefully
    )
    op.create_table(
        "provisiond_claims",
        sa.Column("resource", sa.String(255), primary_key=True),
        sa.Column("owner", sa.String(255)),
        sa.Column("token", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("wanted_by", sa.String(255)),
    )
    op.create_index("ix_provisiond_claims_owner", "provisiond_claims", ["owner"])


def downgrade() -> None:
    op.drop_table("provisiond_claims")
    op.drop_table("provisiond_members")
