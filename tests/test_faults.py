"""Faults injected into a real deployment: a real `dxkpi worker` on real Redis, storing into real
PostgreSQL through a loopback proxy the test takes down and brings back (the shared server
itself is never touched)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy.engine import make_url

from dxkpi.collector.storage import Store
from tests.conftest import write_config
from tests.tcp_proxy import TcpProxy
from tests.test_celery_e2e import Worker, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[dict[str, Any]]:
    """A worker's environment whose store is behind `proxy`; a Celery client on its own queue."""
    url = make_url(pg_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    queue = f"dxkpi-test-{uuid.uuid4().hex[:8]}"
    redis.Redis.from_url(redis_url).delete(queue)
    store = Store(pg_url)
    store.migrate()
    env = {
        **os.environ,
        "DXKPI_STORAGE_URL": proxied,
        "DXKPI_BROKER_URL": redis_url,
        "DXKPI_QUEUE": queue,
        "DXKPI_DATA_DIR": str(tmp_path / "data-dir"),
    }
    client = Celery(broker=redis_url)
    client.conf.task_default_queue = queue
    workers: list[Worker] = []
    parts: dict[str, Any] = {
        "proxy": proxy,
        "store": store,
        "client": client,
        "start": lambda config, *args: (
            workers.append(Worker(config, env, tmp_path / f"worker{len(workers)}.log", *args))
            or workers[-1]
        ),
    }
    yield parts
    for worker in workers:
        worker.stop()
    client.close()
    store.close()
    proxy.stop()
    for worker in workers:
        sys.stderr.write(worker.log.read_text(errors="replace")[-3000:])


def test_a_25s_database_outage_ends_with_the_run_done_not_discarded(
    tmp_path: Path, deployment: dict[str, Any]
) -> None:
    proxy: TcpProxy = deployment["proxy"]
    store: Store = deployment["store"]
    client: Celery = deployment["client"]
    worker = deployment["start"](write_config(tmp_path), "--concurrency", "1")
    wait_for(lambda: client.control.ping(timeout=1.0), what="the worker")
    proxy.stop()
    down = time.monotonic()
    # As beat sends it: expiring long before the retries' backoff (10 s, then 20 s) is over.
    client.send_task("dxkpi.collect", args=("portal",), expires=5)
    time.sleep(25.0)
    proxy.start()
    wait_for(
        lambda: any(r["status"] == "success" for r in store.runs("portal")),
        timeout=60,
        what="the run to succeed after the outage",
    )
    recovered = time.monotonic() - down
    print(f"25 s database outage: run done {recovered:.1f} s after it began")
    log = worker.log.read_text(errors="replace")
    assert "Discarding revoked task" not in log
    assert store.count_observations() == 6
    assert recovered < 45, f"recovered {recovered:.0f}s after the outage began"


def test_run_started_in_the_background_by_a_script_stops_on_sigint(tmp_path: Path) -> None:
    """A script's `dxkpi run &` starts with SIGINT ignored; `kill -INT` must still stop it."""
    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXKPI_")}
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dxkpi.collector",
                "--config",
                str(config),
                "--data-dir",
                str(tmp_path / "d"),
                "run",
                "--listen",
                "127.0.0.1:0",
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # what `&` does
        )
    try:
        wait_for(lambda: "serving http" in log.read_text(errors="replace"), what="the exporter")
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.wait(timeout=30)
        assert time.monotonic() - started < 20
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
