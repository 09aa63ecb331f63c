"""Memory does not grow with a file's size: the CSV is read as it is parsed, and the keys and
rows of a run go to a spool on disk (connectors/csvfile/spool.py), not into lists and dicts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import date, timedelta
from pathlib import Path

import pytest

from dxkpi.collector.contract import Observation
from dxkpi.connectors._tables.spool import BATCH
from dxkpi.connectors.csvfile.reading import csv_table
from dxkpi.connectors.csvfile.tests.fake_csvfile import FileShare, window
from dxkpi.connectors.csvfile.tests.test_csvfile import run, run_until_error, views_source

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def share(tmp_path: Path) -> FileShare:
    return FileShare(tmp_path)


def days(count: int) -> list[list[str]]:
    first = date(2000, 1, 1)
    return [[(first + timedelta(days=i)).isoformat(), str(i)] for i in range(count)]


@pytest.mark.parametrize("encoding", ["utf-8", "cp932", "utf-16"])
def test_a_csv_is_read_as_it_is_parsed_not_whole(share: FileShare, encoding: str) -> None:
    # 4 MB: once the encoding is checked (a pass that keeps nothing), the rows come from the
    # file a buffer at a time. Reading it whole first would leave the handle at its end.
    path = share.csv("views.csv", [["date", "views"], *days(150_000)], encoding=encoding)
    size = path.stat().st_size
    with path.open("rb") as handle:
        with csv_table(handle, encoding="auto", delimiter=",") as table:
            assert table.header == ["date", "views"]
            assert next(table.rows) == (2, ["2000-01-01", "0"])
            assert handle.tell() < 64 * 1024 < size // 32
            assert sum(1 for _ in table.rows) == 150_000 - 1
            assert handle.tell() == size
        # The caller's handle stays open for its checks after reading (fstat of the same file).
        assert not handle.closed


def test_a_duplicate_in_a_later_batch_names_the_first_row(share: FileShare) -> None:
    rows = [["date", "views"], *days(BATCH + 10), ["2000-01-03", "9"]]
    share.csv("views.csv", rows)
    got, error = run_until_error(share.connector(**views_source()))
    assert got == []
    assert f"views.csv:{BATCH + 12}: page_views for this period and labels is already in " in str(
        error
    )
    assert str(error).endswith("already in views.csv:4")


def test_a_rejected_files_periods_do_not_count_against_the_next(share: FileShare) -> None:
    share.csv("m/a.csv", [["date", "views"], ["2026-04-01", "1"], ["2026-04-02", "x"]])
    share.csv("m/b.csv", [["date", "views"], ["2026-04-01", "2"]])
    share.csv("m/c.csv", [["date", "views"], ["2026-04-01", "3"]])
    got, error = run_until_error(share.connector(**views_source(path="m/*.csv")))
    assert [o.value for o in got] == [2]
    lines = str(error).splitlines()[1:]
    assert lines == [
        "  m/a.csv:3: column 'views': 'x' is not a number",
        "  m/c.csv:2: page_views for this period and labels is already in m/b.csv:2",
    ]


def test_every_row_of_a_file_larger_than_a_batch_is_yielded_once(share: FileShare) -> None:
    share.csv("views.csv", [["date", "views"], *days(2 * BATCH + 7)])
    got: list[Observation] = run(
        share.connector(**views_source()), window("1999-01-01", "2200-01-01")
    )
    assert len(got) == 2 * BATCH + 7
    assert sorted(o.value for o in got) == [float(i) for i in range(2 * BATCH + 7)]
    assert len({o.start for o in got}) == 2 * BATCH + 7


COLLECT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from dxkpi.connectors.csvfile.tests.fake_csvfile import ALL_TIME, FileShare

    def hwm():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    share = FileShare(Path(sys.argv[1]))
    settings = {
        "path": "views.csv", "max_file_size": "1GB", "period_column": "date",
        "labels": {"page": "page"},
        "metrics": [{"name": "page_views", "column": "views", "unit": "page_views"}],
    }
    connector = share.connector(**settings)
    before = hwm()
    count = sum(1 for _ in connector.collect(ALL_TIME))
    print(json.dumps({"before": before, "after": hwm(), "count": count}))
    """
)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    # 30 MB, about 1.1 million rows, every one in the window. Read whole, rows and keys in
    # memory, this took ~300 MB more than the process had before; streamed and spooled, the
    # growth is the spool's cache and a few batches. The bound is generous: not a benchmark.
    path = tmp_path / "views.csv"
    first = date(2000, 1, 1)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("date,page,views\r\n")
        for day in range(1_100):
            start = (first + timedelta(days=day)).isoformat()
            out.write("".join(f"{start},/page/{page:04},{page}\r\n" for page in range(1_000)))
    assert path.stat().st_size > 28_000_000
    finished = subprocess.run(
        [sys.executable, "-c", COLLECT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    measured = json.loads(finished.stdout)
    assert measured["count"] == 1_100_000
    growth = measured["after"] - measured["before"]
    assert growth < 80_000_000, f"peak memory grew by {growth / 1e6:.0f} MB reading 30 MB"


def test_opening_a_workbook_does_not_parse_its_sheet_into_memory(tmp_path: Path) -> None:
    # openpyxl's write-only output has no <dimension> element; openpyxl's reader then parsed
    # the whole sheet into memory just to learn its size (~80 bytes a cell) before any row.
    import tracemalloc

    import openpyxl

    from dxkpi.connectors.csvfile.reading import xlsx_table

    path = tmp_path / "views.xlsx"
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("views")
    sheet.append(["date", "views"])
    for day in range(200_000):
        sheet.append([date(2000, 1, 1) + timedelta(days=day % 30_000), day])
    book.save(path)
    with path.open("rb") as handle:
        tracemalloc.start()
        try:
            with xlsx_table(handle, sheet=None) as table:
                assert next(table.rows)[0] == 2
                _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 5_000_000, f"{peak / 1e6:.1f} MB to open a 200,000-row sheet"
