"""The beat schedule, generated from the config: one `dxkpi.collect` entry per source, and the
refresh of the stored KPI history every 15 minutes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab, schedule

from dxkpi.collector.config import Config, Schedule


def to_celery(entry: Schedule, timezone: str) -> Any:
    if entry.every is not None:
        return schedule(entry.every)
    assert entry.cron is not None
    minute, hour, day_of_month, month_of_year, day_of_week = entry.cron.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


# The KPI history follows the calendar (periods complete, the path moves) even without new data.
KPI_REFRESH_INTERVAL = timedelta(minutes=15)


def beat_schedule(config: Config) -> dict[str, dict[str, Any]]:
    entries = {
        f"collect-{source.id}": {
            "task": "dxkpi.collect",
            "schedule": to_celery(source.schedule, config.timezone),
            "args": (source.id,),
            # A run that waited a whole interval in the queue is superseded by the next one.
            "options": {"expires": source.schedule.interval().total_seconds()},
        }
        for source in config.sources
    }
    entries["refresh-kpis"] = {
        "task": "dxkpi.refresh_kpis",
        "schedule": schedule(KPI_REFRESH_INTERVAL),
        "options": {"expires": KPI_REFRESH_INTERVAL.total_seconds()},
    }
    return entries
