"""KPI semantics: the figure of each reported period, and what it says about the target.

Most public-sector KPIs are not continuous signals: they are one figure per fiscal year (or per
month), published weeks or months after the period ends. So the unit of KPI truth here is the
**reported period**, and every figure (gauges, alerts, `status`, report, dashboards) is about the
same one.

Cadence (`kpi.cadence`, default from the feed):

    feed kind          default cadence    a period's figure
    latest             from the data      the period's value (the newest one inside it)
    fiscal_year_sum    fiscal_year        the sum over the fiscal year
      window: trailing_12m  month         the sum over the twelve months to the month's end
    ratio              fiscal_year        sum(numerator) / sum(denominator) over the same span
    cumulative_sum     continuous         `initial` + the sum since `since`, at the period's end

`latest` takes the cadence of its data: fiscal-year rows give a fiscal-year KPI, monthly rows a
monthly one, anything finer a continuous one.

- **Value**: the figure of the latest *complete* period. A period is complete once it has ended
  and its data covers it: every month of it has data and the newest data reaches its end (a
  fiscal year with a missing month never counts). A continuous KPI's value is its newest level.
- **Running period**: the period under way, with its partial figure, reported apart.
- **Path**: straight from the baseline (at the end of its fiscal year: a FY2020 figure is known
  at the end of FY2020) to the target (end of its fiscal year), through `milestones`. The
  **expected** value is the path at the reported period's end, not today.
- **Targets**: the current target is the first whose fiscal year has not ended; once all have
  ended, the last. The outcome of an ended target period is its fiscal year's figure against
  the target: achieved, missed, or pending until the figure arrives.
- **Progress** = (value - baseline) / (target - baseline); the **forecast** is a robust
  (Theil-Sen) trend over the complete periods since the baseline year, at the target year's
  end, or the target year's figure once it is known; **on track** compares it with the target.
- **Stall**: a period KPI is stalled when its last `stall_periods` reported periods made no move
  in the good direction; a continuous one when its newest data is more than `stall_after` past
  its last good move. The last good move is the end of the period that made it, or the end of the
  first period when none did: it exists whenever the KPI has data, so a flat KPI cannot hide.
- **Data due**: the next data period after the newest stored one is due `publication_lag` after
  it ends, and so is the next KPI period; past the earlier of the two, the data is overdue.

Organisations: a KPI reads the series of its organisation's sources (`kpi.org`). A **roll-up**
(`kpi.rollup`) gives one state per member organisation (its own figures) and one rolled-up
state: each period's sums are added over the members, so a ratio is the sum of the numerators
over the sum of the denominators, never a mean of the members' ratios. A roll-up's period is
complete only when every member's period is complete: a member that has not reported a period
(a failing source, a missing month) leaves it incomplete, named in `PeriodFigure.missing`, so
the rolled-up value stays at the last period every member reported instead of showing a
smaller sum; `KpiState.rollup.incomplete` is the newest ended period some members reported and
others have not.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from dxkpi.collector.config import (
    Cadence,
    Config,
    FeedConfig,
    KpiConfig,
    MetricRef,
    TargetConfig,
)
from dxkpi.collector.contract import Granularity
from dxkpi.collector.fiscal import fiscal_year_end, fiscal_year_of, fiscal_year_start
from dxkpi.collector.forecast import forecast_value, on_track
from dxkpi.collector.storage import SeriesRow, Store
from dxkpi.collector.units import conversion_factor

__all__ = [
    "BEHIND_PATH_THRESHOLD",
    "DEFAULT_PUBLICATION_LAG",
    "DEFAULT_STALL_AFTER",
    "KpiCalculator",
    "KpiState",
    "Outcome",
    "PeriodFigure",
    "Rollup",
    "StatusWord",
    "TargetOutcome",
    "last_good_move",
    "match_series",
]

DAY = 86400.0
# When a data period's figure is expected after the period ends, by the data's granularity:
# annual figures by the end of June of the next fiscal year, monthly ones within six weeks.
DEFAULT_PUBLICATION_LAG: dict[str, timedelta] = {
    Granularity.FISCAL_YEAR: timedelta(days=91),
    Granularity.MONTH: timedelta(days=45),
    Granularity.DAY: timedelta(days=7),
    Granularity.HOUR: timedelta(days=1),
    Granularity.INSTANT: timedelta(days=1),
}
DEFAULT_STALL_AFTER = timedelta(days=90)
# A KPI more than this share of the baseline-to-target distance behind its path is "behind"
# (status word and the DxKpiBehindPath alert read the same constant).
BEHIND_PATH_THRESHOLD = 0.10

Outcome = Literal["achieved", "missed", "pending"]
StatusWord = Literal["achieved", "missed", "on_track", "behind", "stalled", "overdue", "no_data"]


@dataclass(frozen=True)
class PeriodFigure:
    """One reported period of one KPI, in the KPI's unit."""

    start: float  # unix seconds; the period is [start, end)
    end: float
    fiscal_year: int  # the fiscal year the period ends in
    label: str  # FY2025 / 2026-10
    value: float | None
    complete: bool
    expected: float  # the path at `end`, towards the target current then
    target_value: float
    target_fiscal_year: int
    baseline_value: float
    progress: float | None
    arrived_at: float | None = None  # when its newest data was written
    # A roll-up's ended period: the member organisations that have not reported it.
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetOutcome:
    """How an ended target period ended."""

    fiscal_year: int
    target_value: float
    outcome: Outcome
    final_value: float | None
    final_progress: float | None
    known_at: float | None  # when the target year's figure arrived (None while pending)


