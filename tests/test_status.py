"""`dxkpi status` on the shipped example: FY2021's figures with --fiscal-year R3 match the data
files read independently here (csv, openpyxl), the latest figures and status words are those a
person reading the files would give, and the table reads at 80 columns."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from click.testing import CliRunner
from rich.cells import cell_len

from dxkpi.collector.cli import main
from dxkpi.collector.runtime import set_current

EXAMPLE = Path(__file__).parents[1] / "collector" / "example"
SOURCES = (
    "annual_indicators",
    "online_procedures",
    "copy_paper",
    "portal_page_views",
    "app_installs",
)
AS_OF = "2026-12-03"  # the day the example's data was last looked at


def fiscal_year(day: date) -> int:
    return day.year if day.month >= 4 else day.year - 1


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE, folder / "config")
    code, output = dxkpi(folder, "migrate")  # collect never creates a store
    assert code == 0, output
    for source in SOURCES:
        code, output = dxkpi(folder, "collect", source)
        assert code == 0, output
    return folder


def dxkpi(folder: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        ["--config", str(folder / "config" / "dxkpi.yaml"), "--data-dir", str(folder / "d"), *args],
        env={"COLUMNS": "80"},
    )
    set_current(None)
    return result.exit_code, result.output


def status_json(folder: Path, *args: str) -> dict[str, dict[str, Any]]:
    code, output = dxkpi(folder, "status", "--json", "--as-of", AS_OF, *args)
    assert code == 0, output
    return {kpi["id"]: kpi for kpi in json.loads(output[output.index("{") :])["kpis"]}


def fy2021_from_files() -> dict[str, float]:
    """FY2021 (R3) figures computed from the data files with nothing of dxkpi's."""
    with (EXAMPLE / "data" / "annual_indicators.csv").open(encoding="cp932") as f:
        rows = list(csv.DictReader(f))
    r3 = [row for row in rows if row["年度"] == "令和3年度"]
    expected = {row["指標ID"]: float(row["値"].replace(",", "")) for row in r3}
    with (EXAMPLE / "data" / "online_procedures.csv").open(encoding="utf-8-sig") as f:
        sums: dict[str, float] = defaultdict(float)
        for row in csv.DictReader(f):
            month = datetime.strptime(row["年月"], "%Y/%m/%d").date()
            if fiscal_year(month) == 2021:
                sums["online"] += float(row["オンライン申請件数"])
                sums["all"] += float(row["全申請件数"])
    expected["online_procedure_usage_rate"] = sums["online"] / sums["all"]
    sheet = openpyxl.load_workbook(EXAMPLE / "data" / "copy_paper.xlsx").active
    assert sheet is not None
    expected["copy_paper_purchases_sheets"] = sum(
        float(sheets)
        for month, sheets in sheet.iter_rows(min_row=2, values_only=True)
        if isinstance(month, datetime) and fiscal_year(month.date()) == 2021
    )
    with (EXAMPLE / "data" / "portal_page_views.csv").open(encoding="utf-8") as f:
        expected["migration_portal_page_views"] = sum(
            float(row["page_views"])
            for row in csv.DictReader(f)
            if fiscal_year(date.fromisoformat(row["date"])) == 2021
        )
    with (EXAMPLE / "data" / "app_installs.csv").open(encoding="utf-8") as f:
        installs: dict[str, float] = defaultdict(float)
        for row in csv.DictReader(f):
            if date.fromisoformat(row["date"]) < date(2022, 4, 1):
                installs[row["app"]] += float(row["installs"])
    # cumulative: downloads before 2021-04-01 are the FY2020 figure (48,441) for kenmin
    expected["kenmin_app_downloads"] = 48441 + installs["kenmin"]
    expected["environment_app_downloads"] = installs["environment"]
    return expected


def test_fiscal_year_r3_gives_fy2021_figures(example: Path) -> None:
    got = status_json(example, "--fiscal-year", "R3")
    expected = fy2021_from_files()
    assert set(got) == set(expected)
    for kpi, value in expected.items():
        assert got[kpi]["value"] == pytest.approx(value), kpi
        assert got[kpi]["period"]["complete"] is True, kpi
    assert got["online_procedure_usage_rate"]["period"]["label"] == "FY2021"
    assert got["kenmin_app_downloads"]["period"]["label"] == "2022-03"
    # the baseline year of the R3-based KPIs: exactly on the path's start
    assert got["problem_solving_project_participants"]["progress"] == 0


def test_latest_figures_and_status_words_on_the_shipped_example(example: Path) -> None:
    got = status_json(example)
    annual = [k for k, v in got.items() if v["cadence"] == "fiscal_year"]
    assert len(annual) == 9
    for kpi in annual:
        assert got[kpi]["period"]["label"] == "FY2025", kpi  # R7, published; R8 still running
    # R7 was the target year of every KPI: each has its outcome, no forward-looking verdict
    assert {v["target"]["period_ended"] for v in got.values()} == {True}
    words = {k: v["status"] for k, v in got.items()}
    assert words["kenmin_app_downloads"] == "achieved"
    assert {w for k, w in words.items() if k != "kenmin_app_downloads"} == {"missed"}
    stalled = {k for k, v in got.items() if v["stalled"]}
    assert stalled == {"companies_adopting_ai_iot"}  # 3, 3, 3; every other KPI rose in R7
    assert not any(v["overdue"] for v in got.values())


def test_status_reads_at_80_columns(example: Path) -> None:
    code, output = dxkpi(example, "status", "--as-of", AS_OF)
    assert code == 0, output
    widths = [cell_len(line) for line in output.splitlines()]
    assert max(widths) <= 80 and max(widths) >= 70  # laid out for 80 columns, not wider
    assert "e+" not in output
    assert "14,007,500" in output  # copy paper, FY2025, with separators
    assert "JST" in output
    assert "技術支援を受けた企業" in output
