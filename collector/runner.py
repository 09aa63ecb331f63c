"""Runs one collection of one source: window, lease, connector, batched writes, run record.

Nothing here knows Celery: the Celery task, `dxkpi collect` and `dxkpi backfill` all call
`collect_source`; the task decides what to retry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from dxkpi.collector.config import LoadedConfig
from dxkpi.collector.contract import (
    AnyConnector,
    Checkpoint,
    ConnectorSettings,
    Observation,
    Window,
)
from dxkpi.collector.errors import RetryableSourceError, SourceError
from dxkpi.collector.redact import redact
from dxkpi.collector.registry import load_connector
from dxkpi.collector.storage import OrgAtLimit, OrgShare, Store, WriteStats

log = logging.getLogger("dxkpi.runner")

# A run's lease lives this long unless renewed: a run whose process died (kill -9, lost power)
# frees its source within a minute. A heartbeat renews it while the run lives, however long a
# connector takes between items. DXKPI_LEASE_SECONDS shortens it (the fault suite kills workers).
LEASE_TTL = float(os.environ.get("DXKPI_LEASE_SECONDS") or 60.0)
LEASE_HEARTBEAT = LEASE_TTL / 4
# Recording a failed run is tried again after these pauses (a database restarting); if all
# fail, the run stays `running` until its lease expires and is then closed as abandoned.
RECORD_RETRY_PAUSES = (0.5, 2.0, 5.0)
DEFAULT_CHUNK = timedelta(days=31)
# Observations per Store.write batch (one transaction each). Small enough that a source read
# page by page goes to the database while a connector that fetches ahead (ga4) brings the next
# pages in; large enough that a backfill's commits are few (GA4 backfill: 25k about 3% faster
# than 10k, 50k about 15% slower, bench/). The store's own rate hardly changes from 5k to 50k.
WRITE_BATCH = 25_000


@dataclass
class RunResult:
    source: str
    status: str  # success | failed | retrying | skipped | deferred | dry-run
    window: Window
    written: int = 0
    changed: int = 0
    run_id: int | None = None
    observations: list[Observation] | None = None


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


class LeaseHeartbeat:
    """Renews a run's lease every `every` seconds from a thread, until stopped. A renewal that
    fails (the database is away) is tried again at the next beat; the lease outlives a few."""

    def __init__(self, store: Store, source_id: str, holder: str, ttl: float, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat,
            args=(store, source_id, holder, ttl, every),
            name=f"dxkpi-lease-{source_id}",
            daemon=True,
        )
        self._thread.start()

    def _beat(self, store: Store, source_id: str, holder: str, ttl: float, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not store.acquire_lease(source_id, holder, ttl):
                    log.warning(
                        "source %s: its lease was taken by another run while this one worked "
                        "(a pause longer than %.0fs?); both may store the same periods",
                        source_id,
                        ttl,
                    )
            except Exception as exc:  # the next beat tries again
                log.warning("source %s: could not renew the lease: %s", source_id, redact(str(exc)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def secrets_of(settings: ConnectorSettings) -> list[str]:
    return [
        value.get_secret_value()
        for value in settings.__dict__.values()
        if isinstance(value, SecretStr)
    ]


def _record_failure(
    store: Store,
    source_id: str,
    run_id: int,
    status: str,
    exc: BaseException,
    message: str,
    holder: str,
) -> None:
    """Record a failed run, trying again while the database comes back (the failure may be the
    database itself restarting). If it never does, the run is closed as abandoned later."""
    for pause in (*RECORD_RETRY_PAUSES, None):
        try:
            store.finish_run(
                run_id, status, 0, type(exc).__name__, message, release_lease_of=holder
            )
            return
        except Exception as failure:
            if pause is None:
                log.warning(
                    "source %s: could not record the failed run %s (%s); it shows as abandoned "
                    "once its lease expires, and the source's next run closes it",
                    source_id,
                    run_id,
                    redact(f"{type(failure).__name__}: {failure}").splitlines()[0],
                )
                return
            time.sleep(pause)


def who(loaded: LoadedConfig, source_id: str) -> str:
    """`source X`, or `source X (organisation Y)` when the config has organisations: what
    every log line and error of a run starts with."""
    try:
        org = loaded.source(source_id).org
    except Exception:  # an unknown source: its own error says so
        return f"source {source_id}"
    return f"source {source_id}" if org == "default" else f"source {source_id} (organisation {org})"


def org_share(loaded: LoadedConfig, source_id: str, limit: int | None) -> OrgShare | None:
    """The source's organisation's share of the workers (at most `limit` runs at once), or None
    without a limit or when every source belongs to one organisation (nothing to isolate)."""
    if not limit:
        return None
    org = loaded.source(source_id).org
    sources = loaded.config.sources
    if all(s.org == org for s in sources):
        return None
    return OrgShare(org, tuple(s.id for s in sources if s.org == org), limit)


def build_connector(loaded: LoadedConfig, source_id: str) -> AnyConnector:
    source = loaded.source(source_id)
    cls = load_connector(source.connector)
    return cls(loaded.settings[source_id], loaded.context(source_id))


def scheduled_window(
    loaded: LoadedConfig,
    store: Store,
    source_id: str,
    connector: AnyConnector,
    now: datetime,
) -> Window:
    """The window of a scheduled run, from the cursor as stored now (see `window_from_cursor`)."""
    cursor_end, checkpoint = store.cursor(source_id)
    return window_from_cursor(loaded, source_id, connector, now, cursor_end, checkpoint)


def window_from_cursor(
    loaded: LoadedConfig,
    source_id: str,
    connector: AnyConnector,
    now: datetime,
    cursor_end: float | None,
    checkpoint: str | None,
) -> Window:
    """[cursor - max(lookback, finality), now): late revisions inside the lookback are re-read."""
    source = loaded.source(source_id)
    lookback = max(source.lookback, connector.finality)
    if cursor_end is not None:
        start = datetime.fromtimestamp(cursor_end, UTC) - lookback
    elif source.start is not None:
        start = datetime(
            source.start.year, source.start.month, source.start.day, tzinfo=loaded.config.tz
        )
    else:
        start = now - lookback
    return Window(start=start, end=now, cursor=checkpoint)


def backfill_windows(
    connector: AnyConnector,
    since: datetime,
    until: datetime,
) -> list[Window]:
    """Split [since, until) into the largest windows the source's API allows."""
    step = connector.max_window or DEFAULT_CHUNK
    windows = []
    start = since
    while start < until:
        end = min(start + step, until)
        windows.append(Window(start=start, end=end))
        start = end
    return windows