@dataclass(frozen=True)
class Rollup:
    """What a rolled-up figure is made of."""

    members: tuple[str, ...]
    # The newest ended period that some members reported and others have not (after the
    # reported one); None when the roll-up is complete as far as any member has reported.
    incomplete: PeriodFigure | None = None

    @property
    def complete(self) -> bool:
        return self.incomplete is None

    @property
    def missing(self) -> tuple[str, ...]:
        return self.incomplete.missing if self.incomplete is not None else ()


@dataclass(frozen=True)
class KpiState:
    kpi: KpiConfig
    cadence: Cadence
    value: float | None
    complete: bool  # False only when a fiscal year was asked for whose period is not complete
    period_start: float | None
    period_end: float | None
    period_label: str | None
    running_value: float | None
    running_period_end: float | None
    baseline_value: float
    baseline_fiscal_year: int
    target: TargetConfig
    baseline_ts: float
    target_ts: float
    target_period_ended: bool
    expected_value: float
    progress: float | None
    expected_progress: float
    forecast: float | None
    on_track: bool | None
    last_change_ts: float | None
    stalled: bool
    periods_without_improvement: int
    stall_after: timedelta | None
    next_data_due_ts: float | None
    overdue: bool
    outcomes: list[TargetOutcome] = field(default_factory=list)
    periods: list[PeriodFigure] = field(default_factory=list)
    # The organisation whose figure this is, or the roll-up's label (`rollup` set).
    org: str = "default"
    rollup: Rollup | None = None

    @property
    def direction(self) -> int:
        return 1 if self.kpi.direction == "up" else -1

    @property
    def plan_applies(self) -> bool:
        """Whether the KPI's baseline and targets are this figure's: not for a member's part of
        a summed roll-up (the plan's total is the roll-up's), yes for a member's ratio."""
        member = self.kpi.rollup is not None and self.rollup is None
        return not (member and self.kpi.feed.kind != "ratio")

    @property
    def status_word(self) -> StatusWord:
        """One word for people (status, report, board); alerts follow the same definitions."""
        if self.value is None:
            return "no_data"
        if self.overdue:
            return "overdue"
        if self.target_period_ended and self.outcomes:
            last = self.outcomes[-1]
            if last.outcome != "pending":
                return "achieved" if last.outcome == "achieved" else "missed"
        if self.progress is not None and self.progress >= 1:
            return "achieved"
        if self.stalled:
            return "stalled"
        if not self.target_period_ended and (
            self.on_track is False
            or (
                self.progress is not None
                and self.expected_progress - self.progress > BEHIND_PATH_THRESHOLD
            )
        ):
            return "behind"
        return "on_track"


def match_series(
    rows: Sequence[SeriesRow],
    ref: MetricRef | FeedConfig,
    orgs: Collection[str] | None = None,
    org_of: dict[str, str] | None = None,
) -> list[int]:
    """The series a feed reference reads; with `orgs`, only those of these organisations (a
    series' organisation is its source's in `org_of`, else the one stored with it). A source
    named by a template's id matches its expansion in each organisation (`<org>.<id>`)."""
    labels = ref.labels.items()
    suffix = f".{ref.source}"
    org_of = org_of or {}
    return [
        row.id
        for row in rows
        if row.metric == ref.metric
        and (ref.source is None or row.source == ref.source or row.source.endswith(suffix))
        and (orgs is None or org_of.get(row.source, row.org) in orgs)
        and labels <= row.labels.items()
    ]


