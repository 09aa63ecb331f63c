"""The report as Markdown or HTML: one Jinja2 template, `templates/report.j2`, for both.

The template says what the report holds and in which order; `templates/md.j2` and
`templates/html.j2` say only how a title, a heading, a table and the notes are written in
each format. Cells arrive as text, formatted here with the same rules as the xlsx number
formats (`model.number_text`). HTML is escaped by Jinja2's autoescape; Markdown cells have
their pipes escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jinja2 import Environment, PackageLoader, StrictUndefined

from dxkpi.collector.present import Lang
from dxkpi.collector.report.model import Report, Table, number_text

__all__ = ["TextFormat", "TextTable", "render_text", "text_table"]

TextFormat = Literal["md", "html"]


@dataclass(frozen=True)
class TextTable:
    heading: str
    headers: list[str]
    aligns: list[str]  # left | right
    rows: list[list[str]]
    empty: str


def text_table(table: Table, lang: Lang, fiscal_year: int) -> TextTable:
    cells = []
    for row, unit in zip(table.rows, table.units, strict=True):
        line = []
        for column in table.columns:
            value = row[column.key]
            if column.kind == "text":
                line.append(str(value))
            else:
                assert not isinstance(value, str)
                line.append(number_text(value, unit, column.kind))
        cells.append(line)
    return TextTable(
        heading=table.heading,
        headers=[column.header(lang, fiscal_year) for column in table.columns],
        aligns=["left" if column.kind == "text" else "right" for column in table.columns],
        rows=cells,
        empty=table.empty,
    )


def _environment(fmt: TextFormat) -> Environment:
    env = Environment(
        loader=PackageLoader("dxkpi.collector.report", "templates"),
        autoescape=fmt == "html",
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md_cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    return env


def render_text(report: Report, lang: Lang, fmt: TextFormat) -> str:
    template = _environment(fmt).get_template("report.j2")
    return template.render(
        fmt=fmt,
        lang=lang,
        title=report.title(lang),
        tables=[text_table(table, lang, report.fiscal_year) for table in report.tables(lang)],
        notes=report.footnotes(lang),
    )
