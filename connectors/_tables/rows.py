"""A table as the connectors that read spreadsheets see it: a header row and numbered rows of
cells (csvfile's CSV and .xlsx files, gsheets' ranges). Rows are numbered as a spreadsheet shows
them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from dxkpi.collector.errors import excerpt
from dxkpi.connectors._tables.cells import is_blank
from dxkpi.connectors._tables.settings import fold


class TableProblem(Exception):
    """The table as a whole cannot be read (a file, a sheet's range); the message says why and
    what to do."""


# How many header names an error about missing columns lists.
_HEADER_SHOWN = 12


@dataclass
class Table:
    header: list[str]
    # (spreadsheet row number, cells); blank rows are left out.
    rows: Iterator[tuple[int, Sequence[object]]]
    # Where the header is, as a spreadsheet numbers rows.
    header_row: int = 1
    # What errors call the table.
    what: str = "the file"

    def column_index(self, wanted: list[str]) -> dict[str, int]:
        """Where each wanted column is; TableProblem naming the columns the table does have."""
        positions: dict[str, list[int]] = {}
        for index, name in enumerate(self.header):
            positions.setdefault(fold(name), []).append(index)
        missing = [name for name in wanted if fold(name) not in positions]
        if missing:
            raise TableProblem(
                f"column {', '.join(repr(m) for m in missing)} not found in the header "
                f"(row {self.header_row}); {self.what} has {_describe_header(self.header)}. "
                f"{_header_hint(self.header)}"
            )
        repeated = [name for name in wanted if len(positions[fold(name)]) > 1]
        if repeated:
            raise TableProblem(
                f"column {', '.join(repr(r) for r in repeated)} appears more than once in the "
                f"header (row {self.header_row}); rename one of them"
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


def numbered(
    records: Iterator[Sequence[object]], first: int = 2
) -> Iterator[tuple[int, Sequence[object]]]:
    """Data rows with their row numbers (`first` is the row after the header); blank rows are
    left out."""
    for number, cells in enumerate(records, start=first):
        if not all(is_blank(cell) for cell in cells):
            yield number, cells


def header_of(first: Sequence[object] | None, empty: str = "the file is empty") -> list[str]:
    """The header row's names, trimmed."""
    if first is None:
        raise TableProblem(f"{empty}; row 1 must be the header")
    header = ["" if cell is None else str(cell).strip() for cell in first]
    if header:
        # A byte order mark the decoder kept (UTF-16-LE guessed for a file that has one).
        header[0] = header[0].removeprefix("\ufeff").strip()
    return header
