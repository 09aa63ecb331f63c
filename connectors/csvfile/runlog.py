"""Layout `rpa_run_log`: one row per robot run, as RPA tools without an API (WinActor) export.

Runs are counted per day of their start (in the source's timezone), process and result, under
the same metric names and labels as the UiPath connector, so dashboards cover both.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from collector.contract import MetricSpec, Observation, Window
from connectors.csvfile.cells import cell_text, is_blank, parse_moment
from connectors.csvfile.problems import Problems
from connectors.csvfile.reading import Table
from connectors.csvfile.settings import CsvFileSettings, RunResult, fold

log = logging.getLogger(__name__)

RESULTS: tuple[RunResult, ...] = ("successful", "faulted", "stopped")

RUN_LOG_METRICS = (
    MetricSpec(
        name="rpa_runs",
        help="RPA robot runs started that day, by process and result",
        unit="runs",
        labels=("process", "result"),
        aggregation="sum",
    ),
    MetricSpec(
        name="rpa_time_saved_seconds",
        help="Manual work saved by successful RPA runs: runs x manual minutes per run x 60",
        unit="seconds",
        labels=("process",),
        aggregation="sum",
    ),
)


@dataclass(frozen=True, slots=True)
class Run:
    process: str
    start: datetime
    result: RunResult
    where: str


RunKey = tuple[str, datetime]


def read_runs(
    table: Table,
    file: str,
    settings: CsvFileSettings,
    tz: ZoneInfo,
    problems: Problems,
    seen: Mapping[RunKey, Run],
) -> dict[RunKey, Run]:
    """Validate every row; return the file's runs not already in `seen` (meaningful only when
    the file added no problems). A run is its process and start time: the same run in two
    overlapping exports counts once, but with two different results it is an error."""
    columns = settings.columns
    where = table.column_index([columns.process, columns.start, columns.end, columns.result])
    results = settings.result_lookup()
    runs: dict[RunKey, Run] = {}
    for row, cells in table.rows:
        padded = [*cells, *[None] * (len(table.header) - len(cells))]
        process = cell_text(padded[where[columns.process]])
        whys = [] if process else [f"column {columns.process!r} (the process) is empty"]
        result_text = cell_text(padded[where[columns.result]])
        result = results.get(fold(result_text))
        if result is None:
            whys.append(
                f"column {columns.result!r}: unknown result {result_text!r}; map it in "
                f"result_map to successful, faulted or stopped"
            )
        start_cell = padded[where[columns.start]]
        start = _moment(start_cell, columns.start, tz, whys)
        end = _moment(padded[where[columns.end]], columns.end, tz, whys)
        if is_blank(start_cell):
            whys.append(f"column {columns.start!r} (the start time) is empty")
        elif start is not None and end is not None and end < start:
            whys.append(f"the run ends ({end:%Y-%m-%d %H:%M}) before it starts ({start:%H:%M})")
        if whys or start is None or result is None:
            problems.row(file, row, "; ".join(whys))
            continue
        run = Run(process, start, result, f"{file}:{row}")
        earlier = runs.get((process, start)) or seen.get((process, start))
        if earlier is None:
            runs[(process, start)] = run
        elif earlier.result != result:
            problems.row(
                file,
                row,
                f"the same run ({process}, {start:%Y-%m-%d %H:%M:%S}) is "
                f"{earlier.result} in {earlier.where} but {result} here",
            )
    return runs


def _moment(cell: object, column: str, tz: ZoneInfo, whys: list[str]) -> datetime | None:
    try:
        return parse_moment(cell, tz)
    except ValueError as exc:
        whys.append(f"column {column!r}: {exc}")
        return None


def run_observations(
    runs: Mapping[RunKey, Run], settings: CsvFileSettings, window: Window, tz: ZoneInfo
) -> Iterator[Observation]:
    """Counts per day, process and result for the days the window touches. Every result of a
    (day, process) is yielded, zeros included, so a corrected row overwrites the old count."""
    counts: Counter[tuple[datetime, str, RunResult]] = Counter()
    processes_by_day: dict[datetime, set[str]] = {}
    for run in runs.values():
        day = run.start.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        if day < window.end and day + timedelta(days=1) > window.start:
            counts[(day, run.process, run.result)] += 1
            processes_by_day.setdefault(day, set()).add(run.process)
    minutes = {fold(process): m for process, m in settings.manual_minutes_per_run.items()}
    unpriced: set[str] = set()
    for day in sorted(processes_by_day):
        for process in sorted(processes_by_day[day]):
            for result in RESULTS:
                yield Observation(
                    "rpa_runs",
                    float(counts[(day, process, result)]),
                    day,
                    labels={"process": process, "result": result},
                )
            per_run = minutes.get(fold(process))
            if per_run is None:
                unpriced.add(process)
                continue
            saved = counts[(day, process, "successful")] * per_run * 60
            yield Observation("rpa_time_saved_seconds", saved, day, labels={"process": process})
    if unpriced:
        # Not an error: the runs still count; time saved needs a figure only a person can give.
        log.warning(
            "no manual_minutes_per_run for %s: rpa_time_saved_seconds is not reported for them",
            ", ".join(sorted(unpriced)),
        )
