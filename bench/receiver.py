"""7. receiver — webhook events: accepted → visible on /metrics, and accepted events per second.

The receiver runs as its own process (`dxkpi receiver`, waitress) on a PostgreSQL schema, as in
production; the exporter runs here, in this process, on its own connections, with its usual
5 s poll. Signed Zoom `meeting.ended` events (each adding to three series of today) are sent
over loopback HTTP with keep-alive.

- freshness: one event at a time; from its 2xx until the exporter's snapshot (the bytes
  /metrics serves) shows the new meeting count. Median and p99 over N events (1,000 at full
  scale). The baseline is the same with the exporter's NOTIFY listener off (poll only), over
  fewer events since each takes seconds. Targets: p99 ≤ 1 s (the figure is p99 / 1 s, ≤ 1)
  and the ratio to the poll-only median.
- throughput: M distinct events (5,000 at full scale) from 32 client threads (the receiver
  has 64 worker threads); then the events in `received_events` are counted, and the stored
  meeting count compared with every event sent (no loss, nothing twice). The figure is
  accepted events/s / 500 (target ≥ 1), the issue's goal for this 2-core machine, which the
  client, the receiver and PostgreSQL share.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from bench.harness import (
    Bench,
    Outcome,
    child_env,
    dxkpi_command,
    fmt_ms,
    free_port,
    psycopg_url,
    stop_process,
    tail,
    wait_for,
    write_config,
)
from dxkpi.collector.config import load_config
from dxkpi.collector.exporter import Exporter
from dxkpi.collector.storage import Store
from dxkpi.collector.storage.notify import ChangeWaiter

SECRET = "bench-webhook-secret"
FULL_FRESHNESS = 1_000
FULL_POLL_ONLY = 10
FULL_THROUGHPUT = 5_000
CLIENTS = 32
HOST = "host-bench"


def config(folder: Path, url: str, port: int) -> Path:
    return write_config(
        folder / "receiver.yaml",
        {
            "data_dir": str(folder),
            "storage": {"url": url},
            "sources": [
                {
                    "id": "zoom_main",
                    "connector": "zoom",
                    "settings": {
                        "account_id": "bench",
                        "client_id": "bench",
                        "client_secret": "${BENCH_ZOOM_SECRET}",
                        "departments": {HOST: "情報政策課"},
                    },
                }
            ],
            "receiver": {
                "listen": f"127.0.0.1:{port}",
                "threads": 64,
                "rate_limit": {"per_second": 100_000, "burst": 100_000},
                "webhooks": [{"source": "zoom_main", "secret": "${BENCH_WEBHOOK_SECRET}"}],
            },
        },
    )


def event_body(uuid: str) -> bytes:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    meeting = {
        "uuid": uuid,
        "id": "81234567890",
        "host_id": HOST,
        "start_time": start.isoformat().replace("+00:00", "Z"),
        "end_time": (start + timedelta(minutes=25)).isoformat().replace("+00:00", "Z"),
        "duration": 30,
    }
    return json.dumps({"event": "meeting.ended", "payload": {"object": meeting}}).encode()


class Client:
    """One keep-alive connection that signs and posts events."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(self, body: bytes) -> int:
        stamp = str(int(time.time()))
        digest = hmac.new(SECRET.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256)
        headers = {
            "x-zm-request-timestamp": stamp,
            "x-zm-signature": "v0=" + digest.hexdigest(),
            "Content-Type": "application/json",
        }
        self.connection.request("POST", "/webhooks/zoom_main", body, headers)
        response = self.connection.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.connection.close()


@contextmanager
def receiver_process(path: Path, port: int, folder: Path) -> Iterator[None]:
    log = folder / "receiver.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            dxkpi_command(path, "receiver"),
            env=child_env(BENCH_ZOOM_SECRET="x", BENCH_WEBHOOK_SECRET=SECRET),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _healthy(port), 60, "dxkpi receiver", process)
        yield
    except Exception as exc:
        raise RuntimeError(f"{exc}\n{tail(log)}") from exc
    finally:
        stop_process(process)


def _healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/healthz")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except OSError:
        return False


MEETINGS = re.compile(rb'^dxkpi_zoom_meetings\{org="default",source="zoom_main"\} (\S+)$', re.M)


def shown(exporter: Exporter) -> float:
    snapshot = exporter.snapshot
    found = MEETINGS.search(snapshot.text) if snapshot is not None else None
    return float(found.group(1)) if found else 0.0


