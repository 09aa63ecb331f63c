"""The connector contract: the one extension point of dxkpi.

A connector is built from its validated settings and a `SourceContext`, is given a `Window`
(and the cursor it saved last time, if it keeps one), and yields `Observation`s, optionally
interleaved with `Checkpoint`s. It raises `RetryableSourceError` or `FatalSourceError` from
`dxkpi.collector.errors`. It never imports Celery, SQLAlchemy or prometheus-client: the core stores,
schedules and exports what it yields.
"""

from __future__ import annotations

import abc
import enum
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TOKYO = ZoneInfo("Asia/Tokyo")


class Granularity(enum.StrEnum):
    """How long the period that an observation covers is. `INSTANT` is a point reading."""

    INSTANT = "instant"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    FISCAL_YEAR = "fiscal_year"


@dataclass(slots=True)
class Observation:
    """One value of one series for one period.

    `start` is timezone-aware: the start of the period (midnight of the day in the source's
    timezone for DAY) or the instant itself. Values are in base units (seconds, not minutes).

    Treat it as immutable. It is not frozen: a frozen dataclass's `__init__` sets each field
    through `object.__setattr__`, three times the cost, and a backfill makes millions (it was
    never hashable either way: `labels` is a dict).
    """

    metric: str
    value: float
    start: datetime
    granularity: Granularity = Granularity.DAY
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An opaque cursor the connector wants back next time (e.g. a file's ETag).

    The core saves the last one yielded, and only when the whole run succeeded.
    """

    cursor: str


@dataclass(frozen=True, slots=True)
class Window:
    """The half-open time range [start, end) to collect, plus the saved cursor."""

    start: datetime
    end: datetime
    cursor: str | None = None

    def days(self, tz: ZoneInfo = TOKYO) -> list[datetime]:
        """Midnights (in `tz`) of every day the window touches."""
        day = self.start.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        out = []
        while day < self.end:
            out.append(day)
            day = next_midnight(day)
        return out

    def complete_days(self, tz: ZoneInfo = TOKYO) -> list[datetime]:
        """Midnights (in `tz`) of the days the window touches that are over by its end.

        For sources that report whole days: a day still running at the window's end would be
        read partial, so it is left to a later window (the next run's lookback reads it whole).
        The first day counts though the window may start after its midnight: the source is
        asked for the whole day.
        """
        return [day for day in self.days(tz) if next_midnight(day) <= self.end]


def next_midnight(day: datetime) -> datetime:
    """The midnight that ends `day` (itself a midnight), in its timezone, also on a day that a
    DST change makes 23 or 25 hours long."""
    return (day + timedelta(days=1, hours=2)).replace(hour=0, minute=0, second=0, microsecond=0)


Aggregation = Literal["sum", "last", "none"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric a connector declares. Names are snake_case in base units.

    `aggregation` says how values of consecutive periods may be combined: "sum" for counts and
    durations, "last" for levels and cumulative totals, "none" for ratios and unique users.
    """

    name: str
    help: str
    unit: str
    labels: tuple[str, ...] = ()
    aggregation: Aggregation = "sum"


class ConnectorSettings(BaseModel):
    """Base of every connector's settings model: unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def real_clock() -> Callable[[], datetime]:
    """The clock a SourceContext has unless a test injects another."""
    return _utcnow


@dataclass(frozen=True)
class SourceContext:
    """What the core hands a connector besides its settings. Inject fakes here in tests."""

    source_id: str
    timezone: ZoneInfo = TOKYO
    base_dir: Path = field(default_factory=Path.cwd)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], datetime] = _utcnow


S = TypeVar("S", bound=ConnectorSettings)


class Connector(abc.ABC, Generic[S]):
    """Base class of connectors. Subclasses set the class attributes and implement `collect`."""

    name: ClassVar[str]
    settings_model: ClassVar[type[ConnectorSettings]]
    metrics: ClassVar[tuple[MetricSpec, ...]]
    # The longest window one `collect` call may cover (the API's limit); backfill splits by it.
    max_window: ClassVar[timedelta | None] = None
    # How long after a period ends the source may still revise it; lookback covers at least this.
    finality: ClassVar[timedelta] = timedelta(0)

    def __init__(self, settings: S, context: SourceContext) -> None:
        self.settings = settings
        self.context = context

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        """The metrics this instance yields (csvfile derives them from its settings)."""
        return self.metrics

    @abc.abstractmethod
    def collect(self, window: Window) -> Iterable[Observation | Checkpoint]:
        """Yield every observation of the window. Raise Retryable/FatalSourceError on failure."""


# A connector of any settings type, for code that handles connectors generically.
AnyConnector = Connector[Any]
