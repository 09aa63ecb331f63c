"""3. scrape — GET /metrics over HTTP with 1 vs 1,000 observations per series in the store.

Two real exporters (`Exporter` + `make_server` on loopback) run side by side, each over its own
PostgreSQL schema holding the same 1,000 series: one with only the latest day, one with 1,000
days of history. A KPI sums the series over the fiscal year, so a snapshot rebuild does read
history. Scrapes alternate between the two (both see the same machine load); the figure is
median(history) / median(latest only). Target <= 1.2: a scrape's cost must not grow with history.

Then 3,000 half-open clients (connected; half send nothing, half a request head that never
ends) sit on the latest-only exporter while it is scraped again: median(during) / median(alone),
and every scrape during them must be answered 200 (before: 503 until they timed out, 4-5 s).
Target <= 10. The server adds about 0.1 ms with them; the rest is prometheus-client's
`process_open_fds`, which lists /proc/self/fd at each scrape: 6,000 descriptors here (both ends
of every connection are in this process; 0.76 vs 0.68 ms with the snapshot only).

The newest day goes through `Store.write` (which keeps `series.last_*`); the older days are
bulk-loaded in one INSERT … SELECT, since `ingest` already measures Store.write and a million
upserts would only make this benchmark slow.
"""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bench.harness import Bench, Outcome, best_time, fmt_ms, write_config
from bench.ingest import libpq_url
from bench.workload import csv_source, page_views, page_views_kpi
from dxkpi.collector.config import load_config
from dxkpi.collector.contract import TOKYO
from dxkpi.collector.exporter import Exporter, make_server
from dxkpi.collector.storage import Store
from dxkpi.collector.webserver import raise_open_file_limit

FULL_SERIES = 1_000
HISTORY_DAYS = 1_000
FULL_SCRAPES = 300
HALF_OPEN = 3_000
SOURCE = "bench"


def first_day(days: int) -> datetime:
    """Midnight `days` days ago in Tokyo: the history ends yesterday."""
    today = datetime.now(UTC).astimezone(TOKYO).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=days, hours=-12)).replace(hour=0)


HISTORY_SQL = """
INSERT INTO observations (series_id, period_start, granularity, value, updated_at)
SELECT s.id, %(first)s + d * 86400, 'day', ((s.id * 7919 + d * 104729) %% 5000)::float8, %(now)s
FROM series s, generate_series(0, %(days)s - 2) AS d
"""


def fill(url: str, n_series: int, days: int) -> None:
    """`days` days per series: the newest through Store.write, the older ones in bulk."""
    first = first_day(days)
    store = Store(url)
    try:
        store.migrate()
        store.write(SOURCE, page_views(n_series, 1, first_day=first, first_day_index=days - 1))
    finally:
        store.close()
    if days == 1:
        return
    with psycopg.connect(libpq_url(url)) as connection:
        # A bulk load of rows consistent by construction: skip the per-row foreign-key check
        # (superuser only; without it the load is just slower). Tokyo has no DST: days are 86400s.
        try:
            connection.execute("SET session_replication_role = replica")
        except psycopg.Error:
            connection.rollback()
        connection.execute(
            HISTORY_SQL, {"first": int(first.timestamp()), "now": time.time(), "days": days}
        )
        connection.commit()
        connection.execute("ANALYZE observations")


@contextmanager
def serving(config: Path) -> Iterator[tuple[Exporter, int]]:
    loaded = load_config(config)
    assert loaded.config.storage.url is not None
    store = Store(loaded.config.storage.url)
    exporter = Exporter(store, loaded)
    exporter.start()
    server = make_server(exporter, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield exporter, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        exporter.stop()
        store.close()


def scrape(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"GET /metrics -> {response.status}: {body[:200]!r}")
    return time.perf_counter() - started, len(body)


def scrapes_during_half_open(port: int, n: int) -> list[float]:
    """`n` scrapes while HALF_OPEN clients hold connections without a complete request; each
    must be answered 200 (`scrape` raises otherwise)."""
    raise_open_file_limit()  # both ends of every connection are in this process
    clients = []
    try:
        for i in range(HALF_OPEN):
            client = socket.create_connection(("127.0.0.1", port))
            if i % 2:
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n")
            clients.append(client)
        # Within the server's 5 s head timeout, counted from each client's connection.
        return [scrape(port)[0] for _ in range(n)]
    finally:
        for client in clients:
            client.close()


def run(bench: Bench) -> Outcome:
    outcome = Outcome("scrape")
    n_series = bench.size(FULL_SERIES, minimum=10)
    history = HISTORY_DAYS if bench.scale >= 0.05 else bench.size(HISTORY_DAYS, minimum=10)
    scrapes = bench.size(FULL_SCRAPES, minimum=20)
    folder = bench.dir("scrape")
    with (
        bench.database.schema("scrape_latest") as latest_url,
        bench.database.schema("scrape_history") as history_url,
    ):
        fill(latest_url, n_series, 1)
        fill(history_url, n_series, history)
        configs = []
        for name, url in (("latest", latest_url), ("history", history_url)):
            configs.append(
                write_config(
                    folder / f"{name}.yaml",
                    {
                        "data_dir": str(folder),
                        "storage": {"url": url},
                        "sources": [csv_source(SOURCE)],
                        "kpis": [page_views_kpi(SOURCE)],
                    },
                )
            )
        with (
            serving(configs[0]) as (latest, latest_port),
            serving(configs[1]) as (
                full,
                full_port,
            ),
        ):
            times: dict[str, list[float]] = {"latest": [], "history": []}
            sizes = {"latest": scrape(latest_port)[1], "history": scrape(full_port)[1]}
            for _ in range(scrapes):
                times["latest"].append(scrape(latest_port)[0])
                times["history"].append(scrape(full_port)[0])
            rebuild = {
                "latest": best_time(latest.rebuild, 3),
                "history": best_time(full.rebuild, 3),
            }
            during = scrapes_during_half_open(latest_port, min(scrapes, 50))
    medians = {k: statistics.median(v) for k, v in times.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in times.items()}
    outcome.ratio(
        "scrape: 1,000 obs/series / 1 obs/series",
        medians["history"] / medians["latest"],
        f"median {fmt_ms(medians['history'])} vs {fmt_ms(medians['latest'])} "
        f"({scrapes} scrapes each, {n_series:,} series)",
        target=1.2,
        comparison="<=",
    )
    outcome.ratio(
        "snapshot rebuild: history / latest only",
        rebuild["history"] / rebuild["latest"],
        f"{fmt_ms(rebuild['history'])} vs {fmt_ms(rebuild['latest'])} (background, not per scrape)",
    )
    alone = statistics.median(times["latest"])
    outcome.ratio(
        f"scrape during {HALF_OPEN:,} half-open clients / alone",
        statistics.median(during) / alone,
        f"median {fmt_ms(statistics.median(during))} vs {fmt_ms(alone)} "
        f"({len(during)} scrapes, each answered 200)",
        target=10,
        comparison="<=",
    )
    outcome.raw.update(
        half_open_clients=HALF_OPEN,
        during_half_open_median_seconds=round(statistics.median(during), 6),
        series=n_series,
        history_days=history,
        scrapes=scrapes,
        body_bytes=sizes,
        median_seconds={k: round(v, 6) for k, v in medians.items()},
        p90_seconds={k: round(v, 6) for k, v in p90.items()},
        rebuild_seconds={k: round(v, 4) for k, v in rebuild.items()},
    )
    return outcome
