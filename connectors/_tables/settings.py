"""How a table's columns become observations: one period column, optional label columns, one
column per metric. The settings csvfile's `table` layout and gsheets share."""

from __future__ import annotations

import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dxkpi.collector.contract import LABEL_NAME, METRIC_NAME, Aggregation, ConnectorSettings

# Words promtool's lint flags in metric names: values must be in base units (seconds, ratios).
_NON_BASE_UNITS = {
    "minutes": "seconds (scale: 60)",
    "hours": "seconds (scale: 3600)",
    "days": "seconds (scale: 86400)",
    "weeks": "seconds (scale: 604800)",
    "milliseconds": "seconds (scale: 0.001)",
    "percent": "a ratio (unit: ratio reads 48.2% as 0.482)",
    "ms": "seconds (scale: 0.001)",
    "sec": "seconds",
}


def fold(text: str) -> str:
    """Compare-friendly text: full-width folded (NFKC), trimmed, case-folded."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


def finite_nonzero_scale(scale: float) -> float:
    """A metric's `scale` (a factor to base units): a finite number other than zero."""
    if scale == 0 or scale != scale or abs(scale) == float("inf"):
        raise ValueError("scale must be a finite, non-zero number")
    return scale


def snake_case_label_names(labels: dict[str, str]) -> dict[str, str]:
    """Label names (the keys) as Prometheus takes them, in dxkpi's snake_case."""
    for name in labels:
        if not LABEL_NAME.match(name):
            raise ValueError(f"label name {name!r} must be snake_case: a-z, 0-9 and _")
    return labels


def distinct_metrics_and_labels(
    metrics: list[MetricColumn], labels: dict[str, str], static_labels: dict[str, str]
) -> None:
    """ValueError if two metrics share a name, or a label is both read and static."""
    names = [m.name for m in metrics]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"metric names must be unique; repeated: {', '.join(duplicates)}")
    clash = sorted(set(labels) & set(static_labels))
    if clash:
        raise ValueError(f"labels and static_labels both define {', '.join(clash)}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricColumn(_Model):
    """One numeric column turned into one metric."""

    name: str
    column: str
    unit: str
    aggregation: Aggregation = "sum"
    help: str = ""
    # Multiplies every value, e.g. 60 for a column of minutes stored as seconds.
    scale: float = 1.0

    @field_validator("name")
    @classmethod
    def _snake_case_base_units(cls, name: str) -> str:
        if not METRIC_NAME.match(name):
            raise ValueError(f"metric name {name!r} must be snake_case: a-z, 0-9 and _")
        for word in name.split("_"):
            if word in _NON_BASE_UNITS:
                raise ValueError(
                    f"metric name {name!r} names the unit {word!r}; store {_NON_BASE_UNITS[word]}"
                    " and name the metric after the base unit"
                )
        return name

    @field_validator("scale")
    @classmethod
    def _finite_nonzero(cls, scale: float) -> float:
        return finite_nonzero_scale(scale)


class TableColumns(ConnectorSettings):
    """Which columns mean what. Header names are matched full-width folded and case-folded."""

    period_column: str | None = None
    granularity: Literal["auto", "day", "month", "fiscal_year"] = "auto"
    labels: dict[str, str] = Field(default_factory=dict)
    static_labels: dict[str, str] = Field(default_factory=dict)
    metrics: list[MetricColumn] = Field(default_factory=list)

    @field_validator("labels", "static_labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        return snake_case_label_names(labels)

    def check_columns(self, needs: str) -> None:
        """ValueError unless a period column and metrics are set, consistently. `needs` opens
        the message (e.g. "layout table needs")."""
        if not self.period_column:
            raise ValueError(f"{needs} `period_column`: the header of the date column")
        if not self.metrics:
            raise ValueError(f"{needs} at least one entry in `metrics`")
        distinct_metrics_and_labels(self.metrics, self.labels, self.static_labels)
