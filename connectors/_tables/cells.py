"""Reading one cell: numbers as Japanese spreadsheets write them, periods, and timestamps.

Cells come from CSV as strings and from .xlsx as str, int, float, datetime or None. Each parser
returns the value or raises ValueError with a reason a spreadsheet user understands.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from dxkpi.collector.contract import Granularity
from dxkpi.collector.errors import excerpt
from dxkpi.collector.fiscal import parse_period

# Cells that mean "no figure reported" in Japanese tables, after full-width folding.
_NO_VALUE = {"", "-", "‐", "―", "—", "–", "ー"}
# 1,234 and 1234.5 but not 1,5 (a decimal comma would silently become 15).
_NUMBER = re.compile(
    r"^(?P<sign>[-+△▲])?(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)(?P<pct>%)?$"
)
# Longer than any period label (`2026年04月01日`, `令和3年度`, ` FY2021 `) with room for spaces.
_LONGEST_PERIOD = 32
_MOMENT = re.compile(
    r"^(?P<y>\d{4})\s*[-/.年]\s*(?P<mo>\d{1,2})\s*[-/.月]\s*(?P<d>\d{1,2})\s*日?"
    r"(?:[ t]\s*(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.\d+)?)?)?$"
)


def is_blank(cell: object) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _fold(text: str) -> str:
    # NFKC turns full-width digits, ％ and ，into their ASCII forms.
    return unicodedata.normalize("NFKC", text).strip()


def cell_text(cell: object) -> str:
    """A label value: the cell as text, trimmed. Integral numbers lose their `.0`."""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return "" if cell is None else str(cell).strip()


def parse_number(cell: object, *, ratio: bool) -> float | None:
    """A numeric cell, or None when the cell reports no figure (empty or a dash).

    `48.2%` is 0.482 when the metric is a ratio and an error otherwise. `△12` and `▲12` are the
    Japanese accounting forms of -12.
    """
    if isinstance(cell, bool | date | time):
        raise ValueError(f"{excerpt(cell_text(cell))} is not a number")
    if isinstance(cell, int | float):
        if not math.isfinite(cell):
            raise ValueError(f"{cell!r} is not a finite number")
        return float(cell)
    text = _fold(str(cell)) if cell is not None else ""
    if text in _NO_VALUE:
        return None
    match = _NUMBER.match(text)
    if match is None:
        raise ValueError(f"{excerpt(cell_text(cell))} is not a number")
    value = float(match.group("digits").replace(",", ""))
    if match.group("sign") in ("-", "△", "▲"):
        value = -value
    if match.group("pct"):
        if not ratio:
            raise ValueError(
                f"{excerpt(cell_text(cell))} is a percentage but the metric's unit is not ratio"
                " (set unit: ratio to read 48.2% as 0.482)"
            )
        value /= 100
    return value


def parse_period_cell(cell: object) -> tuple[date, Granularity]:
    """The period a cell names: an Excel date cell is a DAY; text goes to `parse_period`."""
    if isinstance(cell, datetime):
        return cell.date(), Granularity.DAY
    if isinstance(cell, date):
        return cell, Granularity.DAY
    if is_blank(cell):
        raise ValueError("the period cell is empty")
    if isinstance(cell, float) and cell.is_integer():
        cell = int(cell)  # a year typed into a number cell: 2021 -> "2021" (FY2021)
    if isinstance(cell, int) and not isinstance(cell, bool) and 1000 <= cell <= 9999:
        return parse_period(str(cell))
    if not isinstance(cell, str):
        raise ValueError(f"{excerpt(cell)} is a number, not a period (format the cell as a date)")
    if len(cell) > _LONGEST_PERIOD:
        # No period label is this long; parse_period's errors would quote the whole cell.
        raise ValueError(f"{excerpt(cell)} is not a period (write e.g. 2026-04, FY2021, 令和3年度)")
    return parse_period(cell)


def parse_moment(cell: object, tz: ZoneInfo) -> datetime | None:
    """A timestamp cell as an aware datetime; naive times are local to `tz`. None when empty."""
    if is_blank(cell):
        return None
    if isinstance(cell, datetime):
        return cell.astimezone(tz) if cell.tzinfo else cell.replace(tzinfo=tz)
    if isinstance(cell, date):
        return datetime.combine(cell, time(), tzinfo=tz)
    if not isinstance(cell, str):
        raise ValueError(f"{excerpt(cell)} is not a date and time")
    text = _fold(cell)
    match = _MOMENT.match(text.lower())
    try:
        if match:
            y, mo, d, h, mi, s = (int(match[k] or 0) for k in ("y", "mo", "d", "h", "mi", "s"))
            return datetime(y, mo, d, h, mi, s, tzinfo=tz)
        moment = datetime.fromisoformat(text.upper())  # 2026-04-01T00:00:00Z, ...+09:00
    except ValueError:
        raise ValueError(
            f"{excerpt(cell)} is not a date and time (write e.g. 2026/04/01 09:30:00)"
        ) from None
    return moment.astimezone(tz) if moment.tzinfo else moment.replace(tzinfo=tz)
