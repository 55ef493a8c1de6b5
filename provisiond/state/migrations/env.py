"""Alembic environment for the StateStore's schema.

``provisiond.state.store.StateStore.open`` runs the upgrade programmatically: it hands over a
connection that is already inside a locked transaction (``BEGIN IMMEDIATE`` on SQLite,
an advisory lock on PostgreSQL), so concurrent start-ups migrate one at a time and
the version bump commits with the DDL. There is no ``alembic.ini``.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "provisiond's migrations run through provisiond.state.store.StateStore.open(), "
        "which passes the connection in config.attributes['connection']"
    )

context.configure(
    connection=connection,
    target_metadata=None,
    version_table=config.get_main_option("version_table") or "provisiond_schema_version",
    render_as_batch=True,  # SQLite can only ALTER through table copies
)
with context.begin_transaction():
    context.run_migrations()
