"""The `dxkpi.refresh_kpis` task: store every KPI's period figures for SQL readers (Grafana).

Queued by `dxkpi.collect` after a run that changed data, and by beat every 15 minutes, since a
period becomes complete (and the path moves) with the calendar, not only with new data.
Idempotent: each run replaces the whole history with what collector/kpi.py computes now.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError

from dxkpi.collector import clock
from dxkpi.collector.kpi_history import refresh_kpi_periods
from dxkpi.collector.runtime import current
from dxkpi.tasks.app import app

log = logging.getLogger("dxkpi.tasks")


# A lost database connection is transient; the next beat entry would catch up anyway.
@app.task(
    name="dxkpi.refresh_kpis",
    acks_late=True,
    autoretry_for=(DBAPIError, ConnectionError),
    max_retries=3,
    retry_backoff=10,
)
def refresh_kpis() -> int:
    runtime = current()
    config = runtime.loaded.config
    history = refresh_kpi_periods(runtime.store, config, clock.now(config.tz))
    log.info("KPI history: stored %d periods of %d KPIs", len(history.periods), len(history.kpis))
    return len(history.periods)
