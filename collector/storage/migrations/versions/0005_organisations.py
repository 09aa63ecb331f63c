"""Organisations: the `org` of every series, and KPI history per organisation.

Revision ID: 0005
Revises: 0004

`series.org` is the organisation of the series' source (collector/config.py), written when a
series is created and brought up to date when its source next writes; SQL (Grafana) filters on
it. Existing series are `default`, the implicit organisation of a config that declares none.

The KPI history tables are derived data, replaced whole by every refresh (`dxkpi refresh-kpis`,
the workers): they are recreated with `org` in their keys, since one KPI now has a figure per
organisation and a rolled-up one, and `kpi_periods.missing` lists the organisations a roll-up's
period is still waiting for. The views of 0003 are recreated with an `org` column (and
`missing`), then granted again.

Written out in full (not from `schema.py`) so this revision stays what it was.
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

READERS = "dxkpi_readers"
SHORT_FY = "CASE WHEN {fy} > 2018 THEN 'R' || ({fy} - 2018) ELSE 'FY' || {fy} END"
OLD_VIEWS = ("dxkpi_kpi_path_v", "dxkpi_kpi_outcomes_v", "dxkpi_kpi_periods_v", "dxkpi_kpis_v")

VIEWS = {
    "dxkpi_kpis_v": """
        SELECT kpi, org, rollup, name_ja, name_en, area, unit, cadence, direction,
               value, period_label, to_timestamp(period_end) AS period_end,
               baseline_value, baseline_fiscal_year, target_value, target_fiscal_year,
               to_timestamp(target_end) AS target_end, target_period_ended,
               expected_value, progress, expected_progress, forecast, on_track, stalled,
               to_timestamp(last_change_at) AS last_change_at,
               to_timestamp(next_data_due_at) AS next_data_due_at,
               status, to_timestamp(as_of) AS as_of, to_timestamp(computed_at) AS computed_at
        FROM kpis
    """,
    "dxkpi_kpi_periods_v": f"""
        SELECT p.kpi, p.org, k.rollup, k.name_ja, k.name_en, k.area, k.unit, k.cadence,
               k.direction,
               to_timestamp(p.period_start) AS period_start,
               to_timestamp(p.period_end) AS period_end,
               p.fiscal_year, {SHORT_FY.format(fy="p.fiscal_year")} AS fiscal_year_short,
               p.label, p.value, p.complete, p.missing, p.expected, p.baseline_value,
               p.target_value, p.target_fiscal_year, p.progress,
               (p.expected - p.baseline_value)
                 / NULLIF(p.target_value - p.baseline_value, 0) AS expected_progress,
               to_timestamp(p.arrived_at) AS arrived_at,
               to_timestamp(k.computed_at) AS computed_at
        FROM kpi_periods p JOIN kpis k ON k.kpi = p.kpi AND k.org = p.org
    """,
    "dxkpi_kpi_outcomes_v": f"""
        SELECT o.kpi, o.org, k.rollup, k.name_ja, k.name_en, k.area, k.unit, k.direction,
               o.target_fiscal_year,
               {SHORT_FY.format(fy="o.target_fiscal_year")} AS target_fiscal_year_short,
               o.target_value, o.outcome, o.final_value, o.final_progress,
               to_timestamp(o.known_at) AS known_at
        FROM kpi_outcomes o JOIN kpis k ON k.kpi = o.kpi AND k.org = o.org
    """,
    "dxkpi_kpi_path_v": f"""
        SELECT t.kpi, t.org, k.name_ja, k.name_en, k.unit, t.target_fiscal_year,
               {SHORT_FY.format(fy="t.target_fiscal_year")} AS target_fiscal_year_short,
               to_timestamp(t.at) AS at, t.value
        FROM kpi_path t JOIN kpis k ON k.kpi = t.kpi AND k.org = t.org
    """,
}

GRANT = f"""
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READERS}') THEN
    GRANT SELECT ON {", ".join(VIEWS)} TO {READERS};
  END IF;
