from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dxkpi.collector.contract import TOKYO, Granularity, MetricSpec, Observation, Window
from dxkpi.collector.errors import FatalSourceError, RetryableSourceError, SourceDataError
from dxkpi.collector.testing import ConnectorContract, observations
from dxkpi.connectors.csvfile import CsvFileConnector
from dxkpi.connectors.csvfile.tests.fake_csvfile import ALL_TIME, FileShare, by_key, window

DAY, MONTH, FY = Granularity.DAY, Granularity.MONTH, Granularity.FISCAL_YEAR


@pytest.fixture
def share(tmp_path: Path) -> FileShare:
    return FileShare(tmp_path)


def views_source(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "path": "views.csv",
        "period_column": "date",
        "metrics": [{"name": "page_views", "column": "views", "unit": "page_views"}],
    }
    settings.update(overrides)
    return settings


def run(connector: CsvFileConnector, win: Window = ALL_TIME) -> list[Observation]:
    return observations(connector.collect(win))


def run_until_error(
    connector: CsvFileConnector, win: Window = ALL_TIME
) -> tuple[list[Observation], Exception]:
    """What the connector yielded before it raised, and what it raised."""
    got: list[Observation] = []
    with pytest.raises(Exception) as info:
        for item in connector.collect(win):
            assert isinstance(item, Observation)
            got.append(item)
    return got, info.value


def tokyo(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO)


# -- encodings -------------------------------------------------------------------------------

# ① and 髙 exist in CP932 (Windows) but not in plain Shift_JIS: Excel files use them.
JAPANESE_ROWS = [
    ["日付", "課名", "件数"],
    ["2026/4/1", "①髙橋課", "12"],
    ["2026/4/2", "デジタル推進課", "7"],
]
JAPANESE_SOURCE = {
    "path": "counts.csv",
    "period_column": "日付",
    "labels": {"section": "課名"},
    "metrics": [{"name": "requests", "column": "件数", "unit": "requests"}],
}
JAPANESE_EXPECTED = {
    ("requests", "2026-04-01", (("section", "①髙橋課"),)): 12.0,
    ("requests", "2026-04-02", (("section", "デジタル推進課"),)): 7.0,
}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_encoding_detected(share: FileShare, encoding: str) -> None:
    share.csv("counts.csv", JAPANESE_ROWS, encoding=encoding)
    assert by_key(run(share.connector(**JAPANESE_SOURCE))) == JAPANESE_EXPECTED


def test_excel_unicode_text_export_is_guessed(share: FileShare) -> None:
    # Excel's "Unicode text" export: UTF-16 with BOM, tab-separated. Neither strict attempt
    # decodes it, so charset-normalizer's guess is used.
    share.csv("counts.csv", JAPANESE_ROWS, encoding="utf-16", delimiter="\t")
    got = run(share.connector(**JAPANESE_SOURCE, delimiter="\t"))
    assert by_key(got) == JAPANESE_EXPECTED


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_or_without_bom_is_read(share: FileShare, encoding: str) -> None:
    share.csv("counts.csv", JAPANESE_ROWS, encoding=encoding, delimiter="\t")
    got = run(share.connector(**JAPANESE_SOURCE, delimiter="\t"))
    assert by_key(got) == JAPANESE_EXPECTED


@pytest.mark.parametrize("forced", ["utf-8", "cp932"])
def test_utf16_read_with_a_forced_encoding_says_so_not_a_missing_header(
    share: FileShare, forced: str
) -> None:
    share.csv("counts.csv", JAPANESE_ROWS, encoding="utf-16")
    _, error = run_until_error(share.connector(**JAPANESE_SOURCE, encoding=forced))
    assert f"counts.csv: line 1 is not valid {forced}" in str(error)
    assert "or set `encoding: auto`" in str(error)
    assert "not found in the header" not in str(error)


def test_a_tab_separated_file_read_with_commas_says_to_set_the_delimiter(share: FileShare) -> None:
    share.csv("counts.csv", JAPANESE_ROWS, encoding="utf-16", delimiter="\t")
    _, error = run_until_error(share.connector(**JAPANESE_SOURCE))
    assert "not found in the header" in str(error)
    assert 'the file is separated by it, so set `delimiter: "\\t"`' in str(error)


def test_forced_encoding(share: FileShare) -> None:
    share.csv("counts.csv", JAPANESE_ROWS, encoding="cp932")
    assert by_key(run(share.connector(**JAPANESE_SOURCE, encoding="cp932"))) == JAPANESE_EXPECTED


def test_forced_bom_file_as_plain_utf8_still_matches_header(share: FileShare) -> None:
    share.csv("counts.csv", JAPANESE_ROWS, encoding="utf-8-sig")
    assert by_key(run(share.connector(**JAPANESE_SOURCE, encoding="utf-8"))) == JAPANESE_EXPECTED


def test_forced_wrong_encoding_names_the_line(share: FileShare) -> None:
    share.csv("counts.csv", JAPANESE_ROWS, encoding="cp932")
    got, error = run_until_error(share.connector(**JAPANESE_SOURCE, encoding="utf-8"))
    assert got == []
    assert isinstance(error, SourceDataError)
    assert "counts.csv: line 1 is not valid utf-8 (byte 0); save the file as UTF-8 or " in str(
        error
    )


# -- xlsx ------------------------------------------------------------------------------------


