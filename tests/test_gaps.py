"""A backfill window that fails for good becomes a recorded gap: the backfill goes on with the
other windows, the gap shows in the store and as `dxkpi_source_gaps`, and the source's next
successful scheduled run reads it again until it succeeds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dxkpi.collector.cli import main
from dxkpi.collector.runtime import Runtime, resolve, set_current
from dxkpi.collector.storage import Store
from tests.conftest import PAGE_VIEWS_CSV, write_config

BAD_CSV = PAGE_VIEWS_CSV.replace("2024-04-02,/top,120", "2024-04-02,/top,x")


def plan(cursor_end: float | None, checkpoint: str | None) -> tuple[float, float]:
    return 0.0, 1.0


def test_gaps_are_failed_backfill_windows_not_covered_since(store: Store) -> None:
    def run(kind: str, start: float, end: float, status: str) -> int:
        run_id = store.start_run("src", kind, start, end)
        store.finish_run(run_id, status, 0, "E" if status != "success" else None, "why")
        return run_id

    run("backfill", 0, 10, "success")
    run("backfill", 10, 20, "failed")
    run("backfill", 20, 30, "failed")
    run("scheduled", 25, 40, "failed")  # a scheduled run is no gap: the next one reads on
    run("backfill", 20, 30, "success")  # read again: closed
    run("backfill", 30, 40, "failed")
    run("backfill", 30, 40, "failed")  # failed twice: one gap
    assert [(g.window_start, g.window_end) for g in store.gaps()] == [(10, 20), (30, 40)]
    assert store.gaps("src")[0].error == "why"
    assert store.gaps("other") == []
    assert store.source_health()[0].gaps == 2
    run("scheduled", 0, 50, "success")  # a later success whose window covers them
    assert store.gaps() == [] and store.source_health()[0].gaps == 0


def test_a_cli_backfill_goes_on_past_failed_windows(tmp_path: Path) -> None:
    write_config(tmp_path, csv=BAD_CSV)
    global_options = ["--config", str(tmp_path / "dxkpi.yaml"), "--data-dir", str(tmp_path / "d")]
    migrated = CliRunner().invoke(main, [*global_options, "migrate"])  # backfill never migrates
    assert migrated.exit_code == 0, migrated.output
    result = CliRunner().invoke(
        main,
        [
            *global_options,
            "backfill",
            "portal",
            "--since",
            "2024-03-01",
            "--until",
            "2024-05-01",
        ],
    )
    assert result.exit_code == 1
    assert "error: 2 window(s) failed and are recorded as gaps" in result.output
    store = Store(f"sqlite:///{tmp_path / 'd' / 'dxkpi.sqlite'}")
    assert len(store.runs("portal")) == 2, "every window was tried"
    assert len(store.gaps("portal")) == 2
    store.close()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    for name in ("DXKPI_STORAGE_URL", "DXKPI_BROKER_URL"):
        os.environ.pop(name, None)
    runtime = resolve(write_config(tmp_path, csv=BAD_CSV), tmp_path / "d")
    runtime.store.migrate()
    set_current(runtime)
    yield runtime
    set_current(None)
    runtime.store.close()


def test_a_task_records_the_gap_and_a_later_scheduled_run_reads_it_again(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dxkpi.tasks.app import app
    from dxkpi.tasks.collect import collect

    # Queued tasks run at once, in this process: the gap's re-read is visible right away.
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    # Before the source's start: the scheduled run's own window does not cover it.
    window = ("portal", "2024-03-01T00:00:00+09:00", "2024-03-31T00:00:00+09:00", "backfill")
    result = collect.apply(args=window).get()
    assert result["status"] == "failed", "returned, not raised: a chain goes on"
    [gap] = runtime.store.gaps("portal")
    assert "pv.csv:4" in (gap.error or "")
    (tmp_path / "data" / "pv.csv").write_text(PAGE_VIEWS_CSV, encoding="utf-8")
    os.utime(tmp_path / "data" / "pv.csv", (1_700_000_000, 1_700_000_000))
    assert collect.apply(args=("portal",)).get()["status"] == "success"
    assert runtime.store.gaps("portal") == [], "the scheduled run's success read the gap again"
    kinds = [(r["kind"], r["status"]) for r in sorted(runtime.store.runs(), key=lambda r: r["id"])]
    assert kinds == [("backfill", "failed"), ("scheduled", "success"), ("backfill", "success")]
