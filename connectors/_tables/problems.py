"""Collects what is wrong with the files of one run, to report it all at once as `file:row: why`."""

from __future__ import annotations

from dxkpi.collector.errors import SourceDataError

MAX_LISTED = 20


class Problems:
    """Every bad row and unreadable file of one run. A file with any problem is skipped whole.

    What is wrong with one row is one line, whenever it was found: the duplicate check runs in
    batches (connectors/csvfile/spool.py), after the row's other checks. Lines are listed file
    by file, a file's own problems first, then its rows in order."""

    def __init__(self, noun: str = "file", plural: str = "files") -> None:
        self._nouns = (noun, plural)
        # (file, row or 0 for the file itself) -> whys, in the order the files were first named.
        self._whys: dict[tuple[str, int], list[str]] = {}
        self._files: dict[str, int] = {}
        self._count = 0
        self.rejected: list[str] = []

    def row(self, file: str, row: int, why: str) -> None:
        self._files.setdefault(file, len(self._files))
        self._whys.setdefault((file, row), []).append(why)
        self._count += 1

    def file(self, file: str, why: str) -> None:
        self.row(file, 0, why)

    def count(self) -> int:
        return self._count

    def reject(self, file: str) -> None:
        self.rejected.append(file)

    def lines(self) -> list[str]:
        ordered = sorted(self._whys.items(), key=lambda item: (self._files[item[0][0]], item[0][1]))
        return [
            f"{file}:{row}: {'; '.join(whys)}" if row else f"{file}: {'; '.join(whys)}"
            for (file, row), whys in ordered
        ]

    def error(self, source_id: str) -> SourceDataError | None:
        """The error to raise at the end of the run, or None when every file was good."""
        lines = self.lines()
        if not lines:
            return None
        listed = lines[:MAX_LISTED]
        if len(lines) > MAX_LISTED:
            listed.append(f"... and {len(lines) - MAX_LISTED} more")
        files = ", ".join(self.rejected)
        one = len(self.rejected) == 1
        noun, it = (self._nouns[0], "it") if one else (self._nouns[1], "them")
        return SourceDataError(
            source_id,
            f"rejected {noun} {files} whole (nothing from {it} was stored); fix what is listed "
            f"and the next run reads {it} again:\n  " + "\n  ".join(listed),
        )
