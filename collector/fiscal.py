"""Japanese fiscal years (年度) and the period labels found in prefectural spreadsheets.

A fiscal year runs from April 1 to March 31 and is named by the calendar year it starts in:
FY2021 = 2021-04-01 .. 2022-03-31 = 令和3年度 (R3). Era years: Reiwa N = FY 2018+N (令和元年度 =
R1 = FY2019), Heisei N = FY 1988+N (平成31年度 = H31 = FY2019). Heisei years past 31 are accepted
because plans written before the 2019 era change name targets such as 平成34年度 (= FY2022).

Two-digit western years (`FY21`, `21年度`) are rejected on purpose: in Japanese documents `21年度`
is as likely to mean 平成21年度 (FY2009) as FY2021, and a silent misreading shifts a KPI by years.

Every function here is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from dxkpi.collector.contract import TOKYO, Granularity

__all__ = [
    "ACCEPTED_FISCAL_YEAR_FORMS",
    "ACCEPTED_PERIOD_FORMS",
    "fiscal_year_end",
    "fiscal_year_of",
    "fiscal_year_start",
    "format_fiscal_year",
    "japanese_fiscal_year",
    "parse_fiscal_year",
    "parse_period",
    "period_end",
    "reiwa_label",
]

REIWA_OFFSET = 2018  # Reiwa N = 2018 + N
HEISEI_OFFSET = 1988  # Heisei N = 1988 + N

ACCEPTED_FISCAL_YEAR_FORMS = (
    "R3, R3年度, 令和3年度, 令和元年度, H31, 平成31年度, FY2021, 2021年度, 2021 "
    "(full-width characters allowed; two-digit western years such as FY21 are not)"
)
ACCEPTED_PERIOD_FORMS = (
    "a day (2021-04-01, 2021/4/1, 2021年4月1日, 令和3年4月1日), "
    "a month (2021-04, 2021/4, 2021年4月, 令和3年4月) or a fiscal year "
    f"({ACCEPTED_FISCAL_YEAR_FORMS})"
)

_ERAS = {"r": REIWA_OFFSET, "令和": REIWA_OFFSET, "h": HEISEI_OFFSET, "平成": HEISEI_OFFSET}
_ERA_YEAR = r"(?P<era>令和|平成|[rh])\s*(?P<era_year>元|\d{1,2})"
_WESTERN_YEAR = r"(?P<year>\d{4})"
_FISCAL_YEAR = re.compile(
    rf"^(?:{_ERA_YEAR}\s*(?:年度)?|fy\s*{_WESTERN_YEAR}|{_WESTERN_YEAR.replace('year', 'plain')}"
    r"\s*(?:年度)?)$"
)
_TWO_DIGIT_YEAR = re.compile(r"^(?:fy\s*\d{2}|\d{2}\s*年度)$")
_YEAR = rf"(?:{_ERA_YEAR}|{_WESTERN_YEAR})"
# A trailing midnight ("2021/4/1 0:00") is what spreadsheets write when they save a date as CSV.
_MIDNIGHT = r"(?:[ t]0?0:00(?::00)?)?"
_DAY_PATTERNS = (
    re.compile(
        rf"^{_YEAR}\s*[-/.]\s*(?P<month>\d{{1,2}})\s*[-/.]\s*(?P<day>\d{{1,2}}){_MIDNIGHT}$"
    ),
    re.compile(rf"^{_YEAR}\s*年\s*(?P<month>\d{{1,2}})\s*月\s*(?P<day>\d{{1,2}})\s*日$"),
)
_MONTH_PATTERNS = (
    re.compile(rf"^{_YEAR}\s*[-/.]\s*(?P<month>\d{{1,2}})$"),
    re.compile(rf"^{_YEAR}\s*年\s*(?P<month>\d{{1,2}})\s*月$"),
)


def _normalise(text: str) -> str:
    # NFKC folds full-width digits and letters (Ｒ３ -> R3) and the era ligature ㋿ -> 令和.
    return unicodedata.normalize("NFKC", text).strip().lower()


def _year_from(match: re.Match[str]) -> int:
    era = match.group("era")
    if era is None:
        return int(match.group("year"))
    raw = match.group("era_year")
    era_year = 1 if raw == "元" else int(raw)
    if era_year < 1:
        raise ValueError(f"era year 0 does not exist (write {era.upper()}元 or {era.upper()}1)")
    return _ERAS[era] + era_year


def _local_date(moment: date | datetime, tz: ZoneInfo) -> date:
    if isinstance(moment, datetime):
        # Naive datetimes are taken as already being local time in `tz`.
        return (moment.astimezone(tz) if moment.tzinfo else moment).date()
    return moment


def fiscal_year_of(
    moment: date | datetime, *, start_month: int = 4, start_day: int = 1, tz: ZoneInfo = TOKYO
) -> int:
    """The fiscal year `moment` falls in. Aware datetimes are converted to `tz` first, so
    2022-03-31T15:00Z (= April 1, 00:00 in Tokyo) is already in FY2022."""
    day = _local_date(moment, tz)
    date(day.year, start_month, start_day)  # raises ValueError for an impossible start
    return day.year if (day.month, day.day) >= (start_month, start_day) else day.year - 1


def fiscal_year_start(
    fy: int, *, start_month: int = 4, start_day: int = 1, tz: ZoneInfo = TOKYO
) -> datetime:
    """Midnight in `tz` of the first day of fiscal year `fy`."""
    return datetime(fy, start_month, start_day, tzinfo=tz)


def fiscal_year_end(
    fy: int, *, start_month: int = 4, start_day: int = 1, tz: ZoneInfo = TOKYO
) -> datetime:
    """Exclusive end of fiscal year `fy`: the start of the next one."""
    return fiscal_year_start(fy + 1, start_month=start_month, start_day=start_day, tz=tz)


def parse_fiscal_year(label: str) -> int:
    """The fiscal year a label names: R3, 令和3年度, 令和元年度, H31, FY2021, 2021年度, 2021."""
    normal = _normalise(label)
    if _TWO_DIGIT_YEAR.match(normal):
        raise ValueError(
            f"{label!r} has a two-digit year, which could be Heisei or western: "
            "write the full year (FY2021, 2021年度) or the era (R3, 平成21年度)"
        )
    match = _FISCAL_YEAR.match(normal)
    if match is None:
        raise ValueError(
            f"{label!r} is not a fiscal year; accepted forms: {ACCEPTED_FISCAL_YEAR_FORMS}"
        )
    if match.group("plain") is not None:
        return int(match.group("plain"))
    return _year_from(match)


def reiwa_label(fy: int) -> str:
    """The short Reiwa label of a fiscal year: 2021 -> "R3". Reiwa starts with FY2019."""
    if fy <= REIWA_OFFSET:
        raise ValueError(f"FY{fy} is before the Reiwa era (R1 = FY2019)")
    return f"R{fy - REIWA_OFFSET}"


def _era_year(fy: int) -> tuple[str, str, int] | None:
    """(short era, era, year in it) of a fiscal year: 2021 -> ("R", "令和", 3)."""
    for offset, short, long in ((REIWA_OFFSET, "R", "令和"), (HEISEI_OFFSET, "H", "平成")):
        if fy > offset:
            return short, long, fy - offset
    return None


def japanese_fiscal_year(fy: int) -> str | None:
    """The Japanese name of a fiscal year: 2021 -> "令和3年度", 2019 -> "令和元年度"."""
    era = _era_year(fy)
    if era is None:
        return None
    _, long, n = era
    return f"{long}{'元' if n == 1 else n}年度"


def _japanese_label(fy: int) -> str | None:
    era = _era_year(fy)
    return None if era is None else f"{era[0]}{era[2]} / {japanese_fiscal_year(fy)}"


def format_fiscal_year(fy: int) -> str:
    """A label for people: 2021 -> "FY2021 (R3 / 令和3年度)", 2019 -> "FY2019 (R1 / 令和元年度)"."""
    japanese = _japanese_label(fy)
    return f"FY{fy} ({japanese})" if japanese else f"FY{fy}"


def parse_period(text: str) -> tuple[date, Granularity]:
    """The period a spreadsheet cell names, as (first day, granularity).

    2021-04-01, 2021/4/1, 2021年4月1日 -> DAY; 2021-04, 2021/4, 2021年4月 -> MONTH; any fiscal-year
    label (R3, 令和3年度, FY2021, 2021) -> FISCAL_YEAR starting April 1. Era years work in day and
    month forms too (令和3年4月1日). Raises ValueError naming the accepted forms.
    """
    normal = _normalise(text)
    try:
        for patterns, granularity in (
            (_DAY_PATTERNS, Granularity.DAY),
            (_MONTH_PATTERNS, Granularity.MONTH),
        ):
            for pattern in patterns:
                match = pattern.match(normal)
                if match:
                    day = int(match.group("day")) if granularity is Granularity.DAY else 1
                    return date(_year_from(match), int(match.group("month")), day), granularity
        if _FISCAL_YEAR.match(normal) or _TWO_DIGIT_YEAR.match(normal):
            return fiscal_year_start(parse_fiscal_year(text)).date(), Granularity.FISCAL_YEAR
    except ValueError as exc:  # e.g. 2021-02-30 or 令和0年: say which cell text was impossible
        raise ValueError(f"{text!r} is not a valid period: {exc}") from None
    raise ValueError(f"{text!r} is not a period; accepted forms: {ACCEPTED_PERIOD_FORMS}")


def period_end(start: date, granularity: Granularity) -> date:
    """Exclusive end of the period starting at `start` (DAY, MONTH or FISCAL_YEAR)."""
    if granularity is Granularity.DAY:
        return start + timedelta(days=1)
    if granularity is Granularity.MONTH:
        return date(start.year + start.month // 12, start.month % 12 + 1, 1)
    if granularity is Granularity.FISCAL_YEAR:
        return date(start.year + 1, start.month, start.day)
    raise ValueError(f"{granularity} periods have no calendar end")
