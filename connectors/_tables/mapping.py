"""A table's rows as observations (csvfile's `table` layout, gsheets): one period column,
optional label columns, one column per metric (see settings.TableColumns). Every row is
validated; a period may not be in two rows, nor in two tables of one run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo

from dxkpi.collector.contract import Granularity as G
from dxkpi.collector.contract import MetricSpec, Observation, Window
from dxkpi.collector.errors import excerpt
from dxkpi.collector.fiscal import period_end
from dxkpi.connectors._tables.cells import cell_text, parse_number, parse_period_cell
from dxkpi.connectors._tables.problems import Problems
from dxkpi.connectors._tables.rows import Table, cell_at
from dxkpi.connectors._tables.settings import TableColumns
from dxkpi.connectors._tables.spool import Duplicate, TableSpool

_ORDER = {G.DAY: 0, G.MONTH: 1, G.FISCAL_YEAR: 2}
_NAMES = {G.DAY: "a day", G.MONTH: "a month", G.FISCAL_YEAR: "a fiscal year"}
_FIRST_OF = {G.MONTH: "the first day of a month", G.FISCAL_YEAR: "April 1 (a fiscal year start)"}


def table_metrics(settings: TableColumns, where: str) -> tuple[MetricSpec, ...]:
    """The metrics declared by `settings`; `where` names the table in default HELP texts."""
    labels = (*settings.labels, *settings.static_labels)
    return tuple(
        MetricSpec(
            name=m.name,
            help=m.help or f"Column {m.column!r} of {where}",
            unit=m.unit,
            labels=labels,
            aggregation=m.aggregation,
        )
        for m in settings.metrics
    )


@lru_cache(maxsize=4096)  # rows of one period repeat per label: parse each cell text once
def period_of(cell: object, configured: str) -> tuple[date, G]:
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


def overlaps(start: date, granularity: G, window: Window, tz: ZoneInfo) -> bool:
    begins = datetime.combine(start, time(), tzinfo=tz)
    ends = datetime.combine(period_end(start, granularity), time(), tzinfo=tz)
    return begins < window.end and ends > window.start


def read_table(
    table: Table,
    file: str,
    settings: TableColumns,
    window: Window,
    tz: ZoneInfo,
    problems: Problems,
    spool: TableSpool,
) -> TableSpool:
    """Validate every row of one file into `spool`: its keys, checked against every key read
    before in this run (a period may not be in two rows or two files), and its values in the
    window. The spool's observations are meaningful only when the file added no problems; the
    caller then accepts the file (`TableSpool.accept`). Memory does not grow with the file."""
    assert settings.period_column is not None  # the settings model requires it for tables
    period_column = settings.period_column
    wanted = [period_column, *settings.labels.values(), *(m.column for m in settings.metrics)]
    where = table.column_index(wanted)
    static = tuple(settings.static_labels.items())
    spool.begin(file)

    def duplicate(found: Duplicate) -> None:
        name = settings.metrics[found.metric].name
        problems.row(
            file, found.row, f"{name} for this period and labels is already in {found.earlier}"
        )

    for row, cells in table.rows:
        try:
            start, granularity = period_of(
                cell_at(cells, where[period_column]), settings.granularity
            )
        except ValueError as exc:
            problems.row(file, row, f"column {period_column!r}: {exc}")
            continue
        labels = tuple(
            (name, cell_text(cell_at(cells, where[column])))
            for name, column in settings.labels.items()
        )
        whys = [f"column {settings.labels[n]!r} (label {n}) is empty" for n, v in labels if not v]
        in_window = overlaps(start, granularity, window, tz)
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
            spool.add(
                row,
                number,
                (*labels, *static),
                start,
                granularity,
                value * metric.scale,
                keep=in_window,
                on_duplicate=duplicate,
            )
        if whys:
            problems.row(file, row, "; ".join(whys))
    spool.flush(duplicate)
    return spool


def spooled_observations(spool: TableSpool, settings: TableColumns) -> Iterator[Observation]:
    """The accepted file's observations, read back from the spool a batch at a time."""
    names = [metric.name for metric in settings.metrics]
    for metric, value, start, granularity, labels in spool.observations():
        yield Observation(
            metric=names[metric], value=value, start=start, granularity=granularity, labels=labels
        )
