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

from dxkpi.collector.contract import MetricSpec, Observation, Window
from dxkpi.collector.errors import excerpt
from dxkpi.connectors._tables.cells import cell_text, is_blank, parse_moment
from dxkpi.connectors._tables.problems import Problems
from dxkpi.connectors._tables.rows import Table, cell_at
from dxkpi.connectors.csvfile.settings import CsvFileSettings, RunResult, fold

log = logging.getLogger(__name__)

RESULTS: tuple[RunResult, ...] = ("successful", "faulted", "stopped")

RUN_LOG_METRICS = (
    MetricSpec(
        name="rpa_runs",
        help="RPA実行回数 / RPA robot runs started that day, by process and result",
        unit="runs",
        labels=("process", "result"),
        aggregation="sum",
    ),
    MetricSpec(
        name="rpa_time_saved_seconds",
        help="RPA削減時間 / Manual work saved by successful RPA runs: "
        "runs x manual minutes per run x 60",
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
        process = cell_text(cell_at(cells, where[columns.process]))
        whys = [] if process else [f"column {columns.process!r} (the process) is empty"]
        result_text = cell_text(cell_at(cells, where[columns.result]))
        result = results.get(fold(result_text))
        if result is None:
            whys.append(
                f"column {columns.result!r}: unknown result {excerpt(result_text)}; map it in "
                f"result_map to successful, faulted or stopped"
            )
        start_cell = cell_at(cells, where[columns.start])
        start = _moment(start_cell, columns.start, tz, whys)
        end = _moment(cell_at(cells, where[columns.end]), columns.end, tz, whys)
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
                f"the same run ({excerpt(process)}, {start:%Y-%m-%d %H:%M:%S}) is "
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
    """Counts per day, process and result for the days of the window that the logs cover (from
    the first to the last day with a run). Every day, process and result in that span is
    yielded, zeros included, so a corrected or deleted row overwrites the old count; days the
    logs do not reach are left alone rather than reported as days without runs."""
    if not runs:
        return
    counts: Counter[tuple[datetime, str, RunResult]] = Counter()
    for run in runs.values():
        counts[(_midnight(run.start, tz), run.process, run.result)] += 1
    covered = [day for day, _, _ in counts]
    first, last = min(covered), max(covered)
    span = Window(max(window.start, first), min(window.end, last + timedelta(days=1)))
    days = span.days(tz) if span.start < span.end else []
    minutes = {fold(process): m for process, m in settings.manual_minutes_per_run.items()}
    logged = {process for _, process, _ in counts}
    # Processes priced in the config but absent from the logs ran zero times.
    processes = sorted(logged | {p for p in settings.manual_minutes_per_run if p not in logged})
    unpriced = sorted(p for p in processes if fold(p) not in minutes)
    for day in days:
        for process in processes:
            for result in RESULTS:
                count = float(counts[(day, process, result)])
                labels = {"process": process, "result": result}
                yield Observation("rpa_runs", count, day, labels=labels)
            if fold(process) in minutes:
                saved = counts[(day, process, "successful")] * minutes[fold(process)] * 60
                yield Observation("rpa_time_saved_seconds", saved, day, labels={"process": process})
    if unpriced and days:
        # Not an error: the runs still count; time saved needs a figure only a person can give.
        log.warning(
            "no manual_minutes_per_run for %s: rpa_time_saved_seconds is not reported for them",
            ", ".join(unpriced),
        )


def _midnight(moment: datetime, tz: ZoneInfo) -> datetime:
    return moment.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
