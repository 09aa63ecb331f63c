"""Reading Apple's Summary Sales Report (SALES / SUMMARY / DAILY, version 1_0).

The report is a gzip-compressed, tab-separated file with one header line. Columns are found by
header name, never by position: Apple has added columns between report versions.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

# Product type identifiers, from App Store Connect Help > Reference > Product type identifiers.
# A first-time download is a free or paid app acquisition: iOS/iPadOS/visionOS/watchOS (1),
# universal (1F), iPad (1T), Mac (F1), app bundles (1-B, F1-B) and custom apps (1E, 1EP, 1EU).
# Re-downloads (3, 3F, 3T, F3) are the same customer again and are NOT counted.
FIRST_TIME_DOWNLOAD_TYPES = frozenset({"1", "1F", "1T", "F1", "1-B", "F1-B", "1E", "1EP", "1EU"})
UPDATE_TYPES = frozenset({"7", "7F", "7T", "F7"})

REQUIRED_COLUMNS = ("Product Type Identifier", "Units", "Apple Identifier", "SKU", "Begin Date")


class ReportFormatError(ValueError):
    """The file is not a Summary Sales Report we can read; the message says why."""


@dataclass(frozen=True, slots=True)
class AppUnits:
    """Units of one app on one day, split by kind."""

    first_time_downloads: float = 0.0
    updates: float = 0.0


def decompress(payload: bytes) -> str:
    """Apple sends application/a-gzip; some proxies inflate it on the way, so accept plain TSV."""
    if payload[:2] == b"\x1f\x8b":
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError, zlib.error) as exc:
            raise ReportFormatError(f"the gzip body is corrupt ({exc})") from exc
    try:
        return payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReportFormatError(f"the report is not UTF-8 text ({exc.reason})") from exc


def units_by_app(text: str, report_date: date, app_keys: Mapping[str, str]) -> dict[str, AppUnits]:
    """Sum Units per configured app. `app_keys` maps an Apple Identifier or SKU to the app label.

    Rows of other apps and in-app purchases are ignored. Every configured label is in the result
    (zero when the app had no rows), so a day with a report but no downloads still reads as 0.
    """
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    headers = [h.strip() for h in reader.fieldnames or []]
    missing = [name for name in REQUIRED_COLUMNS if name not in headers]
    if missing:
        seen = ", ".join(headers) or "(none)"
        raise ReportFormatError(f"missing column(s) {', '.join(missing)}; headers seen: {seen}")
    reader.fieldnames = headers
    totals = {label: [0.0, 0.0] for label in set(app_keys.values())}
    for line_no, row in enumerate(reader, start=2):
        label = app_keys.get((row["Apple Identifier"] or "").strip()) or app_keys.get(
            (row["SKU"] or "").strip()
        )
        if label is None:
            continue
        _check_date(row["Begin Date"], report_date, line_no)
        kind = (row["Product Type Identifier"] or "").strip()
        if kind in FIRST_TIME_DOWNLOAD_TYPES:
            totals[label][0] += _units(row["Units"], line_no)
        elif kind in UPDATE_TYPES:
            totals[label][1] += _units(row["Units"], line_no)
    return {label: AppUnits(first, updates) for label, (first, updates) in totals.items()}


def _units(raw: str | None, line_no: int) -> float:
    try:
        return float((raw or "").strip())
    except ValueError:
        raise ReportFormatError(f"line {line_no}: Units {raw!r} is not a number") from None


def _check_date(raw: str | None, report_date: date, line_no: int) -> None:
    # A report for another day under this date would silently shift downloads between days.
    try:
        begin = datetime.strptime((raw or "").strip(), "%m/%d/%Y").date()
    except ValueError:
        raise ReportFormatError(f"line {line_no}: Begin Date {raw!r} is not MM/DD/YYYY") from None
    if begin != report_date:
        raise ReportFormatError(
            f"line {line_no}: Begin Date {begin.isoformat()} is not the requested "
            f"{report_date.isoformat()}"
        )


def app_keys(apps: Iterable[tuple[str, str | None, str | None]]) -> dict[str, str]:
    """Map each app's Apple Identifier and SKU to its label: (label, apple_id, sku) tuples."""
    keys: dict[str, str] = {}
    for label, apple_id, sku in apps:
        for key in (apple_id, sku):
            if key:
                keys[key] = label
    return keys
