"""Drop the foreign key from observations to series (bulk ingest speed).

Revision ID: 0002
Revises: 0001

The store resolves every series id itself before writing, so the per-row check bought nothing
but cost about a quarter of the ingest rate on PostgreSQL. SQLite never enforced it (foreign
keys are off unless a connection turns them on), so there the table stays as it is: rebuilding
it would drop the revision trigger.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("observations_series_id_fkey", "observations", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(
            "observations_series_id_fkey", "observations", "series", ["series_id"], ["id"]
        )