class ReadAhead:
    """A window's collection started before its run: a thread reads its first items (up to
    `limit`) from the source while the previous window's last writes finish, so a backfill's
    windows do not each wait for their first page. Nothing is stored here: the run given this
    (`collect_source(ahead=...)`) takes the items, and any error met reading them, under its
    lease, then reads on itself."""

    def __init__(self, connector: AnyConnector, window: Window, limit: int = WRITE_BATCH) -> None:
        self.connector = connector
        self.window = window
        self._items: Iterator[Observation | Checkpoint] = iter(())
        self._read: list[Observation | Checkpoint] = []
        self._error: BaseException | None = None
        self._finished = False
        self._thread = threading.Thread(
            target=self._read_first, args=(limit,), name="dxkpi-read-ahead", daemon=True
        )
        self._thread.start()

    def _read_first(self, limit: int) -> None:
        try:
            # Here, not in __init__: a connector may do all its work in `collect` itself.
            self._items = iter(self.connector.collect(self.window))
            for item in self._items:
                self._read.append(item)
                if len(self._read) >= limit:
                    return
            self._finished = True
        except BaseException as exc:  # raised again in the run that takes these items
            self._error = exc

    def __iter__(self) -> Iterator[Observation | Checkpoint]:
        # The connector's iterator resumes here, in the run's thread, once the first is done.
        self._thread.join()
        read, self._read = self._read, []
        yield from read
        del read
        if self._error is not None:
            raise self._error
        if not self._finished:
            yield from self._items

    def close(self) -> None:
        """Drop what was read (its run did not happen): the connector stops reading."""
        self._thread.join()
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