def test_xlsx_date_cells_strings_and_numbers(share: FileShare) -> None:
    share.xlsx(
        "paper.xlsx",
        {
            "メモ": [["この シートは 読まない"]],
            "購入実績": [
                ["月", "購入枚数", "割合"],
                [datetime(2026, 4, 1), 1_250_000, 0.25],  # a date cell as Excel stores it
                [date(2026, 5, 1), "1,300,000", "30%"],
                [None, None, None],  # a blank row inside the table is skipped
                ["2026/6/1", 1_100_000.0, 0.2],
                ["令和8年7月", "１２０００００", None],
            ],
        },
        formats={"A2": "yyyy/m", "C2": "0%"},
    )
    connector = share.connector(
        path="paper.xlsx",
        sheet="購入実績",
        period_column="月",
        granularity="month",
        metrics=[
            {"name": "copy_paper_purchased_sheets", "column": "購入枚数", "unit": "sheets"},
            {"name": "recycled_share", "column": "割合", "unit": "ratio", "aggregation": "none"},
        ],
    )
    got = run(connector)
    assert {o.granularity for o in got} == {MONTH}
    assert by_key(got) == {
        ("copy_paper_purchased_sheets", "2026-04-01", ()): 1_250_000,
        ("copy_paper_purchased_sheets", "2026-05-01", ()): 1_300_000,
        ("copy_paper_purchased_sheets", "2026-06-01", ()): 1_100_000,
        ("copy_paper_purchased_sheets", "2026-07-01", ()): 1_200_000,
        ("recycled_share", "2026-04-01", ()): 0.25,
        ("recycled_share", "2026-05-01", ()): 0.30,
        ("recycled_share", "2026-06-01", ()): 0.2,
    }


def test_xlsx_first_sheet_by_default_and_row_numbers_count_blank_rows(share: FileShare) -> None:
    share.xlsx(
        "views.xlsx",
        {
            "first": [["date", "views"], [datetime(2026, 4, 1), 5], [None, None], ["bad", 1]],
            "second": [["date", "views"], [datetime(2026, 4, 1), 99]],
        },
    )
    got, error = run_until_error(share.connector(**views_source(path="views.xlsx")))
    assert got == []
    assert "views.xlsx:4: column 'date': 'bad' is not a period" in str(error)


def test_xlsx_missing_sheet_lists_sheets(share: FileShare) -> None:
    share.xlsx("views.xlsx", {"2025": [["date", "views"]], "2026": [["date", "views"]]})
    _, error = run_until_error(share.connector(**views_source(path="views.xlsx", sheet="集計")))
    assert isinstance(error, SourceDataError)
    assert "views.xlsx: no sheet '集計'; the workbook's sheets are '2025', '2026'" in str(error)


def test_not_a_workbook(share: FileShare) -> None:
    share.path("views.xlsx").write_bytes(b"\xd0\xcf\x11\xe0 an old .xls file")
    _, error = run_until_error(share.connector(**views_source(path="views.xlsx")))
    assert isinstance(error, SourceDataError)
    assert "views.xlsx: not a readable .xlsx workbook (an old .xls, or damaged?)" in str(error)


def test_format_overrides_suffix(share: FileShare) -> None:
    share.csv("views.txt", [["date", "views"], ["2026-04-01", "3"]])
    share.xlsx("export.dat", {"s": [["date", "views"], [datetime(2026, 4, 2), 4]]})
    assert by_key(run(share.connector(**views_source(path="views.txt")))) == {
        ("page_views", "2026-04-01", ()): 3
    }
    assert by_key(run(share.connector(**views_source(path="export.dat", format="xlsx")))) == {
        ("page_views", "2026-04-02", ()): 4
    }


# -- periods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "start", "granularity"),
    [
        ("2026-04-01", date(2026, 4, 1), DAY),
        ("2026/4/1", date(2026, 4, 1), DAY),
        ("2026年4月1日", date(2026, 4, 1), DAY),
        ("令和8年4月1日", date(2026, 4, 1), DAY),
        ("２０２６／４／１", date(2026, 4, 1), DAY),
        ("2026/4/1 0:00", date(2026, 4, 1), DAY),
        ("2026-04", date(2026, 4, 1), MONTH),
        ("2026/4", date(2026, 4, 1), MONTH),
        ("2026年4月", date(2026, 4, 1), MONTH),
        ("R3", date(2021, 4, 1), FY),
        ("令和3年度", date(2021, 4, 1), FY),
        ("令和元年度", date(2019, 4, 1), FY),
        ("FY2021", date(2021, 4, 1), FY),
        ("H30", date(2018, 4, 1), FY),
        ("2021年度", date(2021, 4, 1), FY),
        ("Ｒ３年度", date(2021, 4, 1), FY),
    ],
)
def test_period_forms_with_auto_granularity(
    share: FileShare, cell: str, start: date, granularity: Granularity
) -> None:
    share.csv("views.csv", [["date", "views"], [cell, "10"]])
    [obs] = run(share.connector(**views_source()))
    assert obs.start == datetime(start.year, start.month, start.day, tzinfo=TOKYO)
    assert obs.start.utcoffset() == timedelta(hours=9)
    assert obs.granularity is granularity


def test_number_cell_year_is_a_fiscal_year(share: FileShare) -> None:
    share.xlsx("views.xlsx", {"s": [["date", "views"], [2021, 10], [2022.0, 11]]})
    got = run(share.connector(**views_source(path="views.xlsx", granularity="fiscal_year")))
    assert [(o.start, o.granularity) for o in got] == [
        (tokyo(2021, 4, 1), FY),
        (tokyo(2022, 4, 1), FY),
    ]


def test_configured_granularity_accepts_period_starts(share: FileShare) -> None:
    share.csv("views.csv", [["date", "views"], ["2026/4/1", "1"], ["2026年5月", "2"]])
    got = run(share.connector(**views_source(granularity="month")))
    assert [(o.start, o.granularity) for o in got] == [
        (tokyo(2026, 4, 1), MONTH),
        (tokyo(2026, 5, 1), MONTH),
    ]
    share.csv("views.csv", [["date", "views"], ["2021/4/1", "1"], ["2022-04", "2"], ["R5", "3"]])
    got = run(share.connector(**views_source(granularity="fiscal_year")))
    assert [o.start.year for o in got] == [2021, 2022, 2023]
    assert {o.granularity for o in got} == {FY}


