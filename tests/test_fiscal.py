from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from dxkpi.collector.contract import TOKYO, Granularity
from dxkpi.collector.fiscal import (
    fiscal_year_end,
    fiscal_year_of,
    fiscal_year_start,
    format_fiscal_year,
    parse_fiscal_year,
    parse_period,
    period_end,
    reiwa_label,
)

DAY, MONTH, FY = Granularity.DAY, Granularity.MONTH, Granularity.FISCAL_YEAR


# -- fiscal_year_of --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (date(2022, 3, 31), 2021),
        (date(2022, 4, 1), 2022),
        (date(2022, 1, 1), 2021),
        (date(2021, 12, 31), 2021),
        # Naive datetimes are local time already.
        (datetime(2022, 3, 31, 23, 59, 59), 2021),
        (datetime(2022, 4, 1, 0, 0), 2022),
        # 2022-03-31 15:00 UTC is 2022-04-01 00:00 in Tokyo: already the new fiscal year.
        (datetime(2022, 3, 31, 15, 0, tzinfo=UTC), 2022),
        (datetime(2022, 3, 31, 14, 59, 59, tzinfo=UTC), 2021),
        (datetime(2022, 4, 1, 0, 0, tzinfo=TOKYO), 2022),
        # Late evening on March 31 in New York is April 1 in Tokyo.
        (datetime(2022, 3, 31, 20, 0, tzinfo=timezone(timedelta(hours=-4))), 2022),
    ],
)
def test_fiscal_year_of(moment: date, expected: int) -> None:
    assert fiscal_year_of(moment) == expected


def test_fiscal_year_of_other_timezone_keeps_the_utc_date() -> None:
    moment = datetime(2022, 3, 31, 15, 0, tzinfo=UTC)
    assert fiscal_year_of(moment, tz=ZoneInfo("UTC")) == 2021


def test_fiscal_year_of_custom_start() -> None:
    # A calendar-year "fiscal year" and one starting July 1.
    assert fiscal_year_of(date(2022, 1, 1), start_month=1) == 2022
    assert fiscal_year_of(date(2021, 12, 31), start_month=1) == 2021
    assert fiscal_year_of(date(2022, 6, 30), start_month=7) == 2021
    assert fiscal_year_of(date(2022, 7, 1), start_month=7) == 2022
    assert fiscal_year_of(date(2022, 4, 15), start_day=16) == 2021
    assert fiscal_year_of(date(2022, 4, 16), start_day=16) == 2022


def test_fiscal_year_of_rejects_impossible_start() -> None:
    with pytest.raises(ValueError):
        fiscal_year_of(date(2022, 1, 1), start_month=2, start_day=30)


# -- fiscal_year_start / end --------------------------------------------------------------------


def test_fiscal_year_start_is_tokyo_midnight_april_first() -> None:
    start = fiscal_year_start(2021)
    assert start == datetime(2021, 4, 1, tzinfo=TOKYO)
    assert start.utcoffset() == timedelta(hours=9)
    assert start.astimezone(UTC) == datetime(2021, 3, 31, 15, 0, tzinfo=UTC)


def test_fiscal_year_end_is_next_start_exclusive() -> None:
    assert fiscal_year_end(2021) == fiscal_year_start(2022) == datetime(2022, 4, 1, tzinfo=TOKYO)
    last_second = fiscal_year_end(2021) - timedelta(seconds=1)
    assert fiscal_year_of(last_second) == 2021
    assert fiscal_year_of(fiscal_year_end(2021)) == 2022


def test_fiscal_year_start_custom() -> None:
    utc = ZoneInfo("UTC")
    assert fiscal_year_start(2021, start_month=7, tz=utc) == datetime(2021, 7, 1, tzinfo=utc)
    assert fiscal_year_end(2021, start_month=1) == datetime(2022, 1, 1, tzinfo=TOKYO)


# -- parse_fiscal_year -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("R3", 2021),
        ("r3", 2021),
        ("R03", 2021),
        ("R3年度", 2021),
        ("令和3年度", 2021),
        ("令和3", 2021),
        ("令和元年度", 2019),
        ("R元", 2019),
        ("R1", 2019),
        ("R7", 2025),
        ("H31", 2019),
        ("平成31年度", 2019),
        ("平成元年度", 1989),
        ("平成34年度", 2022),  # targets written before the era change
        ("H30", 2018),
        ("FY2021", 2021),
        ("fy2021", 2021),
        ("FY 2021", 2021),
        ("2021年度", 2021),
        ("2021", 2021),
        ("Ｒ３", 2021),
        ("Ｒ３年度", 2021),
        ("ＦＹ２０２１", 2021),
        ("令和３年度", 2021),
        ("２０２１年度", 2021),
        ("  R3 ", 2021),
        ("\u3000令和3年度\u3000", 2021),  # ideographic spaces around
        ("㋿3年度", 2021),  # the one-character Reiwa era sign
    ],
)
def test_parse_fiscal_year(label: str, expected: int) -> None:
    assert parse_fiscal_year(label) == expected


