"""Collects what is wrong with the files of one run, to report it all at once as `file:row: why`."""

from __future__ import annotations

from dxkpi.collector.errors import SourceDataError

MAX_LISTED = 20


class Problems:
    """Every bad row and unreadable file of one run. A file with any problem is skipped whole."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.rejected: list[str] = []

    def row(self, file: str, row: int, why: str) -> None:
        self.lines.append(f"{file}:{row}: {why}")

    def file(self, file: str, why: str) -> None:
        self.lines.append(f"{file}: {why}")

    def count(self) -> int:
        return len(self.lines)

    def reject(self, file: str) -> None:
        self.rejected.append(file)

    def error(self, source_id: str) -> SourceDataError | None:
        """The error to raise at the end of the run, or None when every file was good."""
        if not self.lines:
            return None
        listed = self.lines[:MAX_LISTED]
        if len(self.lines) > MAX_LISTED:
            listed.append(f"... and {len(self.lines) - MAX_LISTED} more")
        files = ", ".join(self.rejected)
        noun, it = ("file", "it") if len(self.rejected) == 1 else ("files", "them")
        return SourceDataError(
            source_id,
            f"rejected {noun} {files} whole (nothing from {it} was stored); fix what is listed "
            f"and the next run reads {it} again:\n  " + "\n  ".join(listed),
        )