def test_configured_granularity_rejects_other_periods(share: FileShare) -> None:
    share.csv(
        "views.csv",
        [["date", "views"], ["2026/4/15", "1"], ["R3", "2"], ["2026/5/1", "3"]],
    )
    got, error = run_until_error(share.connector(**views_source(granularity="month")))
    assert got == []
    assert str(error).splitlines()[1:] == [
        "  views.csv:2: column 'date': '2026/4/15' is a day, not the first day of a month as "
        "granularity month needs",
        "  views.csv:3: column 'date': 'R3' is a fiscal year but granularity is month",
    ]
    share.csv("views.csv", [["date", "views"], ["2026/5/1", "1"]])
    _, error = run_until_error(share.connector(**views_source(granularity="fiscal_year")))
    assert (
        "'2026/5/1' is a day, not April 1 (a fiscal year start) as granularity fiscal_year"
        in str(error)
    )


# -- values ----------------------------------------------------------------------------------


def test_value_forms(share: FileShare) -> None:
    share.csv(
        "kpi.csv",
        [
            ["月", "件数", "率", "時間"],
            ["2026/4", "1,234", "48.2%", "90"],
            ["2026/5", "１，２３４", "４８．２％", "1.5"],
            ["2026/6", "△12", "0.5", ""],
            ["2026/7", "", "-", "―"],
            ["2026/8", "0", " 50% ", "0"],
        ],
    )
    connector = share.connector(
        path="kpi.csv",
        period_column="月",
        metrics=[
            {"name": "applications", "column": "件数", "unit": "applications"},
            {"name": "online_rate", "column": "率", "unit": "ratio", "aggregation": "none"},
            {"name": "handling_seconds", "column": "時間", "unit": "seconds", "scale": 60},
        ],
    )
    assert by_key(run(connector)) == {
        ("applications", "2026-04-01", ()): 1234,
        ("applications", "2026-05-01", ()): 1234,
        ("applications", "2026-06-01", ()): -12,
        ("applications", "2026-08-01", ()): 0,
        ("online_rate", "2026-04-01", ()): pytest.approx(0.482),
        ("online_rate", "2026-05-01", ()): pytest.approx(0.482),
        ("online_rate", "2026-06-01", ()): 0.5,
        ("online_rate", "2026-08-01", ()): 0.5,
        ("handling_seconds", "2026-04-01", ()): 5400,
        ("handling_seconds", "2026-05-01", ()): 90,
        ("handling_seconds", "2026-08-01", ()): 0,
    }


def test_bad_values_are_bad_rows(share: FileShare) -> None:
    share.csv(
        "kpi.csv",
        [
            ["月", "件数", "課"],
            ["2026/4", "1,5", "総務課"],
            ["2026/5", "12%", "総務課"],
            ["2026/6", "12件", ""],
            ["2026/7", "3", "総務課"],
        ],
    )
    connector = share.connector(
        path="kpi.csv",
        period_column="月",
        labels={"section": "課"},
        metrics=[{"name": "applications", "column": "件数", "unit": "applications"}],
    )
    got, error = run_until_error(connector)
    assert got == []
    assert str(error).splitlines()[1:] == [
        "  kpi.csv:2: column '件数': '1,5' is not a number",
        "  kpi.csv:3: column '件数': '12%' is a percentage but the metric's unit is not ratio "
        "(set unit: ratio to read 48.2% as 0.482)",
        "  kpi.csv:4: column '課' (label section) is empty; column '件数': '12件' is not a number",
    ]


# -- whole-file rejection ------------------------------------------------------------------


def test_bad_rows_reject_the_file_whole_with_file_and_row(share: FileShare) -> None:
    share.csv(
        "data/online.csv",
        [
            ["年月", "オンライン申請件数", "全申請件数"],
            ["2021/4/1", "48,127", "99,812"],
            ["2021/5/1", "abc", "88,531"],
            ["2021/6/1", "41,000", "86,000"],
            ["2021/13/1", "41,000", "86,000"],
            ["2021/7/1", "41,000", "86,000"],
            ["2021/7/1", "41,500", "86,000"],
        ],
        encoding="utf-8-sig",
    )
    connector = share.connector(
        "online_procedures",
        path="data/online.csv",
        period_column="年月",
        granularity="month",
        metrics=[
            {"name": "procedure_applications_online", "column": "オンライン申請件数", "unit": "x"},
            {"name": "procedure_applications_all", "column": "全申請件数", "unit": "x"},
        ],
    )
    got, error = run_until_error(connector)
    assert got == [], "nothing from a bad file is yielded, not even its good rows"
    assert isinstance(error, SourceDataError)
    assert error.source_id == "online_procedures"
    assert str(error) == (
        "source 'online_procedures': rejected file data/online.csv whole (nothing from it was "
        "stored); fix what is listed and the next run reads it again:\n"
        "  data/online.csv:3: column 'オンライン申請件数': 'abc' is not a number\n"
        "  data/online.csv:5: column '年月': '2021/13/1' is not a valid period: month must be in "
        "1..12\n"
        "  data/online.csv:7: procedure_applications_online for this period and labels is already "
        "in data/online.csv:6; procedure_applications_all for this period and labels is already "
        "in data/online.csv:6"
    )