END $$
"""


def _history_tables() -> None:
    def org() -> sa.Column[str]:
        return sa.Column("org", sa.String(64), primary_key=True, server_default="default")

    op.create_table(
        "kpis",
        sa.Column("kpi", sa.String(200), primary_key=True),
        org(),
        sa.Column("rollup", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("name_ja", sa.Text, nullable=False),
        sa.Column("name_en", sa.Text, nullable=False),
        sa.Column("area", sa.String(200), nullable=False),
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("cadence", sa.String(16), nullable=False),
        sa.Column("direction", sa.Integer, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("period_label", sa.String(32)),
        sa.Column("period_end", sa.Float),
        sa.Column("baseline_value", sa.Float, nullable=False),
        sa.Column("baseline_fiscal_year", sa.Integer, nullable=False),
        sa.Column("target_value", sa.Float, nullable=False),
        sa.Column("target_fiscal_year", sa.Integer, nullable=False),
        sa.Column("target_end", sa.Float, nullable=False),
        sa.Column("target_period_ended", sa.Boolean, nullable=False),
        sa.Column("expected_value", sa.Float, nullable=False),
        sa.Column("progress", sa.Float),
        sa.Column("expected_progress", sa.Float, nullable=False),
        sa.Column("forecast", sa.Float),
        sa.Column("on_track", sa.Boolean),
        sa.Column("stalled", sa.Boolean, nullable=False),
        sa.Column("last_change_at", sa.Float),
        sa.Column("next_data_due_at", sa.Float),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("as_of", sa.Float, nullable=False),
        sa.Column("computed_at", sa.Float, nullable=False),
    )
    op.create_table(
        "kpi_periods",
        sa.Column("kpi", sa.String(200), primary_key=True),
        org(),
        sa.Column("period_start", sa.Float, primary_key=True),
        sa.Column("period_end", sa.Float, nullable=False),
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("complete", sa.Boolean, nullable=False),
        sa.Column("missing", sa.Text),
        sa.Column("expected", sa.Float, nullable=False),
        sa.Column("baseline_value", sa.Float, nullable=False),
        sa.Column("target_value", sa.Float, nullable=False),
        sa.Column("target_fiscal_year", sa.Integer, nullable=False),
        sa.Column("progress", sa.Float),
        sa.Column("arrived_at", sa.Float),
    )
    op.create_table(
        "kpi_outcomes",
        sa.Column("kpi", sa.String(200), primary_key=True),
        org(),
        sa.Column("target_fiscal_year", sa.Integer, primary_key=True),
        sa.Column("target_value", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("final_value", sa.Float),
        sa.Column("final_progress", sa.Float),
        sa.Column("known_at", sa.Float),
    )
    op.create_table(
        "kpi_path",
        sa.Column("kpi", sa.String(200), primary_key=True),
        org(),
        sa.Column("target_fiscal_year", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("org", sa.String(64), nullable=False, server_default="default"))
    op.create_index("ix_series_org", "series", ["org"])
    if postgres:
        for name in OLD_VIEWS:
            op.execute(f"DROP VIEW IF EXISTS {name}")
    for table in ("kpi_path", "kpi_outcomes", "kpi_periods", "kpis"):
        op.drop_table(table)
    _history_tables()
    if postgres:
        for name, body in VIEWS.items():
            op.execute(f"CREATE VIEW {name} AS {body}")
        op.execute(GRANT)


def downgrade() -> None:
    # Back to 0004's shape: the history tables without `org` (refilled by the next refresh).
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for name in reversed(VIEWS):
            op.execute(f"DROP VIEW IF EXISTS {name}")
    for table in ("kpi_path", "kpi_outcomes", "kpi_periods", "kpis"):
        op.drop_table(table)
    op.drop_index("ix_series_org", "series")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("org")
    # 0003 created them: the same statements again.
    importlib.import_module(
        "dxkpi.collector.storage.migrations.versions.0003_kpi_history"
    ).upgrade()
