"""The one clock the exporter, the CLI and the KPI computation read.

`now()` is the wall clock unless `DXKPI_AS_OF` names a moment (`2026-12-03`,
`2026-12-03T09:00`, with or without an offset; naive values are in the config's timezone).
That lets an operator ask "what did the KPIs say then" of a running exporter
(`DXKPI_AS_OF=2022-06-30 dxkpi exporter`) and lets tests replay time. Code that needs a clock
takes a `Clock` argument (a function returning unix seconds) so tests inject one directly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from dxkpi.collector.contract import TOKYO

__all__ = [
    "AS_OF_ENV",
    "Clock",
    "fixed_clock",
    "now",
    "parse_datetime",
    "parse_moment",
    "system_clock",
]

Clock = Callable[[], float]
AS_OF_ENV = "DXKPI_AS_OF"


def parse_datetime(text: str, tz: ZoneInfo = TOKYO) -> datetime:
    """An ISO date or datetime, aware; a date means its midnight, a naive time is in `tz`.

    Raises ValueError naming the accepted forms.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date or time: write e.g. 2026-12-03 or 2026-12-03T09:00+09:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def parse_moment(text: str, tz: ZoneInfo = TOKYO) -> float:
    """Unix seconds of `parse_datetime(text, tz)`."""
    return parse_datetime(text, tz).timestamp()


def system_clock() -> float:
    return time.time()


def fixed_clock(moment: float) -> Clock:
    """A clock that always says `moment` (unix seconds)."""
    return lambda: moment


def now(tz: ZoneInfo = TOKYO) -> float:
    """`DXKPI_AS_OF` when set, else the wall clock."""
    as_of = os.environ.get(AS_OF_ENV)
    return parse_moment(as_of, tz) if as_of else time.time()
