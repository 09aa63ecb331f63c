"""The forecast: Theil–Sen trend projected to the target date, and the on-track verdict."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import pytest

from dxkpi.collector.forecast import MAX_POINTS, forecast_value, on_track

DAY = 86_400.0
MONTH = 30 * DAY
START = datetime(2021, 4, 1, tzinfo=UTC).timestamp()


def monthly(values: list[float]) -> list[tuple[float, float]]:
    return [(START + i * MONTH, v) for i, v in enumerate(values)]


def test_straight_line_is_projected_exactly() -> None:
    points = monthly([100 + 10 * i for i in range(12)])
    assert forecast_value(points, START + 24 * MONTH) == pytest.approx(340)


def test_one_wild_month_does_not_move_the_forecast() -> None:
    values = [100 + 10 * i for i in range(12)]
    values[5] = 5_000  # keyed in with three extra zeros
    values[9] = -800  # and a month reported as a correction
    assert forecast_value(monthly(values), START + 24 * MONTH) == pytest.approx(340)


def test_least_squares_would_have_been_fooled() -> None:
    # Guards the test above: the outliers are big enough to matter for a non-robust fit.
    values = [100 + 10 * i for i in range(12)]
    values[11] = 5_000
    xs = [float(i) for i in range(12)]
    mean_x, mean_y = sum(xs) / 12, sum(values) / 12
    ols_slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    assert ols_slope > 100
    assert forecast_value(monthly(values), START + 24 * MONTH) == pytest.approx(340)


def test_falling_series_projects_downwards() -> None:
    # Copy paper: 40 M sheets a year falling by 2 M a year, with one bulk-purchase year.
    years = [(START + i * 365 * DAY, 40e6 - 2e6 * i) for i in range(5)]
    years[2] = (years[2][0], 55e6)
    forecast = forecast_value(years, START + 8 * 365 * DAY)
    assert forecast == pytest.approx(24e6)
    assert forecast is not None
    assert not on_track(forecast, 12e6, -1)


def test_flat_series_stays_flat() -> None:
    points = monthly([172.0] * 10)
    assert forecast_value(points, START + 60 * MONTH) == pytest.approx(172)


def test_mostly_flat_series_with_one_jump_stays_flat() -> None:
    points = monthly([525, 525, 525, 600, 525, 525, 525, 525])
    assert forecast_value(points, START + 60 * MONTH) == pytest.approx(525)


def test_order_of_points_does_not_matter() -> None:
    points = monthly([3, 5, 4, 8, 9, 12, 11, 15])
    at = START + 20 * MONTH
    assert forecast_value(list(reversed(points)), at) == forecast_value(points, at)


def test_window_keeps_only_the_recent_trend() -> None:
    # Rising for two years, then flat for a year: over the last year the trend is flat.
    values = [float(10 * i) for i in range(24)] + [230.0] * 12
    points = monthly(values)
    at = START + 48 * MONTH
    assert forecast_value(points, at, window_seconds=11 * MONTH) == pytest.approx(230)
    whole = forecast_value(points, at)
    assert whole is not None and whole > 300


def test_window_ends_at_the_latest_point_not_at_the_forecast_date() -> None:
    points = monthly([0, 10, 20, 30])
    # The target date is far past the window; the window is still anchored at the data.
    assert forecast_value(points, START + 13 * MONTH, window_seconds=MONTH) == pytest.approx(130)


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(START, 1.0)],
        [(START, 1.0), (START, 2.0), (START, 3.0)],
        [(START, 1.0), (START + DAY, math.nan)],
        [(START, 1.0), (START + DAY, math.inf)],
    ],
    ids=["empty", "one point", "zero time span", "nan dropped", "inf dropped"],
)
def test_no_trend_without_two_distinct_times(points: list[tuple[float, float]]) -> None:
    assert forecast_value(points, START + MONTH) is None


def test_window_that_leaves_one_point_gives_no_forecast() -> None:
    assert forecast_value(monthly([1, 2, 3]), START + 5 * MONTH, window_seconds=DAY) is None


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        forecast_value(monthly([1, 2]), START, window_seconds=-1)


def test_long_series_is_subsampled_deterministically_and_fast() -> None:
    # Ten years of hourly readings of a clean line with a noise pattern that repeats.
    hours = 10 * 365 * 24
    noise = [0.0, 3.0, -2.0, 1.0, -1.0]
    points = [(START + h * 3600.0, 5.0 + 0.5 * h + noise[h % 5]) for h in range(hours)]
    at = START + (hours + 1000) * 3600.0
    began = time.perf_counter()
    first = forecast_value(points, at)
    elapsed = time.perf_counter() - began
    assert first == forecast_value(points, at)
    assert first == pytest.approx(5.0 + 0.5 * (hours + 1000), abs=3.0)
    # A full pairwise fit of 87 600 points would take minutes; the subsample takes milliseconds.
    assert elapsed < 1.0
    assert len(points) > 100 * MAX_POINTS


@pytest.mark.parametrize(
    ("forecast", "target", "direction", "expected"),
    [
        (0.81, 0.80, 1, True),
        (0.80, 0.80, 1, True),
        (0.79, 0.80, 1, False),
        (11e6, 12e6, -1, True),
        (12e6, 12e6, -1, True),
        (13e6, 12e6, -1, False),
    ],
)
def test_on_track_is_direction_aware(
    forecast: float, target: float, direction: int, expected: bool
) -> None:
    assert on_track(forecast, target, direction) is expected


def test_on_track_refuses_an_unknown_direction() -> None:
    with pytest.raises(ValueError, match="direction"):
        on_track(1.0, 2.0, 0)
