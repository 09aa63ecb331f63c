"""The `dxkpi.refresh_kpis` task: store every KPI's period figures for SQL readers (Grafana).

Queued by `dxkpi.collect` after a run that changed data (`request_refresh`: one refresh for
every such run within `REFRESH_DELAY` in a worker process, not one per run), and by beat every 15
minutes, since a period becomes complete (and the path moves) with the calendar, not only with
new data. Idempotent: each run replaces the whole history with what collector/kpi.py computes now.
"""

from __future__ import annotations

import logging
import threading
import time

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


# A refresh asked for after a change waits this long, and every change committed meanwhile in
# this process rides on it: 480 runs in a cycle cost a refresh or two per worker process, not
# 480 (each recomputes every KPI, and refreshes queue behind one table lock).
REFRESH_DELAY = 5.0
_pending_until = 0.0
_pending_lock = threading.Lock()


def request_refresh() -> bool:
    """Queue a refresh `REFRESH_DELAY` from now unless one queued by this process has not yet
    started: that one starts after this change was committed, so it covers it. True if queued."""
    global _pending_until
    with _pending_lock:
        now = time.monotonic()
        # A second of margin: the queued refresh must begin after `now`, whatever its clock.
        if now < _pending_until - 1.0:
            return False
        refresh_kpis.apply_async(countdown=REFRESH_DELAY)
        _pending_until = now + REFRESH_DELAY
        return True