def test_bad_row_list_is_capped(share: FileShare) -> None:
    rows: list[list[str]] = [["date", "views"]]
    rows += [[f"2026-04-{day:02}", "x"] for day in range(1, 26)]
    share.csv("views.csv", rows)
    _, error = run_until_error(share.connector(**views_source()))
    lines = str(error).splitlines()
    assert len(lines) == 1 + 20 + 1
    assert lines[1] == "  views.csv:2: column 'views': 'x' is not a number"
    assert lines[20] == "  views.csv:21: column 'views': 'x' is not a number"
    assert lines[-1] == "  ... and 5 more"


def test_missing_column_names_the_columns_present(share: FileShare) -> None:
    share.csv("views.csv", [["date", "pv", "visitors"], ["2026-04-01", "1", "1"]])
    got, error = run_until_error(share.connector(**views_source()))
    assert got == []
    assert isinstance(error, SourceDataError)
    assert (
        "views.csv: column 'views' not found in the header (row 1); the file has 3 columns: "
        "'date', 'pv', 'visitors'. If the export format changed, update the column names"
        in str(error)
    )


def test_header_matching_folds_width_and_case(share: FileShare) -> None:
    share.csv("views.csv", [[" Date ", "ＶＩＥＷＳ"], ["2026-04-01", "5"]])
    assert [o.value for o in run(share.connector(**views_source()))] == [5]


def test_repeated_mapped_column_is_refused(share: FileShare) -> None:
    share.csv("views.csv", [["date", "views", "views"], ["2026-04-01", "5", "6"]])
    _, error = run_until_error(share.connector(**views_source()))
    assert "column 'views' appears more than once in the header (row 1)" in str(error)


def test_empty_file(share: FileShare) -> None:
    share.path("views.csv").write_bytes(b"")
    _, error = run_until_error(share.connector(**views_source()))
    assert "views.csv: the file is empty; row 1 must be the header" in str(error)


def test_missing_file_says_where_it_looked(share: FileShare) -> None:
    got, error = run_until_error(share.connector("paper", **views_source(path="data/nope.csv")))
    assert got == []
    assert type(error) is FatalSourceError
    expected = share.folder / "data" / "nope.csv"
    assert str(error) == (
        f"source 'paper': data/nope.csv: file not found: looked for {expected} (relative paths "
        f"are resolved against the config file's folder {share.folder})"
    )


