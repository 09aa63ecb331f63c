"""1. ingest — `Store.write` on PostgreSQL against a raw `COPY` of the same rows.

Baseline: psycopg 3 `cursor.copy()` + `write_row` into a table with the same columns and primary
key as `observations`, fed by the same lazy generator (so both sides pay for making the
observations); it runs before and after the store, and their mean rate is the baseline.
Measured: the first ingest at the best of several batch sizes, and the idempotent re-ingest of
the same rows (all unchanged). Target: store / COPY >= 0.7.

Every statement the store sends through SQLAlchemy is timed by its cursor events. They run in
the store's writer thread, overlapping the Python that builds the next batch, and the `COPY` of
new rows goes through the driver, not SQLAlchemy: so the outcome gives their time beside the
total, not as a split of it. `--profile` adds a cProfile of one store ingest (top functions by
own time; the calling thread only).
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Engine, event

from bench.harness import Bench, Outcome, fmt, per_second
from bench.workload import page_views
from dxkpi.collector.storage import Store

FULL_SERIES = 10_000
FULL_DAYS = 100
BATCH_SIZES = (5_000, 20_000, 50_000)
# The batch-size sweep writes this share of the full data per size (the full ingest runs once).
SWEEP_SHARE = 0.2
SOURCE = "bench_ingest"

COPY_TABLE = """
CREATE TABLE copy_baseline (
    series_id bigint NOT NULL,
    period_start bigint NOT NULL,
    granularity varchar(16) NOT NULL,
    value float8 NOT NULL,
    updated_at float8 NOT NULL,
    run_id bigint,
    PRIMARY KEY (series_id, period_start, granularity)
)
"""
COPY_SQL = (
    "COPY copy_baseline (series_id, period_start, granularity, value, updated_at, run_id) "
    "FROM STDIN"
)


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def copy_ingest(url: str, n_series: int, n_days: int) -> float:
    """Seconds to COPY the rows the store would write, series ids assigned as they appear."""
    started = time.perf_counter()
    now = time.time()
    ids: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    with psycopg.connect(libpq_url(url)) as connection:
        connection.execute(COPY_TABLE)
        with connection.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
            for obs in page_views(n_series, n_days):
                key = (obs.metric, tuple(sorted(obs.labels.items())))
                series_id = ids.get(key)
                if series_id is None:
                    series_id = ids[key] = len(ids) + 1
                copy.write_row(
                    (
                        series_id,
                        int(obs.start.timestamp()),
                        obs.granularity.value,
                        obs.value,
                        now,
                        None,
                    )
                )
    return time.perf_counter() - started


@contextmanager
def statement_times(engine: Engine) -> Iterator[dict[str, float]]:
    """Seconds spent in each kind of statement (its first words), driver included."""
    totals: dict[str, float] = defaultdict(float)

    def before(_conn: Any, _cursor: Any, _statement: str, *_args: Any) -> None:
        _conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        elapsed = time.perf_counter() - _conn.info["bench_started"].pop()
        totals[" ".join(statement.split()[:3])] += elapsed

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield totals
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


@contextmanager
def gc_time() -> Iterator[list[float]]:
    """Seconds the cyclic garbage collector ran during the block (total in result[0])."""
    result = [0.0]
    started: list[float] = []

    def callback(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            result[0] += time.perf_counter() - started.pop()

    gc.callbacks.append(callback)
    try:
        yield result
    finally:
        gc.callbacks.remove(callback)


def store_ingest(
    url: str, n_series: int, n_days: int, batch_size: int, *, again: bool = False
) -> dict[str, Any]:
    """A fresh store (migrated in `url`'s schema): ingest, and optionally ingest the same again."""
    store = Store(url)
    try:
        store.migrate()
        result: dict[str, Any] = {}
        passes = ("first", "again") if again else ("first",)
        for name in passes:
            with statement_times(store.engine) as statements, gc_time() as collecting:
                started = time.perf_counter()
                stats = store.write(SOURCE, page_views(n_series, n_days), batch_size=batch_size)
                seconds = time.perf_counter() - started
            result[name] = {
                "seconds": seconds,
                "observations": stats.observations,
                "changed": stats.changed,
                "batches": stats.batches,
                "obs_per_s": per_second(stats.observations, seconds),
                "statement_seconds": {k: round(v, 3) for k, v in sorted(statements.items())},
                "sqlalchemy_statement_seconds": round(sum(statements.values()), 3),
                "gc_seconds": round(collecting[0], 3),
            }
        return result
    finally:
        store.close()


def profile_store_ingest(url: str, n_series: int, n_days: int, batch_size: int) -> list[str]:
    """cProfile of one store ingest: the 15 functions with the most own time."""
    store = Store(url)
    try:
        store.migrate()
        profiler = cProfile.Profile()
        profiler.enable()
        stats = store.write(SOURCE, page_views(n_series, n_days), batch_size=batch_size)
        profiler.disable()
    finally:
        store.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    lines = [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]
    return [
        f"profiled {stats.observations} observations (cProfile inflates Python time; the "
        "calling thread only, not the store's writer thread)",
        *lines,
    ]


def run(bench: Bench) -> Outcome:
    outcome = Outcome("ingest")
    n_series = bench.size(FULL_SERIES, minimum=10)
    n_days = bench.size(FULL_DAYS, minimum=5) if bench.scale < 0.01 else FULL_DAYS
    total = n_series * n_days
    sweep_days = max(2, round(n_days * SWEEP_SHARE))
    raw = outcome.raw
    raw.update(series=n_series, days=n_days, observations=total)

    with bench.database.schema("ingest_copy") as url:
        copy_before = copy_ingest(url, n_series, n_days)

    sweep: dict[int, float] = {}
    for batch_size in BATCH_SIZES:
        with bench.database.schema(f"ingest_sweep_{batch_size}") as url:
            first = store_ingest(url, n_series, sweep_days, batch_size)["first"]
        sweep[batch_size] = first["obs_per_s"]
    best = max(sweep, key=lambda size: sweep[size])
    raw["batch_sweep"] = {
        "observations_each": n_series * sweep_days,
        "obs_per_s": {str(k): round(v) for k, v in sweep.items()},
        "best_batch_size": best,
    }

    with bench.database.schema("ingest_store") as url:
        result = store_ingest(url, n_series, n_days, best, again=True)
    with bench.database.schema("ingest_copy") as url:
        copy_after = copy_ingest(url, n_series, n_days)
    # COPY runs before and after the store's passes; their mean rate is the baseline, so a load
    # that comes or goes during the run does not fall on one side only.
    copy_rate = (per_second(total, copy_before) + per_second(total, copy_after)) / 2
    raw["copy"] = {
        "seconds_before": round(copy_before, 3),
        "seconds_after": round(copy_after, 3),
        "obs_per_s": round(copy_rate),
    }
    first, again = result["first"], result["again"]
    for key in ("first", "again"):
        raw[f"store_{key}"] = {
            k: (round(v, 3) if isinstance(v, float) else v) for k, v in result[key].items()
        }
    bench.shared["store_write_obs_per_s"] = first["obs_per_s"]

    outcome.ratio(
        "store / COPY (first ingest)",
        first["obs_per_s"] / copy_rate,
        f"store {fmt(first['obs_per_s'], 'obs/s')} (batch {best:,}) vs "
        f"COPY {fmt(copy_rate, 'obs/s')}",
        target=0.7,
    )
    outcome.ratio(
        "store / COPY (re-ingest, unchanged)",
        again["obs_per_s"] / copy_rate,
        f"store {fmt(again['obs_per_s'], 'obs/s')}, {again['changed']:,} changed",
    )
    if again["changed"]:
        outcome.notes.append(f"re-ingest changed {again['changed']} rows: it should change none")
    slowest = max(first["statement_seconds"].items(), key=lambda kv: kv[1], default=("-", 0.0))
    outcome.notes.append(
        f"first ingest {first['seconds']:.1f}s; SQLAlchemy statements "
        f"{first['sqlalchemy_statement_seconds']:.1f}s (most: {slowest[0]!r} {slowest[1]:.1f}s) "
        "(mostly from the store's writer thread, overlapping the Python that builds batches; "
        "the COPY of new rows not among them); cyclic garbage collector "
        f"{first['gc_seconds']:.1f}s"
    )
    if bench.profile:
        with bench.database.schema("ingest_profile") as url:
            raw["profile"] = profile_store_ingest(url, n_series, sweep_days, best)
    return outcome