@dataclass(frozen=True)
class _Point:
    """A stored data period in the KPI's terms: [start, end), value, when written."""

    start: float
    end: float
    granularity: str
    value: float
    arrived: float


class _Series(list[_Point]):
    """A feed's stored periods in order of start, with what lookups by time need."""

    def __init__(self, points: list[_Point]) -> None:
        super().__init__(points)
        self.starts = [p.start for p in points]
        self.arrivals = list(itertools.accumulate((p.arrived for p in points), max))

    def between(self, start: float, end: float) -> list[_Point]:
        """The periods starting in [start, end)."""
        lo = bisect.bisect_left(self.starts, start)
        return self[lo : bisect.bisect_left(self.starts, end, lo)]

    def arrived_before(self, end: float) -> float | None:
        """When the last of the periods starting before `end` was written."""
        index = bisect.bisect_left(self.starts, end)
        return self.arrivals[index - 1] if index else None


@dataclass(frozen=True)
class _Span:
    start: float
    end: float
    fiscal_year: int
    label: str


class KpiCalculator:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.tz: ZoneInfo = config.tz
        self.start_month, self.start_day = config.fiscal_start
        self.org_of = config.source_orgs()
        # One read of a set of series per compute_all: a roll-up reuses its members' reads.
        self._read: dict[tuple[tuple[int, ...], float, float], _Series] = {}

    # -- calendar ----------------------------------------------------------------------------

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

    def _local(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, self.tz)

    def month_start(self, ts: float) -> float:
        local = self._local(ts)
        return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()

    def next_month(self, ts: float) -> float:
        local = self._local(self.month_start(ts))
        year, month = local.year + local.month // 12, local.month % 12 + 1
        return local.replace(year=year, month=month).timestamp()

    def _point_end(self, start: float, granularity: str) -> float:
        if granularity == Granularity.FISCAL_YEAR:
            return self.fy_end(self.fiscal_year(start))
        if granularity == Granularity.MONTH:
            return self.next_month(start)
        if granularity == Granularity.DAY:
            local = self._local(start)
            return datetime.combine(
                local.date() + timedelta(days=1), datetime.min.time(), self.tz
            ).timestamp()
        if granularity == Granularity.HOUR:
            return start + 3600
        return start  # an instant

    def _spans(self, cadence: Cadence, first: float, last: float) -> list[_Span]:
        """The KPI periods from the one holding `first` to the one holding `last`."""
        spans = []
        if cadence == "fiscal_year":
            for fy in range(self.fiscal_year(first), self.fiscal_year(last) + 1):
                spans.append(_Span(self.fy_start(fy), self.fy_end(fy), fy, f"FY{fy}"))
            return spans
        cursor = self.month_start(first)
        while cursor <= last:
            end = self.next_month(cursor)
            label = self._local(cursor).strftime("%Y-%m")
            spans.append(_Span(cursor, end, self.fiscal_year(cursor), label))
            cursor = end
        return spans

    # -- the path ----------------------------------------------------------------------------

    def current_target(self, kpi: KpiConfig, at: float) -> TargetConfig:
        """The first target whose fiscal year has not ended at `at`; else the last one."""
        for target in kpi.plan:
            if at < self.fy_end(target.fiscal_year):
                return target
        return kpi.plan[-1]

    def path_points(self, kpi: KpiConfig, target: TargetConfig) -> list[tuple[float, float]]:
        start = kpi.start_of(target)
        points = [(self.fy_end(start.fiscal_year), start.value)]
        for fy, value in sorted(kpi.milestones.items()):
            if start.fiscal_year < fy < target.fiscal_year:
                points.append((self.fy_end(fy), value))
        points.append((self.fy_end(target.fiscal_year), target.value))
        return points

    def expected_at(self, kpi: KpiConfig, target: TargetConfig, ts: float) -> float:
        points = self.path_points(kpi, target)
        if ts <= points[0][0]:
            return points[0][1] if ts < points[-1][0] else points[-1][1]
        for (t1, v1), (t2, v2) in itertools.pairwise(points):
            if ts <= t2:
                return v1 + (v2 - v1) * (ts - t1) / (t2 - t1) if t2 > t1 else v2
        return points[-1][1]

    def _progress(self, kpi: KpiConfig, target: TargetConfig, value: float | None) -> float | None:
        if value is None:
            return None
        start = kpi.start_of(target).value
        return (value - start) / (target.value - start)

    # -- data --------------------------------------------------------------------------------

    def _points(self, ids: list[int], as_of: float, factor: float) -> _Series:
        key = (tuple(ids), as_of, factor)
        if key not in self._read:
            self._read[key] = self._read_points(ids, as_of, factor)
        return self._read[key]

    def _feed_data(
        self, kpi: KpiConfig, rows: Sequence[SeriesRow], as_of: float, orgs: Collection[str] | None
    ) -> list[_Series]:
        """The feed's stored periods, one series per reference (numerator, denominator)."""
        feed = kpi.feed
        if feed.kind == "ratio":
            assert feed.numerator is not None and feed.denominator is not None
            return [
                self._points(match_series(rows, ref, orgs, self.org_of), as_of, 1.0)
                for ref in (feed.numerator, feed.denominator)
            ]
        factor = conversion_factor(feed.unit or kpi.unit, kpi.unit) or 1.0
        return [self._points(match_series(rows, feed, orgs, self.org_of), as_of, factor)]

    def _read_points(self, ids: list[int], as_of: float, factor: float) -> _Series:
        out = []
        for p in self.store.period_points(ids, end=int(as_of)):
            out.append(
                _Point(
                    float(p.start),
                    self._point_end(float(p.start), p.granularity),
                    p.granularity,
                    p.value * factor,
                    p.updated_at,
                )
            )
        return _Series(out)

    def _covers(self, points: Sequence[_Point], span: _Span) -> bool:
        """Whether `points` (those starting inside `span`) cover it: a whole-period row, or every
        month with data and the newest row reaching the end."""
        inside = [p for p in points if span.start <= p.start < span.end]
        if not inside:
            return False
        if any(p.start <= span.start and p.end >= span.end for p in inside):
            return True
        # An instant reading reaches a day past itself; any other row reaches its period's end.
        if max(p.end if p.end > p.start else p.start + DAY for p in inside) < span.end:
            return False
        months = {self.month_start(p.start) for p in inside}
        cursor = span.start
        while cursor < span.end:
            if self.month_start(cursor) not in months:
                return False
            cursor = self.next_month(cursor)
        return True

    # -- one KPI -----------------------------------------------------------------------------

    def compute(
        self,
        kpi: KpiConfig,
        rows: Sequence[SeriesRow],
        as_of: float,
        fiscal_year: int | None = None,
        org: str | None = None,
    ) -> KpiState:
        """One KPI's state: of `org` (default: the KPI's own organisation), or for a roll-up
        KPI without `org`, the rolled-up state over its members."""
        feed = kpi.feed
        factor = conversion_factor(feed.unit or kpi.unit, kpi.unit) or 1.0
        direction = 1 if kpi.direction == "up" else -1
        members: dict[str, list[_Series]] | None = None
        if kpi.rollup is not None and org is None:
            label = kpi.rollup.id
            members = {
                member: self._feed_data(kpi, rows, as_of, {member})
                for member in self.config.rollup_members(kpi)
            }
            data = [
                _merge([series[j] for series in members.values()]) for j in range(len(feed.refs()))
            ]
        else:
            label = org or kpi.org
            # One organisation in the config: every series is its (as before organisations).
            data = self._feed_data(kpi, rows, as_of, {label} if self.config.multi_org else None)
        newest = [series[-1] for series in data if series]
        granularity = newest[0].granularity if newest else Granularity.DAY
        cadence: Cadence = kpi.cadence or feed.default_cadence() or _cadence_of(granularity)
        lag = kpi.publication_lag or DEFAULT_PUBLICATION_LAG.get(granularity, timedelta(days=7))
        stall_after = (kpi.stall_after or DEFAULT_STALL_AFTER) if cadence == "continuous" else None

        periods: list[PeriodFigure] = []
        levels: list[tuple[float, float]] = []  # (end of data period, level) of cumulative data
        if all(data) and len(newest) == len(data):
            first = min(series[0].start for series in data)
            if cadence == "continuous" or feed.kind == "cumulative_sum":
                levels = self._levels(kpi, data[0], as_of)
            if cadence == "continuous":
                spans = self._spans("month", first, max(p.start for p in newest))
            else:
                spans = self._spans(cadence, first, max(p.start for p in newest))
            for span in spans:
                figure, done, arrived = self._figure(kpi, cadence, data, levels, span, as_of)
                missing: tuple[str, ...] = ()
                if members is not None and span.end <= as_of:
                    missing = tuple(
                        member
                        for member, series in members.items()
                        if not self._figure(kpi, cadence, series, [], span, as_of)[1]
                    )
                    done = done and not missing
                if feed.kind == "ratio" and figure is not None:
                    figure *= factor
                target = self.current_target(kpi, span.end - 1)
                periods.append(
                    PeriodFigure(
                        start=span.start,
                        end=span.end,
                        fiscal_year=span.fiscal_year,
                        label=span.label,
                        value=figure,
                        complete=done,
                        expected=self.expected_at(kpi, target, span.end),
                        target_value=target.value,
                        target_fiscal_year=target.fiscal_year,
                        baseline_value=kpi.start_of(target).value,
                        progress=self._progress(kpi, target, figure),
                        arrived_at=arrived,
                        missing=missing,
                    )
                )

        # The reported period: the latest complete one, or the one asked for.
        complete_periods = [p for p in periods if p.complete and p.value is not None]
        reported: PeriodFigure | None
        complete = True
        if fiscal_year is not None:
            in_year = [p for p in periods if p.fiscal_year == fiscal_year and p.value is not None]
            whole = [p for p in in_year if p.complete]
            reported = whole[-1] if whole else (in_year[-1] if in_year else None)
            complete = reported is not None and reported.complete
        else:
            reported = complete_periods[-1] if complete_periods else None
        running = next(
            (p for p in reversed(periods) if not p.complete and p.value is not None), None
        )
        if running is not None and reported is not None and running.start <= reported.start:
            running = None
        if running is not None and running.missing:
            running = None  # an ended roll-up period short of members is no running figure
        rollup: Rollup | None = None
        if members is not None:
            after = reported.start if reported is not None else float("-inf")
            waiting = [
                p
                for p in periods
                if p.missing
                and len(p.missing) < len(members)
                and (p.start > after or (p is reported and not p.complete))
            ]
            rollup = Rollup(tuple(members), waiting[-1] if waiting else None)

        value: float | None
        period_start = period_end = None
        period_label = None
        if cadence == "continuous" and fiscal_year is None:
            value = levels[-1][1] if levels else None
            if newest and value is not None:
                period_start, period_end = newest[0].start, newest[0].end
                period_label = self._local(newest[0].start).strftime("%Y-%m-%d")
            running = None
        elif reported is not None:
            value = reported.value
            period_start, period_end, period_label = reported.start, reported.end, reported.label
        else:
            value = None

        # Targets and the path, as of the clock (or the end of the fiscal year asked for).
        # The target is the one the asked-for year worked towards (its own, in a target year);
        # a target period has ended once its year is over, so a report on the target year,
        # made after it, gives the outcome rather than a forecast.
        moment = as_of if fiscal_year is None else min(as_of, self.fy_end(fiscal_year) - 1)
        ended_by = as_of if fiscal_year is None else min(as_of, self.fy_end(fiscal_year))
        target = self.current_target(kpi, moment)
        start = kpi.start_of(target)
        target_ts = self.fy_end(target.fiscal_year)
        target_period_ended = ended_by >= target_ts
        at = period_end if period_end is not None else moment
        expected = self.expected_at(kpi, target, at)
        span_value = target.value - start.value
        progress = self._progress(kpi, target, value)

        outcomes = [
            self._outcome(kpi, t, cadence, complete_periods, levels, data[-1])
            for t in kpi.plan
            if ended_by >= self.fy_end(t.fiscal_year)
        ]

        # The reported figures up to the reported period: (period end, value), or a continuous
        # KPI's levels. The forecast's trend and the stall are read from them.
        trajectory = (
            [(p.end, p.value) for p in complete_periods if p.value is not None]
            if cadence != "continuous"
            else levels
        )
        trajectory = [(t, v) for t, v in trajectory if t <= at + 1]

        # Forecast: the target year's figure once known, else the trend of reported periods.
        plan_start = self.fy_start(start.fiscal_year)
        final = next((o for o in outcomes if o.fiscal_year == target.fiscal_year), None)
        forecast: float | None
        if final is not None and final.final_value is not None:
            forecast = final.final_value
        else:
            window = (
                self.config.forecast.window.total_seconds() if cadence == "continuous" else None
            )
            forecast = forecast_value(
                [(t, v) for t, v in trajectory if t > plan_start], target_ts, window_seconds=window
            )

        # Stall and last good move, in the times of the reported data (the forecast's points).
        last_change = last_good_move(trajectory, direction)
        if last_change is None and trajectory:
            last_change = trajectory[0][0]
        if cadence == "continuous":
            without = 0
            stalled = bool(
                trajectory
                and last_change is not None
                and stall_after is not None
                and trajectory[-1][0] - last_change > stall_after.total_seconds()
            )
        else:
            without = _periods_without_improvement(trajectory, direction)
            stalled = len(trajectory) >= 2 and without >= kpi.stall_periods

        # When the next figure is due: the next data period after the newest, or the next KPI
        # period after the reported one, whichever is earlier.
        due: float | None = None
        if newest:
            stalest = min(newest, key=lambda p: p.end)
            next_data_end = self._point_end(stalest.end, stalest.granularity)
            if stalest.granularity == Granularity.INSTANT:
                next_data_end = stalest.start + DAY
            due = next_data_end + lag.total_seconds()
            if cadence != "continuous" and periods:
                after = reported.end if reported is not None else periods[0].start
                next_span = self._spans(cadence, after, after)[0]
                due = min(due, next_span.end + lag.total_seconds())
        overdue = fiscal_year is None and due is not None and as_of > due

        return KpiState(
            kpi=kpi,
            cadence=cadence,
            value=value,
            complete=complete,
            period_start=period_start,
            period_end=period_end,
            period_label=period_label,
            running_value=running.value if running is not None else None,
            running_period_end=running.end if running is not None else None,
            baseline_value=start.value,
            baseline_fiscal_year=start.fiscal_year,
            target=target,
            baseline_ts=self.fy_end(start.fiscal_year),
            target_ts=target_ts,
            target_period_ended=target_period_ended,
            expected_value=expected,
            progress=progress,
            expected_progress=(expected - start.value) / span_value,
            forecast=forecast,
            on_track=None if forecast is None else on_track(forecast, target.value, direction),
            last_change_ts=last_change,
            stalled=stalled,
            periods_without_improvement=without,
            stall_after=stall_after,
            next_data_due_ts=due,
            overdue=overdue,
            outcomes=outcomes,
            periods=periods,
            org=label,
            rollup=rollup,
        )

    def _levels(
        self, kpi: KpiConfig, points: list[_Point], as_of: float
    ) -> list[tuple[float, float]]:
        """A continuous KPI's level at the end of each data period: (end, level)."""
        feed = kpi.feed
        if feed.kind != "cumulative_sum":
            return [(p.end, p.value) for p in points]
        since = (
            datetime.combine(feed.since, datetime.min.time(), self.tz).timestamp()
            if feed.since is not None
            else None
        )
        running = feed.initial
        out = []
        for p in points:
            if since is not None and p.start < since:
                continue
            running += p.value
            out.append((p.end, running))
        return out

    def _figure(
        self,
        kpi: KpiConfig,
        cadence: Cadence,
        data: list[_Series],
        levels: list[tuple[float, float]],
        span: _Span,
        as_of: float,
    ) -> tuple[float | None, bool, float | None]:
        """(figure, complete, arrived) of one KPI period."""
        feed = kpi.feed
        ended = span.end <= as_of
        if cadence == "continuous" or feed.kind == "cumulative_sum":
            # The level at the period's end: the last one reached by then, if inside the period.
            index = bisect.bisect_right(levels, span.end, key=lambda level: level[0])
            last = levels[index - 1] if index else None
            value = last[1] if last is not None and last[0] > span.start else None
            reaches = bool(levels) and levels[-1][0] >= span.end
            arrived = data[0].arrived_before(span.end)
            return value, ended and reaches and value is not None, arrived
        if feed.window == "trailing_12m":
            year_start = self._local(span.end).replace(year=self._local(span.end).year - 1)
            window = _Span(year_start.timestamp(), span.end, span.fiscal_year, span.label)
        else:
            window = span
        parts = [series.between(window.start, window.end) for series in data]
        if not all(parts):
            return None, False, None
        arrived = max(p.arrived for part in parts for p in part)
        covered = all(self._covers(part, window) for part in parts)
        if feed.kind == "ratio":
            num, den = (sum(p.value for p in part) for part in parts)
            value = num / den if den else None
        elif feed.kind == "fiscal_year_sum":
            value = sum(p.value for p in parts[0])
        else:  # latest: the newest value inside the period
            newest_start = parts[0][-1].start
            value = sum(p.value for p in parts[0] if p.start == newest_start)
            covered = parts[0][-1].end >= span.end
        return value, ended and covered and value is not None, arrived

    def _outcome(
        self,
        kpi: KpiConfig,
        target: TargetConfig,
        cadence: Cadence,
        complete_periods: list[PeriodFigure],
        levels: list[tuple[float, float]],
        data: _Series,
    ) -> TargetOutcome:
        end = self.fy_end(target.fiscal_year)
        final: float | None = None
        known_at: float | None = None
        if cadence == "continuous":
            # Known once data reaching the year's end arrived: when the first such row was written.
            first = max(0, bisect.bisect_left(data.starts, end) - 1)
            reaching = next((p for p in data[first:] if p.end >= end), None)
            reached = [(t, v) for t, v in levels if t <= end]
            if reaching is not None and reached:
                final, known_at = reached[-1][1], max(end, reaching.arrived)
        else:
            match = [p for p in complete_periods if p.end == end and p.value is not None]
            if match:
                final = match[-1].value
                known_at = max(end, match[-1].arrived_at or end)
        if final is None:
            return TargetOutcome(target.fiscal_year, target.value, "pending", None, None, None)
        direction = 1 if kpi.direction == "up" else -1
        achieved = on_track(final, target.value, direction)
        return TargetOutcome(
            target.fiscal_year,
            target.value,
            "achieved" if achieved else "missed",
            final,
            self._progress(kpi, target, final),
            known_at,
        )

    def compute_all(
        self,
        as_of: float,
        rows: Sequence[SeriesRow] | None = None,
        fiscal_year: int | None = None,
    ) -> list[KpiState]:
        """Every KPI's state; a roll-up KPI gives each member's state, then the rolled-up one."""
        if rows is None:
            rows = self.store.series_rows()
        self._read.clear()
        states = []
        for kpi in self.config.kpis:
            if kpi.rollup is not None:
                for member in self.config.rollup_members(kpi):
                    states.append(self.compute(kpi, rows, as_of, fiscal_year, org=member))
            states.append(self.compute(kpi, rows, as_of, fiscal_year))
        self._read.clear()
        return states


