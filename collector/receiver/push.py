"""Pushed figures: `POST /api/v1/observations`, read whole and checked row by row.

The body is one row, a list of rows, or `{"observations": [rows]}`; a row is
`{"metric": "...", "labels": {...}, "period": "R3" | "2024-04" | "2024-04-01", "value": 12.5}`.
Periods are read by `dxkpi.collector.fiscal.parse_period` (令和3年度, 2021年4月, FY2021 …). Every
problem of every row is collected, each naming the row and the field, and the request is
refused whole: nothing of a request with one bad row is stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from dxkpi.collector.contract import Observation
from dxkpi.collector.events import Rejected, json_object
from dxkpi.collector.fiscal import parse_period
from dxkpi.collector.receiver.config import ClientConfig

# A refusal lists at most this many problems: enough to fix a file, short enough to read.
MAX_LISTED = 20


def read_rows(body: bytes, client: ClientConfig, tz: ZoneInfo, max_rows: int) -> list[Observation]:
    """The observations of a JSON body."""
    return check_rows(list(enumerate(_rows(body), start=1)), client, tz, max_rows)


def check_rows(
    rows: Sequence[tuple[int, Any]], client: ClientConfig, tz: ZoneInfo, max_rows: int
) -> list[Observation]:
    """Numbered rows (from JSON or an uploaded file) as observations, or `Rejected` listing
    every problem, each naming its row and field."""
    if not rows:
        raise Rejected(422, "invalid_rows", "no rows: send at least one observation")
    if len(rows) > max_rows:
        raise Rejected(
            413, "too_many_rows", f"{len(rows)} rows; at most {max_rows} per request: split it"
        )
    metrics = {m.name: m for m in client.metrics}
    problems: list[str] = []
    forbidden: list[str] = []
    out: list[Observation] = []
    for number, row in rows:
        where = f"row {number}"
        if not isinstance(row, Mapping):
            problems.append(f"{where}: must be an object with metric, labels, period, value")
            continue
        unknown = sorted(set(row) - {"metric", "labels", "period", "value"})
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
        name = row.get("metric")
        metric = metrics.get(name) if isinstance(name, str) else None
        if metric is None:
            forbidden.append(
                f"{where}: field 'metric': {name!r} is not a metric client {client.id!r} may "
                f"push (allowed: {', '.join(sorted(metrics))})"
            )
            continue
        labels = row.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in labels.items()
        ):
            problems.append(f"{where}: field 'labels': must map label names to non-empty text")
            continue
        if set(labels) != set(metric.labels):
            problems.append(
                f"{where}: field 'labels': {name} takes exactly "
                f"[{', '.join(metric.labels)}], got [{', '.join(sorted(labels))}]"
            )
            continue
        period = row.get("period")
        try:
            first, granularity = parse_period(str(period)) if period is not None else (None, None)
        except ValueError as exc:
            problems.append(f"{where}: field 'period': {exc}")
            continue
        if first is None or granularity is None:
            problems.append(f"{where}: field 'period' is required (e.g. 2024-04, R3, 2024-04-01)")
            continue
        value = row.get("value")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            problems.append(f"{where}: field 'value': must be a finite number, got {value!r}")
            continue
        start = datetime(first.year, first.month, first.day, tzinfo=tz)
        out.append(Observation(metric.name, float(value), start, granularity, dict(labels)))
    if forbidden:
        raise Rejected(403, "forbidden_metric", _listed(forbidden))
    if problems:
        raise Rejected(422, "invalid_rows", _listed(problems))
    return out


def _rows(body: bytes) -> Sequence[Any]:
    if body.lstrip()[:1] == b"[":
        import json

        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise Rejected(400, "malformed_json", f"the body is not JSON: {exc}") from None
        return list(parsed)
    document = json_object(body)
    if "observations" in document:
        rows = document["observations"]
        if not isinstance(rows, list):
            raise Rejected(422, "invalid_rows", "field 'observations' must be a list of rows")
        return rows
    return [document]


def _listed(problems: list[str]) -> str:
    more = len(problems) - MAX_LISTED
    text = "; ".join(problems[:MAX_LISTED])
    return text + (f"; and {more} more" if more > 0 else "") + ". Nothing was stored."
