"""The runner on a real store: how a collection's observations reach it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from collector.config import load_config
from collector.contract import TOKYO, Window
from collector.runner import WRITE_BATCH, collect_source
from collector.storage import Store, WriteStats
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
