"""KPI semantics: a KPI's value, path, progress, last good move and forecast, from stored history.

Every KPI is computed from the observations of the series its feed names (series whose labels
include the feed's labels; several matching series are summed, e.g. iOS + Android installs).

    kind              value (dxkpi_kpi_value)               level used for progress and trend
    latest            newest period's value                 each period's value
    cumulative_sum    initial + sum since `since`           running total at each month end
    fiscal_year_sum   sum over the fiscal year to date      trailing-12-month sum at month ends
    ratio             num/den, each summed FY to date       trailing-12-month num / den

The *level* is what is compared with baseline and target: an annual target (page views per FY,
copy paper per FY) is compared with the trailing twelve months, so progress does not collapse
every April when the fiscal-year-to-date sum restarts. For fiscal_year_sum the expected value is
the path's annual value pro-rated to the part of the fiscal year elapsed, on the same footing as
the year-to-date value it is drawn against.

The forecast is the level a robust (Theil-Sen) trend over `forecast.window` of the trajectory
reaches at the end of the target fiscal year; once that date has passed it is the level reached
by then. `on_track` compares it with the target in the KPI's direction.

The path runs straight from the baseline (start of its fiscal year) to the target (end of its
fiscal year), through per-FY milestones (placed at the end of their fiscal year) if given.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from collector.config import Config, FeedConfig, KpiConfig, MetricRef
from collector.fiscal import fiscal_year_end, fiscal_year_of, fiscal_year_start
from collector.forecast import forecast_value, on_track
from collector.storage import SeriesRow, Store

YEAR = 365.25 * 86400


@dataclass(frozen=True)
class KpiState:
    kpi: KpiConfig
    value: float | None
    level: float | None
    baseline_ts: float
    target_ts: float
    expected_value: float
    progress: float | None
    expected_progress: float
    last_change_ts: float | None
    forecast: float | None
    on_track: bool | None

    @property
    def direction(self) -> int:
        return 1 if self.kpi.direction == "up" else -1


def match_series(rows: Sequence[SeriesRow], ref: MetricRef | FeedConfig) -> list[int]:
    labels = ref.labels.items()
    return [
        row.id
        for row in rows
        if row.metric == ref.metric
        and (ref.source is None or row.source == ref.source)
        and labels <= row.labels.items()
    ]


class KpiCalculator:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.tz: ZoneInfo = config.tz
        self.start_month, self.start_day = config.fiscal_start

    def fy_start(self, fy: int) -> float:
        return fiscal_year_start(
            fy, start_month=self.start_month, start_day=self.start_day, tz=self.tz
        ).timestamp()

    def fy_end(self, fy: int) -> float:
        return fiscal_year_end(
            fy, start_month=self.start_month, start_day=self.start_day, tz=self.tz
        ).timestamp()

    def fiscal_year(self, ts: float) -> int:
        return fiscal_year_of(
            datetime.fromtimestamp(ts, self.tz),
            start_month=self.start_month,
            start_day=self.start_day,
            tz=self.tz,
        )

    # -- the path ------------------------------------------------------------------------

    def path_points(self, kpi: KpiConfig) -> list[tuple[float, float]]:
        points = [(self.fy_start(kpi.baseline.fiscal_year), kpi.baseline.value)]
        for fy, value in sorted(kpi.milestones.items()):
            if kpi.baseline.fiscal_year <= fy < kpi.target.fiscal_year:
                points.append((self.fy_end(fy), value))
        points.append((self.fy_end(kpi.target.fiscal_year), kpi.target.value))
        return points

    def expected_at(self, kpi: KpiConfig, ts: float) -> float:
        points = self.path_points(kpi)
        if ts <= points[0][0]:
            return points[0][1]
        for (t1, v1), (t2, v2) in itertools.pairwise(points):
            if ts <= t2:
                return v1 + (v2 - v1) * (ts - t1) / (t2 - t1)
        return points[-1][1]

    # -- history -------------------------------------------------------------------------

    def month_start(self, ts: float) -> float:
        local = datetime.fromtimestamp(ts, self.tz)
        return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()

    def _monthly(self, ids: list[int], start: float, end: float) -> dict[float, float]:
        out: dict[float, float] = {}
        for period, value in self.store.points(ids, int(start), int(end)):
            month = self.month_start(period)
            out[month] = out.get(month, 0.0) + value
        return out

    def _month_ends(self, first: float, now: float) -> list[float]:
        """Starts of the months after `first` up to now: the ends of complete months, plus now."""
        ends = []
        cursor = datetime.fromtimestamp(self.month_start(first), self.tz)
        while True:
            month, year = cursor.month % 12 + 1, cursor.year + cursor.month // 12
            cursor = cursor.replace(year=year, month=month)
            if cursor.timestamp() >= now:
                break
            ends.append(cursor.timestamp())
        ends.append(now)
        return ends

    def _trailing(
        self, monthly: dict[float, float], ends: list[float]
    ) -> list[tuple[float, float]]:
        out = []
        for end in ends:
            begin = end - YEAR
            out.append((end, sum(v for m, v in monthly.items() if begin <= m < end)))
        return out

    # -- one KPI ---------------------------------------------------------------------------

    def compute(self, kpi: KpiConfig, rows: Sequence[SeriesRow], now: float) -> KpiState:
        feed = kpi.feed
        window = self.config.forecast.window.total_seconds()
        history_start = now - window - YEAR
        value: float | None
        level: float | None
        trajectory: list[tuple[float, float]]
        fy_now = self.fiscal_year(now)
        fy_begin = self.fy_start(fy_now)
        elapsed = min(1.0, max(0.0, (now - fy_begin) / (self.fy_end(fy_now) - fy_begin)))
        expected = self.expected_at(kpi, now)

        if feed.kind == "latest":
            ids = match_series(rows, feed)
            points = [(float(t), v) for t, v in self.store.points(ids, int(history_start))]
            latest = [r for r in rows if r.id in set(ids) and r.last_start is not None]
            if latest:
                newest = max(r.last_start or 0 for r in latest)
                value = sum(r.last_value or 0.0 for r in latest if r.last_start == newest)
            else:
                value = None
            level, trajectory = value, points
        elif feed.kind == "cumulative_sum":
            ids = match_series(rows, feed)
            since = (
                datetime(
                    feed.since.year, feed.since.month, feed.since.day, tzinfo=self.tz
                ).timestamp()
                if feed.since
                else None
            )
            all_points = self.store.points(ids, int(since) if since is not None else None)
            if all_points:
                running = feed.initial
                trajectory = []
                by_month: dict[float, float] = {}
                for t, v in all_points:
                    running += v
                    by_month[self.month_start(t)] = running
                trajectory = sorted(by_month.items())
                value = running
            else:
                value, trajectory = None, []
            level = value
        elif feed.kind == "fiscal_year_sum":
            ids = match_series(rows, feed)
            monthly = self._monthly(ids, history_start, now + 1)
            if monthly:
                value = sum(v for m, v in monthly.items() if m >= fy_begin)
                trajectory = self._trailing(monthly, self._month_ends(min(monthly), now))
                level = trajectory[-1][1]
            else:
                value = level = None
                trajectory = []
            expected = expected * elapsed
        else:  # ratio
            assert feed.numerator is not None and feed.denominator is not None
            num = self._monthly(match_series(rows, feed.numerator), history_start, now + 1)
            den = self._monthly(match_series(rows, feed.denominator), history_start, now + 1)
            den_fy = sum(v for m, v in den.items() if m >= fy_begin)
            value = sum(v for m, v in num.items() if m >= fy_begin) / den_fy if den_fy else None
            trajectory = []
            if den:
                ends = self._month_ends(min(den), now)
                for (end, n), (_, d) in zip(
                    self._trailing(num, ends), self._trailing(den, ends), strict=True
                ):
                    if d:
                        trajectory.append((end, n / d))
            level = trajectory[-1][1] if trajectory else value

        span = kpi.target.value - kpi.baseline.value
        path_value = self.expected_at(kpi, now)
        progress = None if level is None else (level - kpi.baseline.value) / span
        target_ts = self.fy_end(kpi.target.fiscal_year)
        reached = [v for t, v in trajectory if t <= target_ts]
        if now >= target_ts and reached:
            # The target date has passed: what was reached by then is known, not forecast.
            forecast: float | None = reached[-1]
        else:
            forecast = forecast_value(trajectory, target_ts, window_seconds=window)
        direction = 1 if kpi.direction == "up" else -1
        return KpiState(
            kpi=kpi,
            value=value,
            level=level,
            baseline_ts=self.fy_start(kpi.baseline.fiscal_year),
            target_ts=self.fy_end(kpi.target.fiscal_year),
            expected_value=expected,
            progress=progress,
            expected_progress=(path_value - kpi.baseline.value) / span,
            last_change_ts=last_good_move(trajectory, direction),
            forecast=forecast,
            on_track=None if forecast is None else on_track(forecast, kpi.target.value, direction),
        )

    def compute_all(self, now: float, rows: Sequence[SeriesRow] | None = None) -> list[KpiState]:
        if rows is None:
            rows = self.store.series_rows()
        return [self.compute(kpi, rows, now) for kpi in self.config.kpis]


def last_good_move(trajectory: Sequence[tuple[float, float]], direction: int) -> float | None:
    """When the level last moved in the KPI's good direction (None: never, in the history)."""
    last = None
    for (_, v1), (t2, v2) in itertools.pairwise(trajectory):
        if (v2 - v1) * direction > 1e-9 * max(1.0, abs(v1)):
            last = t2
    return last
