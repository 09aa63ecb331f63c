"""Opening one file as a table of cells: CSV in any of the encodings Japanese offices use, or
one sheet of an .xlsx workbook. Rows are numbered as a spreadsheet shows them (header = row 1).
"""

from __future__ import annotations

import codecs
import csv
import io
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import charset_normalizer
import openpyxl
from openpyxl.utils.exceptions import InvalidFileException
from openpyxl.worksheet._read_only import ReadOnlyWorksheet

from dxkpi.collector.errors import excerpt
from dxkpi.connectors._tables.rows import Table, header_of, numbered
from dxkpi.connectors._tables.rows import TableProblem as FileProblem

__all__ = ["FileProblem", "Table", "csv_table", "text_of", "xlsx_table"]

# Tried strictly in this order before guessing: a valid UTF-8 file almost never decodes as CP932
# by accident, and Shift_JIS files from Excel are CP932 (Microsoft's superset of Shift_JIS).
_STRICT_ENCODINGS = ("utf-8-sig", "cp932")
# How much of a file is checked against an encoding at a time.
_CHECK_BYTES = 1 << 20


def text_of(handle: BinaryIO, encoding: str) -> io.TextIOWrapper:
    """The file's text, decoded as it is read: neither the bytes nor the text are ever held
    whole. `auto` tries UTF-8 (with or without BOM), then CP932, then guesses from the first
    megabyte. Whichever encoding is used is first checked over the whole file, a megabyte at a
    time, so a bad byte anywhere is reported with its line before any row is read.
    newline="" keeps quoted line breaks inside a cell, as the csv module requires. `handle`
    must be seekable; detach the result (`TextIOWrapper.detach`) to keep `handle` open."""
    if encoding != "auto":
        error = _first_error(handle, encoding)
        if error is not None:
            offset, line = error
            raise FileProblem(
                f"line {line} is not valid {encoding} (byte {offset}); save the file as "
                "UTF-8 or Shift_JIS, or set `encoding: auto`"
            )
        return _reader(handle, encoding)
    handle.seek(0)
    start = handle.read(_CHECK_BYTES)
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not start.startswith(
        codecs.BOM_UTF32_LE
    ):
        guessed: str | None = "utf-16"  # the BOM says which byte order
    elif b"\x00" in start:
        # UTF-16 without a BOM: text of ASCII characters in it is valid CP932 too.
        guessed = _guess(handle)
    else:
        for candidate in _STRICT_ENCODINGS:
            if _first_error(handle, candidate) is None:
                return _reader(handle, candidate)
        guessed = _guess(handle)
    if guessed is None or _first_error(handle, guessed) is not None:
        raise FileProblem(
            "the file is neither UTF-8 nor Shift_JIS and its encoding could not be guessed; "
            "set `encoding:` (e.g. euc_jp) or save it as UTF-8"
        )
    return _reader(handle, guessed)


def _guess(handle: BinaryIO) -> str | None:
    """charset-normalizer's guess from the file's first megabyte, cut at a line end."""
    handle.seek(0)
    sample = handle.read(_CHECK_BYTES)
    if len(sample) == _CHECK_BYTES:
        end = sample.rfind(b"\n")
        if end > 0:
            # UTF-16-LE writes a line end as 0A 00: keep the pair whole.
            sample = sample[: end + 2 if sample[end + 1 : end + 2] == b"\x00" else end + 1]
    best = charset_normalizer.from_bytes(sample).best()
    return None if best is None else best.encoding


def _first_error(handle: BinaryIO, encoding: str) -> tuple[int, int] | None:
    """Where the file stops being valid `encoding` (byte offset, line number), or None: read
    a megabyte at a time, keeping none of the text."""
    decoder = codecs.getincrementaldecoder(encoding)()
    handle.seek(0)
    offset = 0
    lines = 1
    while chunk := handle.read(_CHECK_BYTES):
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            return offset + exc.start, lines + chunk[: exc.start].count(b"\n")
        offset += len(chunk)
        lines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return offset - len(exc.object) + exc.start, lines
    return None


def _reader(handle: BinaryIO, encoding: str) -> io.TextIOWrapper:
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # a BOM is not part of the first header name
    handle.seek(0)
    return io.TextIOWrapper(handle, encoding=encoding, newline="")


@contextmanager
def csv_table(handle: BinaryIO, *, encoding: str, delimiter: str) -> Iterator[Table]:
    """The file's rows as they are read: memory does not grow with the file's size."""
    text = text_of(handle, encoding)
    try:
        reader = csv.reader(text, delimiter=delimiter)
        yield Table(header=header_of(next(reader, None)), rows=numbered(reader))
    finally:
        text.detach()  # the caller's handle stays open (it checks the file afterwards)


def _size_not_read(sheet: ReadOnlyWorksheet) -> None:
    """Nothing: the sheet's stored size is not read (see below)."""


# openpyxl 3.1 reads a read-only sheet's stored size when the workbook is opened, by parsing
# the sheet's XML up to its <dimension> element and keeping what it parsed. A sheet without
# one (openpyxl's own write-only output, some exporters) is parsed whole into memory: 546 MB of
# peak RSS for a 47 MB workbook of 2.5 million rows (bench/files.py). The stored size is
# ignored anyway (`reset_dimensions` below), so it is not read at all. Only read-only
# workbooks are affected, and only this module opens any.
setattr(ReadOnlyWorksheet, "_get_size", _size_not_read)  # noqa: B010


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
        yield Table(header=header_of(next(rows, None)), rows=numbered(rows))
    finally:
        book.close()
