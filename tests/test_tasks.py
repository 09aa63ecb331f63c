"""The beat schedule generated from config, and the task's retry policy."""

from __future__ import annotations

from datetime import timedelta

from celery.schedules import crontab, schedule

from dxkpi.collector.config import Config
from dxkpi.tasks.collect import backoff
from dxkpi.tasks.schedule import beat_schedule


def test_one_entry_per_source_with_its_schedule() -> None:
    config = Config.model_validate(
        {
            "sources": [
                {"id": "a", "connector": "csvfile", "schedule": {"every": "15m"}},
                {"id": "b", "connector": "csvfile", "schedule": {"cron": "30 6 * * 1-5"}},
            ]
        }
    )
    entries = beat_schedule(config)
    assert set(entries) == {"collect-a", "collect-b", "refresh-kpis"}
    a, b = entries["collect-a"], entries["collect-b"]
    assert a["task"] == "dxkpi.collect" and a["args"] == ("a",)
    assert isinstance(a["schedule"], schedule) and a["schedule"].run_every == timedelta(minutes=15)
    assert a["options"]["expires"] == 900
    assert isinstance(b["schedule"], crontab)
    assert b["schedule"].hour == {6} and b["schedule"].minute == {30}
    assert b["schedule"].day_of_week == {1, 2, 3, 4, 5}


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(n) for n in range(4)] == [10.0, 20.0, 40.0, 80.0]
    assert backoff(20) == 600.0


def test_the_kpi_history_is_refreshed_every_15_minutes() -> None:
    entry = beat_schedule(Config.model_validate({"sources": []}))["refresh-kpis"]
    assert entry["task"] == "dxkpi.refresh_kpis" and "args" not in entry
    assert entry["schedule"].run_every == timedelta(minutes=15)
    assert entry["options"]["expires"] == 900
