"""The runner on a real store: how a collection's observations reach it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from dxkpi.collector.config import load_config
from dxkpi.collector.contract import TOKYO, Window
from dxkpi.collector.errors import SourceError
from dxkpi.collector.runner import WRITE_BATCH, ReadAhead, build_connector, collect_source
from dxkpi.collector.storage import Store, WriteStats
from tests.conftest import write_config


def test_a_run_is_written_in_batches_of_write_batch(tmp_path: Path, store: Store) -> None:
    pages = WRITE_BATCH + 1
    csv = "date,page,page_views\n" + "".join(f"2024-04-01,/p{i},{i}\n" for i in range(pages))
    loaded = load_config(write_config(tmp_path, csv=csv))
    batches: list[int] = []

    def on_batch(stats: WriteStats) -> None:
        batches.append(stats.observations)

    window = Window(datetime(2024, 4, 1, tzinfo=TOKYO), datetime(2024, 4, 2, tzinfo=TOKYO))
    result = collect_source(loaded, store, "portal", window=window, on_batch=on_batch)
    assert result.status == "success" and result.written == pages
    assert batches == [WRITE_BATCH, pages]
    assert store.count_observations() == pages


APRIL = Window(datetime(2024, 4, 1, tzinfo=TOKYO), datetime(2024, 4, 2, tzinfo=TOKYO))


def test_a_run_stores_what_was_read_ahead_and_reads_on(tmp_path: Path, store: Store) -> None:
    csv = "date,page,page_views\n" + "".join(f"2024-04-01,/p{i},{i}\n" for i in range(10))
    loaded = load_config(write_config(tmp_path, csv=csv))
    ahead = ReadAhead(build_connector(loaded, "portal"), APRIL, limit=3)
    collected: list[int] = []

    def on_collected() -> None:
        collected.append(store.count_observations())

    result = collect_source(
        loaded, store, "portal", kind="backfill", ahead=ahead, on_collected=on_collected
    )
    assert result.status == "success" and result.written == 10 and result.window == APRIL
    assert store.count_observations() == 10
    # Called once the connector was done, before the run's last batch was stored.
    assert collected == [0]
    (run,) = store.runs("portal")
    assert run["status"] == "success" and run["observations_written"] == 10


def test_an_error_met_reading_ahead_fails_the_run_that_takes_it(
    tmp_path: Path, store: Store
) -> None:
    loaded = load_config(write_config(tmp_path, csv="date,page,page_views\n2024-04-01,/p,x\n"))
    ahead = ReadAhead(build_connector(loaded, "portal"), APRIL)
    with pytest.raises(SourceError):
        collect_source(loaded, store, "portal", kind="backfill", ahead=ahead)
    (run,) = store.runs("portal")
    assert run["status"] == "failed" and run["error_class"]
    assert store.count_observations() == 0