def test_absolute_path(share: FileShare, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = FileShare(tmp_path_factory.mktemp("elsewhere"))
    path = elsewhere.csv("views.csv", [["date", "views"], ["2026-04-01", "5"]])
    assert [o.value for o in run(share.connector(**views_source(path=str(path))))] == [5]
    path.write_text("date,views\n2026-04-01,x\n")
    _, error = run_until_error(share.connector(**views_source(path=str(path))))
    assert f"{path}:2: column 'views'" in str(error), "files outside the config folder: full path"


# -- files that must not be read, data that must not be quoted ---------------------------

CANARY = "canary-7f3a9c1e5b2d4e6f8a0b"


def test_link_out_of_the_data_folder_is_refused(
    share: FileShare, tmp_path_factory: pytest.TempPathFactory
) -> None:
    secret = tmp_path_factory.mktemp("private") / "secrets.csv"
    secret.write_text(f"date,views\n2026-04-01,{CANARY}\n")
    share.csv("m/a.csv", [["date", "views"], ["2026-04-01", "1"]])
    (share.folder / "m" / "b.csv").symlink_to(secret)
    got, error = run_until_error(share.connector("pv", **views_source(path="m/*.csv")))
    assert [o.value for o in got] == [1], "the other files are still read"
    assert isinstance(error, SourceDataError)
    assert "m/b.csv: refused: it leads outside the data folder" in str(error)
    assert CANARY not in str(error) and "private" not in str(error)


def test_link_inside_the_data_folder_is_read(share: FileShare) -> None:
    share.csv("exports/2026.csv", [["date", "views"], ["2026-04-01", "5"]])
    (share.folder / "views.csv").symlink_to(share.folder / "exports" / "2026.csv")
    assert [o.value for o in run(share.connector(**views_source()))] == [5]


def test_proc_environ_is_never_read(share: FileShare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DXKPI_TEST_CANARY", CANARY)
    (share.folder / "views.csv").symlink_to("/proc/self/environ")
    for settings in (views_source(), views_source(path="/proc/self/environ")):
        _, error = run_until_error(share.connector("pv", **settings))
        assert isinstance(error, SourceDataError)
        assert "refused" in str(error)
        assert CANARY not in str(error)


def test_fifo_in_a_glob_is_not_opened(share: FileShare) -> None:
    share.csv("m/a.csv", [["date", "views"], ["2026-04-01", "1"]])
    os.mkfifo(share.folder / "m" / "b.csv")  # opening it would block the worker for ever
    assert [o.value for o in run(share.connector(**views_source(path="m/*.csv")))] == [1]


def test_errors_quote_cells_and_headers_only_in_short_escaped_excerpts(share: FileShare) -> None:
    long_secret = CANARY * 4
    share.csv("views.csv", [["date", f"{long_secret}\x1b[31m", "views"], ["2026-04-01", "", "1"]])
    _, error = run_until_error(
        share.connector(
            **views_source(metrics=[{"name": "page_views", "column": "pv", "unit": "page_views"}])
        )
    )
    assert CANARY * 2 not in str(error)
    assert "\x1b" not in str(error), "control characters are escaped"
    assert "… (113 characters)" in str(error), "cut, with the length of what was cut"
    share.csv("views.csv", [["date", "views"], [long_secret, "1"], ["2026-04-02", long_secret]])
    _, error = run_until_error(share.connector(**views_source()))
    assert CANARY * 2 not in str(error)
    assert "views.csv:2: column 'date':" in str(error)
    assert "views.csv:3: column 'views':" in str(error)


def test_file_over_the_size_limit_is_refused_with_what_to_do(share: FileShare) -> None:
    share.csv("views.csv", [["date", "views"], *[["2026-04-01", "1"]] * 100])
    _, error = run_until_error(share.connector(**views_source(max_file_size="1KB")))
    assert isinstance(error, SourceDataError)
    assert "views.csv: the file is 0.0 MB, over this source's max_file_size of 0.0 MB" in str(error)
    assert "raise max_file_size" in str(error)


# -- window, glob, idempotency --------------------------------------------------------------


def test_window_keeps_overlapping_periods(share: FileShare) -> None:
    share.csv(
        "views.csv",
        [
            ["date", "views"],
            ["2026-03-31", "1"],
            ["2026-04-01", "2"],
            ["2026-04-30", "3"],
            ["2026-05-01", "4"],
            ["2026-04", "5"],
            ["2026-03", "6"],
            ["R8", "7"],
            ["R7", "8"],
        ],
    )
    got = run(share.connector(**views_source()), window("2026-04-01", "2026-05-01"))
    assert sorted(o.value for o in got) == [2, 3, 5, 7]


def test_window_edges_are_tokyo_midnights(share: FileShare) -> None:
    share.csv("views.csv", [["date", "views"], ["2026-03-31", "1"], ["2026-04-01", "2"]])
    # 2026-03-31 15:00 UTC is April 1, 00:00 in Tokyo: March 31 (Tokyo) is outside.
    start = datetime(2026, 3, 31, 15, 0, tzinfo=UTC)
    got = run(share.connector(**views_source()), Window(start, start + timedelta(days=1)))
    assert [o.value for o in got] == [2]


def test_bad_rows_outside_the_window_still_reject_the_file(share: FileShare) -> None:
    share.csv("views.csv", [["date", "views"], ["2020-04-01", "x"], ["2026-04-01", "2"]])
    got, error = run_until_error(
        share.connector(**views_source()), window("2026-04-01", "2026-04-02")
    )
    assert got == []
    assert "views.csv:2:" in str(error)


def test_reading_twice_yields_the_same_keys(share: FileShare) -> None:
    share.csv("views.csv", [["date", "views"], ["2026-04-01", "2"], ["2026-04-02", "3"]])
    connector = share.connector(**views_source())
    assert run(connector) == run(connector)


def test_glob_reads_every_file_and_skips_lock_files(share: FileShare) -> None:
    share.csv("monthly/views-2026-04.csv", [["date", "views"], ["2026-04-01", "1"]])
    share.csv(
        "monthly/views-2026-05.csv", [["date", "views"], ["2026-05-01", "2"]], encoding="cp932"
    )
    share.path("monthly/~$views-2026-05.csv").write_bytes(b"\x00owner")
    share.path("monthly/.~lock.views-2026-05.csv#").write_text("user,host")
    got = run(share.connector(**views_source(path="monthly/views-*.csv")))
    assert by_key(got) == {
        ("page_views", "2026-04-01", ()): 1,
        ("page_views", "2026-05-01", ()): 2,
    }


def test_glob_bad_file_is_skipped_and_the_others_are_yielded(share: FileShare) -> None:
    share.csv("m/2026-04.csv", [["date", "views"], ["2026-04-01", "1"]])
    share.csv("m/2026-05.csv", [["date", "views"], ["2026-05-01", "x"], ["2026-05-02", "7"]])
    share.csv("m/2026-06.csv", [["date", "views"], ["2026-06-01", "3"]])
    share.csv("m/2026-07.csv", [["date", "pv"], ["2026-07-01", "3"]])
    got, error = run_until_error(share.connector("pv", **views_source(path="m/*.csv")))
    assert [o.value for o in got] == [1, 3]
    assert str(error) == (
        "source 'pv': rejected files m/2026-05.csv, m/2026-07.csv whole (nothing from them was "
        "stored); fix what is listed and the next run reads them again:\n"
        "  m/2026-05.csv:2: column 'views': 'x' is not a number\n"
        "  m/2026-07.csv: column 'views' not found in the header (row 1); the file has 2 "
        "columns: 'date', 'pv'. If the export format changed, update the column names in this "
        "source's settings"
    )


def test_glob_same_period_in_two_files_rejects_the_later(share: FileShare) -> None:
    share.csv("m/a.csv", [["date", "views"], ["2026-04-01", "1"]])
    share.csv("m/b.csv", [["date", "views"], ["2026-04-02", "5"], ["2026-04-01", "2"]])
    got, error = run_until_error(share.connector(**views_source(path="m/*.csv")))
    assert [o.value for o in got] == [1]
    assert "m/b.csv:3: page_views for this period and labels is already in m/a.csv:2" in str(error)


def test_glob_matching_nothing(share: FileShare) -> None:
    _, error = run_until_error(share.connector(**views_source(path="m/*.csv")))
    assert type(error) is FatalSourceError
    assert f"no file matches {share.folder / 'm' / '*.csv'}" in str(error)
    assert "resolved against the config file's folder" in str(error)


def test_labels_and_static_labels(share: FileShare) -> None:
    share.csv(
        "apps.csv",
        [
            ["date", "app", "platform", "installs"],
            ["2026-04-01", "kenmin", "ios", "17"],
            ["2026-04-01", "kenmin", "android", "14"],
        ],
    )
    connector = share.connector(
        path="apps.csv",
        period_column="date",
        labels={"app": "app", "platform": "platform"},
        static_labels={"store": "all"},
        metrics=[{"name": "app_first_time_downloads", "column": "installs", "unit": "downloads"}],
    )
    assert by_key(run(connector)) == {
        (
            "app_first_time_downloads",
            "2026-04-01",
            (("app", "kenmin"), ("platform", "android"), ("store", "all")),
        ): 14,
        (
            "app_first_time_downloads",
            "2026-04-01",
            (("app", "kenmin"), ("platform", "ios"), ("store", "all")),
        ): 17,
    }
    assert connector.declared_metrics() == (
        MetricSpec(
            name="app_first_time_downloads",
            help="Column 'installs' of apps.csv",
            unit="downloads",
            labels=("app", "platform", "store"),
            aggregation="sum",
        ),
    )


# -- transient file states ----------------------------------------------------------------


def test_file_still_being_written_is_retried(share: FileShare) -> None:
    path = share.csv("views.csv", [["date", "views"], ["2026-04-01", "2"]])
    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    connector = share.connector(
        "pv", **views_source(min_file_age="30s"), clock=lambda: modified + timedelta(seconds=5)
    )
    got, error = run_until_error(connector)
    assert got == []
    assert isinstance(error, RetryableSourceError)
    assert error.retry_after == pytest.approx(25)
    assert str(error) == (
        "source 'pv': views.csv: modified 5 s ago, it may still be being written "
        "(it is read once unchanged for 30 s (min_file_age))"
    )
    settled = share.connector(
        **views_source(min_file_age="30s"), clock=lambda: modified + timedelta(seconds=31)
    )
    assert [o.value for o in run(settled)] == [2]


def test_file_vanishing_between_listing_and_reading_is_retried(share: FileShare) -> None:
    share.csv("m/a.csv", [["date", "views"], ["2026-04-01", "1"]])
    share.csv("m/b.csv", [["date", "views"], ["2026-04-02", "2"]])
    items = share.connector("pv", **views_source(path="m/*.csv")).collect(ALL_TIME)
    assert next(items).value == 1  # type: ignore[union-attr]
    os.remove(share.folder / "m" / "b.csv")  # e.g. a nightly export replacing its files
    with pytest.raises(RetryableSourceError, match=r"m/b.csv: could not read the file \(ENOENT\)"):
        next(items)


# -- rpa_run_log ----------------------------------------------------------------------------

RUN_LOG_HEADER = ["シナリオ名", "開始日時", "終了日時", "結果", "実行端末"]


def rpa_source(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "path": "rpa.csv",
        "layout": "rpa_run_log",
        "manual_minutes_per_run": {"支出命令入力": 75, "旅費精算チェック": 20},
    }
    settings.update(overrides)
    return settings


def test_run_log_counts_and_time_saved(share: FileShare) -> None:
    share.csv(
        "rpa.csv",
        [
            RUN_LOG_HEADER,
            ["支出命令入力", "2026/04/01 09:05:12", "2026/04/01 09:31:40", "正常終了", "PC01"],
            ["支出命令入力", "2026/04/01 13:02:00", "2026/04/01 13:05:10", "異常終了", "PC01"],
            ["支出命令入力", "2026/04/01 16:00:00", "2026/04/01 16:30:00", "成功", "PC01"],
            ["旅費精算チェック", "2026/04/01 10:00", "", "中断", "PC02"],
            ["会議録整形", "2026-04-01T23:30:00", "2026-04-02T00:10:00", "正常終了", "PC02"],
            [
                "旅費精算チェック",
                "2026-04-01T15:10:00Z",
                "2026-04-01T15:20:00Z",
                "Successful",
                "PC02",
            ],
        ],
        encoding="cp932",
    )
    got = run(share.connector(**rpa_source()))
    assert {o.granularity for o in got} == {DAY}
    # 15:10 UTC on April 1 is 00:10 on April 2 in Tokyo: that run counts on April 2.
    assert by_key(got) == {
        ("rpa_runs", "2026-04-01", (("process", "支出命令入力"), ("result", "successful"))): 2,
        ("rpa_runs", "2026-04-01", (("process", "支出命令入力"), ("result", "faulted"))): 1,
        ("rpa_runs", "2026-04-01", (("process", "支出命令入力"), ("result", "stopped"))): 0,
        ("rpa_time_saved_seconds", "2026-04-01", (("process", "支出命令入力"),)): 2 * 75 * 60,
        ("rpa_runs", "2026-04-01", (("process", "旅費精算チェック"), ("result", "successful"))): 0,
        ("rpa_runs", "2026-04-01", (("process", "旅費精算チェック"), ("result", "faulted"))): 0,
        ("rpa_runs", "2026-04-01", (("process", "旅費精算チェック"), ("result", "stopped"))): 1,
        ("rpa_time_saved_seconds", "2026-04-01", (("process", "旅費精算チェック"),)): 0,
        ("rpa_runs", "2026-04-01", (("process", "会議録整形"), ("result", "successful"))): 1,
        ("rpa_runs", "2026-04-01", (("process", "会議録整形"), ("result", "faulted"))): 0,
        ("rpa_runs", "2026-04-01", (("process", "会議録整形"), ("result", "stopped"))): 0,
        # Every process on every day the log covers, zeros included.
        ("rpa_runs", "2026-04-02", (("process", "支出命令入力"), ("result", "successful"))): 0,
        ("rpa_runs", "2026-04-02", (("process", "支出命令入力"), ("result", "faulted"))): 0,
        ("rpa_runs", "2026-04-02", (("process", "支出命令入力"), ("result", "stopped"))): 0,
        ("rpa_time_saved_seconds", "2026-04-02", (("process", "支出命令入力"),)): 0,
        ("rpa_runs", "2026-04-02", (("process", "会議録整形"), ("result", "successful"))): 0,
        ("rpa_runs", "2026-04-02", (("process", "会議録整形"), ("result", "faulted"))): 0,
        ("rpa_runs", "2026-04-02", (("process", "会議録整形"), ("result", "stopped"))): 0,
        ("rpa_runs", "2026-04-02", (("process", "旅費精算チェック"), ("result", "successful"))): 1,
        ("rpa_runs", "2026-04-02", (("process", "旅費精算チェック"), ("result", "faulted"))): 0,
        ("rpa_runs", "2026-04-02", (("process", "旅費精算チェック"), ("result", "stopped"))): 0,
        ("rpa_time_saved_seconds", "2026-04-02", (("process", "旅費精算チェック"),)): 20 * 60,
    }


def test_run_log_process_without_manual_minutes_is_counted_and_logged(
    share: FileShare, caplog: pytest.LogCaptureFixture
) -> None:
    share.csv("rpa.csv", [RUN_LOG_HEADER, ["会議録整形", "2026/04/01 09:00", "", "正常終了", ""]])
    with caplog.at_level(logging.WARNING):
        got = run(share.connector(**rpa_source()))
    saved = {o.labels["process"]: o.value for o in got if o.metric == "rpa_time_saved_seconds"}
    # Priced processes absent from the log ran zero times; the unpriced one saved an unknown time.
    assert saved == {"支出命令入力": 0, "旅費精算チェック": 0}
    ran = {o.labels["process"] for o in got if o.metric == "rpa_runs" and o.value}
    assert ran == {"会議録整形"}
    assert "no manual_minutes_per_run for 会議録整形" in caplog.text


def test_run_log_deleted_run_is_overwritten_with_zero(share: FileShare) -> None:
    rows = [
        RUN_LOG_HEADER,
        ["支出命令入力", "2026/04/01 09:00", "", "正常終了", ""],
        ["支出命令入力", "2026/04/02 09:00", "", "正常終了", ""],
        ["支出命令入力", "2026/04/03 09:00", "", "正常終了", ""],
    ]
    share.csv("rpa.csv", rows)
    connector = share.connector(**rpa_source())
    before = by_key(run(connector))
    del rows[2]  # a run logged by mistake is removed from the log
    share.csv("rpa.csv", rows)
    after = by_key(run(connector))
    assert after.keys() == before.keys(), "the same keys, so the store overwrites every one"
    successful = ("rpa_runs", "2026-04-02", (("process", "支出命令入力"), ("result", "successful")))
    assert (before[successful], after[successful]) == (1, 0)
    saved = ("rpa_time_saved_seconds", "2026-04-02", (("process", "支出命令入力"),))
    assert (before[saved], after[saved]) == (75 * 60, 0)


def test_run_log_custom_columns_result_map_and_xlsx(share: FileShare) -> None:
    share.xlsx(
        "rpa.xlsx",
        {
            "log": [
                ["Process", "Started", "Ended", "State"],
                ["支出命令入力", datetime(2026, 4, 1, 9, 0), datetime(2026, 4, 1, 9, 20), "要確認"],
                ["支出命令入力", datetime(2026, 4, 1, 10, 0), None, "ＳＵＣＣＥＳＳＦＵＬ"],
            ]
        },
    )
    connector = share.connector(
        **rpa_source(
            path="rpa.xlsx",
            columns={"process": "Process", "start": "Started", "end": "Ended", "result": "State"},
            result_map={"要確認": "faulted"},
        )
    )
    got = by_key(run(connector))
    key = "rpa_runs", "2026-04-01"
    assert got[(*key, (("process", "支出命令入力"), ("result", "faulted")))] == 1
    assert got[(*key, (("process", "支出命令入力"), ("result", "successful")))] == 1


def test_run_log_bad_rows(share: FileShare) -> None:
    share.csv(
        "rpa.csv",
        [
            RUN_LOG_HEADER,
            ["支出命令入力", "2026/04/01 09:00", "2026/04/01 09:20", "保留", ""],
            ["支出命令入力", "2026/04/01 11:00", "2026/04/01 10:00", "正常終了", ""],
            ["", "2026/04/01 12:00", "", "正常終了", ""],
            ["支出命令入力", "", "", "正常終了", ""],
            ["支出命令入力", "4月1日", "", "正常終了", ""],
            ["支出命令入力", "2026/04/01 13:00", "", "正常終了", ""],
            ["支出命令入力", "2026/04/01 13:00", "", "異常終了", ""],
        ],
        encoding="cp932",
    )
    got, error = run_until_error(share.connector("rpa", **rpa_source()))
    assert got == []
    assert str(error).splitlines()[1:] == [
        "  rpa.csv:2: column '結果': unknown result '保留'; map it in result_map to successful, "
        "faulted or stopped",
        "  rpa.csv:3: the run ends (2026-04-01 10:00) before it starts (11:00)",
        "  rpa.csv:4: column 'シナリオ名' (the process) is empty",
        "  rpa.csv:5: column '開始日時' (the start time) is empty",
        "  rpa.csv:6: column '開始日時': '4月1日' is not a date and time "
        "(write e.g. 2026/04/01 09:30:00)",
        "  rpa.csv:8: the same run ('支出命令入力', 2026-04-01 13:00:00) is successful in "
        "rpa.csv:7 "
        "but faulted here",
    ]


def test_run_log_overlapping_exports_count_each_run_once(share: FileShare) -> None:
    share.csv(
        "logs/week1.csv",
        [
            RUN_LOG_HEADER,
            ["支出命令入力", "2026/04/01 09:00", "", "正常終了", ""],
            ["支出命令入力", "2026/04/02 09:00", "", "正常終了", ""],
        ],
        encoding="cp932",
    )
    share.csv(
        "logs/week2.csv",
        [
            RUN_LOG_HEADER,
            ["支出命令入力", "2026/04/02 09:00", "", "正常終了", ""],  # exported again
            ["支出命令入力", "2026/04/02 14:00", "", "正常終了", ""],
        ],
        encoding="cp932",
    )
    got = by_key(run(share.connector(**rpa_source(path="logs/*.csv"))))
    successful = (("process", "支出命令入力"), ("result", "successful"))
    assert got[("rpa_runs", "2026-04-01", successful)] == 1
    assert got[("rpa_runs", "2026-04-02", successful)] == 2


def test_run_log_window_is_by_tokyo_day(share: FileShare) -> None:
    share.csv(
        "rpa.csv",
        [
            RUN_LOG_HEADER,
            ["支出命令入力", "2026/03/31 23:59:59", "", "正常終了", ""],
            ["支出命令入力", "2026/04/01 00:00:00", "", "正常終了", ""],
            ["支出命令入力", "2026/04/30 23:00:00", "", "正常終了", ""],
            ["支出命令入力", "2026/05/01 08:00:00", "", "正常終了", ""],
        ],
    )
    got = run(share.connector(**rpa_source()), window("2026-04-01", "2026-05-01"))
    ran = sorted({o.start.date().isoformat() for o in got if o.value})
    assert ran == ["2026-04-01", "2026-04-30"]
    days = {o.start.date() for o in got}
    assert days == {date(2026, 4, day) for day in range(1, 31)}, "every April day, zeros included"


def test_run_log_days_beyond_the_log_are_not_reported(share: FileShare) -> None:
    share.csv("rpa.csv", [RUN_LOG_HEADER, ["支出命令入力", "2026/04/10 09:00", "", "正常終了", ""]])
    got = run(share.connector(**rpa_source()), window("2026-04-01", "2026-05-01"))
    assert {o.start.date() for o in got} == {date(2026, 4, 10)}


def test_run_log_declares_the_uipath_metrics(share: FileShare) -> None:
    connector = share.connector(**rpa_source())
    assert [(m.name, m.labels, m.unit) for m in connector.declared_metrics()] == [
        ("rpa_runs", ("process", "result"), "runs"),
        ("rpa_time_saved_seconds", ("process",), "seconds"),
    ]


# -- settings --------------------------------------------------------------------------------

INVALID_SETTINGS: list[dict[str, Any]] = [
    {},
    views_source(path=""),
    views_source(period_column=None),
    views_source(metrics=[]),
    views_source(metrics=[{"name": "PageViews", "column": "views", "unit": "x"}]),
    views_source(metrics=[{"name": "handling_minutes", "column": "m", "unit": "minutes"}]),
    views_source(metrics=[{"name": "online_percent", "column": "p", "unit": "ratio"}]),
    views_source(metrics=[{"name": "a", "column": "a", "unit": "x", "scale": 0}]),
    views_source(metrics=[{"name": "a", "column": "a"}]),
    views_source(
        metrics=[
            {"name": "a", "column": "a", "unit": "x"},
            {"name": "a", "column": "b", "unit": "x"},
        ]
    ),
    views_source(metrics=[{"name": "a", "column": "a", "unit": "x", "aggregation": "avg"}]),
    views_source(granularity="week"),
    views_source(encoding="shift-jiss"),
    views_source(delimiter=";;"),
    views_source(labels={"App": "app"}),
    views_source(labels={"app": "app"}, static_labels={"app": "kenmin"}),
    views_source(sheet="Sheet1"),
    views_source(manual_minutes_per_run={"x": 5}),
    views_source(unknown=1),
    rpa_source(metrics=[{"name": "a", "column": "a", "unit": "x"}]),
    rpa_source(period_column="date"),
    rpa_source(manual_minutes_per_run={"支出命令入力": -1}),
    rpa_source(result_map={"要確認": "unknown"}),
    rpa_source(columns={"process": "a", "begin": "b"}),
]


def test_settings_errors_say_what_to_do() -> None:
    from pydantic import ValidationError

    from dxkpi.connectors.csvfile.settings import CsvFileSettings

    with pytest.raises(ValidationError, match="store seconds \\(scale: 60\\)"):
        CsvFileSettings.model_validate(INVALID_SETTINGS[5])
    with pytest.raises(ValidationError, match="layout table needs `period_column`"):
        CsvFileSettings.model_validate(INVALID_SETTINGS[2])
    with pytest.raises(
        ValidationError, match="layout rpa_run_log has fixed metrics; remove metrics"
    ):
        CsvFileSettings.model_validate(INVALID_SETTINGS[19])


class TestCsvFileContract(ConnectorContract):
    connector_name = "csvfile"
    secrets = ()  # files need no credentials

    def invalid_settings(self) -> list[dict[str, Any]]:
        return INVALID_SETTINGS

    @contextmanager
    def _case(
        self, tmp: Path, rows: list[list[str]], **overrides: Any
    ) -> Iterator[tuple[CsvFileConnector, Window]]:
        share = FileShare(tmp)
        share.csv("views.csv", rows)
        yield share.connector("contract", **views_source(), **overrides), ALL_TIME

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.tmp = tmp_path

    def healthy_case(self) -> Any:
        return self._case(self.tmp, [["date", "views"], ["2026-04-01", "2"]])

    def retryable_case(self) -> Any:
        # The honest transient state of a file: it was written a moment ago and may be incomplete.
        return self._case(
            self.tmp,
            [["date", "views"], ["2026-04-01", "2"]],
            clock=lambda: datetime.now(UTC),
        )

    def fatal_case(self) -> Any:
        return self._case(self.tmp, [["date", "views"], ["2026-04-01", "two"]])
