"""Reading Google Play's monthly installs overview CSV (`installs_<package>_<YYYYMM>_overview.csv`).

Play writes these files in UTF-16 (little-endian, with a byte-order mark). Columns are found by
header name: their names changed over the years, so each measure lists the names it accepts,
best first. A file where none of a measure's names is present is refused with the headers seen.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

# Unique users installing for the first time matches Apple's "first-time download" best;
# "Install events" (2021 onwards) also counts re-installs; device installs count every device.
DOWNLOAD_COLUMNS = ("Daily User Installs", "Install events", "Daily Device Installs")
UNINSTALL_COLUMNS = ("Daily User Uninstalls", "Uninstall events", "Daily Device Uninstalls")
DATE_COLUMNS = ("Date",)
PACKAGE_COLUMNS = ("Package Name", "Package name")


class ReportFormatError(ValueError):
    """The file cannot be read; `line` is the 1-based line the problem is on, if any."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True, slots=True)
class DailyInstalls:
    day: date
    downloads: float
    uninstalls: float


@dataclass(frozen=True, slots=True)
class InstallsReport:
    rows: dict[date, DailyInstalls]
    download_column: str
    uninstall_column: str


def decode(payload: bytes) -> str:
    """UTF-16 by its byte-order mark (what Play writes); UTF-8 for files someone re-saved."""
    if payload.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif len(payload) >= 2 and payload[1] == 0 and payload[0] != 0:
        encoding = "utf-16-le"  # a BOM-less UTF-16LE file: ASCII text with every second byte 0
    else:
        encoding = "utf-8-sig"
    try:
        return payload.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ReportFormatError(f"not {encoding} text ({exc.reason})") from None


def parse(text: str, package: str) -> InstallsReport:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise ReportFormatError("the file is empty", 1)
    names = [" ".join(h.split()) for h in header]
    date_at = _column(names, DATE_COLUMNS, "the date")
    downloads_at = _column(names, DOWNLOAD_COLUMNS, "installs")
    uninstalls_at = _column(names, UNINSTALL_COLUMNS, "uninstalls")
    package_at = _find(names, PACKAGE_COLUMNS)
    rows: dict[date, DailyInstalls] = {}
    for line, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(names):
            raise ReportFormatError(f"{len(cells)} cells where the header has {len(names)}", line)
        if package_at is not None and cells[package_at].strip() not in ("", package):
            continue
        day = _date(cells[date_at], line)
        if day in rows:
            raise ReportFormatError(f"date {day} appears twice", line)
        rows[day] = DailyInstalls(
            day, _count(cells[downloads_at], line), _count(cells[uninstalls_at], line)
        )
    return InstallsReport(rows, names[downloads_at], names[uninstalls_at])


def _find(names: Sequence[str], wanted: Sequence[str]) -> int | None:
    folded = [n.casefold() for n in names]
    for name in wanted:
        if name.casefold() in folded:
            return folded.index(name.casefold())
    return None


def _column(names: Sequence[str], wanted: Sequence[str], what: str) -> int:
    found = _find(names, wanted)
    if found is None:
        raise ReportFormatError(
            f"no column for {what} (looked for {', '.join(map(repr, wanted))}); "
            f"headers seen: {', '.join(names)}",
            1,
        )
    return found


def _date(raw: str, line: int) -> date:
    text = raw.strip()
    try:
        # Play writes 2026-11-01; some exports append a time ("2026-11-01 00:00:00 UTC").
        return date.fromisoformat(text[:10])
    except ValueError:
        raise ReportFormatError(f"date {raw!r} is not YYYY-MM-DD", line) from None


def _count(raw: str, line: int) -> float:
    text = raw.strip()
    if not text:
        return 0.0  # Play leaves a cell empty on days without events
    try:
        return float(text)
    except ValueError:
        raise ReportFormatError(f"count {raw!r} is not a number", line) from None
