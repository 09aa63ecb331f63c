"""KPI history for SQL readers: tables of computed KPI figures and, on PostgreSQL, stable views.

Revision ID: 0003
Revises: 0002

`dxkpi refresh-kpis` (and the worker, after a collection that changed data and every 15
minutes) replaces the rows of `kpis`, `kpi_periods`, `kpi_outcomes` and `kpi_path` with what
collector/kpi.py computes. Grafana's PostgreSQL data source reads the `dxkpi_*_v` views only:
their columns are the contract (grafana/README.md lists them), the tables behind them may
change. Timestamps are unix seconds in the tables (as everywhere in the store) and
`timestamptz` in the views, which is what Grafana's time columns want.

The views exist on PostgreSQL only: Grafana has no SQLite data source. SELECT on them is granted
to the role `dxkpi_readers` when it exists: docker-compose's postgres creates it, with the login
role Grafana uses, before the first migration (grafana/postgres-init/); on a database whose
views came first, running that script afterwards grants them (it is safe to run again).

Written out in full (not from `schema.py`) so this revision stays what it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

READERS = "dxkpi_readers"

# 'R3' for Reiwa years (FY2019 = R1), 'FY2018' before: the label the council report uses.
SHORT_FY = "CASE WHEN {fy} > 2018 THEN 'R' || ({fy} - 2018) ELSE 'FY' || {fy} END"

VIEWS = {
    "dxkpi_kpis_v": """
        SELECT kpi, name_ja, name_en, area, unit, cadence, direction,
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
        SELECT p.kpi, k.name_ja, k.name_en, k.area, k.unit, k.cadence, k.direction,
               to_timestamp(p.period_start) AS period_start,
               to_timestamp(p.period_end) AS period_end,
               p.fiscal_year, {SHORT_FY.format(fy="p.fiscal_year")} AS fiscal_year_short,
               p.label, p.value, p.complete, p.expected, p.baseline_value, p.target_value,
               p.target_fiscal_year, p.progress,
               (p.expected - p.baseline_value)
                 / NULLIF(p.target_value - p.baseline_value, 0) AS expected_progress,
               to_timestamp(p.arrived_at) AS arrived_at,
               to_timestamp(k.computed_at) AS computed_at
        FROM kpi_periods p JOIN kpis k ON k.kpi = p.kpi
    """,
    "dxkpi_kpi_outcomes_v": f"""
        SELECT o.kpi, k.name_ja, k.name_en, k.area, k.unit, k.direction,
               o.target_fiscal_year,
               {SHORT_FY.format(fy="o.target_fiscal_year")} AS target_fiscal_year_short,
               o.target_value, o.outcome, o.final_value, o.final_progress,
               to_timestamp(o.known_at) AS known_at
        FROM kpi_outcomes o JOIN kpis k ON k.kpi = o.kpi
    """,
    "dxkpi_kpi_path_v": f"""
        SELECT t.kpi, k.name_ja, k.name_en, k.unit, t.target_fiscal_year,
               {SHORT_FY.format(fy="t.target_fiscal_year")} AS target_fiscal_year_short,
               to_timestamp(t.at) AS at, t.value
        FROM kpi_path t JOIN kpis k ON k.kpi = t.kpi
    """,
}

# A later migration that recreates a view must run this again: grants go with the view.
GRANT = f"""
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READERS}') THEN
    GRANT SELECT ON {", ".join(VIEWS)} TO {READERS};
  END IF;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "kpis",
        sa.Column("kpi", sa.String(200), primary_key=True),
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
        sa.Column("period_start", sa.Float, primary_key=True),
        sa.Column("period_end", sa.Float, nullable=False),
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("complete", sa.Boolean, nullable=False),
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
        sa.Column("target_fiscal_year", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, body in VIEWS.items():
            op.execute(f"CREATE VIEW {name} AS {body}")
        op.execute(GRANT)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in reversed(VIEWS):
            op.execute(f"DROP VIEW IF EXISTS {name}")
    for table in ("kpi_path", "kpi_outcomes", "kpi_periods", "kpis"):
        op.drop_table(table)
