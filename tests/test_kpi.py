"""KPI semantics computed from stored history: value, path, progress, last good move, forecast."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from collector.config import Config
from collector.contract import TOKYO, Granularity, Observation
from collector.kpi import KpiCalculator, KpiState
from collector.storage import Store


def config(**kpi: Any) -> Config:
    base: dict[str, Any] = {
        "id": "k",
        "name_ja": "指標",
        "name_en": "Indicator",
        "area": "a",
        "unit": "u",
        "baseline": {"value": 100, "fiscal_year": 2021},
        "target": {"value": 200, "fiscal_year": 2025},
        "feed": {"metric": "m"},
    }
    base.update(kpi)
    return Config.model_validate({"kpis": [base]})


def compute(store: Store, cfg: Config, now: datetime) -> KpiState:
    return KpiCalculator(store, cfg).compute_all(now.timestamp())[0]


def months(
    start: datetime, values: list[float], metric: str = "m", **labels: str
) -> list[Observation]:
    out = []
    day = start
    for value in values:
        out.append(Observation(metric, value, day, Granularity.MONTH, labels))
        day = (day + timedelta(days=32)).replace(day=1)
    return out


def fy(year: int) -> datetime:
    return datetime(year, 4, 1, tzinfo=TOKYO)


def test_latest_annual_value_progress_and_straight_path(sqlite_store: Store) -> None:
    sqlite_store.write(
        "s",
        [
            Observation("m", v, fy(y), Granularity.FISCAL_YEAR)
            for y, v in [(2021, 100), (2022, 125), (2023, 150)]
        ],
    )
    cfg = config()
    # halfway along the path: baseline at FY2021 start, target at FY2025 end (5 years)
    state = compute(sqlite_store, cfg, datetime(2023, 10, 1, tzinfo=TOKYO))
    assert state.value == 150
    assert state.progress == pytest.approx(0.5)
    assert state.expected_value == pytest.approx(150, abs=1)
    assert state.expected_progress == pytest.approx(0.5, abs=0.01)
    assert state.last_change_ts == pytest.approx(fy(2023).timestamp())
    # the trend (+25/yr) reaches 200 by the end of FY2025: on track
    assert state.forecast is not None and state.forecast >= 199
    assert state.on_track is True


def test_no_data_means_no_value(sqlite_store: Store) -> None:
    state = compute(sqlite_store, config(), datetime(2023, 10, 1, tzinfo=TOKYO))
    assert (state.value, state.progress, state.forecast, state.on_track) == (None, None, None, None)


def test_milestones_bend_the_path(sqlite_store: Store) -> None:
    cfg = config(milestones={"R4": 180})
    state = compute(sqlite_store, cfg, fy(2023))  # = end of FY2022, the milestone
    assert state.expected_value == pytest.approx(180)


def test_down_kpi_progress_and_stall_follow_the_trailing_twelve_months(sqlite_store: Store) -> None:
    # copy paper: 40M sheets in FY2020, target 12M in FY2025; buying falls 10 % a year, then stops
    cfg = config(
        direction="down",
        baseline={"value": 40_000_000, "fiscal_year": 2020},
        target={"value": 12_000_000, "fiscal_year": 2025},
        feed={"kind": "fiscal_year_sum", "metric": "copy_paper"},
    )
    monthly = []
    for year in range(2020, 2024):
        monthly += [40_000_000 / 12 * 0.9 ** (year - 2020)] * 12
    flat = monthly[-1]
    monthly += [flat] * 12  # FY2024: no further reduction
    sqlite_store.write("s", months(fy(2020), monthly, metric="copy_paper"))
    falling = compute(sqlite_store, cfg, datetime(2024, 3, 31, tzinfo=TOKYO))
    assert falling.level == pytest.approx(40_000_000 * 0.9**3, rel=0.01)
    assert falling.progress == pytest.approx((40e6 - 40e6 * 0.9**3) / 28e6, rel=0.01)
    assert falling.last_change_ts is not None
    assert falling.last_change_ts >= datetime(2024, 3, 1, tzinfo=TOKYO).timestamp()
    stalled = compute(sqlite_store, cfg, datetime(2025, 3, 31, tzinfo=TOKYO))
    # a year of flat buying: the last good move is a year old
    assert stalled.last_change_ts is not None
    assert stalled.last_change_ts <= datetime(2024, 4, 2, tzinfo=TOKYO).timestamp()
    # FY-to-date value and a pro-rated expected value on the same footing
    assert stalled.value == pytest.approx(flat * 12, rel=0.01)
    assert stalled.on_track is False


def test_cumulative_sum_adds_initial_and_everything_since(sqlite_store: Store) -> None:
    cfg = config(
        baseline={"value": 1000, "fiscal_year": 2021},
        target={"value": 5000, "fiscal_year": 2025},
        feed={
            "kind": "cumulative_sum",
            "metric": "installs",
            "labels": {"app": "a"},
            "since": "2021-04-01",
            "initial": 1000,
        },
    )
    days = [
        Observation(
            "installs", 10, fy(2021) + timedelta(days=i), labels={"app": "a", "platform": p}
        )
        for i in range(100)
        for p in ("ios", "android")
    ]
    days.append(Observation("installs", 999, fy(2020), labels={"app": "a", "platform": "ios"}))
    days.append(Observation("installs", 7, fy(2021), labels={"app": "b", "platform": "ios"}))
    sqlite_store.write("s", days)
    state = compute(sqlite_store, cfg, datetime(2021, 8, 1, tzinfo=TOKYO))
    assert state.value == 1000 + 100 * 2 * 10


def test_ratio_sums_each_side_over_the_fiscal_year(sqlite_store: Store) -> None:
    cfg = config(
        unit="ratio",
        baseline={"value": 0.482, "fiscal_year": 2021},
        target={"value": 0.8, "fiscal_year": 2025},
        feed={"kind": "ratio", "numerator": {"metric": "online"}, "denominator": {"metric": "all"}},
    )
    sqlite_store.write(
        "s",
        months(fy(2022), [50, 70], metric="online") + months(fy(2022), [100, 100], metric="all"),
    )
    sqlite_store.write(
        "s",
        months(fy(2021), [10] * 12, metric="online") + months(fy(2021), [100] * 12, metric="all"),
    )
    state = compute(sqlite_store, cfg, datetime(2022, 5, 20, tzinfo=TOKYO))
    assert state.value == pytest.approx(120 / 200)


def test_after_the_target_date_the_forecast_is_what_was_reached(sqlite_store: Store) -> None:
    sqlite_store.write(
        "s",
        [
            Observation("m", v, fy(y), Granularity.FISCAL_YEAR)
            for y, v in [(2021, 100), (2022, 110), (2023, 120), (2024, 125), (2025, 201)]
        ],
    )
    # FY2025's figure is recorded at FY2025's end, the target date; the trend alone says ~170
    state = compute(sqlite_store, config(), datetime(2026, 11, 1, tzinfo=TOKYO))
    assert state.forecast == 201
    assert state.on_track is True
