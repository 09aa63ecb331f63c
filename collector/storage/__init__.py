"""Storage: SQLAlchemy Core tables, Alembic migrations, and the `Store` that writes and reads."""

from collector.storage.store import Gap, SeriesRow, SourceHealth, Store, WriteStats, labels_key

__all__ = ["Gap", "SeriesRow", "SourceHealth", "Store", "WriteStats", "labels_key"]
