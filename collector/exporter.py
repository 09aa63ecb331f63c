"""The exporter: serves `/metrics` from a snapshot of stored state, `/healthz`, and the KPI
board page at `/` (collector/board.py), rendered with each snapshot from the same figures.

Metric families are built from the store, never set from workers. A background thread polls
each source's change counter (one small query) every `refresh_interval` and rebuilds the
snapshot only when a counter moved (or every `max_age`, since the KPI path moves with the
calendar). A scrape hands out the last rendered bytes: its cost does not grow with history.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dxkpi.collector.board import LANGS, Board, render_board
from dxkpi.collector.config import LoadedConfig
from dxkpi.collector.exposition import (
    Chunk,
    Family,
    SeriesFamily,
    SeriesRenderer,
    chunk_parts,
    join_chunks,
    label_part,
)
from dxkpi.collector.kpi import KpiCalculator, KpiState
from dxkpi.collector.redact import redact
from dxkpi.collector.storage import SeriesRow, SourceHealth, Store
from dxkpi.collector.storage.notify import ChangeWaiter
from dxkpi.collector.webserver import make_server as make_server  # where it always was

log = logging.getLogger("dxkpi.exporter")

CACHED = "Cached: rebuilt from the store when new observations land."
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")


# A scrape's body is joined and sent this many chunk parts (about 100 kB) at a time: a scrape
# copies its bytes once, as a whole-body join would, but never holds a body-sized copy (tens of
# MB at 100k series, and one per concurrent scrape).
_PARTS_PER_PIECE = 32


@dataclass
class Snapshot:
    """The rendered families. Sample lines are kept once and shared by both formats; a scrape
    joins them piece by piece as it sends them (a byte join: a millisecond at 100k series)."""

    chunks: list[Chunk]
    built_at: float
    generations: dict[str, int]
    # Runs shown abandoned (their lease expired) when built: a lease expiring changes no counter.
    dead_runs: int = 0
    # The board page (`/`) per language, rendered with the snapshot from the same figures.
    board: dict[str, bytes] = field(default_factory=dict)
    _gzipped: dict[bool, bytes] = field(default_factory=dict)

    @property
    def text(self) -> bytes:
        return join_chunks(self.chunks)

    @property
    def openmetrics(self) -> bytes:
        return join_chunks(self.chunks, openmetrics=True)

    def body(self, *, openmetrics: bool, gzipped: bool) -> bytes:
        if not gzipped:
            return join_chunks(self.chunks, openmetrics=openmetrics)
        if openmetrics not in self._gzipped:
            # Compressed as it is joined: no whole uncompressed body in memory at once.
            compressor = zlib.compressobj(1, wbits=16 + zlib.MAX_WBITS)  # gzip framing
            pieces = [compressor.compress(p) for p in self.pieces(openmetrics=openmetrics)]
            self._gzipped[openmetrics] = b"".join([*pieces, compressor.flush()])
        return self._gzipped[openmetrics]

    def length(self, *, openmetrics: bool) -> int:
        return sum(map(len, chunk_parts(self.chunks, openmetrics=openmetrics)))

    def pieces(self, *, openmetrics: bool) -> Iterator[bytes]:
        """The uncompressed body in consecutive pieces: what a scrape sends."""
        parts = chunk_parts(self.chunks, openmetrics=openmetrics)
        for start in range(0, len(parts), _PARTS_PER_PIECE):
            yield b"".join(parts[start : start + _PARTS_PER_PIECE])


class SnapshotBuilder:
    """Builds metric families from the store and renders them, keeping the raw series' rendered
    lines between builds: a rebuild formats again only the blocks of series whose value changed."""

    def __init__(self, store: Store, loaded: LoadedConfig) -> None:
        self.store = store
        self.loaded = loaded
        self.kpis = KpiCalculator(store, loaded.config)
        self.renderer = SeriesRenderer()

    def build(self, now: float) -> tuple[list[Chunk], dict[str, bytes]]:
        """The rendered families and the board page in each language, from one read of the
        store: the page and /metrics always show the same figures."""
        rows = self.store.series_rows()
        states = self.kpis.compute_all(now, rows)
        health = self.store.source_health()
        config = self.loaded.config
        board = Board(states, health, config.sources, now, config.tz, config)
        pages: dict[str, bytes] = {lang: render_board(board, lang) for lang in LANGS}
        return self.renderer.render(self.families(now, rows, states, health)), pages

    def families(
        self,
        now: float,
        rows: list[SeriesRow],
        states: list[KpiState],
        health: list[SourceHealth],
    ) -> list[Family | SeriesFamily]:
        return [
            *kpi_families(states),
            *self.source_families({h.source: h for h in health}),
            *self.raw_families(rows, now),
            Family(
                "dxkpi_snapshot_timestamp_seconds",
                "gauge",
                "When this snapshot was built.",
                [("", now)],
            ),
        ]

    def source_families(self, health: dict[str, SourceHealth]) -> list[Family]:
        up = Family("dxkpi_source_up", "gauge", "1 if the source's last run succeeded, else 0.")
        last_success = Family(
            "dxkpi_source_last_success_timestamp_seconds",
            "gauge",
            "When the source's last successful run finished.",
        )
        duration = Family(
            "dxkpi_source_last_run_duration_seconds",
            "gauge",
            "How long the last finished run took.",
        )
        runs = Family(
            "dxkpi_source_runs_total", "counter", "Finished runs of the source by status."
        )
        interval = Family(
            "dxkpi_source_interval_seconds", "gauge", "The source's schedule interval."
        )
        gaps = Family(
            "dxkpi_source_gaps",
            "gauge",
            "Backfill windows of the source that failed for good and are not read since.",
        )
        for source in self.loaded.config.sources:
            labels = {"source": source.id, "org": source.org}
            interval.add(labels, source.schedule.interval().total_seconds())
            h = health.get(source.id)
            gaps.add(labels, h.gaps if h else 0)
            counts = dict(h.runs_by_status) if h else {}
            counts.pop("running", None)
            for status in sorted({"success", "failed", *counts}):
                runs.add({**labels, "status": status}, counts.get(status, 0))
            if h is None or h.last_status is None:
                continue
            up.add(labels, 1.0 if h.last_status == "success" else 0.0)
            if h.last_success_at is not None:
                last_success.add(labels, h.last_success_at)
            if h.last_finished_at is not None and h.last_started_at is not None:
                duration.add(labels, h.last_finished_at - h.last_started_at)
        return [up, last_success, duration, runs, interval, gaps]

    def raw_families(self, rows: list[SeriesRow], now: float) -> list[SeriesFamily]:
        """Each stored metric's latest period, and for summable metrics the fiscal-year-to-date
        and month-to-date sums (exact totals for reports, not rebuilt from daily gauges)."""
        families: dict[str, SeriesFamily] = {}
        org_of = self.kpis.org_of
        by_id: dict[int, SeriesRow] = {}
        parts: dict[int, str] = {}  # this build's only: a series is in up to three families

        def labels(series_id: int) -> str:
            # Asked only for series the last render did not have: all of them on the first one.
            part = parts.get(series_id)
            if part is None:
                if not by_id:
                    by_id.update((row.id, row) for row in rows)
                row = by_id[series_id]
                names = {_LABEL_NAME.sub("_", k): v for k, v in row.labels.items()}
                org = org_of.get(row.source, row.org)
                part = parts[series_id] = label_part({**names, "source": row.source, "org": org})
            return part

        specs = self.loaded.metric_specs
        calendar = self.kpis
        starts = {
            "fiscal_year_to_date": calendar.fy_start(calendar.fiscal_year(now)),
            "month_to_date": calendar.month_start(now),
        }
        sums = {suffix: self.store.period_sums(int(start)) for suffix, start in starts.items()}
        for row in rows:
            if row.last_value is None:
                continue
            spec = specs.get(row.source, {}).get(row.metric)
            help_text = f"{spec.help} Unit: {spec.unit}." if spec else row.metric
            self._sample(
                families, labels, row, "", f"{help_text} Latest period's value.", row.last_value
            )
            if spec is None or spec.aggregation != "sum":
                continue
            for suffix, totals in sums.items():
                what = suffix.replace("_", " ").replace("to date", "so far")
                self._sample(
                    families,
                    labels,
                    row,
                    f"_{suffix}",
                    f"{help_text} Sum over this {what}.",
                    totals.get(row.id, 0.0),
                )
        return [families[name] for name in sorted(families)]

    @staticmethod
    def _sample(
        families: dict[str, SeriesFamily],
        labels: Callable[[int], str],
        row: SeriesRow,
        suffix: str,
        help_text: str,
        value: float,
    ) -> None:
        name = f"dxkpi_{row.metric}{suffix}"
        family = families.get(name)
        if family is None:
            family = families[name] = SeriesFamily(name, f"{help_text} {CACHED}", labels)
        family.add(row.id, value)


def kpi_families(states: list[KpiState]) -> list[Family]:
    """The KPI gauges. Every figure is about one reported period (see collector/kpi.py) and in
    the KPI's own unit (dxkpi_kpi_info's `unit` label); timestamps are unix seconds."""
    families: list[Family] = []

    def family(name: str, help_text: str) -> Family:
        made = Family(f"dxkpi_kpi_{name}", "gauge", f"{help_text} {CACHED}")
        families.append(made)
        return made

    value = family(
        "value",
        "The figure of the KPI's latest complete reported period (a fiscal year's total, a "
        "month's value; a continuous KPI's newest level); absent without one.",
    )
    period_start = family("period_start_timestamp_seconds", "Start of the period the value is of.")
    period_end = family("period_end_timestamp_seconds", "End of the period the value is of.")
    running = family(
        "running_period_value",
        "Partial figure of the period under way (e.g. fiscal year to date); not comparable "
        "with the target until the period is complete.",
    )
    running_end = family("running_period_end_timestamp_seconds", "End of the period under way.")
    baseline = family("baseline_value", "Baseline of the current target's path.")
    target = family("target_value", "The current target (the first whose fiscal year is not over).")
    baseline_ts = family("baseline_timestamp_seconds", "End of the baseline fiscal year.")
    target_ts = family("target_timestamp_seconds", "End of the current target's fiscal year.")
    ended = family(
        "target_period_ended",
        "1 once the current target's fiscal year is over (its outcome: dxkpi_kpi_target_outcome).",
    )
    direction = family("direction", "+1 if the KPI should rise, -1 if it should fall.")
    progress = family(
        "progress_ratio",
        "Progress of the reported period's figure from baseline (0) to target (1).",
    )
    expected = family("expected_value", "The path's value at the end of the reported period.")
    expected_progress = family(
        "expected_progress_ratio",
        "The progress the path expects at the end of the reported period.",
    )
    forecast = family(
        "forecast_value",
        "The figure expected for the target year (Theil-Sen trend of reported periods); the "
        "target year's figure once known.",
    )
    track = family("on_track", "1 if the forecast meets the target, else 0.")
    last_change = family(
        "last_change_timestamp_seconds",
        "End of the reported period in which the KPI last moved in its good direction (the "
        "first period's end when it never did).",
    )
    stalled = family(
        "stalled",
        "1 if the KPI made no good move in its last stall_periods reported periods (continuous "
        "KPIs: for stall_after up to its newest data), else 0.",
    )
    without = family(
        "periods_without_improvement",
        "Latest reported periods in a row without a move in the good direction.",
    )
    stall_periods = family(
        "stall_periods", "Reported periods without a good move that count as a stall."
    )
    stall_after = family(
        "stall_after_seconds", "Continuous KPIs: how long without a good move counts as a stall."
    )
    due = family(
        "next_data_due_timestamp_seconds",
        "When the KPI's next figure is due (its data period's end plus publication_lag).",
    )
    outcome = family(
        "target_outcome",
        "1 per ended target period, labelled with its outcome: achieved, missed, or pending "
        "until the target year's figure arrives.",
    )
    final_progress = family(
        "target_final_progress_ratio", "Progress of the target year's figure, per ended target."
    )
    outcome_ts = family(
        "target_outcome_timestamp_seconds", "When the target year's figure arrived."
    )
    members = family(
        "rollup_organisations", "Roll-ups: how many organisations the rolled-up figure adds up."
    )
    rollup_complete = family(
        "rollup_complete",
        "Roll-ups: 1 when every member organisation reported every ended period that any "
        "member reported after the reported one, else 0 (the value stays at the last period "
        "all reported).",
    )
    missing = family(
        "rollup_missing_organisations",
        "Roll-ups: member organisations that have not reported the newest period others did.",
    )
    member_missing = family(
        "rollup_member_missing",
        "Roll-ups: 1 per member organisation (label member) missing from that period.",
    )
    incomplete_end = family(
        "rollup_incomplete_period_end_timestamp_seconds",
        "Roll-ups: end of the newest period some members reported and others have not.",
    )
    info = Family(
        "dxkpi_kpi_info",
        "info",
        "The KPI's names (Japanese and English), area, unit and cadence; org is the "
        "organisation or the roll-up's label.",
    )
    families.append(info)
    for state in states:
        kpi = state.kpi
        labels = {"kpi": kpi.id, "org": state.org}
        if state.rollup is not None:
            members.add(labels, len(state.rollup.members))
            rollup_complete.add(labels, 1.0 if state.rollup.complete else 0.0)
            missing.add(labels, len(state.rollup.missing))
            for member in state.rollup.missing:
                member_missing.add({**labels, "member": member}, 1.0)
            if state.rollup.incomplete is not None:
                incomplete_end.add(labels, state.rollup.incomplete.end)
        info.add(
            {
                **labels,
                "name_ja": kpi.name_ja,
                "name_en": kpi.name_en,
                "area": kpi.area,
                "unit": kpi.unit,
                "cadence": state.cadence,
            },
            1.0,
        )
        direction.add(labels, state.direction)
        plan = state.plan_applies
        if plan:
            # A member's part of a summed roll-up has figures but no plan of its own: no
            # target, progress, path, forecast or outcome, so no plan alert fires on it.
            baseline.add(labels, state.baseline_value)
            target.add(labels, state.target.value)
            baseline_ts.add(labels, state.baseline_ts)
            target_ts.add(labels, state.target_ts)
            ended.add(labels, 1.0 if state.target_period_ended else 0.0)
            expected.add(labels, state.expected_value)
            expected_progress.add(labels, state.expected_progress)
        if state.stall_after is not None:
            stall_after.add(labels, state.stall_after.total_seconds())
        else:
            stall_periods.add(labels, kpi.stall_periods)
            if state.value is not None:
                without.add(labels, state.periods_without_improvement)
        optional = (
            (value, state.value),
            (period_start, state.period_start),
            (period_end, state.period_end),
            (running, state.running_value),
            (running_end, state.running_period_end),
            (progress, state.progress if plan else None),
            (forecast, state.forecast if plan else None),
            (last_change, state.last_change_ts),
            (due, state.next_data_due_ts),
        )
        for gauge, sample in optional:
            if sample is not None:
                gauge.add(labels, sample)
        if state.value is not None:
            stalled.add(labels, 1.0 if state.stalled else 0.0)
        if state.on_track is not None and plan:
            track.add(labels, 1.0 if state.on_track else 0.0)
        for result in state.outcomes if plan else ():
            year = {**labels, "target_fiscal_year": f"FY{result.fiscal_year}"}
            outcome.add({**year, "outcome": result.outcome}, 1.0)
            if result.final_progress is not None:
                final_progress.add(year, result.final_progress)
            if result.known_at is not None:
                outcome_ts.add(year, result.known_at)
    return families


class Exporter:
    """Holds the current snapshot and keeps it fresh from a background thread."""

    def __init__(
        self,
        store: Store,
        loaded: LoadedConfig,
        *,
        refresh_interval: float | None = None,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.builder = SnapshotBuilder(store, loaded)
        self.refresh_interval = (
            refresh_interval
            if refresh_interval is not None
            else loaded.config.exporter.refresh_interval.total_seconds()
        )
        self.max_age = max_age
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.store_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Woken when a change commits (PostgreSQL NOTIFY, or a writer in this process); the
        # poll every refresh_interval stays as the fallback.
        self._changes: ChangeWaiter | None = None
        self.rebuilds = 0

    def rebuild(
        self, generations: dict[str, int] | None = None, dead_runs: int | None = None
    ) -> Snapshot:
        now = self.clock()
        if generations is None:
            generations = self.store.generations()
        if dead_runs is None:
            dead_runs = self.store.dead_runs()
        chunks, board = self.builder.build(now)
        snapshot = Snapshot(
            chunks, built_at=now, generations=generations, dead_runs=dead_runs, board=board
        )
        self.snapshot = snapshot  # an atomic swap: scrapes see the old or the new, whole
        self.rebuilds += 1
        _return_freed_memory()
        return snapshot

    def refresh(self) -> None:
        """Rebuild if any source's change counter moved, a run's lease expired (its holder
        died: the run is shown abandoned), or the snapshot is too old."""
        try:
            generations = self.store.generations()
            dead_runs = self.store.dead_runs()
            current = self.snapshot
            if (
                current is None
                or generations != current.generations
                or dead_runs != current.dead_runs
                or self.clock() - current.built_at >= self.max_age
            ):
                self.rebuild(generations, dead_runs)
            self.store_error = None
        except Exception as exc:  # keep serving the last snapshot; /healthz reports the failure
            self.store_error = redact(f"{type(exc).__name__}: {exc}")
            log.warning("store unreachable, serving the last snapshot: %s", self.store_error)

    def start(self) -> None:
        self._changes = ChangeWaiter(self.store.url)
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="dxkpi-snapshot", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._changes is not None:
            self._changes.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        assert self._changes is not None
        while not self._stop.is_set():
            self._changes.wait(self.refresh_interval)
            if not self._stop.is_set():
                self.refresh()

    def health(self) -> tuple[bool, str]:
        """(healthy, what to answer). The answer is general: anyone may ask, and a database
        error names hosts and users; the details go to the log."""
        try:
            self.store.ping()
        except Exception as exc:
            log.warning(
                "health check: store unreachable: %s", redact(f"{type(exc).__name__}: {exc}")
            )
            return False, "store unreachable"
        problem = self.store.schema_problem()
        return (False, problem) if problem else (True, "ok")


def _return_freed_memory() -> None:
    """Hand the rebuild's freed heap back to the OS (glibc keeps it otherwise): the exporter's
    resident size then tracks the snapshot, not the rebuild's peak."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: write HOST:PORT, e.g. 127.0.0.1:9810")
    return host.strip("[]"), int(port)
