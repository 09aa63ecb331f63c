"""files — a worker's peak memory collecting one large CSV (and .xlsx) file.

`dxkpi --config X collect files --since … --until …` runs in its own process: the csvfile
connector reads the file and the runner stores every row in PostgreSQL (every row is in the
window, the worst case: all of them are spooled and written). Its peak resident memory is the
child's own `VmHWM` (/proc/<pid>/status), read every 20 ms until it exits: `ru_maxrss` would not
do, since Linux carries it over from the forking parent (the bench process, hundreds of MB after
the other benchmarks) across exec, while `VmHWM` belongs to the new program's memory. The
baseline is the same command collecting a ten-row file, in the same run. Target: peak <= 300
MB (10^6 bytes) for a 200 MB CSV (about 7 million rows `date,page_path,views`, 1,000 pages).
An .xlsx of about 50 MB (Excel's most rows, 1,048,575 under the header, ten columns) is
measured as well. Generated files are kept
between runs next to the results file (bench/results/files/).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import openpyxl

from bench.harness import (
    Bench,
    Outcome,
    child_env,
    dxkpi_command,
    proc_status_kib,
    tail,
    write_config,
)

MB = 1_000_000
FULL_CSV_BYTES = 200 * MB
# Excel's limit is 1,048,576 rows a sheet (header included); ten columns make it about 50 MB.
FULL_XLSX_ROWS = 1_048_575
XLSX_EXTRA_COLUMNS = 7
PAGES = 1_000
TARGET_BYTES = 300 * MB
FIRST_DAY = date(2000, 1, 1)
SOURCE = "files"


def _row(index: int) -> str:
    day = FIRST_DAY + timedelta(days=index // PAGES)
    return f"{day.isoformat()},/page/{index % PAGES:04},{(index * 7919) % 100_000}\r\n"


def make_csv(path: Path, size: int) -> int:
    """A CSV of about `size` bytes (kept if one of that size exists); returns its row count."""
    average = sum(len(_row(i)) for i in range(1_000)) / 1_000
    rows = max(10, round(size / average))
    marker = path.with_name(f"{path.name}.{rows}.rows")
    if path.exists() and marker.exists():
        return rows
    partial = path.with_suffix(".part")
    with partial.open("w", encoding="utf-8", newline="") as out:
        out.write("date,page_path,views\r\n")
        for first in range(0, rows, 100_000):
            out.write("".join(_row(i) for i in range(first, min(rows, first + 100_000))))
    partial.replace(path)
    _mark(path, marker)
    return rows


def _mark(path: Path, marker: Path) -> None:
    """Remember how many rows the kept file has (a later run with another --scale rewrites it)."""
    for old in path.parent.glob(f"{path.name}.*.rows"):
        old.unlink()
    marker.touch()


def make_xlsx(path: Path, rows: int) -> int:
    marker = path.with_name(f"{path.name}.{rows}.rows")
    if path.exists() and marker.exists():
        return rows
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("views")
    extra = [f"other_{n}" for n in range(XLSX_EXTRA_COLUMNS)]
    sheet.append(["date", "page_path", "views", *extra])
    for index in range(rows):
        day = FIRST_DAY + timedelta(days=index // PAGES)
        others = [(index * (n + 3)) % 1_000_003 for n in range(XLSX_EXTRA_COLUMNS)]
        sheet.append([day, f"/page/{index % PAGES:04}", (index * 7919) % 100_000, *others])
    book.save(path)
    _mark(path, marker)
    return rows


def _settle(path: Path) -> None:
    """Old enough for min_file_age."""
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))


def peak_collecting(folder: Path, name: str, url: str, log: Path) -> dict[str, Any]:
    """Collect `folder/name` with `dxkpi collect` in a child process; its peak RSS."""
    _settle(folder / name)
    config = write_config(
        folder / f"{Path(name).stem}.yaml",
        {
            "data_dir": str(folder / "data"),
            "storage": {"url": url},
            "sources": [
                {
                    "id": SOURCE,
                    "connector": "csvfile",
                    "schedule": {"every": "1d"},
                    "settings": {
                        "path": name,
                        "max_file_size": "2GB",
                        "period_column": "date",
                        "labels": {"page_path": "page_path"},
                        "metrics": [{"name": "bench_views", "column": "views", "unit": "views"}],
                    },
                }
            ],
        },
    )
    migrate = subprocess.run(
        dxkpi_command(config, "migrate"), env=child_env(), capture_output=True, timeout=300
    )
    if migrate.returncode != 0:
        raise RuntimeError(f"dxkpi migrate failed: {migrate.stderr.decode()[-2000:]}")
    command = dxkpi_command(
        config, "collect", SOURCE, "--since", "1999-01-01", "--until", "2100-01-01"
    )
    started = time.perf_counter()
    peak_kb = 0
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        while process.poll() is None:
            # VmHWM only grows; the last reading before exit is the peak, to within 20 ms.
            with contextlib.suppress(OSError, RuntimeError):  # exited between poll and read
                peak_kb = max(peak_kb, proc_status_kib(process.pid, "VmHWM"))
            time.sleep(0.02)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"dxkpi collect {name} exited {process.returncode}\n{tail(log)}")
    return {
        "peak_rss_bytes": peak_kb * 1024,
        "file_bytes": (folder / name).stat().st_size,
        "seconds": round(seconds, 1),
        "output": log.read_text(errors="replace").strip().splitlines()[-1:],
    }


def run(bench: Bench) -> Outcome:
    outcome = Outcome("files")
    cache = bench.artifacts / "files"
    cache.mkdir(parents=True, exist_ok=True)
    csv_bytes = bench.size(FULL_CSV_BYTES, minimum=200_000)
    xlsx_rows = bench.size(FULL_XLSX_ROWS, minimum=2_000)
    rows = {
        "tiny.csv": make_csv(cache / "tiny.csv", 10 * len(_row(0))),
        "large.csv": make_csv(cache / "large.csv", csv_bytes),
        "large.xlsx": make_xlsx(cache / "large.xlsx", xlsx_rows),
    }
    measured: dict[str, dict[str, Any]] = {}
    for name in rows:
        schema = f"files_{Path(name).stem}_{Path(name).suffix[1:]}"
        with bench.database.schema(schema) as url:
            measured[name] = peak_collecting(cache, name, url, bench.dir("files") / f"{name}.log")
        measured[name]["rows"] = rows[name]
    tiny = measured["tiny.csv"]["peak_rss_bytes"]
    for name, label in (("large.csv", "CSV"), ("large.xlsx", ".xlsx")):
        peak = measured[name]["peak_rss_bytes"]
        size = measured[name]["file_bytes"]
        detail = (
            f"{peak / MB:.0f} MB peak collecting {size / MB:.1f} MB ({rows[name]:,} rows, "
            f"{measured[name]['seconds']:.0f} s)"
        )
        if name == "large.csv":
            outcome.ratio(
                f"peak RSS, {size / MB:.3g} MB {label} / 300 MB",
                peak / TARGET_BYTES,
                detail,
                target=1.0,
                comparison="<=",
            )
        outcome.ratio(
            f"peak RSS, {size / MB:.3g} MB {label} / ten-row CSV",
            peak / tiny,
            f"{detail} vs {tiny / MB:.0f} MB for ten rows",
        )
    outcome.raw.update(measured)
    return outcome
