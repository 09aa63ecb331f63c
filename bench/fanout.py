"""6. fanout — one collection cycle over 200 sources whose API answers after 200 ms.

Every source is a Zoom source (one config file, 200 entries) pointed at the Zoom fake
(`connectors/zoom/tests/fake_zoom.py`) on loopback, wrapped so each API request answers after
200 ms (the token endpoint answers at once). Baseline: the same 200 collections one after another
in this process (`collect_source`, as `dxkpi collect` runs them, logging nothing). Measured: a
real Celery worker as the README recommends, `dxkpi worker --pool threads --concurrency 32
--processes <cores>` at its default log level (INFO), over Redis and a PostgreSQL store, given one
`dxkpi.collect` task per source; wall time from the first send to the last run's finish (read
from `collection_runs`). Every worker process must answer a ping, then a warm-up task runs,
before the clock starts. Target: serial / Celery >= 10.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.harness import (
    REDIS_URL,
    Bench,
    NotRun,
    Outcome,
    backend_cpu_seconds,
    child_env,
    collapsed_profile,
    cpu_seconds,
    dxkpi_command,
    py_spy,
    stop_process,
    tail,
    write_config,
)
from dxkpi.collector.config import load_config
from dxkpi.collector.runner import collect_source
from dxkpi.collector.storage import Store
from dxkpi.collector.testing import FakeRequest, FakeResponse, Handler, loopback_server

FULL_SOURCES = 200
DELAY_SECONDS = 0.2
CONCURRENCY = 32
# One worker process per core, as the README recommends.
PROCESSES = len(os.sched_getaffinity(0))
SECRET_ENV = "DXKPI_BENCH_ZOOM_SECRET"
WARMUP = "zoom_warmup"
# What kombu keeps in Redis for the `dxkpi` queue: cleared before and after when the database
# was given (DXKPI_BENCH_REDIS=…/<db>) and so may hold other keys.
KOMBU_KEYS = ("dxkpi", "unacked", "unacked_index", "unacked_mutex", "_kombu.binding.dxkpi")


def slow(handler: Handler, delay: float) -> Handler:
    def answer(request: FakeRequest) -> FakeResponse:
        if request.path.startswith("/v2/"):
            time.sleep(delay)
        return handler(request)

    return answer


def zoom_source(source_id: str, base_url: str, account: str, client: str) -> dict[str, Any]:
    return {
        "id": source_id,
        "connector": "zoom",
        "schedule": {"every": "1h"},
        "settings": {
            "account_id": account,
            "client_id": client,
            "client_secret": "${" + SECRET_ENV + "}",
            "api_base_url": base_url,
            "oauth_base_url": base_url,
        },
    }


@contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def redis_broker() -> tuple[str, bool, Any]:
    """The broker URL (`pick_redis_database`), whether it was chosen, and a client that
    answered a ping; NotRun when Redis is unreachable."""
    import redis

    try:
        broker, chosen = pick_redis_database(REDIS_URL)
        client = redis.Redis.from_url(broker, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        raise NotRun(f"Redis at {REDIS_URL} is unreachable ({exc})") from None
    return broker, chosen, client


def pick_redis_database(url: str) -> tuple[str, bool]:
    """(`url`, False) if it names a database; else (an empty one chosen at random, True).

    Other Celery workers on the same database and queue would take our tasks (and we theirs).
    """
    import random

    import redis

    base, _, db = url.rstrip("/").rpartition("/")
    if db.isdigit() and base.startswith("redis"):
        return url, False
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        in_use = {int(name[2:]) for name in client.info("keyspace")}
        count = int(client.config_get("databases").get("databases") or 16)
    finally:
        client.close()
    free = [n for n in range(1, count) if n not in in_use]
    if not free:
        raise NotRun(f"every Redis database at {url} holds keys; set DXKPI_BENCH_REDIS=…/<db>")
    return f"{url.rstrip('/')}/{random.choice(free)}", True


def clear_queue(redis_client: Any, whole_database: bool) -> None:
    """Drop what kombu left: the whole database if we chose it empty, else the queue's keys."""
    if whole_database:
        redis_client.flushdb()
    else:
        redis_client.delete(*KOMBU_KEYS)


def finished_runs(store: Store, sources: list[str]) -> tuple[int, int, float | None]:
    """(finished scheduled runs, of which successful, latest finish) among `sources`."""
    with store.engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE status = 'success'), max(finished_at) "
                "FROM collection_runs WHERE kind = 'scheduled' AND status IN ('success', 'failed') "
                "AND source = ANY(:sources)"
            ),
            {"sources": sources},
        ).one()
    return int(row[0]), int(row[1]), row[2]


def wait_runs(
    store: Store, sources: list[str], timeout: float, worker: subprocess.Popen[bytes], log: Path
) -> tuple[int, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail(log)}")
        done, ok, last = finished_runs(store, sources)
        if done >= len(sources):
            assert last is not None
            return ok, float(last)
        time.sleep(0.05)
    raise RuntimeError(f"{len(sources)} runs not finished after {timeout:.0f}s:\n{tail(log)}")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children (the worker processes of `--processes N`)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


