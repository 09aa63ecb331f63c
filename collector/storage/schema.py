"""The store's tables (SQLAlchemy Core). All timestamps are unix seconds (UTC) so that SQLite and
PostgreSQL behave alike and bulk writes need no datetime conversion.

series          one row per (source, metric, labels); keeps the latest period's value so the
                exporter never scans history to find it.
observations    one row per (series, period start, granularity): the idempotency key.
revisions       filled by a database trigger whenever a stored value changes (old, new, when).
collection_runs every run of a source: window, timing, status, error, observations written.
source_state    per source: cursor, opaque checkpoint, lease, and a change counter the exporter
                polls to know when to rebuild its snapshot.
kpis, kpi_periods, kpi_outcomes, kpi_path
                the KPI figures as `dxkpi refresh-kpis` last computed them (collector/kpi.py):
                one row per KPI, per reported period, per ended target period, per point of
                each target's path. Derived data, replaced whole on every refresh, so that SQL
                (Grafana's PostgreSQL data source, through the views of migration 0003) can
                chart the plan's whole history. Nothing in dxkpi reads them back to compute.
received_events every webhook event stored, by the vendor's event id (idempotency).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
Id = BigInteger().with_variant(Integer(), "sqlite")

series = Table(
    "series",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(128), nullable=False),
    # The organisation of the source (migration 0005), for SQL readers; KPIs read it from config.
    Column("org", String(64), nullable=False, server_default="default"),
    Column("metric", String(200), nullable=False),
    # Canonical JSON of the labels (sorted keys), so equal label sets compare equal as text.
    Column("labels", Text, nullable=False),
    Column("last_start", BigInteger),
    Column("last_value", Float),
    UniqueConstraint("source", "metric", "labels", name="uq_series_identity"),
    Index("ix_series_org", "org"),
)

observations = Table(
    "observations",
    metadata,
    # No foreign key: ids come from the store's own series upsert, and a per-row FK check
    # costs bulk ingest about a quarter of its speed (bench/). Migration 0002 drops it.
    Column("series_id", Id, primary_key=True),
    Column("period_start", BigInteger, primary_key=True),
    Column("granularity", String(16), primary_key=True),
    Column("value", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("run_id", BigInteger),
)

revisions = Table(
    "revisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("series_id", Id, nullable=False),
    Column("period_start", BigInteger, nullable=False),
    Column("granularity", String(16), nullable=False),
    Column("old_value", Float, nullable=False),
    Column("new_value", Float, nullable=False),
    Column("revised_at", Float, nullable=False),
    Column("run_id", BigInteger),
    Index("ix_revisions_series", "series_id", "period_start"),
)

collection_runs = Table(
    "collection_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_end", Float, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("error_class", String(200)),
    Column("error_message", Text),
    Column("observations_written", BigInteger, nullable=False, default=0),
    Index("ix_runs_source_started", "source", "started_at"),
)

source_state = Table(
    "source_state",
    metadata,
    Column("source", String(128), primary_key=True),
    Column("cursor_end", Float),
    Column("checkpoint", Text),
    Column("lease_holder", String(200)),
    Column("lease_expires", Float),
    Column("generation", BigInteger, nullable=False, default=0),
)

kpis = Table(
    "kpis",
    metadata,
    Column("kpi", String(200), primary_key=True),
    # The KPI's organisation, or a roll-up's label (`rollup` true); migration 0005.
    Column("org", String(64), primary_key=True, server_default="default"),
    Column("rollup", Boolean, nullable=False, server_default="0"),
    Column("name_ja", Text, nullable=False),
    Column("name_en", Text, nullable=False),
    Column("area", String(200), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("cadence", String(16), nullable=False),
    Column("direction", Integer, nullable=False),  # +1 up, -1 down
    Column("value", Float),
    Column("period_label", String(32)),
    Column("period_end", Float),
    Column("baseline_value", Float, nullable=False),
    Column("baseline_fiscal_year", Integer, nullable=False),
    Column("target_value", Float, nullable=False),
    Column("target_fiscal_year", Integer, nullable=False),
    Column("target_end", Float, nullable=False),
    Column("target_period_ended", Boolean, nullable=False),
    Column("expected_value", Float, nullable=False),
    Column("progress", Float),
    Column("expected_progress", Float, nullable=False),
    Column("forecast", Float),
    Column("on_track", Boolean),
    Column("stalled", Boolean, nullable=False),
    Column("last_change_at", Float),
    Column("next_data_due_at", Float),
    Column("status", String(16), nullable=False),
    Column("as_of", Float, nullable=False),
    Column("computed_at", Float, nullable=False),
)

kpi_periods = Table(
    "kpi_periods",
    metadata,
    Column("kpi", String(200), primary_key=True),
    Column("org", String(64), primary_key=True, server_default="default"),
    Column("period_start", Float, primary_key=True),
    Column("period_end", Float, nullable=False),
    Column("fiscal_year", Integer, nullable=False),
    Column("label", String(32), nullable=False),
    Column("value", Float),
    Column("complete", Boolean, nullable=False),
    # A roll-up's period: the member organisations that have not reported it (comma-separated).
    Column("missing", Text),
    Column("expected", Float, nullable=False),
    Column("baseline_value", Float, nullable=False),
    Column("target_value", Float, nullable=False),
    Column("target_fiscal_year", Integer, nullable=False),
    Column("progress", Float),
    Column("arrived_at", Float),
)

kpi_outcomes = Table(
    "kpi_outcomes",
    metadata,
    Column("kpi", String(200), primary_key=True),
    Column("org", String(64), primary_key=True, server_default="default"),
    Column("target_fiscal_year", Integer, primary_key=True),
    Column("target_value", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("final_value", Float),
    Column("final_progress", Float),
    Column("known_at", Float),
)

kpi_path = Table(
    "kpi_path",
    metadata,
    Column("kpi", String(200), primary_key=True),
    Column("org", String(64), primary_key=True, server_default="default"),
    Column("target_fiscal_year", Integer, primary_key=True),
    Column("at", Float, primary_key=True),
    Column("value", Float, nullable=False),
)

# The revision log is kept by the database itself, so no writer can bypass it.
REVISION_TRIGGERS = {
    "postgresql": [
        """
        CREATE OR REPLACE FUNCTION dxkpi_log_revision() RETURNS trigger AS $$
        BEGIN
          IF NEW.value IS DISTINCT FROM OLD.value THEN
            INSERT INTO revisions
              (series_id, period_start, granularity, old_value, new_value, revised_at, run_id)
            VALUES (OLD.series_id, OLD.period_start, OLD.granularity, OLD.value, NEW.value,
                    NEW.updated_at, NEW.run_id);
          END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql
        """,
        """
        CREATE TRIGGER observations_revision AFTER UPDATE OF value ON observations
        FOR EACH ROW EXECUTE FUNCTION dxkpi_log_revision()
        """,
    ],
    "sqlite": [
        """
        CREATE TRIGGER observations_revision AFTER UPDATE OF value ON observations
        FOR EACH ROW WHEN NEW.value IS NOT OLD.value
        BEGIN
          INSERT INTO revisions
            (series_id, period_start, granularity, old_value, new_value, revised_at, run_id)
          VALUES (OLD.series_id, OLD.period_start, OLD.granularity, OLD.value, NEW.value,
                  NEW.updated_at, NEW.run_id);
        END
        """,
    ],
}

DROP_REVISION_TRIGGERS = {
    "postgresql": [
        "DROP TRIGGER IF EXISTS observations_revision ON observations",
        "DROP FUNCTION IF EXISTS dxkpi_log_revision()",
    ],
    "sqlite": ["DROP TRIGGER IF EXISTS observations_revision"],
}

# One row per vendor event a webhook stored (migration 0004): a redelivery finds its id here.
received_events = Table(
    "received_events",
    metadata,
    Column("source", String(128), primary_key=True),
    Column("event_id", String(400), primary_key=True),
    Column("kind", String(100), nullable=False),
    Column("occurred_at", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("observations", Integer, nullable=False),
    Index("ix_received_events_received", "received_at"),
)
