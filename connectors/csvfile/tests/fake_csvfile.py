"""The csvfile connector's "server" is a folder: this writes files into one the way Excel,
e-application systems and WinActor write them (CRLF line ends, BOM or Shift_JIS, real date cells
in workbooks), and builds connectors whose config folder it is."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl

from dxkpi.collector.contract import TOKYO, Observation, Window
from dxkpi.collector.testing import context_for
from dxkpi.connectors.csvfile import CsvFileConnector
from dxkpi.connectors.csvfile.settings import CsvFileSettings

Rows = Sequence[Sequence[object]]


def later_than_any_file() -> datetime:
    """A clock reading well past every file just written, so min_file_age never holds them."""
    return datetime.now(UTC) + timedelta(hours=1)


class FileShare:
    """A config folder with its data files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def csv(self, name: str, rows: Rows, *, encoding: str = "utf-8", delimiter: str = ",") -> Path:
        buffer = io.StringIO(newline="")
        csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
        path = self.path(name)
        path.write_bytes(buffer.getvalue().encode(encoding))
        return path

    def xlsx(
        self, name: str, sheets: dict[str, Rows], *, formats: dict[str, str] | None = None
    ) -> Path:
        """A workbook; `formats` maps a cell (e.g. "B2") of every sheet to a number format."""
        book = openpyxl.Workbook()
        book.remove(book.active)
        for title, rows in sheets.items():
            sheet = book.create_sheet(title)
            for row in rows:
                sheet.append(list(row))
            for cell, number_format in (formats or {}).items():
                sheet[cell].number_format = number_format
        path = self.path(name)
        book.save(path)
        return path

    def connector(
        self, source_id: str = "files", *, clock: Any = later_than_any_file, **settings: Any
    ) -> CsvFileConnector:
        model = CsvFileSettings.model_validate(settings)
        return CsvFileConnector(model, context_for(source_id, base_dir=self.folder, clock=clock))


def window(start: str, end: str) -> Window:
    """[start, end) as Tokyo midnights, from ISO dates."""
    return Window(
        datetime.fromisoformat(start).replace(tzinfo=TOKYO),
        datetime.fromisoformat(end).replace(tzinfo=TOKYO),
    )


ALL_TIME = window("2000-01-01", "2100-01-01")


def by_key(items: list[Observation]) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
    """{(metric, start date, sorted labels): value}: easy to compare with expected tables."""
    return {
        (o.metric, o.start.date().isoformat(), tuple(sorted(o.labels.items()))): o.value
        for o in items
    }