@pytest.mark.parametrize(
    "label", ["", "R", "FY", "令和", "2021年", "S60", "R3年", "FY2021年度x", "20211", "abc", "R123"]
)
def test_parse_fiscal_year_rejects_with_accepted_forms(label: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_fiscal_year(label)
    message = str(info.value)
    assert repr(label) in message
    assert "accepted forms: R3, R3年度, 令和3年度, 令和元年度, H31, 平成31年度, FY2021" in message


@pytest.mark.parametrize("label", ["FY21", "fy 21", "21年度", "２１年度"])
def test_parse_fiscal_year_rejects_two_digit_western_years(label: str) -> None:
    with pytest.raises(ValueError, match=r"two-digit year.*write the full year"):
        parse_fiscal_year(label)


def test_parse_fiscal_year_rejects_era_year_zero() -> None:
    with pytest.raises(ValueError, match=r"era year 0 does not exist \(write R元 or R1\)"):
        parse_fiscal_year("R0")


# -- labels ----------------------------------------------------------------------------------


def test_reiwa_label() -> None:
    assert reiwa_label(2021) == "R3"
    assert reiwa_label(2019) == "R1"
    with pytest.raises(ValueError, match="before the Reiwa era"):
        reiwa_label(2018)


@pytest.mark.parametrize(
    ("fy", "expected"),
    [
        (2021, "FY2021 (R3 / 令和3年度)"),
        (2019, "FY2019 (R1 / 令和元年度)"),
        (2018, "FY2018 (H30 / 平成30年度)"),
        (1989, "FY1989 (H1 / 平成元年度)"),
        (1980, "FY1980"),
    ],
)
def test_format_fiscal_year(fy: int, expected: str) -> None:
    assert format_fiscal_year(fy) == expected


@pytest.mark.parametrize("fy", [1990, 2018, 2019, 2020, 2025, 2030])
def test_labels_round_trip(fy: int) -> None:
    assert parse_fiscal_year(f"FY{fy}") == fy
    japanese = format_fiscal_year(fy).split(" / ")[1].rstrip(")")
    assert parse_fiscal_year(japanese) == fy
    if fy >= 2019:
        assert parse_fiscal_year(reiwa_label(fy)) == fy


# -- parse_period ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-04-01", (date(2021, 4, 1), DAY)),
        ("2021/4/1", (date(2021, 4, 1), DAY)),
        ("2021/04/01", (date(2021, 4, 1), DAY)),
        ("2021.4.1", (date(2021, 4, 1), DAY)),
        ("2021年4月1日", (date(2021, 4, 1), DAY)),
        ("2021年 4月 1日", (date(2021, 4, 1), DAY)),
        ("令和3年4月1日", (date(2021, 4, 1), DAY)),
        ("令和元年5月1日", (date(2019, 5, 1), DAY)),
        ("R4.3.31", (date(2022, 3, 31), DAY)),
        ("２０２１／４／１", (date(2021, 4, 1), DAY)),
        ("2021/4/1 0:00", (date(2021, 4, 1), DAY)),
        ("2021-04-01 00:00:00", (date(2021, 4, 1), DAY)),
        ("2021-04-01T00:00:00", (date(2021, 4, 1), DAY)),
        ("2024-02-29", (date(2024, 2, 29), DAY)),
        ("2021-04", (date(2021, 4, 1), MONTH)),
        ("2021/4", (date(2021, 4, 1), MONTH)),
        ("2021年4月", (date(2021, 4, 1), MONTH)),
        ("2021年12月", (date(2021, 12, 1), MONTH)),
        ("令和3年4月", (date(2021, 4, 1), MONTH)),
        ("R3", (date(2021, 4, 1), FY)),
        ("令和3年度", (date(2021, 4, 1), FY)),
        ("FY2022", (date(2022, 4, 1), FY)),
        ("2021年度", (date(2021, 4, 1), FY)),
        ("2021", (date(2021, 4, 1), FY)),
        (" H31 ", (date(2019, 4, 1), FY)),
    ],
)
def test_parse_period(text: str, expected: tuple[date, Granularity]) -> None:
    assert parse_period(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2021-02-30", "is not a valid period: day is out of range"),
        ("2023-02-29", "is not a valid period: day is out of range"),
        ("2021-13", "is not a valid period: month must be in 1..12"),
        ("2021/4/1 9:30", "is not a period; accepted forms: a day"),  # a time, not a day
        ("4/1", "is not a period; accepted forms: a day"),
        ("April 2021", "is not a period; accepted forms: a day"),
        ("", "is not a period; accepted forms: a day"),
        ("FY21", "two-digit year"),
        ("令和0年4月", "era year 0 does not exist"),
    ],
)
def test_parse_period_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_period(text)
    assert repr(text) in str(info.value)
    assert why in str(info.value)


@pytest.mark.parametrize(
    ("start", "granularity", "end"),
    [
        (date(2021, 4, 1), DAY, date(2021, 4, 2)),
        (date(2022, 2, 28), DAY, date(2022, 3, 1)),
        (date(2021, 4, 1), MONTH, date(2021, 5, 1)),
        (date(2021, 12, 1), MONTH, date(2022, 1, 1)),
        (date(2021, 4, 1), FY, date(2022, 4, 1)),
    ],
)
def test_period_end(start: date, granularity: Granularity, end: date) -> None:
    assert period_end(start, granularity) == end


def test_period_end_rejects_instant() -> None:
    with pytest.raises(ValueError):
        period_end(date(2021, 4, 1), Granularity.INSTANT)
