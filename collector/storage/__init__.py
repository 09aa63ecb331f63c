"""Storage: SQLAlchemy Core tables, Alembic migrations, and the `Store` that writes and reads
(`store.py`) and keeps runs, cursors and leases (`runs.py`)."""

from dxkpi.collector.storage.revision import SchemaNotCurrentError, require_current_schema
from dxkpi.collector.storage.runs import Gap, OrgAtLimit, OrgShare, SourceHealth
from dxkpi.collector.storage.store import (
    PeriodPoint,
    SeriesRow,
    Store,
    WriteStats,
    labels_key,
)

__all__ = [
    "Gap",
    "OrgAtLimit",
    "OrgShare",
    "PeriodPoint",
    "SchemaNotCurrentError",
    "SeriesRow",
    "SourceHealth",
    "Store",
    "WriteStats",
    "labels_key",
    "require_current_schema",
]
