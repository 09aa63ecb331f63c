"""The csvfile connector: KPI figures kept in CSV or .xlsx files, one source per file or glob.

Each file is read and validated whole before anything from it is yielded (streamed: rows are
parsed as the file is read, and a `table` file's keys and values wait in a spool on disk, so
memory does not grow with the file); a file with any bad row is skipped whole and the run ends
with one `SourceDataError` listing every bad row, after the good files have been yielded. Every
call re-reads the files and re-yields the window: the core's upserts make that idempotent, so no
cursor is kept.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISREG
from typing import ClassVar, TypeVar

from dxkpi.collector.contract import Checkpoint, Connector, MetricSpec, Observation, Window
from dxkpi.collector.errors import FatalSourceError, RetryableSourceError
from dxkpi.connectors._tables.mapping import read_table, spooled_observations, table_metrics
from dxkpi.connectors._tables.problems import Problems
from dxkpi.connectors._tables.spool import TableSpool
from dxkpi.connectors.csvfile.reading import FileProblem, Table, csv_table, xlsx_table
from dxkpi.connectors.csvfile.runlog import (
    RUN_LOG_METRICS,
    Run,
    RunKey,
    read_runs,
    run_observations,
)
from dxkpi.connectors.csvfile.settings import CsvFileSettings

T = TypeVar("T")
_GLOB_CHARACTERS = frozenset("*?[")
# Kernel pseudo files: never data, and /proc/self/environ holds every secret of the process.
_SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


class CsvFileConnector(Connector[CsvFileSettings]):
    name = "csvfile"
    settings_model = CsvFileSettings
    # The metrics depend on each source's settings: see declared_metrics().
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        if self.settings.layout == "rpa_run_log":
            return RUN_LOG_METRICS
        return table_metrics(self.settings, self.settings.path)

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        problems = Problems()
        if self.settings.layout == "rpa_run_log":
            yield from self._collect_runs(window, problems)
        else:
            yield from self._collect_table(window, problems)
        error = problems.error(self.context.source_id)
        if error is not None:
            raise error

    def _collect_table(self, window: Window, problems: Problems) -> Iterator[Observation]:
        tz = self.context.timezone
        with TableSpool(tz) as spool:
            for accepted in self._accepted_files(
                problems,
                lambda table, file: read_table(
                    table, file, self.settings, window, tz, problems, spool
                ),
            ):
                accepted.accept()  # before the next file: a period may not be in two files
                yield from spooled_observations(accepted, self.settings)

    def _collect_runs(self, window: Window, problems: Problems) -> Iterator[Observation]:
        runs: dict[RunKey, Run] = {}
        tz = self.context.timezone
        for found in self._accepted_files(
            problems, lambda table, file: read_runs(table, file, self.settings, tz, problems, runs)
        ):
            runs.update(found)
        # Runs of one day may sit in two files (overlapping exports), so count after reading all.
        yield from run_observations(runs, self.settings, window, tz)

    def _accepted_files(self, problems: Problems, parse: Callable[[Table, str], T]) -> Iterator[T]:
        """`parse`'s result for each file, lazily, in name order. A file that adds problems is
        rejected whole: its result is dropped."""
        for path in self._files():
            file = self._display(path)
            before = problems.count()
            result = self._read(path, file, problems, parse)
            if result is None or problems.count() > before:
                problems.reject(file)
            else:
                yield result

    # -- files -----------------------------------------------------------------------------

    def _pattern(self) -> Path:
        path = Path(self.settings.path).expanduser()
        return path if path.is_absolute() else self.context.base_dir / path

    def _display(self, path: Path) -> str:
        """How errors name a file: relative to the config folder when it is inside it."""
        try:
            return path.relative_to(self.context.base_dir).as_posix()
        except ValueError:
            return str(path)

    def _files(self) -> list[Path]:
        pattern = self._pattern()
        folder = self.context.base_dir
        if _GLOB_CHARACTERS.isdisjoint(self.settings.path):
            if pattern.is_file():
                return [pattern]
            raise FatalSourceError(
                self.context.source_id,
                f"file not found: looked for {pattern}",
                where=self.settings.path,
                hint=f"relative paths are resolved against the config file's folder {folder}",
            )
        # Skip office lock files (~$book.xlsx, .~lock.book.csv#) that sit beside open files.
        files = [
            Path(name)
            for name in sorted(glob.glob(str(pattern), recursive=True))
            if Path(name).is_file() and not Path(name).name.startswith(("~$", "."))
        ]
        if not files:
            raise FatalSourceError(
                self.context.source_id,
                f"no file matches {pattern}",
                where=self.settings.path,
                hint=f"relative paths are resolved against the config file's folder {folder}",
            )
        return files

    def _read(
        self, path: Path, file: str, problems: Problems, parse: Callable[[Table, str], T]
    ) -> T | None:
        """Parse one file; None (with the reason in `problems`) when it cannot be read at all."""
        source_id = self.context.source_id
        try:
            # Opened by its real path, after the checks: what is read is what was checked.
            descriptor = os.open(self._confined(path), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(descriptor, "rb") as handle:
                before = self._checked_stat(os.fstat(descriptor), file)
                fmt = self.settings.file_format(path.name)
                opened: AbstractContextManager[Table]
                if fmt == "xlsx":
                    opened = xlsx_table(handle, sheet=self.settings.sheet)
                else:
                    opened = csv_table(
                        handle, encoding=self.settings.encoding, delimiter=self.settings.delimiter
                    )
                with opened as table:
                    result = parse(table, file)
                after = os.fstat(descriptor)
        except FileProblem as exc:
            problems.file(file, str(exc))
            return None
        except PermissionError:
            raise FatalSourceError(
                source_id,
                "permission denied",
                where=file,
                hint="give the collector's user read access to the file",
            ) from None
        except OSError as exc:
            # Vanished between listing and reading, or a network share hiccup: try again later.
            reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            raise RetryableSourceError(
                source_id, f"could not read the file ({reason})", where=file
            ) from None
        if (after.st_mtime_ns, after.st_size) != (before.st_mtime_ns, before.st_size):
            raise RetryableSourceError(
                source_id, "the file changed while it was being read", where=file
            )
        return result

    def _data_folder(self) -> Path:
        """The folder files are read in, real path: where `path` points before any glob."""
        pattern = self._pattern()
        if _GLOB_CHARACTERS.isdisjoint(self.settings.path):
            return pattern.parent.resolve()
        fixed = []
        for part in pattern.parts:
            if not _GLOB_CHARACTERS.isdisjoint(part):
                break
            fixed.append(part)
        return Path(*fixed).resolve()

    def _confined(self, path: Path) -> Path:
        """The file's real path, or FileProblem when it leads out of the data folder (a link to
        /proc/self/environ in a shared folder would put the worker's secrets into errors) or
        into the kernel's pseudo files. The target is not named: it may itself say too much."""
        real = path.resolve(strict=True)
        folder = self._data_folder()
        if not real.is_relative_to(folder):
            raise FileProblem(
                f"refused: it leads outside the data folder {folder} (a symbolic link?); "
                "files are read only inside the folder `path` names: copy the file there"
            )
        if any(real.is_relative_to(root) for root in _SYSTEM_ROOTS):
            raise FileProblem(
                "refused: it is a system file, not data; point `path` at a data folder"
            )
        return real

    def _checked_stat(self, stat: os.stat_result, file: str) -> os.stat_result:
        """A regular file of an allowed size that has settled (see `_settled`)."""
        if not S_ISREG(stat.st_mode):
            raise FileProblem(
                "refused: not a regular file (a device, FIFO or socket); point `path` at files"
            )
        limit = self.settings.max_file_size
        if stat.st_size > limit:
            raise FileProblem(
                f"the file is {stat.st_size / 1e6:.1f} MB, over this source's max_file_size of "
                f"{limit / 1e6:.1f} MB; raise max_file_size if files this large are expected "
                "(memory does not grow with the size; time and temporary disk space do), or "
                "split it, e.g. one file per year with a glob `path`"
            )
        return self._settled(stat, file)

    def _settled(self, stat: os.stat_result, file: str) -> os.stat_result:
        """The file's stat, or RetryableSourceError while it may still be being written."""
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        age = self.context.clock() - modified
        wait = self.settings.min_file_age
        # A small negative age is clock skew on a file share: treat it as "just written".
        if -wait < age < wait:
            raise RetryableSourceError(
                self.context.source_id,
                f"modified {max(age, timedelta(0)).total_seconds():.0f} s ago, it may still be "
                "being written",
                where=file,
                hint=f"it is read once unchanged for {wait.total_seconds():.0f} s (min_file_age)",
                retry_after=(wait - age).total_seconds(),
            )
        return stat