def _merge(parts: list[_Series]) -> _Series:
    """Several organisations' series as one: values of the same period added."""
    added: dict[tuple[float, str], _Point] = {}
    for series in parts:
        for p in series:
            seen = added.get((p.start, p.granularity))
            added[(p.start, p.granularity)] = (
                p
                if seen is None
                else _Point(
                    p.start,
                    p.end,
                    p.granularity,
                    seen.value + p.value,
                    max(seen.arrived, p.arrived),
                )
            )
    return _Series(sorted(added.values(), key=lambda p: (p.start, p.granularity)))


def _cadence_of(granularity: str) -> Cadence:
    if granularity == Granularity.FISCAL_YEAR:
        return "fiscal_year"
    if granularity == Granularity.MONTH:
        return "month"
    return "continuous"


def _periods_without_improvement(series: Sequence[tuple[float, float]], direction: int) -> int:
    """How many of the latest reported periods in a row made no move in the good direction."""
    count = 0
    for (_, v1), (_, v2) in reversed(list(itertools.pairwise(series))):
        if _improved(v1, v2, direction):
            break
        count += 1
    return count


def _improved(before: float, after: float, direction: int) -> bool:
    return (after - before) * direction > 1e-9 * max(1.0, abs(before))


def last_good_move(trajectory: Sequence[tuple[float, float]], direction: int) -> float | None:
    """When the level last moved in the KPI's good direction (None: never, in the history)."""
    last = None
    for (_, v1), (t2, v2) in itertools.pairwise(trajectory):
        if _improved(v1, v2, direction):
            last = t2
    return last
