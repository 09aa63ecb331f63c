"""The KPI history tables: written whole by `dxkpi refresh-kpis`, read by SQL (Grafana).

The rows are derived data (collector/kpi.py computes them from the observations), so a refresh
replaces every row in one transaction: a reader sees the previous refresh or the next, never a
mix, and a KPI removed from the config leaves no rows behind. Concurrent refreshes (two workers
finishing collections at once) queue on a table lock instead of colliding on primary keys.

Rows are plain dicts keyed by column name (schema.py); a key that names no column fails the
refresh (SQLAlchemy's bulk insert would drop it silently) instead of going missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, select, text

from dxkpi.collector.storage.schema import kpi_outcomes, kpi_path, kpi_periods, kpis
from dxkpi.collector.storage.store import Store

__all__ = ["KpiHistory", "read_kpi_history", "replace_kpi_history"]

Row = Mapping[str, Any]


@dataclass
class KpiHistory:
    """One refresh's rows, per table."""

    kpis: list[Row] = field(default_factory=list)
    periods: list[Row] = field(default_factory=list)
    outcomes: list[Row] = field(default_factory=list)
    path: list[Row] = field(default_factory=list)

    def tables(self) -> list[tuple[Table, list[Row]]]:
        # Parents first for inserts; the views join children to `kpis`.
        return [
            (kpis, self.kpis),
            (kpi_periods, self.periods),
            (kpi_outcomes, self.outcomes),
            (kpi_path, self.path),
        ]


def replace_kpi_history(store: Store, history: KpiHistory) -> None:
    """Replace every row of the KPI history tables with `history`, atomically."""
    tables = history.tables()
    for table, rows in tables:
        for row in rows:
            if unknown := row.keys() - table.c.keys():
                raise ValueError(f"{table.name} has no column {', '.join(sorted(unknown))}")
    with store.engine.begin() as connection:
        if store.dialect == "postgresql":
            # SHARE ROW EXCLUSIVE: one refresh at a time; readers (SELECT) never wait.
            names = ", ".join(table.name for table, _ in tables)
            connection.execute(text(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE"))
        for table, _ in reversed(tables):
            connection.execute(delete(table))
        for table, rows in tables:
            if rows:
                connection.execute(table.insert(), [dict(row) for row in rows])


def read_kpi_history(store: Store) -> KpiHistory:
    """What the last refresh stored, ordered by KPI and time."""
    history = KpiHistory()
    order = {
        "kpis": (kpis.c.kpi, kpis.c.org),
        "kpi_periods": (kpi_periods.c.kpi, kpi_periods.c.org, kpi_periods.c.period_start),
        "kpi_outcomes": (kpi_outcomes.c.kpi, kpi_outcomes.c.org, kpi_outcomes.c.target_fiscal_year),
        "kpi_path": (
            kpi_path.c.kpi,
            kpi_path.c.org,
            kpi_path.c.target_fiscal_year,
            kpi_path.c.at,
        ),
    }
    with store.engine.connect() as connection:
        for table, rows in history.tables():
            query = select(table).order_by(*order[table.name])
            rows.extend(dict(row._mapping) for row in connection.execute(query))
    return history
