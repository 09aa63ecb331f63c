"""Received webhook events (idempotency), and a notification when a change counter moves.

Revision ID: 0004
Revises: 0003

`received_events` holds one row per vendor event id a webhook stored: a redelivery finds its id
and stores nothing. On PostgreSQL a trigger sends `NOTIFY dxkpi_changed, '<source>'` whenever a
source's change counter (`source_state.generation`) moves; the notification is delivered when
the transaction commits, so the exporter rebuilds at once instead of at its next poll.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

_PG_NOTIFY = [
    """
    CREATE OR REPLACE FUNCTION dxkpi_notify_changed() RETURNS trigger AS $$
    BEGIN
      PERFORM pg_notify('dxkpi_changed', NEW.source);
      RETURN NEW;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER source_state_changed AFTER UPDATE OF generation ON source_state
    FOR EACH ROW WHEN (NEW.generation IS DISTINCT FROM OLD.generation)
    EXECUTE FUNCTION dxkpi_notify_changed()
    """,
]


def upgrade() -> None:
    op.create_table(
        "received_events",
        sa.Column("source", sa.String(128), primary_key=True),
        sa.Column("event_id", sa.String(400), primary_key=True),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("occurred_at", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("observations", sa.Integer, nullable=False),
    )
    op.create_index("ix_received_events_received", "received_events", ["received_at"])
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_NOTIFY:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS source_state_changed ON source_state")
        op.execute("DROP FUNCTION IF EXISTS dxkpi_notify_changed()")
    op.drop_index("ix_received_events_received", "received_events")
    op.drop_table("received_events")
