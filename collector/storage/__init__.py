"""Storage: SQLAlchemy Core tables, Alembic migrations, and the `Store` that writes and reads."""

from collector.storage.revision import SchemaNotCurrentError, require_current_schema
from collector.storage.store import (
    PeriodPoint,
    SeriesRow,
    SourceHealth,
    Store,
    WriteStats,
    labels_key,
)

__all__ = [
    "PeriodPoint",
    "SchemaNotCurrentError",
    "SeriesRow",
    "SourceHealth",
    "Store",
    "WriteStats",
    "labels_key",
    "require_current_schema",
]
