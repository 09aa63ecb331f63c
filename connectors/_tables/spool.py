"""Scratch space on disk for one run of a `table` source, so that memory does not grow with the
size of the files: the keys already read (a period may not be in two rows or two files) and the
observations of the file being read, held until the whole file has been validated.

It is a private temporary SQLite database (stdlib `sqlite3`, empty file name): SQLite keeps at
most `cache_size` of it in memory and the rest in a file it deletes when closed. Rows go in by
batches; the duplicate check is one `INSERT OR IGNORE` per batch, and only a batch that hit a
duplicate is looked at row by row to say which rows repeat which.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from types import TracebackType
from zoneinfo import ZoneInfo

from dxkpi.collector.contract import Granularity as G

# Rows buffered before they go to SQLite, and observations read back at a time.
BATCH = 20_000
# SQLite's page cache, in KiB (a negative cache_size is KiB).
CACHE_KIB = 8192

_GRANULARITIES = (G.DAY, G.MONTH, G.FISCAL_YEAR)
_BITS = {g: bit for bit, g in enumerate(_GRANULARITIES)}

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Duplicate:
    row: int
    metric: int
    earlier: str  # file:row


class TableSpool:
    """Keys and pending observations of one run; see the module docstring.

    A key is (series, period, metric): series numbers a label set (label sets are few, a KPI
    table's rows many, so they are kept in memory), the period is packed with its granularity.
    """

    def __init__(self, tz: ZoneInfo) -> None:
        self._tz = tz
        self._db = sqlite3.connect("", check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            "CREATE TABLE keys (series INTEGER, k INTEGER, place INTEGER, "
            "PRIMARY KEY (series, k)) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE pending (metric INTEGER, value REAL, k INTEGER, series INTEGER)"
        )
        self._series: dict[Labels, int] = {}
        self._labels: list[dict[str, str]] = []
        self._files: list[str] = []
        self._accepted = True
        self._keys: list[tuple[int, int, int]] = []
        self._pending: list[tuple[int, float, int, int]] = []
        self._starts: dict[int, datetime] = {}

    def __enter__(self) -> TableSpool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._db.close()

    # -- one file ---------------------------------------------------------------------------

    def begin(self, file: str) -> None:
        """Start a file; the previous one's keys are dropped unless it was accepted."""
        if not self._accepted:
            number = len(self._files) - 1
            self._db.execute(
                "DELETE FROM keys WHERE place >= ? AND place < ?",
                (number << 32, (number + 1) << 32),
            )
        self._keys.clear()
        self._pending.clear()
        self._db.execute("DELETE FROM pending")
        self._db.commit()
        self._files.append(file)
        self._accepted = False

    def add(
        self,
        row: int,
        metric: int,
        labels: Labels,
        start: date,
        granularity: G,
        value: float,
        *,
        keep: bool,
        on_duplicate: Callable[[Duplicate], None],
    ) -> None:
        """One value of the current file; `keep` it (it is in the window) for `observations`."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = len(self._labels)
            self._labels.append(dict(labels))
        k = ((_BITS[granularity] << 24 | start.toordinal()) << 16) | metric
        place = (len(self._files) - 1) << 32 | row
        self._keys.append((series, k, place))
        if keep:
            self._pending.append((metric, value, k, series))
        if len(self._keys) >= BATCH:
            self.flush(on_duplicate)

    def flush(self, on_duplicate: Callable[[Duplicate], None]) -> None:
        """Check the buffered keys against every key kept so far; call `on_duplicate` for each
        repeat (the first one read stays)."""
        db = self._db
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO keys VALUES (?, ?, ?)", self._keys)
        if db.total_changes - before < len(self._keys):
            for series, k, place in self._keys:
                found = db.execute(
                    "SELECT place FROM keys WHERE series = ? AND k = ?", (series, k)
                ).fetchone()
                if found[0] != place:
                    on_duplicate(Duplicate(place & 0xFFFFFFFF, k & 0xFFFF, self._place(found[0])))
        db.executemany("INSERT INTO pending VALUES (?, ?, ?, ?)", self._pending)
        db.commit()
        self._keys.clear()
        self._pending.clear()

    def accept(self) -> None:
        """The current file is good: its keys stay, its observations may be read."""
        self._accepted = True

    def observations(self) -> Iterator[tuple[int, float, datetime, G, dict[str, str]]]:
        """The current file's kept values as (metric, value, start, granularity, labels), in
        the order they were read, a batch at a time. Labels dicts and start times are shared."""
        cursor = self._db.execute("SELECT metric, value, k, series FROM pending ORDER BY rowid")
        while batch := cursor.fetchmany(BATCH):
            for metric, value, k, series in batch:
                period = k >> 16
                yield (
                    metric,
                    value,
                    self._start(period),
                    _GRANULARITIES[period >> 24],
                    (self._labels[series]),
                )

    def _start(self, period: int) -> datetime:
        begins = self._starts.get(period)
        if begins is None:
            day = date.fromordinal(period & 0xFFFFFF)
            begins = self._starts[period] = datetime.combine(day, time(), tzinfo=self._tz)
        return begins

    def _place(self, packed: int) -> str:
        return f"{self._files[packed >> 32]}:{packed & 0xFFFFFFFF}"