def wait_nodes(
    app: Any, count: int, timeout: float, worker: subprocess.Popen[bytes], log: Path
) -> None:
    """Until `count` worker processes answer a ping: all must be consuming when the clock starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail(log)}")
        if len(app.control.ping(timeout=0.5)) >= count:
            return
    raise RuntimeError(f"{count} worker processes not up after {timeout:.0f}s:\n{tail(log)}")


def run(bench: Bench) -> Outcome:
    try:
        from celery import Celery

        from dxkpi.collector.registry import load_connector
        from dxkpi.connectors.zoom.tests.fake_zoom import (
            ACCOUNT_ID,
            CLIENT_ID,
            CLIENT_SECRET,
            FakeZoom,
        )

        load_connector("zoom")
    except Exception as exc:
        raise NotRun(f"the Zoom connector, its fake or Celery is not available ({exc!r})") from None
    broker, chosen, redis_client = redis_broker()

    outcome = Outcome("fanout")
    n_sources = bench.size(FULL_SOURCES, minimum=4)
    sources = [f"zoom_{i:03d}" for i in range(n_sources)]
    folder = bench.dir("fanout")
    log = folder / "worker.log"
    fake = FakeZoom()
    with (
        bench.database.schema("fanout") as url,
        loopback_server(slow(fake, DELAY_SECONDS)) as (base_url, requests),
    ):
        config = write_config(
            folder / "fanout.yaml",
            {
                "data_dir": str(folder),
                "storage": {"url": url},
                "broker": {"url": broker},
                "sources": [
                    zoom_source(s, base_url, ACCOUNT_ID, CLIENT_ID) for s in [WARMUP, *sources]
                ],
            },
        )
        with environment(SECRET_ENV, CLIENT_SECRET):
            loaded = load_config(config)
        store = Store(url)
        worker: subprocess.Popen[bytes] | None = None
        app = Celery("dxkpi-bench", broker=broker)
        app.conf.task_default_queue = "dxkpi"
        try:
            store.migrate()
            started = time.perf_counter()
            for source in sources:
                result = collect_source(loaded, store, source, kind="manual")
                if result.status != "success":
                    raise RuntimeError(f"serial run of {source}: {result.status}")
            serial = time.perf_counter() - started
            serial_requests = len(requests)

            clear_queue(redis_client, chosen)
            command = dxkpi_command(
                config,
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(CONCURRENCY),
                "--processes",
                str(PROCESSES),
                # As the README runs it: at the default level (INFO), logging every run.
                log_level=None,
            )
            with log.open("wb") as out:
                worker = subprocess.Popen(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=child_env(**{SECRET_ENV: CLIENT_SECRET}),
                )
            wait_nodes(app, PROCESSES, 120, worker, log)
            app.send_task("dxkpi.collect", args=(WARMUP,))
            wait_runs(store, [WARMUP], 120, worker, log)

            worker_cpu = tree_cpu_seconds(worker.pid)
            postgres_cpu = backend_cpu_seconds(bench.database.name)
            bench_cpu = time.process_time()
            sessions = bench.database.sessions()
            profile = bench.artifacts / "fanout-worker.pyspy.txt"
            profiling = py_spy(worker.pid, profile, subprocesses=True)
            with profiling if bench.profile else nullcontext():
                sent_at = time.time()
                for source in sources:
                    app.send_task("dxkpi.collect", args=(source,))
                ok, last_finish = wait_runs(store, sources, max(60.0, serial * 3), worker, log)
            fanned = last_finish - sent_at
            worker_cpu = tree_cpu_seconds(worker.pid) - worker_cpu
            postgres_cpu = backend_cpu_seconds(bench.database.name) - postgres_cpu
            bench_cpu = time.process_time() - bench_cpu
            sessions = bench.database.sessions() - sessions
            with store.engine.connect() as connection:
                busy = connection.execute(
                    text(
                        "SELECT sum(finished_at - started_at) FROM collection_runs "
                        "WHERE kind = 'scheduled' AND source = ANY(:sources)"
                    ),
                    {"sources": sources},
                ).scalar_one()
        finally:
            if worker is not None:
                stop_process(worker)
            clear_queue(redis_client, chosen)
            app.close()
            store.close()
    if ok != n_sources:
        raise RuntimeError(f"only {ok} of {n_sources} Celery runs succeeded:\n{tail(log)}")
    outcome.ratio(
        f"serial / Celery, {n_sources} sources",
        serial / fanned,
        f"serial {serial:.1f}s vs Celery {fanned:.2f}s "
        f"({PROCESSES} processes × {CONCURRENCY} threads; each API call answers after "
        f"{DELAY_SECONDS * 1000:.0f} ms)",
        target=10,
    )
    per_run = {
        "worker": worker_cpu / n_sources,
        "postgres": postgres_cpu / n_sources,
        "fake API and bench": bench_cpu / n_sources,
    }
    outcome.notes.append(
        "CPU per run during the fan-out: "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in per_run.items())
        + f" (the machine has {os.cpu_count()} cores; a serial run spends "
        f"{(serial / n_sources - DELAY_SECONDS) * 1000:.0f} ms beyond the 200 ms wait); "
        f"{sessions} new PostgreSQL connections were opened for {n_sources} runs"
    )
    if bench.profile:
        outcome.raw["worker_profile"] = collapsed_profile(profile, top=25)
    outcome.raw.update(
        sources=n_sources,
        delay_seconds=DELAY_SECONDS,
        concurrency=CONCURRENCY,
        processes=PROCESSES,
        broker=broker,
        serial_seconds=round(serial, 3),
        serial_per_run_seconds=round(serial / n_sources, 4),
        celery_seconds=round(fanned, 3),
        celery_run_seconds_summed=round(float(busy or 0.0), 3),
        celery_mean_run_seconds=round(float(busy or 0.0) / n_sources, 4),
        http_requests_serial=serial_requests,
        # Within one worker process the threads' Python work is serialised by the GIL; all
        # the processes here share the machine's cores.
        cpu_seconds={
            "worker": round(worker_cpu, 3),
            "postgres_backends": round(postgres_cpu, 3),
            "bench_process_with_fake_api": round(bench_cpu, 3),
        },
        postgres_connections_opened=sessions,
        ideal_seconds=round(-(-n_sources // (CONCURRENCY * PROCESSES)) * serial / n_sources, 3),
    )
    return outcome
