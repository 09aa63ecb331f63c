"""Where a KPI is heading: a robust straight-line trend projected to the target date.

Method (Theil–Sen estimator):

1. Keep the finite points `(unix seconds, value)` whose time lies inside the window that ends at
   the latest point (`window_seconds`; all points when it is None).
2. The slope is the median of the slopes between every pair of points with different times.
   Above `MAX_POINTS` points, an evenly spaced subsample (always keeping the first and the last
   point) is used instead, so the cost stays bounded (about 20 000 pairs) however long the series
   is, and the same input always gives the same answer.
3. The intercept is the median of `value - slope * time`.
4. The forecast is the line's value at `at`.

Why a median-based fit rather than least squares: KPI series are short (a few dozen monthly or
yearly values) and carry one-off errors — a month keyed in twice, a download report that
counted a re-install wave, a fiscal year with a one-off campaign. Least squares lets a single
such point swing the slope, and so the forecast and the on-track verdict, while the median of
pairwise slopes ignores up to ~29 % of wild points. One bad month must not flip a KPI to
"predicted to miss" or hide a real stall.

Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["MAX_POINTS", "forecast_value", "on_track"]

# Pairwise slopes grow with the square of the points; 200 points give 19 900 pairs.
MAX_POINTS = 200


def forecast_value(
    points: Sequence[tuple[float, float]],
    at: float,
    *,
    window_seconds: float | None = None,
) -> float | None:
    """The value the trend of `points` (unix seconds, value) reaches at `at` (unix seconds).

    Only points within `window_seconds` before the latest point are used. Returns None when
    fewer than two usable points remain or they all share one time: there is no trend to follow.
    """
    usable = sorted((t, v) for t, v in points if math.isfinite(t) and math.isfinite(v))
    if window_seconds is not None and usable:
        if window_seconds < 0:
            raise ValueError(f"window_seconds must not be negative, got {window_seconds}")
        since = usable[-1][0] - window_seconds
        usable = [(t, v) for t, v in usable if t >= since]
    if len(usable) < 2 or usable[0][0] == usable[-1][0]:
        return None
    sample = _evenly_spaced(usable, MAX_POINTS)
    # Measure time from the latest point: unix seconds are ~1.7e9, and products of such numbers
    # with small slopes lose precision that relative times keep.
    origin = sample[-1][0]
    shifted = [(t - origin, v) for t, v in sample]
    slope = statistics.median(
        (v2 - v1) / (t2 - t1)
        for i, (t1, v1) in enumerate(shifted)
        for t2, v2 in shifted[i + 1 :]
        if t2 != t1
    )
    intercept = statistics.median(v - slope * t for t, v in shifted)
    return intercept + slope * (at - origin)


def on_track(forecast: float, target: float, direction: int) -> bool:
    """Whether `forecast` reaches `target`: at or above it for an up-KPI (`direction` +1), at or
    below it for a down-KPI (-1). The alert rule DxKpiPredictedToMissTarget uses the same test."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be 1 (up-KPI) or -1 (down-KPI), got {direction}")
    return (forecast - target) * direction >= 0


def _evenly_spaced(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most `limit` points picked at even index steps, first and last always included."""
    if len(points) <= limit:
        return points
    last = len(points) - 1
    return [points[round(i * last / (limit - 1))] for i in range(limit)]
