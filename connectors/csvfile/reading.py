"""Opening one file as a table of cells: CSV in any of the encodings Japanese offices use, or
one sheet of an .xlsx workbook. Rows are numbered as a spreadsheet shows them (header = row 1).
"""

from __future__ import annotations

import codecs
import csv
import io
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import charset_normalizer
import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from dxkpi.collector.errors import excerpt
from dxkpi.connectors.csvfile.cells import is_blank
from dxkpi.connectors.csvfile.settings import fold

# Tried strictly in this order before guessing: a valid UTF-8 file almost never decodes as CP932
# by accident, and Shift_JIS files from Excel are CP932 (Microsoft's superset of Shift_JIS).
_STRICT_ENCODINGS = ("utf-8-sig", "cp932")
# How much of a file is checked against an encoding at a time.
_CHECK_BYTES = 1 << 20
# How many header names an error about missing columns lists.
_HEADER_SHOWN = 12


class FileProblem(Exception):
    """The file as a whole cannot be read; the message says why and what to do."""


@dataclass
class Table:
    header: list[str]
    # (spreadsheet row number, cells); blank rows are left out.
    rows: Iterator[tuple[int, Sequence[object]]]

    def column_index(self, wanted: list[str]) -> dict[str, int]:
        """Where each wanted column is; FileProblem naming the columns the file does have."""
        positions: dict[str, list[int]] = {}
        for index, name in enumerate(self.header):
            positions.setdefault(fold(name), []).append(index)
        missing = [name for name in wanted if fold(name) not in positions]
        if missing:
            raise FileProblem(
                f"column {', '.join(repr(m) for m in missing)} not found in the header (row 1); "
                f"the file has {_describe_header(self.header)}. {_header_hint(self.header)}"
            )
        repeated = [name for name in wanted if len(positions[fold(name)]) > 1]
        if repeated:
            raise FileProblem(
                f"column {', '.join(repr(r) for r in repeated)} appears more than once in the "
                "header (row 1); rename one of them"
            )
        return {name: positions[fold(name)][0] for name in wanted}


def _describe_header(header: list[str]) -> str:
    """The header's columns as an error may quote them: a few, each a short escaped excerpt
    (a file that is not a table, e.g. one holding secrets, may put anything in row 1)."""
    named = [name for name in header if name]
    if not named:
        return "no column names"
    shown = ", ".join(excerpt(name) for name in named[:_HEADER_SHOWN])
    more = f" and {len(named) - _HEADER_SHOWN} more" if len(named) > _HEADER_SHOWN else ""
    return f"{len(named)} columns: {shown}{more}"


def _header_hint(header: list[str]) -> str:
    """What to do about a header that lacks the wanted columns."""
    named = [name for name in header if name]
    if len(named) == 1:
        for delimiter, written in (("\t", '"\\t"'), (";", '";"'), ("|", '"|"')):
            if delimiter in named[0]:
                return (
                    f"The whole header is one column holding {written}: the file is separated "
                    f"by it, so set `delimiter: {written}`"
                )
    return "If the export format changed, update the column names in this source's settings"


def cell_at(cells: Sequence[object], index: int) -> object:
    """The cell at `index`; rows may be shorter than the header when trailing cells are empty."""
    return cells[index] if index < len(cells) else None


def text_of(data: bytes, encoding: str) -> TextIO:
    """The file's text, decoded as it is read (a whole decoded copy of a large file would take
    several times its size). `auto` tries UTF-8 (with or without BOM), then CP932, then guesses.
    newline="" keeps quoted line breaks inside a cell, as the csv module requires."""
    if encoding != "auto":
        error = _first_error(data, encoding)
        if error is not None:
            line = data[:error].count(b"\n") + 1
            raise FileProblem(
                f"line {line} is not valid {encoding} (byte {error}); save the file as "
                "UTF-8 or Shift_JIS, or set `encoding: auto`"
            )
        return _reader(data, encoding)
    for candidate in _STRICT_ENCODINGS:
        if _first_error(data, candidate) is None:
            return _reader(data, candidate)
    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        raise FileProblem(
            "the file is neither UTF-8 nor Shift_JIS and its encoding could not be guessed; "
            "set `encoding:` (e.g. euc_jp) or save it as UTF-8"
        )
    return io.StringIO(str(best).removeprefix("\ufeff"), newline="")


def _first_error(data: bytes, encoding: str) -> int | None:
    """Where `data` stops being valid `encoding` (a byte offset), or None: checked a megabyte
    at a time, keeping none of the text."""
    decoder = codecs.getincrementaldecoder(encoding)()
    view = memoryview(data)
    for offset in range(0, len(data), _CHECK_BYTES):
        try:
            decoder.decode(view[offset : offset + _CHECK_BYTES])
        except UnicodeDecodeError as exc:
            return offset + exc.start
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return len(data) - len(exc.object) + exc.start
    return None


def _reader(data: bytes, encoding: str) -> TextIO:
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # a BOM is not part of the first header name
    return io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline="")


def _numbered(records: Iterator[Sequence[object]]) -> Iterator[tuple[int, Sequence[object]]]:
    for number, cells in enumerate(records, start=2):
        if not all(is_blank(cell) for cell in cells):
            yield number, cells


def _header(first: Sequence[object] | None) -> list[str]:
    if first is None:
        raise FileProblem("the file is empty; row 1 must be the header")
    return ["" if cell is None else str(cell).strip() for cell in first]


def csv_table(data: bytes, *, encoding: str, delimiter: str) -> Table:
    reader = csv.reader(text_of(data, encoding), delimiter=delimiter)
    header = _header(next(reader, None))
    return Table(header=header, rows=_numbered(reader))


@contextmanager
def xlsx_table(handle: BinaryIO, *, sheet: str | None) -> Iterator[Table]:
    # An open file rather than a name: openpyxl refuses names without an Excel suffix, and
    # `format: xlsx` exists for exports named otherwise. Read-only mode reads it lazily.
    try:
        with warnings.catch_warnings():
            # openpyxl warns about styles and data validation it does not keep; we only read values.
            warnings.simplefilter("ignore")
            book = openpyxl.load_workbook(handle, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError):
        raise FileProblem(
            "not a readable .xlsx workbook (an old .xls, or damaged?); save it as .xlsx or CSV"
        ) from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise FileProblem(
                f"no sheet {sheet!r}; the workbook's sheets are "
                f"{', '.join(map(excerpt, book.sheetnames))}"
            )
        worksheet = book[sheet] if sheet is not None else book.worksheets[0]
        # Some writers store a wrong sheet size; forget it so every row is read.
        worksheet.reset_dimensions()
        rows = worksheet.iter_rows(values_only=True)
        yield Table(header=_header(next(rows, None)), rows=_numbered(rows))
    finally:
        book.close()
