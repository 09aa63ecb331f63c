"""Celery tasks. They take ids, re-read what they need, and are idempotent."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

from celery import Task, chain
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from dxkpi.collector.contract import Window
from dxkpi.collector.errors import DxkpiError, FatalSourceError, RetryableSourceError
from dxkpi.collector.runner import backfill_windows, build_connector, collect_source, who
from dxkpi.collector.runtime import Runtime, current
from dxkpi.tasks.app import app
from dxkpi.tasks.kpis import request_refresh

log = logging.getLogger("dxkpi.tasks")

MAX_RETRIES = 5
# A lost database connection is transient too (a restart, a failover): retry, never lose the run.
RETRY_ON = (RetryableSourceError, OperationalError, DBAPIError, ConnectionError)
# At most this many runs of one organisation at once, across all workers (when the config has
# more than one organisation): a slow or hanging API holds that many threads, never all of them.
DEFAULT_ORG_CONCURRENCY = 8
# A run deferred by that limit goes back to the queue for this long (it holds no thread).
ORG_DEFER_SECONDS = 2.0


def org_concurrency() -> int:
    """`DXKPI_ORG_CONCURRENCY` (0: no limit)."""
    value = os.environ.get("DXKPI_ORG_CONCURRENCY", "").strip()
    if not value:
        return DEFAULT_ORG_CONCURRENCY
    if not value.isdigit():
        raise DxkpiError(
            f"DXKPI_ORG_CONCURRENCY={value!r} in the worker's environment: give a whole number "
            f"of runs (0 for no limit; default {DEFAULT_ORG_CONCURRENCY})"
        )
    return int(value)


def backoff(retries: int, base: float = 10.0, cap: float = 600.0) -> float:
    return float(min(cap, base * 2**retries))


def retry_expiry(
    task: Task, runtime: Runtime, source_id: str, countdown: float
) -> dict[str, float]:
    """A retry's own deadline. A scheduled task expires one interval after it was queued (the
    next one supersedes it), and Celery would give its retries that same deadline: a retry
    waiting longer than what is left (Retry-After, a database restart) would be discarded. A
    retry expires one interval after it is due instead; a task without expiry keeps none."""
    if not task.request.expires:
        return {}
    source = runtime.loaded.source(source_id)
    return {"expires": countdown + source.schedule.interval().total_seconds()}


# Expected failures (bad data, refused credentials, an unknown source) are recorded in the run
# and logged in one line by the runner: Celery logs them at INFO, without a traceback.
@app.task(
    name="dxkpi.collect",
    bind=True,
    max_retries=MAX_RETRIES,
    acks_late=True,
    throws=(FatalSourceError, DxkpiError),
)
def collect(
    self: Task,
    source_id: str,
    since: str | None = None,
    until: str | None = None,
    kind: str = "scheduled",
) -> dict[str, Any]:
    runtime = current()
    window = (
        Window(start=datetime.fromisoformat(since), end=datetime.fromisoformat(until))
        if since and until
        else None
    )
    retries = int(self.request.retries or 0)
    try:
        result = collect_source(
            runtime.loaded,
            runtime.store,
            source_id,
            window=window,
            kind=kind,
            attempt=retries + 1,
            final_attempt=retries >= MAX_RETRIES,
            # The task id stays the same across retries: a retry takes over the lease its own
            # earlier attempt left behind (a lost database), instead of waiting for it to expire.
            holder=f"task:{self.request.id}" if self.request.id else None,
            org_limit=org_concurrency(),
        )
    except ProgrammingError as exc:
        # Tables missing or from an older version: no retry will help, a migration will.
        log.error(
            "%s: the store's tables are missing or out of date (%s): run `dxkpi migrate`",
            who(runtime.loaded, source_id),
            " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__,
        )
        raise
    except RETRY_ON as exc:
        if retries >= MAX_RETRIES:
            if kind == "backfill":
                return gap(source_id, window, exc)
            raise
        wait = getattr(exc, "retry_after", None)
        # Honour the source's own Retry-After exactly; back off exponentially otherwise.
        countdown = wait if wait is not None else backoff(retries)
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.0fs",
            who(runtime.loaded, source_id),
            retries + 1,
            type(exc).__name__,
            countdown,
        )
        raise self.retry(
            exc=exc, countdown=countdown, **retry_expiry(self, runtime, source_id, countdown)
        ) from exc
    except FatalSourceError as exc:
        if kind == "backfill":
            return gap(source_id, window, exc)
        raise
    if result.status == "deferred":
        # Its organisation has its share of the workers busy: back to the queue, keeping the
        # task's own deadline, instead of holding a thread while it waits.
        collect.apply_async(
            (source_id, since, until, kind),
            countdown=ORG_DEFER_SECONDS,
            expires=self.request.expires,
            retries=retries,
        )
        return {"source": source_id, "status": "deferred", "written": 0}
    if result.changed:
        # The stored KPI history (Grafana's long-range panels) follows the new data soon: one
        # refresh for all the runs that change data within a few seconds (`request_refresh`).
        # The run itself succeeded: failing to queue this must not fail it (beat refreshes).
        try:
            request_refresh()
        except Exception as exc:
            log.warning(
                "%s: could not queue the KPI history refresh (%s)",
                who(runtime.loaded, source_id),
                exc,
            )
    if result.status == "skipped" and kind == "backfill":
        # Another run (a scheduled one) holds the lease: a backfill window must still run, later.
        raise self.retry(countdown=10)
    if kind == "scheduled" and result.status == "success":
        read_a_gap_again(runtime, source_id)
    return {"source": source_id, "status": result.status, "written": result.written}


def gap(source_id: str, window: Window | None, exc: BaseException) -> dict[str, Any]:
    """A backfill window that failed for good: its failed run record is the gap (see
    `Store.gaps`), and the backfill goes on with the next window instead of stopping."""
    span = f"{window.start.isoformat()} to {window.end.isoformat()}" if window else "?"
    log.warning(
        "source %s: backfill window %s failed for good (%s); recorded as a gap, the backfill "
        "goes on and the source's scheduled runs read the window again",
        source_id,
        span,
        type(exc).__name__,
    )
    return {"source": source_id, "status": "failed", "written": 0}


def read_a_gap_again(runtime: Runtime, source_id: str) -> None:
    """After a scheduled success (the source answers again), queue the oldest gap's window: one
    per run, so a source with many gaps is not flooded."""
    gaps = runtime.store.gaps(source_id)
    if not gaps:
        return
    oldest = gaps[0]
    start, end = (datetime.fromtimestamp(t, UTC) for t in (oldest.window_start, oldest.window_end))
    collect.si(source_id, start.isoformat(), end.isoformat(), "backfill").apply_async()
    log.info("source %s: reading the gap %s to %s again", source_id, start, end)


@app.task(name="dxkpi.backfill", acks_late=True)
def backfill(source_id: str, since: str, until: str) -> int:
    """Split [since, until) into the API's allowed windows and queue one collect per window."""
    runtime = current()
    connector = build_connector(runtime.loaded, source_id)
    windows = backfill_windows(
        connector, datetime.fromisoformat(since), datetime.fromisoformat(until)
    )
    # A chain runs the windows one after another (they share the source's lease); a window that
    # fails for good is recorded as a gap and the chain goes on (see `gap`).
    chain(
        *(
            collect.si(source_id, window.start.isoformat(), window.end.isoformat(), "backfill")
            for window in windows
        )
    ).apply_async()
    log.info("backfill of %s: queued %d windows", source_id, len(windows))
    return len(windows)
