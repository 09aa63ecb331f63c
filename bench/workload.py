"""Synthetic page-view series, generated lazily: `series × days` observations never sit in memory.

Values are a fixed function of (series, day), so a second pass yields exactly the same rows
(the idempotent re-ingest) and any two benchmarks agree on what the data is.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from dxkpi.collector.contract import TOKYO, Granularity, Observation

METRIC = "bench_page_views"
FIRST_DAY = datetime(2024, 4, 1, tzinfo=TOKYO)


def page_path(series: int) -> str:
    return f"/pages/{series:06d}/index.html"


def value(series: int, day: int) -> float:
    return float((series * 7919 + day * 104_729) % 5000)


def day_start(day: int, first_day: datetime = FIRST_DAY) -> datetime:
    # Noon + replace keeps midnights right even where a zone has DST (Tokyo has none today).
    return (first_day + timedelta(days=day, hours=12)).replace(hour=0)


def page_views(
    n_series: int, n_days: int, *, first_day: datetime = FIRST_DAY, first_day_index: int = 0
) -> Iterator[Observation]:
    """Day by day, every series of that day: the order a daily collection produces."""
    paths = [page_path(s) for s in range(n_series)]
    for day in range(first_day_index, first_day_index + n_days):
        start = day_start(day, first_day)
        for series, path in enumerate(paths):
            yield Observation(
                METRIC, value(series, day), start, Granularity.DAY, {"page_path": path}
            )


def csv_source(source_id: str = "bench") -> dict[str, Any]:
    """A config `sources:` entry that declares `bench_page_views{page_path}`.

    The exporter takes HELP text and units from the declared metrics; the file is never read.
    """
    return {
        "id": source_id,
        "connector": "csvfile",
        "schedule": {"every": "1h"},
        "settings": {
            "path": "page_views.csv",
            "period_column": "date",
            "labels": {"page_path": "page_path"},
            "metrics": [{"name": METRIC, "column": "views", "unit": "views"}],
        },
    }


def page_views_kpi(source_id: str = "bench") -> dict[str, Any]:
    """A KPI summing every bench series over the fiscal year: a rebuild reads history."""
    return {
        "id": "bench_portal_views",
        "name_ja": "ベンチ用ページビュー",
        "name_en": "Bench page views",
        "area": "bench",
        "unit": "views",
        "baseline": {"value": 1_000_000, "fiscal_year": "R6"},
        "target": {"value": 2_000_000, "fiscal_year": "R8"},
        "feed": {"kind": "fiscal_year_sum", "metric": METRIC, "source": source_id},
    }
