"""The runner over a real store and the csvfile connector: the window comes from the cursor read
under the lease, a held lease skips the run without recording one, a finished run frees it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from dxkpi.collector.config import load_config
from dxkpi.collector.contract import TOKYO
from dxkpi.collector.runner import LEASE_TTL, collect_source
from dxkpi.collector.storage import Store
from tests.conftest import write_config

NOW = datetime(2024, 4, 5, 9, tzinfo=TOKYO)


def test_scheduled_runs_take_their_window_from_the_cursor(tmp_path: Path, store: Store) -> None:
    loaded = load_config(write_config(tmp_path))
    first = collect_source(loaded, store, "portal", now=NOW)
    # No cursor yet: from the source's configured start to now.
    assert first.status == "success" and first.written == 6
    assert (first.window.start, first.window.end) == (datetime(2024, 4, 1, tzinfo=TOKYO), NOW)
    assert store.cursor("portal")[0] == NOW.timestamp()
    later = NOW + timedelta(hours=1)
    second = collect_source(loaded, store, "portal", now=later)
    # From the cursor, minus the lookback (3 days by default) for late revisions.
    assert (second.window.start, second.window.end) == (NOW - timedelta(days=3), later)
    runs = sorted(store.runs("portal"), key=lambda r: r["id"])
    assert [(r["status"], r["window_start"], r["window_end"]) for r in runs] == [
        ("success", first.window.start.timestamp(), NOW.timestamp()),
        ("success", second.window.start.timestamp(), later.timestamp()),
    ]
    assert store.acquire_lease("portal", "someone-else", LEASE_TTL)  # released by the run


def test_a_held_lease_skips_the_run_and_records_nothing(tmp_path: Path, store: Store) -> None:
    loaded = load_config(write_config(tmp_path))
    assert store.acquire_lease("portal", "another-worker", LEASE_TTL)
    result = collect_source(loaded, store, "portal", now=NOW)
    assert result.status == "skipped" and result.run_id is None
    assert result.window.start == datetime(2024, 4, 1, tzinfo=TOKYO)
    assert store.runs("portal") == [] and store.count_observations() == 0
    assert store.cursor("portal") == (None, None)