def freshness(exporter: Exporter, client: Client, count: int, prefix: str) -> list[float]:
    delays = []
    for n in range(count):
        expected = shown(exporter) + 1
        status = client.send(event_body(f"{prefix}-{n}"))
        if status != 200:
            raise RuntimeError(f"event {n} answered {status}")
        accepted = time.perf_counter()
        while shown(exporter) < expected:
            if time.perf_counter() - accepted > 30:
                raise RuntimeError(f"event {n} not on /metrics after 30 s")
            time.sleep(0.001)
        delays.append(time.perf_counter() - accepted)
    return delays


def throughput(port: int, count: int) -> tuple[float, int]:
    bodies = [event_body(f"burst-{n}") for n in range(count)]
    failures: list[int] = []
    lock = threading.Lock()
    queue = iter(range(count))

    def work() -> None:
        client = Client(port)
        try:
            while True:
                with lock:
                    n = next(queue, None)
                if n is None:
                    return
                status = client.send(bodies[n])
                if status != 200:
                    failures.append(status)
        finally:
            client.close()

    threads = [threading.Thread(target=work) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, len(failures)


def run(bench: Bench) -> Outcome:
    outcome = Outcome("receiver")
    n_fresh = bench.size(FULL_FRESHNESS, minimum=10)
    n_poll = bench.size(FULL_POLL_ONLY, minimum=2)
    n_burst = bench.size(FULL_THROUGHPUT, minimum=50)
    folder = bench.dir("receiver")
    port = free_port()
    with bench.database.schema("receiver") as url:
        path = config(folder, psycopg_url(url), port)
        os.environ.setdefault("BENCH_ZOOM_SECRET", "x")
        os.environ.setdefault("BENCH_WEBHOOK_SECRET", SECRET)
        loaded = load_config(path)
        store = Store(psycopg_url(url))
        store.migrate()
        with receiver_process(path, port, folder):
            exporter = Exporter(store, loaded)
            exporter.start()
            client = Client(port)
            try:
                time.sleep(0.5)  # the exporter's listener connects
                fast = freshness(exporter, client, n_fresh, "fresh")
                # The same with the listener off: only the poll notices.
                assert exporter._changes is not None
                exporter._changes.close()
                exporter._changes = ChangeWaiter(None)
                slow = freshness(exporter, client, n_poll, "poll")
            finally:
                client.close()
                exporter.stop()
            seconds, failed = throughput(port, n_burst)
        with store.engine.connect() as connection:
            stored = connection.execute(
                text(
                    "SELECT count(*) FROM received_events "
                    "WHERE event_id LIKE 'meeting.ended:burst-%'"
                )
            ).scalar_one()
            meetings = sum(
                value
                for series in store.series_rows()
                if series.metric == "zoom_meetings"
                for _, value in store.points([series.id])
            )
        store.close()
    sent = n_fresh + n_poll + n_burst
    rate = n_burst / seconds
    p99 = statistics.quantiles(fast, n=100)[-1] if len(fast) >= 2 else fast[0]
    median, poll_median = statistics.median(fast), statistics.median(slow)
    outcome.ratio(
        "freshness p99 / 1 s",
        p99 / 1.0,
        f"accepted -> on /metrics: median {fmt_ms(median)}, p99 {fmt_ms(p99)} over {n_fresh} "
        "events (NOTIFY)",
        target=1.0,
        comparison="<=",
    )
    outcome.ratio(
        "freshness median: NOTIFY / poll only",
        median / poll_median,
        f"{fmt_ms(median)} vs {fmt_ms(poll_median)} ({n_poll} events on the 5 s poll)",
    )
    outcome.ratio(
        "accepted events/s / 500",
        rate / 500,
        f"{rate:,.0f} events/s ({n_burst:,} events, {CLIENTS} clients); stored {stored:,}, "
        f"refused {failed}; meetings counted {meetings:,.0f} of {sent:,} sent",
        target=1.0,
    )
    if stored != n_burst or failed or meetings != sent:
        outcome.notes.append(
            f"LOSS: sent {n_burst}, stored {stored}, refused {failed}; "
            f"meetings {meetings} of {sent}"
        )
    outcome.raw.update(
        freshness_events=n_fresh,
        freshness_median_seconds=round(median, 6),
        freshness_p99_seconds=round(p99, 6),
        freshness_max_seconds=round(max(fast), 6),
        poll_only_events=n_poll,
        poll_only_median_seconds=round(poll_median, 6),
        throughput_events=n_burst,
        throughput_seconds=round(seconds, 3),
        events_per_second=round(rate, 1),
        stored=int(stored),
        meetings_counted=meetings,
        events_sent=sent,
        refused=failed,
    )
    return outcome
