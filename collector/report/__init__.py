"""The council report: each KPI's figure for one fiscal year against its plan, and the
operational figures behind them, as a prefecture hands it to its council (xlsx, Markdown, HTML).

`model` builds what the report says from `KpiCalculator.compute_all` (the computation behind
`dxkpi status`, never a second one) and the store; `xlsx` and `text` only render it.
"""

from __future__ import annotations

from typing import Literal

from dxkpi.collector.present import Lang
from dxkpi.collector.report.model import Report, build_report
from dxkpi.collector.report.text import render_text
from dxkpi.collector.report.xlsx import write_xlsx

__all__ = ["FORMATS", "Format", "Report", "build_report", "render"]

Format = Literal["xlsx", "md", "html"]
FORMATS: tuple[Format, ...] = ("xlsx", "md", "html")


def render(report: Report, lang: Lang, fmt: Format) -> bytes:
    """The report as file contents: an xlsx workbook, or UTF-8 Markdown / HTML."""
    if fmt == "xlsx":
        return write_xlsx(report, lang)
    return render_text(report, lang, fmt).encode("utf-8")
