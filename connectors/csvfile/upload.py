"""Figures uploaded to the push API as a CSV file (`POST /api/v1/observations.csv`), read as
this connector reads files: UTF-8 (with or without BOM), Shift_JIS/CP932 or a guessed encoding;
periods as `parse_period` reads them (2021-04, 令和3年度, R3); numbers as Japanese spreadsheets
write them (1,234, △12, 48.2% for ratios, a dash for "no figure", whose row is skipped).

Columns: `metric`, `period`, `value`; every other column is a label of the row's metric (an
empty cell: the metric does not take that label). Rows are numbered as a spreadsheet shows them.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from dxkpi.collector.events import NumberedRow, UploadProblem
from dxkpi.connectors._tables.cells import cell_text, is_blank, parse_number
from dxkpi.connectors.csvfile.reading import FileProblem, text_of

REQUIRED = ("metric", "period", "value")


def parse_upload(body: bytes, ratio_metrics: frozenset[str]) -> list[NumberedRow]:
    try:
        text = text_of(io.BytesIO(body), "auto")
    except FileProblem as exc:
        raise UploadProblem(str(exc)) from None
    reader = csv.reader(text)
    header = [cell.strip() for cell in next(reader, [])]
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise UploadProblem(
            f"row 1 (the header) lacks {', '.join(missing)}; it has {', '.join(header) or '(none)'}"
        )
    rows: list[NumberedRow] = []
    problems: list[str] = []
    for number, cells in enumerate(reader, start=2):
        if all(is_blank(cell) for cell in cells):
            continue
        fields = dict(zip(header, cells, strict=False))
        metric = cell_text(fields.get("metric"))
        try:
            value = parse_number(fields.get("value"), ratio=metric in ratio_metrics)
        except ValueError as exc:
            problems.append(f"row {number}: field 'value': {exc}")
            continue
        if value is None:
            continue  # the table reports no figure for this row
        labels = {
            name: cell_text(cell)
            for name, cell in fields.items()
            if name not in REQUIRED and name and not is_blank(cell)
        }
        row: dict[str, Any] = {
            "metric": metric,
            "labels": labels,
            "period": cell_text(fields.get("period")),
            "value": value,
        }
        rows.append((number, row))
    if problems:
        raise UploadProblem("; ".join(problems[:20]))
    return rows
