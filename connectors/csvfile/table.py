"""Layout `table`: one period column, optional label columns, one column per metric."""

from __future__ import annotations

from datetime import date, datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo

from dxkpi.collector.contract import Granularity as G
from dxkpi.collector.contract import MetricSpec, Observation, Window
from dxkpi.collector.errors import excerpt
from dxkpi.collector.fiscal import period_end
from dxkpi.connectors.csvfile.cells import cell_text, parse_number, parse_period_cell
from dxkpi.connectors.csvfile.problems import Problems
from dxkpi.connectors.csvfile.reading import Table, cell_at
from dxkpi.connectors.csvfile.settings import CsvFileSettings

_ORDER = {G.DAY: 0, G.MONTH: 1, G.FISCAL_YEAR: 2}
_NAMES = {G.DAY: "a day", G.MONTH: "a month", G.FISCAL_YEAR: "a fiscal year"}
_FIRST_OF = {G.MONTH: "the first day of a month", G.FISCAL_YEAR: "April 1 (a fiscal year start)"}

_GRANULARITY_BITS = {G.DAY: 0, G.MONTH: 1, G.FISCAL_YEAR: 2}


class SeenKeys:
    """Where each key the store keys an observation by, (metric, labels, period start,
    granularity), was read in this run: a period may not be in two rows or two files.

    Keys and places are packed into ints and each label set is kept once: a backfill reads
    every row of a file, and a tuple key with a `file:row` string cost ~300 bytes a row, this
    ~100. A key's file and row are spelled out only for an error.
    """

    def __init__(self) -> None:
        self.where: dict[int, int] = {}  # key -> file number << 32 | row
        self._label_sets: dict[tuple[tuple[str, str], ...], int] = {}
        self._files: list[str] = []

    def key(self, metric: int, labels: tuple[tuple[str, str], ...], start: date, g: G) -> int:
        label_set = self._label_sets.setdefault(labels, len(self._label_sets))
        return (((label_set << 2 | _GRANULARITY_BITS[g]) << 24 | start.toordinal()) << 16) | metric

    def file(self, name: str) -> int:
        self._files.append(name)
        return len(self._files) - 1

    def place(self, packed: int) -> str:
        return f"{self._files[packed >> 32]}:{packed & 0xFFFFFFFF}"


def table_metrics(settings: CsvFileSettings) -> tuple[MetricSpec, ...]:
    labels = (*settings.labels, *settings.static_labels)
    return tuple(
        MetricSpec(
            name=m.name,
            help=m.help or f"Column {m.column!r} of {settings.path}",
            unit=m.unit,
            labels=labels,
            aggregation=m.aggregation,
        )
        for m in settings.metrics
    )


@lru_cache(maxsize=4096)  # rows of one period repeat per label: parse each cell text once
def _period(cell: object, configured: str) -> tuple[date, G]:
    """The row's period start, checked against the configured granularity."""
    start, found = parse_period_cell(cell)
    if configured == "auto":
        return start, found
    wanted = G(configured)
    if found is wanted:
        return start, wanted
    text = cell_text(cell)
    if _ORDER[found] > _ORDER[wanted]:
        raise ValueError(f"{excerpt(text)} is {_NAMES[found]} but granularity is {wanted.value}")
    if start.day == 1 and (wanted is G.MONTH or start.month == 4):
        return start, wanted
    raise ValueError(
        f"{excerpt(text)} is {_NAMES[found]}, not {_FIRST_OF[wanted]} as granularity "
        f"{wanted.value} needs"
    )


def _overlaps(start: date, granularity: G, window: Window, tz: ZoneInfo) -> bool:
    begins = datetime.combine(start, time(), tzinfo=tz)
    ends = datetime.combine(period_end(start, granularity), time(), tzinfo=tz)
    return begins < window.end and ends > window.start


def read_table(
    table: Table,
    file: str,
    settings: CsvFileSettings,
    window: Window,
    tz: ZoneInfo,
    problems: Problems,
    seen: SeenKeys,
) -> tuple[list[Observation], dict[int, int]]:
    """Validate every row. Return the observations in the window and where each key of the
    file was read (both meaningful only when the file added no problems; the caller adds the
    keys to `seen.where` if it accepts the file). `seen.where` holds the keys of files accepted
    earlier in this run: a period may not be in two files."""
    assert settings.period_column is not None  # the settings model requires it for tables
    period_column = settings.period_column
    wanted = [period_column, *settings.labels.values(), *(m.column for m in settings.metrics)]
    where = table.column_index(wanted)
    static = tuple(settings.static_labels.items())
    kept: list[Observation] = []
    keys: dict[int, int] = {}
    file_number = seen.file(file) << 32
    # One labels dict and one start time per series and period, shared by its observations
    # (observations are immutable once yielded).
    label_dicts: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    starts: dict[date, datetime] = {}
    for row, cells in table.rows:
        try:
            start, granularity = _period(cell_at(cells, where[period_column]), settings.granularity)
        except ValueError as exc:
            problems.row(file, row, f"column {period_column!r}: {exc}")
            continue
        labels = tuple(
            (name, cell_text(cell_at(cells, where[column])))
            for name, column in settings.labels.items()
        )
        whys = [f"column {settings.labels[n]!r} (label {n}) is empty" for n, v in labels if not v]
        in_window = _overlaps(start, granularity, window, tz)
        for number, metric in enumerate(settings.metrics):
            try:
                value = parse_number(
                    cell_at(cells, where[metric.column]), ratio=metric.unit == "ratio"
                )
            except ValueError as exc:
                whys.append(f"column {metric.column!r}: {exc}")
                continue
            if value is None:
                continue  # an empty cell is "not reported", not zero
            series_labels = (*labels, *static)
            key = seen.key(number, series_labels, start, granularity)
            earlier = keys.get(key)
            if earlier is None:
                earlier = seen.where.get(key)
            if earlier is not None:
                whys.append(
                    f"{metric.name} for this period and labels is already in {seen.place(earlier)}"
                )
                continue
            keys[key] = file_number | row
            if in_window:
                shared = label_dicts.get(series_labels)
                if shared is None:
                    shared = label_dicts[series_labels] = dict(series_labels)
                begins = starts.get(start)
                if begins is None:
                    begins = starts[start] = datetime.combine(start, time(), tzinfo=tz)
                kept.append(
                    Observation(
                        metric=metric.name,
                        value=value * metric.scale,
                        start=begins,
                        granularity=granularity,
                        labels=shared,
                    )
                )
        if whys:
            problems.row(file, row, "; ".join(whys))
    return kept, keys
