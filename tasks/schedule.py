"""The beat schedule, generated from the config: one `dxkpi.collect` entry per source, and the
refresh of the stored KPI history every 15 minutes."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry, SchedulingError
from celery.beat import logger as celery_beat_log
from celery.schedules import crontab, schedule
from kombu.exceptions import OperationalError

from dxkpi.collector.config import Config, Schedule
from dxkpi.collector.redact import redact

log = logging.getLogger("dxkpi.beat")

# What a broker that cannot be reached raises through kombu (redis-py's and amqp's connection
# errors are ConnectionError/OSError subclasses, kombu wraps them in OperationalError).
BROKER_DOWN = (OperationalError, ConnectionError, OSError)


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


class BeatScheduler(PersistentScheduler):  # type: ignore[misc]  # celery is untyped
    """Celery's persistent scheduler, but a broker outage is an expected failure: one WARNING
    when it starts and one INFO line when it ends, instead of Celery's ERROR with two stack
    traces for every entry at every tick. An entry not queued meanwhile runs at its next tick
    (a missed run is caught up by the source's cursor). Any other error keeps its traceback."""

    down_since: float | None = None
    not_queued: int = 0

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        # Celery's own line, which operators (and the fault suite) read to see beat working.
        celery_beat_log.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except SchedulingError as exc:
            cause = exc.__context__
            if not isinstance(cause, BROKER_DOWN):
                log.error("beat could not queue %s: %s", entry.name, exc, exc_info=True)
                return
            self.not_queued += 1
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning(
                    "the broker cannot be reached (%s): %s and later entries are not queued "
                    "until it is back; each runs at its next tick",
                    redact(str(cause)).splitlines()[0] if str(cause) else type(cause).__name__,
                    entry.name,
                )
            return
        if self.down_since is not None:
            log.info(
                "the broker is reachable again after %.0f s; %d entries were not queued meanwhile",
                time.monotonic() - self.down_since,
                self.not_queued,
            )
            self.down_since, self.not_queued = None, 0