def collect_source(
    loaded: LoadedConfig,
    store: Store | None,
    source_id: str,
    *,
    window: Window | None = None,
    kind: str = "scheduled",
    attempt: int = 1,
    final_attempt: bool = True,
    dry_run: bool = False,
    holder: str | None = None,
    on_batch: Callable[[WriteStats], None] | None = None,
    now: datetime | None = None,
    ahead: ReadAhead | None = None,
    on_collected: Callable[[], None] | None = None,
    org_limit: int | None = None,
) -> RunResult:
    """One run of `source_id`. `ahead`: the window's collection, already started (its window is
    the run's). `on_collected`: called once the connector has given its last item, while the
    run still stores the last batch (a backfill then starts reading the next window).
    `org_limit`: at most this many runs of the source's organisation at once (`org_share`);
    past it the run does not start and its status is `deferred`."""
    if ahead is not None:
        connector, window = ahead.connector, ahead.window
    else:
        connector = build_connector(loaded, source_id)
    now = now or datetime.now(UTC)
    if dry_run:
        if window is None:
            window = (
                scheduled_window(loaded, store, source_id, connector, now)
                if store is not None
                else Window(start=now - loaded.source(source_id).lookback, end=now)
            )
        items = [i for i in connector.collect(window) if isinstance(i, Observation)]
        return RunResult(source_id, "dry-run", window, written=0, observations=items)
    assert store is not None
    given = window
    planned: list[Window] = []

    def plan(cursor_end: float | None, checkpoint: str | None) -> tuple[float, float]:
        # Without a given window, the cursor read under the lease decides it.
        chosen = given
        if chosen is None:
            chosen = window_from_cursor(loaded, source_id, connector, now, cursor_end, checkpoint)
        planned.append(chosen)
        return chosen.start.timestamp(), chosen.end.timestamp()

    secrets = secrets_of(loaded.settings[source_id])
    holder = holder or holder_id()
    named = who(loaded, source_id)
    try:
        run_id = store.start_leased_run(
            source_id,
            kind,
            holder,
            LEASE_TTL,
            plan,
            attempt,
            org_share(loaded, source_id, org_limit),
        )
    except OrgAtLimit as exc:
        log.info("%s: %s", named, exc)
        if ahead is not None:
            ahead.close()
        return RunResult(source_id, "deferred", given or Window(start=now, end=now))
    if run_id is None:
        log.info("%s: another run holds the lease; skipping", named)
        if ahead is not None:
            ahead.close()
        skipped = given or scheduled_window(loaded, store, source_id, connector, now)
        return RunResult(source_id, "skipped", skipped)
    window = planned[-1]
    checkpoints: list[str] = []

    def observations() -> Iterator[Observation]:
        items = connector.collect(window) if ahead is None else ahead
        for item in items:
            if isinstance(item, Checkpoint):
                checkpoints.append(item.cursor)
            else:
                yield item
        if on_collected is not None:
            on_collected()

    heartbeat = LeaseHeartbeat(store, source_id, holder, LEASE_TTL, LEASE_HEARTBEAT)
    started = time.monotonic()
    try:
        stats = store.write(
            source_id, observations(), run_id=run_id, batch_size=WRITE_BATCH, on_batch=on_batch
        )
    except BaseException as exc:
        heartbeat.stop()
        if isinstance(exc, SourceError) and named != f"source {source_id}":
            exc.org = loaded.source(source_id).org
        status = (
            "retrying" if isinstance(exc, RetryableSourceError) and not final_attempt else "failed"
        )
        message = redact(str(exc), secrets) or repr(exc)
        log.warning(
            "%s: run %s %s after %.1fs: %s",
            named,
            run_id,
            status,
            time.monotonic() - started,
            message,
        )
        _record_failure(store, source_id, run_id, status, exc, message, holder)
        raise
    heartbeat.stop()
    # One transaction: the outcome, the cursor (scheduled runs only, forward only), the
    # checkpoint, and the lease, released only once the cursor is saved.
    store.finish_run(
        run_id,
        "success",
        stats.observations,
        advance_cursor_to=window.end.timestamp() if kind == "scheduled" else None,
        checkpoint=checkpoints[-1] if checkpoints else None,
        release_lease_of=holder,
    )
    log.info(
        "%s: run %s stored %d observations (%d changed) in %.1fs",
        named,
        run_id,
        stats.observations,
        stats.changed,
        time.monotonic() - started,
    )
    return RunResult(source_id, "success", window, stats.observations, stats.changed, run_id)
