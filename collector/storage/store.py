"""The store: idempotent batched upserts of observations, and reads; runs, cursors and leases
live in `collector/storage/runs.py`, mixed into `Store`.

Writes go through `Store.write`, which groups observations into batches; each batch is one
transaction (all or nothing), with no per-row ORM round trip. On PostgreSQL a writer thread
stores batch N while the caller's items make batch N+1; rows whose key is absent arrive by
binary `COPY`, rows whose value differs by one multi-row upsert of `unnest` arrays, and unchanged
rows are not sent. SQLite gets the upsert as an `executemany`. A repeated or retried write of
the same (series, period) replaces the value in place; a changed value is logged in `revisions`
by a database trigger.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from select import POLLIN, poll
from typing import Any, cast

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError

from dxkpi.collector.contract import Observation
from dxkpi.collector.storage.runs import RunsAndLeases
from dxkpi.collector.storage.schema import series, source_state

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Accept plain `postgresql://` and `postgres://` URLs and use psycopg 3 for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store (None for other databases and in-memory SQLite)."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the exporter read while a worker writes; the busy timeout makes
            # concurrent writers wait instead of failing.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # Thread-pool workers run many collections at once: keep enough connections pooled that
    # none is opened and closed per run.
    engine = create_engine(
        url,
        pool_size=int(os.environ.get("DXKPI_DB_POOL_SIZE", "20")),
        max_overflow=int(os.environ.get("DXKPI_DB_MAX_OVERFLOW", "40")),
    )
    event.listen(engine, "checkout", _refuse_if_closed_by_server)
    return engine


def _refuse_if_closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Keep a restarted server harmless without `pool_pre_ping`'s round trip per checkout.

    A server that restarts or ends a session sends its last message and closes the socket, so
    the socket of an idle pooled connection is readable only if the server has gone (this store
    never LISTENs). Raising DisconnectionError makes the pool reconnect (SQLAlchemy's "custom
    pessimistic ping"). What this cannot see (a host that vanished without a word) fails the
    statement instead, which invalidates the pool, and the task retries the run.
    """
    if dbapi_connection.closed:
        raise DisconnectionError("the pooled connection is closed")
    poller = poll()  # not select(): it cannot watch descriptors above 1023
    poller.register(dbapi_connection.fileno(), POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the server closed this pooled connection")


def labels_key(labels: Mapping[str, str]) -> str:
    """Canonical JSON of a label set: equal sets give equal text."""
    if not labels:
        return "{}"
    return json.dumps(dict(sorted(labels.items())), ensure_ascii=False, separators=(",", ":"))


@dataclass
class WriteStats:
    observations: int = 0
    changed: int = 0
    batches: int = 0


@dataclass(frozen=True, slots=True)
class SeriesRow:
    id: int
    source: str
    metric: str
    labels_json: str
    last_start: int | None
    last_value: float | None
    org: str = "default"

    @property
    def labels(self) -> dict[str, str]:
        # Parsed on use: the exporter formats a series' labels once and KPIs match few series,
        # so 100k series need not hold 100k dicts.
        result: dict[str, str] = json.loads(self.labels_json)
        return result


@dataclass(frozen=True)
class PeriodPoint:
    """One stored period of a set of series: values summed, the latest write time."""

    start: int
    granularity: str
    value: float
    updated_at: float


@dataclass(frozen=True)
class RevisionRow:
    series_id: int
    period_start: int
    granularity: str
    old_value: float
    new_value: float
    revised_at: float


BatchCallback = Callable[[WriteStats], None]


@functools.cache
def _head_revision() -> str | None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


class Store(RunsAndLeases):
    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        orgs: Mapping[str, str] | None = None,
    ) -> None:
        self.url = normalise_url(url)
        # Each source's organisation (LoadedConfig.source_orgs), written on its series; a source
        # not in it (a test's, a removed one) is `default`.
        self.orgs: Mapping[str, str] = orgs or {}
        # When a value was written (`observations.updated_at`): when a figure arrived, which the
        # KPI layer reports (a target period's outcome is known once its figure is in).
        self.clock = clock
        self.engine = make_engine(self.url)
        self.dialect = self.engine.dialect.name
        self._series_ids: dict[tuple[str, str, str], int] = {}
        self._known_sources: set[str] = set()
        self._ids_by_ident: dict[tuple[str, str, tuple[tuple[str, str], ...]], int] = {}

    def close(self) -> None:
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------------

    def migrate(self, revision: str = "head") -> None:
        from alembic import command
        from alembic.config import Config as AlembicConfig

        # Only a migration creates a store: reading one must not leave an empty file behind.
        file = sqlite_file(self.url)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def schema_problem(self) -> str | None:
        """None when the store's tables are at the newest migration, else what to do."""
        with self.engine.connect() as connection:
            try:
                found = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except DBAPIError:
                found = None
        if found != _head_revision():
            return "the store's tables are missing or out of date: run `dxkpi migrate`"
        return None

    # -- writes -------------------------------------------------------------------------

    def write(
        self,
        source: str,
        items: Iterable[Observation],
        *,
        run_id: int | None = None,
        batch_size: int = 50_000,
        on_batch: BatchCallback | None = None,
    ) -> WriteStats:
        """Upsert observations in batches; each batch commits or rolls back whole.

        `on_batch` runs in the calling thread after each batch committed (on PostgreSQL, once
        the next batch has been built: one batch is stored while the next one is made)."""
        stats = WriteStats()
        self._ensure_state(source)
        with _gc_paused():
            self._write_batches(source, items, run_id, batch_size, on_batch, stats)
        return stats

    def _write_batches(
        self,
        source: str,
        items: Iterable[Observation],
        run_id: int | None,
        batch_size: int,
        on_batch: BatchCallback | None,
        stats: WriteStats,
    ) -> None:
        # Each series' newest (period, value) among committed batches: applied to `series` once
        # per write rather than once per batch (a backfill touches every series in every batch).
        latest: dict[int, tuple[int, float]] = {}

        def committed(batch: _Batch, changed: int) -> None:
            # Only once committed: a rolled-back batch must not move any series' latest value.
            _merge_latest(latest, batch.latest)
            stats.observations += batch.size
            stats.changed += changed
            stats.batches += 1
            if on_batch is not None:
                on_batch(stats)

        batches = (self._prepare_batch(source, chunk) for chunk in _chunks(items, batch_size))
        try:
            if self.dialect == "postgresql":
                self._send_pipelined(batches, run_id, committed)
            else:
                for batch in batches:
                    with self.engine.begin() as connection:
                        changed = _upsert_generic(connection, batch.rows, self.clock(), run_id)
                    committed(batch, changed)
        except BaseException:
            # Keep what committed visible; the original error is what the caller must see.
            if latest or stats.changed:
                with contextlib.suppress(Exception):
                    self._finish_write(source, latest, stats.changed > 0)
            raise
        if latest or stats.changed:
            self._finish_write(source, latest, stats.changed > 0)

    def _send_pipelined(
        self,
        batches: Iterable[_Batch],
        run_id: int | None,
        committed: Callable[[_Batch, int], None],
    ) -> None:
        """Send each batch from a writer thread while the caller's items make the next one.

        psycopg releases the GIL while the server works, so building batch N+1 overlaps with
        storing batch N. One batch is in flight at most (memory stays bounded); a batch counts
        only once its transaction committed, and an error from either side ends the write
        after the batch in flight has committed or rolled back whole.
        """
        free = _FreePeriods()  # used by the writer thread only
        in_flight: tuple[_Batch, Future[int]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dxkpi-store-write") as writer:
            try:
                for batch in batches:
                    if in_flight is not None:
                        done, future = in_flight
                        in_flight = None
                        committed(done, future.result())
                    in_flight = (batch, writer.submit(self._send_postgres, batch, run_id, free))
            except BaseException:
                if in_flight is not None:
                    # Wait for it whatever it does: the error being raised is what counts.
                    with contextlib.suppress(Exception):
                        committed(in_flight[0], in_flight[1].result())
                raise
            if in_flight is not None:
                committed(in_flight[0], in_flight[1].result())

    def _send_postgres(self, batch: _Batch, run_id: int | None, free: _FreePeriods) -> int:
        now = self.clock()
        try:
            with self.engine.begin() as connection:
                changed = _store_postgres(connection, batch, now, run_id, free)
        except IntegrityError as error:
            if not isinstance(error.orig, psycopg.errors.UniqueViolation):
                raise
            # Another writer inserted one of the keys this batch found absent: the batch rolled
            # back whole; store it again with the upsert, which settles any conflict.
            with self.engine.begin() as connection:
                changed = _upsert_postgres(connection, batch.rows, now, run_id)
            # What this write knew of these series is stale: look them up again next time.
            free.forget(batch.latest)
            return changed
        free.committed(batch.latest)
        return changed

    def _finish_write(
        self, source: str, latest: dict[int, tuple[int, float]], changed: bool
    ) -> None:
        """Apply the series' latest values and move the change counter once, when the write
        (or what of it committed) changed anything: the exporter then sees it whole."""
        with self.engine.begin() as connection:
            moved = 0
            if latest and self.dialect == "postgresql":
                moved = _latest_postgres(connection, latest)
            elif latest:
                moved = _latest_generic(connection, latest)
            if changed or moved:
                self._bump(connection, source)

    def _prepare_batch(self, source: str, batch: Sequence[Observation]) -> _Batch:
        """Validate a batch and key its rows; a key repeated within it: last value wins (a
        statement may not touch a row twice)."""
        rows: dict[tuple[int, int, str], float] = {}
        batch_latest: dict[int, tuple[int, float]] = {}
        # Observations of one period usually share their datetime: convert each once.
        # Keyed by equality, which ignores `fold` between datetimes of one zone: a datetime
        # with fold=1 (the repeated hour when clocks go back) neither reads nor fills it.
        timestamps: dict[datetime, int] = {}
        ids = self._resolve_series(source, batch)
        for obs, series_id in zip(batch, ids, strict=True):
            moment = obs.start
            start = None if moment.fold else timestamps.get(moment)
            if start is None:
                if moment.tzinfo is None:
                    raise ValueError(f"{source}: {obs.metric} has a naive period start {moment}")
                start = int(moment.timestamp())
                if not moment.fold:
                    timestamps[moment] = start
            value = float(obs.value)
            if not math.isfinite(value):
                raise ValueError(f"{source}: {obs.metric} at {moment} is not finite: {value}")
            rows[(series_id, start, obs.granularity.value)] = value
            seen = batch_latest.get(series_id)
            if seen is None or start >= seen[0]:
                batch_latest[series_id] = (start, value)
        return _Batch(rows, batch_latest, len(batch))

    def _resolve_series(self, source: str, batch: Sequence[Observation]) -> list[int]:
        # Fast path: (metric, labels as given) -> id, without canonicalising labels per row.
        known = self._ids_by_ident
        idents = [(source, obs.metric, tuple(obs.labels.items())) for obs in batch]
        found_all = [known.get(ident) for ident in idents]
        if None not in found_all:
            return found_all  # type: ignore[return-value]
        # Canonical labels once per distinct label set not met yet, not once per row.
        keys = {
            ident: (source, obs.metric, labels_key(obs.labels))
            for ident, obs, found in zip(idents, batch, found_all, strict=True)
            if found is None
        }
        missing = sorted({key for key in keys.values() if key not in self._series_ids})
        if missing:
            with self.engine.begin() as connection:
                if self.dialect == "postgresql":
                    # One statement of arrays rather than one INSERT per series.
                    connection.exec_driver_sql(
                        _PG_NEW_SERIES,
                        {
                            "source": source,
                            "org": self.orgs.get(source, "default"),
                            "metrics": [metric for _, metric, _ in missing],
                            "labels": [labels for _, _, labels in missing],
                        },
                    )
                else:
                    connection.execute(
                        text(
                            "INSERT INTO series (source, org, metric, labels) "
                            "VALUES (:source, :org, :metric, :labels) ON CONFLICT DO NOTHING"
                        ),
                        [
                            {
                                "source": s,
                                "org": self.orgs.get(s, "default"),
                                "metric": m,
                                "labels": lab,
                            }
                            for s, m, lab in missing
                        ],
                    )
                found = connection.execute(
                    select(series.c.id, series.c.metric, series.c.labels).where(
                        series.c.source == source
                    )
                )
                for series_id, metric, labels in found:
                    self._series_ids[(source, metric, labels)] = series_id
        for ident, key in keys.items():
            known[ident] = self._series_ids[key]
        return [known[ident] for ident in idents]

    @staticmethod
    def _bump(connection: Connection, source: str) -> None:
        connection.execute(
            update(source_state)
            .where(source_state.c.source == source)
            .values(generation=source_state.c.generation + 1)
        )

    # -- reads --------------------------------------------------------------------------------

    def generations(self) -> dict[str, int]:
        """Each source's change counter: the exporter rebuilds when any of them moves."""
        with self.engine.connect() as connection:
            return {
                source: int(gen)
                for source, gen in connection.execute(
                    select(source_state.c.source, source_state.c.generation)
                )
            }

    def series_rows(self) -> list[SeriesRow]:
        # The exporter reads every series on each rebuild (100k and more): rows are streamed
        # rather than buffered whole by the driver, and the source and metric names repeated on
        # every row are shared, not held once per row.
        shared: dict[str, str] = {}
        streamed = {"stream_results": True, "yield_per": 10_000}
        with self.engine.connect().execution_options(**streamed) as connection:
            return [
                SeriesRow(
                    id=row.id,
                    source=shared.setdefault(row.source, row.source),
                    metric=shared.setdefault(row.metric, row.metric),
                    labels_json=row.labels,
                    last_start=row.last_start,
                    last_value=row.last_value,
                    org=shared.setdefault(row.org, row.org),
                )
                for row in connection.execute(select(series).order_by(series.c.id))
            ]

    def points(
        self, series_ids: Sequence[int], start: int | None = None, end: int | None = None
    ) -> list[tuple[int, float]]:
        """(period_start, value) of the given series in [start, end), summed across series."""
        summed: dict[int, float] = {}
        for point in self.period_points(series_ids, start, end):
            summed[point.start] = summed.get(point.start, 0.0) + point.value
        return list(summed.items())

    def period_points(
        self, series_ids: Sequence[int], start: int | None = None, end: int | None = None
    ) -> list[PeriodPoint]:
        """The given series' periods starting in [start, end), values summed across series, with
        each period's granularity and when it was last written (the latest `updated_at`)."""
        if not series_ids:
            return []
        clauses = ["series_id IN :ids"]
        params: dict[str, Any] = {"ids": list(series_ids)}
        if start is not None:
            clauses.append("period_start >= :start")
            params["start"] = start
        if end is not None:
            clauses.append("period_start < :end")
            params["end"] = end
        sql = text(
            "SELECT period_start, granularity, sum(value), max(updated_at) FROM observations "
            "WHERE " + " AND ".join(clauses) + " GROUP BY period_start, granularity "
            "ORDER BY period_start, granularity"
        ).bindparams(bindparam("ids", expanding=True))
        with self.engine.connect() as connection:
            return [
                PeriodPoint(int(p), str(g), float(v), float(u))
                for p, g, v, u in connection.execute(sql, params)
            ]

    def period_sums(self, since: int) -> dict[int, float]:
        """Each series' sum of values for periods starting at or after `since`."""
        sql = text(
            "SELECT series_id, sum(value) FROM observations WHERE period_start >= :since "
            "GROUP BY series_id"
        )
        with self.engine.connect() as connection:
            return {int(s): float(v) for s, v in connection.execute(sql, {"since": since})}

    def revisions(self, series_id: int | None = None) -> list[RevisionRow]:
        sql = (
            "SELECT series_id, period_start, granularity, old_value, new_value, revised_at "
            "FROM revisions"
        )
        params: dict[str, Any] = {}
        if series_id is not None:
            sql += " WHERE series_id = :sid"
            params["sid"] = series_id
        with self.engine.connect() as connection:
            return [
                RevisionRow(*row) for row in connection.execute(text(sql + " ORDER BY id"), params)
            ]

    def count_observations(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM observations")).scalar_one())


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while batches are built: they allocate millions of
    short-lived, cycle-free objects, and collections triggered by them cost ingest about a
    fifth of its time (bench/). Reference counting still frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _Batch:
    """A validated batch: its rows by key (last value wins) and each series' newest row."""

    rows: dict[tuple[int, int, str], float]
    latest: dict[int, tuple[int, float]]
    size: int


def _merge_latest(
    latest: dict[int, tuple[int, float]], batch: dict[int, tuple[int, float]]
) -> None:
    for series_id, (start, value) in batch.items():
        seen = latest.get(series_id)
        if seen is None or start >= seen[0]:
            latest[series_id] = (start, value)


def _chunks(items: Iterable[Observation], size: int) -> Iterator[list[Observation]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


class _FreePeriods:
    """Where, per series, no row can be stored yet, as far as one write knows: after the newest
    stored period, and before the oldest one (above what this write put there itself, e.g. a
    backfill behind live data). Looked up the first time the write meets a series (two index
    probes), then moved by each batch the write commits."""

    def __init__(self) -> None:
        self.oldest: dict[int, int] = {}  # stored when looked up
        self.newest: dict[int, int] = {}  # stored, or committed by this write
        self.below: dict[int, int] = {}  # the newest this write committed before `oldest`
        self._pending: dict[int, int] = {}  # the same, for the batch in progress

    def look_up(self, connection: Connection, series_ids: Iterable[int]) -> None:
        unseen = {series_id for series_id in series_ids if series_id not in self.newest}
        if not unseen:
            return
        for series_id, oldest, newest in connection.exec_driver_sql(
            _PG_SPANS, {"s": _pg_array(list(unseen))}
        ):
            self.below[series_id] = _PERIOD_MIN
            if newest is None:  # nothing stored: every period after "nothing" is free
                self.oldest[series_id] = self.newest[series_id] = _PERIOD_MIN
            else:
                self.oldest[series_id], self.newest[series_id] = oldest, newest

    def free(self, series_id: int, start: int) -> bool:
        if start > self.newest[series_id]:
            return True
        if self.below[series_id] < start < self.oldest[series_id]:
            if start > self._pending.get(series_id, _PERIOD_MIN):
                self._pending[series_id] = start
            return True
        return False

    def committed(self, latest: dict[int, tuple[int, float]]) -> None:
        """Move past a committed batch (`latest`: its newest row per series)."""
        for series_id, (start, _value) in latest.items():
            if start > self.newest[series_id]:
                self.newest[series_id] = start
        self.below.update(self._pending)
        self._pending.clear()

    def forget(self, series_ids: Iterable[int]) -> None:
        for series_id in series_ids:
            for known in (self.oldest, self.newest, self.below):
                known.pop(series_id, None)
        self._pending.clear()


_PERIOD_MIN = -(2**63)

_PG_UPSERT = """
INSERT INTO observations (series_id, period_start, granularity, value, updated_at, run_id)
SELECT s, p, g, v, %(now)s, %(run)s
FROM unnest(%(s)s::bigint[], %(p)s::bigint[], %(g)s::text[], %(v)s::float8[]) AS t(s, p, g, v)
ON CONFLICT (series_id, period_start, granularity) DO UPDATE
SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, run_id = EXCLUDED.run_id
WHERE observations.value IS DISTINCT FROM EXCLUDED.value
"""

# Series in the order given (their ids follow it); labels may hold any text, so the arrays are
# adapted by psycopg, not written as literals.
_PG_NEW_SERIES = """
INSERT INTO series (source, org, metric, labels)
SELECT %(source)s, %(org)s, t.m, t.l FROM unnest(%(metrics)s::text[], %(labels)s::text[])
     WITH ORDINALITY AS t(m, l, i)
ORDER BY t.i
ON CONFLICT DO NOTHING
"""

# Each series' oldest and newest stored period: two index probes per series.
_PG_SPANS = """
SELECT t.s,
       (SELECT min(o.period_start) FROM observations o WHERE o.series_id = t.s),
       (SELECT max(o.period_start) FROM observations o WHERE o.series_id = t.s)
FROM unnest(%(s)s::bigint[]) AS t(s)
"""

# The rows (1-based positions) whose key is absent (stored is NULL: values are never NULL) or
# whose stored value differs. The scalar subquery makes it one index probe per row (a join
# would be planned as a scan of the whole table); OFFSET 0 keeps it from being run twice.
_PG_DIFFERING = """
SELECT d.i, d.stored IS NULL FROM (
  SELECT t.i, t.v, (SELECT o.value FROM observations o
                    WHERE o.series_id = t.s AND o.period_start = t.p AND o.granularity = t.g)
         AS stored
  FROM unnest(%(s)s::bigint[], %(p)s::bigint[], %(g)s::text[], %(v)s::float8[])
       WITH ORDINALITY AS t(s, p, g, v, i)
  OFFSET 0
) AS d
WHERE d.stored IS DISTINCT FROM d.v
"""

_PG_COPY = (
    "COPY observations (series_id, period_start, granularity, value, updated_at, run_id) "
    "FROM STDIN (FORMAT BINARY)"
)
_PG_COPY_TYPES = ["int8", "int8", "varchar", "float8", "float8", "int8"]

_PG_LATEST = """
UPDATE series SET last_start = t.p, last_value = t.v
FROM unnest(%(s)s::bigint[], %(p)s::bigint[], %(v)s::float8[]) AS t(s, p, v)
WHERE series.id = t.s AND (series.last_start IS NULL OR t.p >= series.last_start)
  AND (series.last_start IS DISTINCT FROM t.p OR series.last_value IS DISTINCT FROM t.v)
"""


def _store_postgres(
    connection: Connection,
    batch: _Batch,
    now: float,
    run_id: int | None,
    free: _FreePeriods,
) -> int:
    """Store a batch, touching only what changes: rows whose key is absent (in a period `free`
    knows to be free, or found absent by one index probe) are inserted by `COPY`, with no per-row
    conflict handling (the fast path of a first ingest or a backfill); rows whose value differs
    go through the upsert (the trigger logs them as revisions); unchanged rows are not sent. A
    key found absent that another writer inserts meanwhile makes `COPY` raise `UniqueViolation`
    and the whole transaction roll back: the caller then upserts the batch."""
    free.look_up(connection, batch.latest)  # every series of the batch, once
    absent: list[tuple[int, int, str, float, float, int | None]] = []
    maybe_stored: dict[tuple[int, int, str], float] = {}
    for key, value in batch.rows.items():
        if free.free(key[0], key[1]):
            absent.append((*key, value, now, run_id))
        else:
            maybe_stored[key] = value
    changed = 0
    if maybe_stored:
        keys = list(maybe_stored)
        differing: dict[tuple[int, int, str], float] = {}
        for position, is_absent in connection.exec_driver_sql(
            _PG_DIFFERING, _pg_arrays(keys, list(maybe_stored.values()))
        ):
            key = keys[position - 1]
            if is_absent:
                absent.append((*key, maybe_stored[key], now, run_id))
            else:
                differing[key] = maybe_stored[key]
        if differing:
            changed += _upsert_postgres(connection, differing, now, run_id)
    if absent:
        # COPY is the driver's own protocol: SQLAlchemy has no statement for it.
        driver = cast("psycopg.Connection[Any]", connection.connection.driver_connection)
        try:
            with driver.cursor() as cursor, cursor.copy(_PG_COPY) as copy:
                copy.set_types(_PG_COPY_TYPES)
                for row in absent:
                    copy.write_row(row)
        except psycopg.Error as error:
            # Raised as SQLAlchemy raises a statement's error: what callers retry on.
            raise DBAPIError.instance(_PG_COPY, None, error, psycopg.Error) from error
        changed += len(absent)
    return changed


def _upsert_postgres(
    connection: Connection,
    rows: dict[tuple[int, int, str], float],
    now: float,
    run_id: int | None,
) -> int:
    params = {**_pg_arrays(list(rows), list(rows.values())), "now": now, "run": run_id}
    return int(connection.exec_driver_sql(_PG_UPSERT, params).rowcount)


def _pg_arrays(keys: Sequence[tuple[int, int, str]], values: Sequence[float]) -> dict[str, str]:
    return {
        "s": _pg_array([k[0] for k in keys]),
        "p": _pg_array([k[1] for k in keys]),
        "g": _pg_array([k[2] for k in keys]),
        "v": _pg_array(values),
    }


def _latest_postgres(connection: Connection, latest: dict[int, tuple[int, float]]) -> int:
    return connection.exec_driver_sql(
        _PG_LATEST,
        {
            "s": _pg_array(list(latest)),
            "p": _pg_array([v[0] for v in latest.values()]),
            "v": _pg_array([v[1] for v in latest.values()]),
        },
    ).rowcount


def _pg_array(values: Sequence[int | float | str]) -> str:
    """An array literal sent as one text parameter: psycopg would adapt a list element by
    element in Python. Safe for what is sent here: ints, finite floats, granularity words."""
    return "{" + ",".join(map(str, values)) + "}"


_GENERIC_UPSERT = text(
    "INSERT INTO observations (series_id, period_start, granularity, value, updated_at, run_id) "
    "VALUES (:s, :p, :g, :v, :now, :run) "
    "ON CONFLICT (series_id, period_start, granularity) DO UPDATE "
    "SET value = excluded.value, updated_at = excluded.updated_at, run_id = excluded.run_id "
    "WHERE observations.value IS NOT excluded.value"
)

_GENERIC_LATEST = text(
    "UPDATE series SET last_start = :p, last_value = :v "
    "WHERE id = :s AND (last_start IS NULL OR :p >= last_start) "
    "AND (last_start IS NOT :p OR last_value IS NOT :v)"
)


def _upsert_generic(
    connection: Connection,
    rows: dict[tuple[int, int, str], float],
    now: float,
    run_id: int | None,
) -> int:
    params = [
        {"s": s, "p": p, "g": g, "v": v, "now": now, "run": run_id} for (s, p, g), v in rows.items()
    ]
    return int(connection.execute(_GENERIC_UPSERT, params).rowcount)


def _latest_generic(connection: Connection, latest: dict[int, tuple[int, float]]) -> int:
    params = [{"s": s, "p": p, "v": v} for s, (p, v) in latest.items()]
    return int(connection.execute(_GENERIC_LATEST, params).rowcount)
