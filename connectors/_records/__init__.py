"""Records to observations: the mapping shared by connectors that read lists of records (a
kintone app's records, the items of a JSON endpoint).

Each record gives a period (a date, a month, a fiscal year or a moment), label values and metric
values; a metric without a `field` counts records. Records of one series and period are added
up (metrics with aggregation `sum`) or must be unique (`last`, `none`: two records for one
period and labels are an error naming both). Periods are whole: a window is widened to the
periods it touches before records are asked for, so a month is never stored from half of its
records. Every sum metric gets a value for every period of the widened window and every label
set seen, zeros included: a deleted or corrected record overwrites the old figure.

Cells are read as csvfile reads them (`connectors/_tables/cells.py`: numbers with separators and
full-width digits, `△12`, `48.2%` for ratios; periods such as `2026-04`, `令和6年度`, `R6`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dxkpi.collector.contract import (
    LABEL_NAME,
    Aggregation,
    Granularity,
    MetricSpec,
    Observation,
    Window,
)
from dxkpi.collector.errors import SourceDataError, excerpt
from dxkpi.collector.fiscal import fiscal_year_of, period_end
from dxkpi.connectors._tables.cells import cell_text, parse_moment, parse_number, parse_period_cell
from dxkpi.connectors._tables.settings import MetricColumn, finite_nonzero_scale

__all__ = [
    "PeriodGranularity",
    "RecordMetric",
    "RecordProblems",
    "RecordTable",
    "period_of",
    "window_periods",
]

PeriodGranularity = Literal["day", "month", "fiscal_year"]
_ORDER = {Granularity.DAY: 0, Granularity.MONTH: 1, Granularity.FISCAL_YEAR: 2}
# An error lists this many problems, then says how many more there were.
_SHOWN_PROBLEMS = 20


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecordMetric(_Model):
    """One metric read from the records: a numeric field, or (no `field`) the record count."""

    name: str = Field(description="snake_case metric name in base units")
    field: str | None = Field(
        default=None, description="the field holding the value; omit it to count records"
    )
    unit: str
    aggregation: Aggregation = "sum"
    help: str = ""
    scale: float = Field(default=1.0, description="multiplies every value (60: minutes->seconds)")

    @field_validator("name")
    @classmethod
    def _metric_name(cls, name: str) -> str:
        # The same rules as csvfile's metric columns (snake_case, base units), said the same way.
        try:
            MetricColumn(name=name, column="-", unit="-")
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return name

    @field_validator("scale")
    @classmethod
    def _finite_nonzero(cls, scale: float) -> float:
        return finite_nonzero_scale(scale)

    @model_validator(mode="after")
    def _counts_are_sums(self) -> RecordMetric:
        if self.field is None and self.aggregation != "sum":
            raise ValueError(f"metric {self.name!r} counts records (no `field`): it must be a sum")
        return self


def check_mapping(
    metrics: list[RecordMetric], labels: Mapping[str, str], static_labels: Mapping[str, str]
) -> None:
    """Checks shared by the settings models: label names, unique metrics, no label twice."""
    for name in (*labels, *static_labels):
        if not LABEL_NAME.match(name):
            raise ValueError(f"label name {name!r} must be snake_case: a-z, 0-9 and _")
    if not metrics:
        raise ValueError("at least one entry in `metrics` is needed")
    names = [m.name for m in metrics]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"metric names must be unique; repeated: {', '.join(repeated)}")
    clash = sorted(set(labels) & set(static_labels))
    if clash:
        raise ValueError(f"labels and static_labels both define {', '.join(clash)}")


def metric_specs(
    metrics: list[RecordMetric],
    labels: Mapping[str, str],
    static_labels: Mapping[str, str],
    what: str,
) -> tuple[MetricSpec, ...]:
    names = (*labels, *static_labels)
    return tuple(
        MetricSpec(
            name=m.name,
            help=m.help or (f"{m.field} of {what}" if m.field else f"records of {what}"),
            unit=m.unit,
            labels=names,
            aggregation=m.aggregation,
        )
        for m in metrics
    )


# -- periods ---------------------------------------------------------------------------------


def period_start(day: date, granularity: Granularity) -> date:
    """The first day of the period of `granularity` that `day` falls in."""
    if granularity is Granularity.DAY:
        return day
    if granularity is Granularity.MONTH:
        return day.replace(day=1)
    return date(fiscal_year_of(day), 4, 1)


def window_periods(window: Window, granularity: PeriodGranularity, tz: ZoneInfo) -> list[date]:
    """The starts of every period the window touches, oldest first (days in `tz`)."""
    wanted = Granularity(granularity)
    first = period_start(window.start.astimezone(tz).date(), wanted)
    starts: list[date] = []
    begin = first
    while datetime.combine(begin, time(), tzinfo=tz) < window.end:
        starts.append(begin)
        begin = period_end(begin, wanted)
    return starts


def period_of(cell: object, granularity: PeriodGranularity, tz: ZoneInfo) -> date:
    """The start of the period a record's period value falls in: a date, a month or a fiscal
    year label (as csvfile reads them), or a moment (ISO 8601; naive is local to `tz`).
    A finer period is folded into the coarser one (a day into its month); a coarser one than
    `granularity` is a ValueError."""
    wanted = Granularity(granularity)
    try:
        day, found = parse_period_cell(cell)
    except ValueError as first:
        try:
            moment = parse_moment(cell, tz)
        except ValueError:
            raise first from None
        if moment is None:
            raise ValueError("the period is empty") from None
        day, found = moment.date(), Granularity.DAY
    if _ORDER[found] > _ORDER[wanted]:
        raise ValueError(
            f"{excerpt(cell_text(cell))} is a {found.value.replace('_', ' ')} but granularity "
            f"is {granularity}"
        )
    return period_start(day, wanted)


# -- problems and the table ------------------------------------------------------------------


@dataclass
class RecordProblems:
    """Bad records of one run: each with where it was and why; raised as one error."""

    problems: list[str] = field(default_factory=list)

    def add(self, where: str, why: str) -> None:
        self.problems.append(f"{where}: {why}")

    def error(self, source_id: str, what: str, hint: str) -> SourceDataError | None:
        if not self.problems:
            return None
        shown = self.problems[:_SHOWN_PROBLEMS]
        more = len(self.problems) - len(shown)
        listed = "; ".join(shown) + (f"; ... and {more} more" if more else "")
        return SourceDataError(
            source_id,
            f"{len(self.problems)} record(s) of {what} cannot be read, nothing was stored: "
            + listed,
            where=what,
            hint=hint,
        )


Labels = tuple[tuple[str, str], ...]


class RecordTable:
    """Observations built from records, one value per (metric, labels, period)."""

    def __init__(
        self,
        metrics: list[RecordMetric],
        label_names: tuple[str, ...],
        static_labels: Mapping[str, str],
        granularity: PeriodGranularity,
        tz: ZoneInfo,
        problems: RecordProblems,
    ) -> None:
        self.metrics = metrics
        self.label_names = label_names
        self.static = tuple(static_labels.items())
        self.granularity = Granularity(granularity)
        self.tz = tz
        self.problems = problems
        self._values: dict[tuple[int, Labels, date], float] = {}
        self._first_seen: dict[tuple[int, Labels, date], str] = {}
        self._label_sets: dict[Labels, None] = {}

    def add(
        self,
        where: str,
        period: date,
        labels: Labels,
        values: Mapping[str, Any],
    ) -> None:
        """One record: its period start, its label values (by label name) and its metric
        fields' raw values (by field name). Problems are recorded, not raised."""
        whys = [f"label {name} is empty" for name, value in labels if not value]
        series_labels = (*labels, *self.static)
        parsed: list[tuple[int, float]] = []
        for number, metric in enumerate(self.metrics):
            if metric.field is None:
                parsed.append((number, 1.0))
                continue
            try:
                value = parse_number(values.get(metric.field), ratio=metric.unit == "ratio")
            except ValueError as exc:
                whys.append(f"field {metric.field!r}: {exc}")
                continue
            if value is not None:  # an empty field is "not reported", not zero
                parsed.append((number, value * metric.scale))
        if whys:
            self.problems.add(where, "; ".join(whys))
            return
        self._label_sets.setdefault(series_labels)
        for number, value in parsed:
            key = (number, series_labels, period)
            if self.metrics[number].aggregation == "sum":
                self._values[key] = self._values.get(key, 0.0) + value
                continue
            earlier = self._first_seen.get(key)
            if earlier is not None:
                self.problems.add(
                    where,
                    f"{self.metrics[number].name} for this period and labels is already in "
                    f"{earlier} (aggregation {self.metrics[number].aggregation} cannot add up)",
                )
                continue
            self._first_seen[key] = where
            self._values[key] = value

    def observations(self, periods: list[date]) -> Iterator[Observation]:
        """Every value read, and zeros for sum metrics in `periods` without records."""
        starts = {p: datetime.combine(p, time(), tzinfo=self.tz) for p in periods}
        values = dict(self._values)
        for number, metric in enumerate(self.metrics):
            if metric.aggregation != "sum":
                continue
            for labels in self._label_sets:
                for period in periods:
                    values.setdefault((number, labels, period), 0.0)
        if not self.label_names:
            # Series without record labels get their zeros even when no record came at all.
            for number, metric in enumerate(self.metrics):
                if metric.aggregation == "sum":
                    for period in periods:
                        values.setdefault((number, self.static, period), 0.0)
        shared: dict[Labels, dict[str, str]] = {}
        for (number, labels, period), value in sorted(
            values.items(), key=lambda item: (item[0][2], item[0][0], item[0][1])
        ):
            start = starts.get(period) or datetime.combine(period, time(), tzinfo=self.tz)
            yield Observation(
                self.metrics[number].name,
                value,
                start,
                self.granularity,
                shared.setdefault(labels, dict(labels)),
            )
