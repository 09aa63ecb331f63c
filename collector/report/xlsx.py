"""The report as an Excel workbook (openpyxl): what a prefecture's DX office hands its council.

Two sheets, the indicators and the operational figures, each a title, one table and the
footnotes (as-of date, sources, definitions). Numbers stay numbers (a ratio is stored as 0.482
and shown as 48.2 %), so a reader can recompute from the cells and a test can compare them with
`status --json`; separators, percent and decimals are number formats. Printed landscape on A4,
one page wide, the header row repeated.
"""

from __future__ import annotations

from io import BytesIO

from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from dxkpi.collector.present import Lang
from dxkpi.collector.report.model import Column, Report, Table, decimals
from dxkpi.collector.units import PERCENT_UNITS, RATIO_UNITS

__all__ = ["HEADER_ROW", "SHEET_NAMES", "number_format", "write_xlsx"]

HEADER_ROW = 3  # title in row 1, the section's name in row 2, the table's header in row 3
SHEET_NAMES: dict[str, dict[Lang, str]] = {
    "kpis": {"ja": "指標", "en": "Indicators"},
    "operations": {"ja": "運用データ", "en": "Operations"},
}
# The font a Japanese office's Excel uses by default; Calibri has no Japanese glyphs.
FONTS: dict[Lang, str] = {"ja": "游ゴシック", "en": "Calibri"}

_THIN = Side(style="thin", color="808080")
_BORDER = Border(left=_THIN, right=_THIN, top=_THIN, bottom=_THIN)
_HEADER_FILL = PatternFill("solid", fgColor="D9E1F2")


def number_format(value: float, unit: str, column: Column) -> str:
    """The Excel number format of a number cell: separators, percent, one rule for decimals
    (the same as the text formats')."""
    if column.kind == "ratio":
        return "0%"
    if unit in RATIO_UNITS:
        return "0.0%"
    if unit in PERCENT_UNITS:
        return '0.0"%"'
    return "#,##0" if decimals(value, unit) == 0 else "#,##0.0"


def write_xlsx(report: Report, lang: Lang) -> bytes:
    workbook = Workbook()
    workbook.remove(workbook.active)  # one sheet a table, made below
    for table in report.tables(lang):
        _sheet(workbook.create_sheet(SHEET_NAMES[table.key][lang]), report, lang, table)
    buffer = BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _sheet(sheet: Worksheet, report: Report, lang: Lang, table: Table) -> None:
    font = FONTS[lang]
    sheet.cell(1, 1, report.title(lang)).font = Font(name=font, size=14, bold=True)
    sheet.cell(2, 1, table.heading).font = Font(name=font, size=12, bold=True)
    for index, column in enumerate(table.columns, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = column.width
        cell = sheet.cell(HEADER_ROW, index, column.header(lang, report.fiscal_year))
        cell.font = Font(name=font, bold=True)
        cell.fill = _HEADER_FILL
        cell.border = _BORDER
        cell.alignment = Alignment(horizontal="center", vertical="center", wrap_text=True)
    row_index = HEADER_ROW
    for row, unit in zip(table.rows, table.units, strict=True):
        row_index += 1
        for index, column in enumerate(table.columns, start=1):
            value = row[column.key]
            cell = sheet.cell(row_index, index, value)
            cell.font = Font(name=font)
            cell.border = _BORDER
            if column.kind == "text":
                cell.alignment = Alignment(vertical="top", wrap_text=True)
            else:
                cell.alignment = Alignment(horizontal="right", vertical="top")
                if isinstance(value, float | int):
                    cell.number_format = number_format(float(value), unit, column)
                else:
                    cell.value = "-"
    if not table.rows:
        row_index += 1
        sheet.cell(row_index, 1, table.empty).font = Font(name=font)
    row_index += 1
    for note in report.footnotes(lang):
        row_index += 1
        cell = sheet.cell(row_index, 1, f"※ {note}" if lang == "ja" else f"* {note}")
        cell.font = Font(name=font, size=9)
    sheet.freeze_panes = sheet.cell(HEADER_ROW + 1, 1)
    sheet.print_title_rows = f"{HEADER_ROW}:{HEADER_ROW}"
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = 0
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
