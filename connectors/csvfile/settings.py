"""Settings of a csvfile source: which file, how to decode it, and which columns mean what."""

from __future__ import annotations

import codecs
from datetime import timedelta
from typing import Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from dxkpi.collector.durations import Duration
from dxkpi.connectors._tables.settings import TableColumns, fold

__all__ = ["CsvFileSettings", "RunLogColumns", "RunResult", "fold"]

RunResult = Literal["successful", "faulted", "stopped"]

# What WinActor, UiPath and hand-kept logs write in the result column; keys are compared after
# full-width folding and case-folding. Extend or override per source with `result_map`.
DEFAULT_RESULT_MAP: dict[str, RunResult] = {
    "正常終了": "successful",
    "正常": "successful",
    "成功": "successful",
    "完了": "successful",
    "successful": "successful",
    "success": "successful",
    "異常終了": "faulted",
    "異常": "faulted",
    "エラー": "faulted",
    "失敗": "faulted",
    "faulted": "faulted",
    "failed": "faulted",
    "error": "faulted",
    "中断": "stopped",
    "停止": "stopped",
    "強制終了": "stopped",
    "stopped": "stopped",
    "cancelled": "stopped",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunLogColumns(_Model):
    """Header names of an RPA run log. Defaults are those of a WinActor Manager export."""

    process: str = "シナリオ名"
    start: str = "開始日時"
    end: str = "終了日時"
    result: str = "結果"


class CsvFileSettings(TableColumns):
    # Relative paths resolve against the config file's folder; may be a glob (data/apps-*.csv).
    path: str = Field(min_length=1)
    format: Literal["auto", "csv", "xlsx"] = "auto"
    sheet: str | None = None
    encoding: str = "auto"
    delimiter: str = ","
    # A larger file is refused with an error. Memory does not grow with a file's size (rows are
    # streamed, keys and pending rows spooled to a temporary file, see spool.py); the limit
    # guards the time a run takes and the temporary disk space (about the file's size).
    max_file_size: ByteSize = ByteSize(20_000_000)
    # A file modified more recently than this may still be being written: retry later.
    min_file_age: Duration = timedelta(seconds=10)
    layout: Literal["table", "rpa_run_log"] = "table"
    # layout: table: the fields of TableColumns
    # layout: rpa_run_log
    columns: RunLogColumns = RunLogColumns()
    result_map: dict[str, RunResult] = Field(default_factory=dict)
    manual_minutes_per_run: dict[str, float] = Field(default_factory=dict)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        if encoding != "auto":
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValueError(
                    f"unknown encoding {encoding!r}; use auto, utf-8, utf-8-sig or cp932"
                ) from None
        return encoding

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, delimiter: str) -> str:
        if len(delimiter) != 1:
            raise ValueError(
                f"delimiter must be one character (e.g. ',' or '\\t'), not {delimiter!r}"
            )
        return delimiter

    @field_validator("manual_minutes_per_run")
    @classmethod
    def _non_negative_minutes(cls, minutes: dict[str, float]) -> dict[str, float]:
        for process, value in minutes.items():
            if not value >= 0:
                raise ValueError(f"manual minutes for {process!r} must be >= 0, not {value}")
        return minutes

    @model_validator(mode="after")
    def _layout_fields(self) -> CsvFileSettings:
        if self.format != "xlsx" and self.sheet is not None and not _is_xlsx(self.path):
            raise ValueError("`sheet` applies to .xlsx files only")
        if self.layout == "rpa_run_log":
            table_only = [
                field
                for field in ("period_column", "labels", "static_labels", "metrics")
                if field in self.model_fields_set
            ]
            if table_only:
                raise ValueError(
                    f"layout rpa_run_log has fixed metrics; remove {', '.join(table_only)}"
                )
            return self
        run_log_only = [
            field
            for field in ("columns", "result_map", "manual_minutes_per_run")
            if field in self.model_fields_set
        ]
        if run_log_only:
            raise ValueError(f"{', '.join(run_log_only)} apply to layout: rpa_run_log only")
        self.check_columns("layout table needs")
        return self

    def result_lookup(self) -> dict[str, RunResult]:
        """The result map in effect: built-in words overridden by `result_map`, keys folded."""
        merged = {fold(k): v for k, v in DEFAULT_RESULT_MAP.items()}
        merged.update({fold(k): v for k, v in self.result_map.items()})
        return merged

    def file_format(self, path: str) -> Literal["csv", "xlsx"]:
        if self.format != "auto":
            return self.format
        return "xlsx" if _is_xlsx(path) else "csv"


def _is_xlsx(path: str) -> bool:
    return path.lower().endswith((".xlsx", ".xlsm"))
