"""`dxkpi report` on the shipped example: the xlsx workbook, opened with openpyxl, holds cell by
cell what `status --fiscal-year --json` says on the same store, and FY2021's figures are those of
the data files; the operational totals are the files' sums (RPA seconds shown as hours);
Markdown and HTML come from one template with the same cells; the committed sample is current."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import yaml

from dxkpi.collector.present import AREA_NAMES, STATUS_WORDS, UNIT_NAMES
from tests.test_status import AS_OF, EXAMPLE, SOURCES, dxkpi, fiscal_year, status_json

SAMPLE = Path(__file__).parents[1] / "docs" / "council-report-sample.md"
# The KPI table's columns, in order, as a Japanese reader sees them.
KPI_HEADERS_R3 = [
    "分野",
    "指標名",
    "単位",
    "基準値",
    "基準年度",
    "目標値",
    "目標年度",
    "令和3年度実績",
    "実績の期間",
    "進捗率",
    "計画上の見込み",
    "目標年度の予測",
    "状況",
]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE, folder / "config")  # copy2: the files keep their age
    code, output = dxkpi(folder, "migrate")  # collect never creates a store
    assert code == 0, output
    for source in (*SOURCES, "rpa_run_log"):
        code, output = dxkpi(folder, "collect", source)
        assert code == 0, output
    return folder


def status_list(folder: Path, *args: str) -> list[dict[str, Any]]:
    """`status --json`'s KPIs in the config's order (the report's rows)."""
    return list(status_json(folder, *args).values())


def report(folder: Path, *args: str) -> str:
    code, output = dxkpi(folder, "report", "--as-of", AS_OF, *args)
    assert code == 0, output
    return output


def workbook(folder: Path, name: str, *args: str) -> openpyxl.Workbook:
    path = folder / name
    report(folder, "--format", "xlsx", "--output", str(path), *args)
    return openpyxl.load_workbook(path)


def reiwa(fy: int) -> str:
    return f"令和{fy - 2018}年度"


def exact(expected: dict[str, Any]) -> dict[str, Any]:
    """Numbers as an xlsx file holds them: the same float to 15 significant digits (Excel's
    precision; openpyxl writes the shortest repr, which a reader may round in the last digit)."""
    return {
        k: pytest.approx(v, rel=1e-15, abs=0) if isinstance(v, float) else v
        for k, v in expected.items()
    }


def test_xlsx_matches_status_json_cell_by_cell(example: Path) -> None:
    kpis = status_list(example, "--fiscal-year", "R3")
    book = workbook(example, "r3.xlsx", "--fiscal-year", "R3")
    assert book.sheetnames == ["指標", "運用データ"]
    sheet = book["指標"]
    assert sheet["A1"].value == "デジタル変革（ＤＸ）の指標の状況（令和3年度）"
    assert [c.value for c in sheet[3]] == KPI_HEADERS_R3
    for row, kpi in enumerate(kpis, start=4):
        cells = {h: sheet.cell(row, i).value for i, h in enumerate(KPI_HEADERS_R3, start=1)}
        number = {h: sheet.cell(row, i).number_format for i, h in enumerate(KPI_HEADERS_R3, 1)}
        ratio = kpi["unit"] == "ratio"
        label = kpi["period"]["label"]
        assert cells == exact(
            {
                "分野": AREA_NAMES[kpi["area"]]["ja"],
                "指標名": kpi["name_ja"],
                "単位": "%" if ratio else UNIT_NAMES[kpi["unit"]],
                "基準値": kpi["baseline"]["value"],
                "基準年度": reiwa(kpi["baseline"]["fiscal_year"]),
                "目標値": kpi["target"]["value"],
                "目標年度": reiwa(kpi["target"]["fiscal_year"]),
                "令和3年度実績": kpi["value"],
                "実績の期間": reiwa(int(label[2:])) if label.startswith("FY") else label,
                "進捗率": kpi["progress"],
                "計画上の見込み": kpi["expected_value"],
                "目標年度の予測": kpi["forecast"] if kpi["forecast"] is not None else "-",
                "状況": STATUS_WORDS[kpi["status"]]["ja"],
            }
        ), kpi["id"]
        assert number["進捗率"] == "0%"
        for column in ("基準値", "目標値", "令和3年度実績"):
            assert number[column] == ("0.0%" if ratio else "#,##0"), (kpi["id"], column)
    assert sheet.max_row == 3 + len(kpis) + 1 + 6  # a blank row, then six footnotes
    assert sheet.cell(3 + len(kpis) + 2, 1).value == "※ データ基準日: 2026-12-03 00:00 JST"
    widths = {c: sheet.column_dimensions[c].width for c in "ABCDEFGHIJKLM"}
    assert widths["B"] >= 40 and min(widths.values()) >= 9  # names wrap; numbers fit
    assert sheet.freeze_panes == "A4"


def test_fy2021_report_gives_the_data_files_figures(example: Path) -> None:
    """Independent of dxkpi's computation: sums read from the example's files."""
    sheet = workbook(example, "r3-ops.xlsx", "--fiscal-year", "R3")["運用データ"]
    assert [c.value for c in sheet[3]] == [
        "項目",
        "内訳",
        "データ元",
        "単位",
        "令和3年度合計",
        "データの期間",
    ]
    totals = {
        (row[2], row[0]): row[4]
        for row in sheet.iter_rows(min_row=4, values_only=True)
        if row[1] == "計"
    }
    with (EXAMPLE / "data" / "portal_page_views.csv").open(encoding="utf-8") as f:
        views = sum(
            float(row["page_views"])
            for row in csv.DictReader(f)
            if fiscal_year(date.fromisoformat(row["date"])) == 2021
        )
    assert totals[("portal_page_views", "移住ポータルサイトのページビュー数")] == views
    with (EXAMPLE / "data" / "online_procedures.csv").open(encoding="utf-8-sig") as f:
        online = all_ = 0.0
        for row in csv.DictReader(f):
            if fiscal_year(datetime.strptime(row["年月"], "%Y/%m/%d").date()) == 2021:
                online += float(row["オンライン申請件数"])
                all_ += float(row["全申請件数"])
    assert totals[("online_procedures", "オンライン申請件数")] == online
    assert totals[("online_procedures", "全申請件数")] == all_
    # the RPA log starts in FY2026: nothing of it in FY2021, and no annual indicator (a level,
    # not a sum) is totalled
    assert {source for source, _ in totals} == {
        "online_procedures",
        "copy_paper",
        "portal_page_views",
        "app_installs",
    }
    kpis = workbook(example, "r3-kpis.xlsx", "--fiscal-year", "R3")["指標"]
    by_name = {row[1]: row for row in kpis.iter_rows(min_row=4, max_row=14, values_only=True)}
    assert by_name["県及び市町村の行政手続のオンライン利用率"][7] == pytest.approx(online / all_)
    assert by_name[
        "ふくしま12市町村移住ポータルサイト（未来ワークふくしま）のページビュー（PV）数"
    ][7] == pytest.approx(views)


def rpa_hours_saved(fy: int, before: date) -> float:
    config = yaml.safe_load((EXAMPLE / "dxkpi.yaml").read_text(encoding="utf-8"))
    source = next(s for s in config["sources"] if s["id"] == "rpa_run_log")
    minutes = source["settings"]["manual_minutes_per_run"]
    with (EXAMPLE / "data" / "rpa_run_log.csv").open(encoding="cp932") as f:
        total = 0.0
        for row in csv.DictReader(f):
            day = datetime.strptime(row["開始日時"], "%Y/%m/%d %H:%M:%S").date()
            if row["結果"] == "正常終了" and fiscal_year(day) == fy and day < before:
                total += minutes.get(row["シナリオ名"], 0)
    return total / 60


def test_operational_seconds_are_shown_as_hours(example: Path) -> None:
    sheet = workbook(example, "r8.xlsx", "--fiscal-year", "R8", "--lang", "en")["Operations"]
    assert [c.value for c in sheet[3]] == [
        "Item",
        "Breakdown",
        "Source",
        "Unit",
        "FY2026 total",
        "Data covers",
    ]
    rows = {(row[0].value, row[1].value): row for row in sheet.iter_rows(min_row=4)}
    saved = [c.value for c in rows[("Manual work saved by successful RPA runs", "all")]]
    assert saved[2:4] == ["rpa_run_log", "hours"]
    assert saved[4] == pytest.approx(rpa_hours_saved(2026, date(2026, 12, 3)))
    assert saved[5] == "2026-04 – 2026-11"  # a year under way: the months it covers so far
    assert rows[("Manual work saved by successful RPA runs", "all")][4].number_format == "#,##0.0"
    by_process = [
        row[4].value
        for (name, breakdown), row in rows.items()
        if str(name).startswith("Manual work saved") and str(breakdown).startswith("process=")
    ]
    assert len(by_process) == 3 and sum(by_process) == pytest.approx(saved[4])


def test_target_year_report_gives_outcomes_not_forecasts(example: Path) -> None:
    """R7 was every KPI's target year: asked after it, its report says achieved / missed,
    as `status` does today, not a forward-looking on track / behind."""
    latest = {kpi["id"]: kpi["status"] for kpi in status_list(example)}
    r7 = status_list(example, "--fiscal-year", "R7")
    assert {kpi["id"]: kpi["status"] for kpi in r7} == latest
    assert {kpi["status"] for kpi in r7} == {"achieved", "missed"}
    for kpi in r7:
        assert kpi["forecast"] == kpi["value"], kpi["id"]  # the target year's figure is in
    sheet = workbook(example, "r7.xlsx", "--fiscal-year", "R7")["指標"]
    words = [row[12] for row in sheet.iter_rows(min_row=4, max_row=3 + len(r7), values_only=True)]
    assert words == [STATUS_WORDS[kpi["status"]]["ja"] for kpi in r7]


class Cells(HTMLParser):
    """The text of every table cell of an HTML page, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def markdown_cells(text: str) -> Iterator[list[str]]:
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            yield [cell.replace("\\|", "|") for cell in line[2:-2].split(" | ")]


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_markdown_and_html_show_the_same_cells(example: Path, lang: str) -> None:
    args = ("--fiscal-year", "R7", "--lang", lang)
    markdown = report(example, *args, "--format", "md")
    page = report(example, *args, "--format", "html")
    parser = Cells()
    parser.feed(page)
    assert parser.rows == list(markdown_cells(markdown))
    # header and 11 KPIs; header, 5 totals and the downloads of 2 apps on 2 platforms
    assert len(parser.rows) == 1 + 11 + 1 + 5 + 4
    assert page.startswith("<!DOCTYPE html>") and f'<html lang="{lang}">' in page
    assert "http" not in page  # self-contained: nothing fetched, readable offline
    kpis = status_list(example, "--fiscal-year", "R7")
    values = [row[7] for row in parser.rows[1:12]]
    assert values[1] == "14,007,500"  # copy paper, with separators, no e-notation
    assert values[0] == f"{kpis[0]['value'] * 100:.1f}%"  # a ratio as percent
    assert "e+" not in markdown


def test_xlsx_needs_an_output_file(example: Path) -> None:
    code, output = dxkpi(example, "report", "--fiscal-year", "R3", "--format", "xlsx")
    assert code == 2 and "--output" in output


def test_committed_sample_is_current(example: Path) -> None:
    """docs/council-report-sample.md is this command's output; DXKPI_UPDATE_SAMPLE=1 rewrites
    it."""
    text = report(example, "--fiscal-year", "R7", "--lang", "ja", "--format", "md")
    if os.environ.get("DXKPI_UPDATE_SAMPLE") == "1":
        SAMPLE.parent.mkdir(exist_ok=True)
        SAMPLE.write_text(text, encoding="utf-8")
    assert SAMPLE.read_text(encoding="utf-8") == text, (
        "docs/council-report-sample.md is stale: rerun this test with DXKPI_UPDATE_SAMPLE=1"
    )
    readme = (SAMPLE.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Council report") :].split("\n## ")[0]
    excerpt = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(excerpt) >= 4 and set(excerpt) <= set(text.splitlines()), "README's excerpt"


def test_a_store_without_data_or_tables(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "config")
    code, output = dxkpi(tmp_path, "report", "--fiscal-year", "R3")
    assert code == 1 and "run `dxkpi migrate`" in output and "Traceback" not in output
    assert dxkpi(tmp_path, "migrate")[0] == 0
    text = report(tmp_path, "--fiscal-year", "R3", "--lang", "en")
    assert text.count("| no data |") == 11
    assert "No operational data for this fiscal year." in text
