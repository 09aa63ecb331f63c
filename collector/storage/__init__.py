"""Storage: SQLAlchemy Core tables, Alembic migrations, and the `Store` that writes and reads
(`store.py`) and keeps runs, cursors and leases (`runs.py`)."""

from collector.storage.runs import Gap, SourceHealth
from collector.storage.store import SeriesRow, Store, WriteStats, labels_key

__all__ = ["Gap", "SeriesRow", "SourceHealth", "Store", "WriteStats", "labels_key"]
