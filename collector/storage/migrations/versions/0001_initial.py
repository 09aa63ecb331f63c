"""Initial schema: series, observations, revisions (trigger-kept), runs, source state.

Revision ID: 0001
Revises:

Written out in full (not `metadata.create_all`) so this revision stays what it was when later
revisions change the schema.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dxkpi.collector.storage.schema import DROP_REVISION_TRIGGERS, REVISION_TRIGGERS

revision = "0001"
down_revision = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(200), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("last_start", sa.BigInteger),
        sa.Column("last_value", sa.Float),
        sa.UniqueConstraint("source", "metric", "labels", name="uq_series_identity"),
    )
    op.create_table(
        "observations",
        sa.Column("series_id", Id, sa.ForeignKey("series.id"), primary_key=True),
        sa.Column("period_start", sa.BigInteger, primary_key=True),
        sa.Column("granularity", sa.String(16), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("run_id", sa.BigInteger),
    )
    op.create_table(
        "revisions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("series_id", Id, nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=False),
        sa.Column("granularity", sa.String(16), nullable=False),
        sa.Column("old_value", sa.Float, nullable=False),
        sa.Column("new_value", sa.Float, nullable=False),
        sa.Column("revised_at", sa.Float, nullable=False),
        sa.Column("run_id", sa.BigInteger),
    )
    op.create_index("ix_revisions_series", "revisions", ["series_id", "period_start"])
    op.create_table(
        "collection_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("window_start", sa.Float, nullable=False),
        sa.Column("window_end", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("error_class", sa.String(200)),
        sa.Column("error_message", sa.Text),
        sa.Column("observations_written", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_runs_source_started", "collection_runs", ["source", "started_at"])
    op.create_table(
        "source_state",
        sa.Column("source", sa.String(128), primary_key=True),
        sa.Column("cursor_end", sa.Float),
        sa.Column("checkpoint", sa.Text),
        sa.Column("lease_holder", sa.String(200)),
        sa.Column("lease_expires", sa.Float),
        sa.Column("generation", sa.BigInteger, nullable=False),
    )
    for statement in REVISION_TRIGGERS[op.get_bind().dialect.name]:
        op.execute(statement)


def downgrade() -> None:
    for statement in DROP_REVISION_TRIGGERS[op.get_bind().dialect.name]:
        op.execute(statement)
    for table in ("source_state", "collection_runs", "revisions", "observations", "series"):
        op.drop_table(table)
