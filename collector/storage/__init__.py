"""Storage: SQLAlchemy Core tables, Alembic migrations, and the `Store` that writes and reads."""

from collector.storage.store import (
    PeriodPoint,
    SeriesRow,
    SourceHealth,
    Store,
    WriteStats,
    labels_key,
)

__all__ = ["PeriodPoint", "SeriesRow", "SourceHealth", "Store", "WriteStats", "labels_key"]
