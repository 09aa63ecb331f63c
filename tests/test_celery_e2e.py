"""Real Celery workers (subprocesses of `dxkpi worker`) over real Redis, storing into real
PostgreSQL; and the embedded `dxkpi run` on SQLite with no Redis or PostgreSQL at all."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from dxkpi.collector.storage import Store
from dxkpi.collector.storage.kpi_periods import read_kpi_history
from tests.conftest import write_config

pytestmark = pytest.mark.slow

SINCE, UNTIL = "2024-04-01T00:00:00+09:00", "2024-04-04T00:00:00+09:00"


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    def __init__(self, config: Path, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dxkpi.collector", "--config", str(config), "worker", *args],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def cluster(
    tmp_path: Path, pg_url: str, redis_url: str
) -> Iterator[tuple[Callable[..., Worker], Celery, Store, Path]]:
    """(start_worker, client app, store, tmp dir): own Redis queue, fresh PostgreSQL schema."""
    # The database DXKPI_TEST_REDIS names: control broadcasts (ping, inspect) reach every worker
    # on one database, so parallel test runs must not share one.
    broker = redis_url if "DXKPI_TEST_REDIS" in os.environ else redis_url.rsplit("/", 1)[0] + "/13"
    # A queue of its own: nothing else using this Redis can take these tasks.
    queue = f"dxkpi-test-{uuid.uuid4().hex[:8]}"
    redis.Redis.from_url(broker).delete(queue)
    store = Store(pg_url)
    store.migrate()
    env = {
        **os.environ,
        "DXKPI_STORAGE_URL": pg_url,
        "DXKPI_BROKER_URL": broker,
        "DXKPI_QUEUE": queue,
        "DXKPI_DATA_DIR": str(tmp_path / "data-dir"),
    }
    workers: list[Worker] = []

    def start(config: Path, *args: str) -> Worker:
        worker = Worker(config, env, tmp_path / f"worker{len(workers)}.log", *args)
        workers.append(worker)
        return worker

    client = Celery(broker=broker)
    client.conf.task_default_queue = queue
    yield start, client, store, tmp_path
    for worker in workers:
        worker.stop()
    client.close()
    store.close()
    for worker in workers:
        sys.stderr.write(worker.log.read_text(errors="replace")[-3000:])


def finished_runs(store: Store, source: str) -> list[dict[str, Any]]:
    return [r for r in store.runs(source) if r["status"] != "running"]


def test_worker_collects_end_to_end_and_a_repeat_changes_nothing(cluster: Any) -> None:
    start, client, store, tmp = cluster
    config = write_config(tmp)
    worker = start(config, "--concurrency", "2")
    client.send_task("dxkpi.collect", args=("portal", SINCE, UNTIL))
    wait_for(lambda: finished_runs(store, "portal"), what="the first run")
    assert store.count_observations() == 6
    # The run changed data: the worker refreshes the stored KPI history (Grafana's source).
    (period,) = wait_for(
        lambda: read_kpi_history(store).periods, what="the KPI history refreshed by the worker"
    )
    assert period["kpi"] == "portal_views" and period["value"] == 475
    # At INFO a run is one line, the runner's: not Celery's "received" and "succeeded" too.
    log = wait_for(lambda: (t := worker.log.read_text()) and "stored 6 observations" in t and t)
    assert "received" not in log and "succeeded" not in log
    # the same window delivered twice more at once (a retry, a second beat): still one row each
    client.send_task("dxkpi.collect", args=("portal", SINCE, UNTIL))
    client.send_task("dxkpi.collect", args=("portal", SINCE, UNTIL))
    wait_for(lambda: len(finished_runs(store, "portal")) >= 2, what="the repeated runs")
    time.sleep(1.0)
    assert store.count_observations() == 6
    assert store.revisions() == []
    assert {r["status"] for r in finished_runs(store, "portal")} == {"success"}


def test_two_workers_never_run_one_source_at_once(cluster: Any) -> None:
    start, client, store, tmp = cluster
    rows = "\n".join(f"2024-04-{d:02d},/p{p},{d * p}" for d in range(1, 4) for p in range(3000))
    config = write_config(tmp, csv="date,page,page_views\n" + rows + "\n")
    start(config, "--concurrency", "2")
    start(config, "--concurrency", "2")
    for _ in range(4):
        client.send_task("dxkpi.collect", args=("portal", SINCE, UNTIL))
    wait_for(lambda: finished_runs(store, "portal"), what="a run")
    time.sleep(3.0)
    runs = sorted(store.runs("portal"), key=lambda r: r["started_at"])
    for a, b in itertools.pairwise(runs):
        assert a["finished_at"] is not None and a["finished_at"] <= b["started_at"], (
            "two runs of one source overlapped"
        )
    assert store.count_observations() == 9000


def test_worker_processes_share_the_queue_and_stop_together(cluster: Any) -> None:
    start, client, store, tmp = cluster
    rows = "\n".join(f"2024-04-{d:02d},/p{p},{d * p}" for d in range(1, 4) for p in range(2000))
    config = write_config(tmp, csv="date,page,page_views\n" + rows + "\n")
    worker = start(config, "--processes", "2", "--concurrency", "2")
    replies = wait_for(
        lambda: (r := client.control.ping(timeout=1.0)) and len(r) == 2 and r,
        what="both worker processes",
    )
    nodes = sorted(name for reply in replies for name in reply)
    assert [n.split("@")[0] for n in nodes] == ["celery1", "celery2"]
    sent = 12
    for _ in range(sent):
        client.send_task("dxkpi.collect", args=("portal", SINCE, UNTIL))

    def done_by_node() -> dict[str, int]:
        stats = client.control.inspect(timeout=1.0).stats() or {}
        return {n: int(s.get("total", {}).get("dxkpi.collect", 0)) for n, s in stats.items()}

    counts = wait_for(
        lambda: (c := done_by_node()) and sum(c.values()) >= sent and c,
        what="every task to be taken",
    )
    assert sum(counts.values()) == sent, counts  # each task once
    assert all(counts.get(node, 0) > 0 for node in nodes), counts  # by both processes
    wait_for(lambda: not any(r["status"] == "running" for r in store.runs("portal")), what="runs")
    runs = sorted(store.runs("portal"), key=lambda r: r["started_at"])
    for a, b in itertools.pairwise(runs):  # the lease still serialises one source's runs
        assert a["finished_at"] is not None and a["finished_at"] <= b["started_at"]
    assert store.count_observations() == 6000
    pids = [int(s["pid"]) for s in (client.control.inspect(timeout=1.0).stats() or {}).values()]
    assert len(pids) == 2 and worker.process.pid not in pids
    # One SIGTERM to `dxkpi worker` is a warm shutdown of every process, and a clean exit.
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_process_that_dies_takes_the_others_down_with_its_code(cluster: Any) -> None:
    start, client, _store, tmp = cluster
    worker = start(write_config(tmp), "--processes", "2", "--concurrency", "1")
    wait_for(lambda: len(client.control.ping(timeout=1.0)) == 2, what="both worker processes")
    pids = [int(s["pid"]) for s in (client.control.inspect(timeout=1.0).stats() or {}).values()]
    os.kill(pids[0], signal.SIGKILL)
    # Whatever runs `dxkpi worker` (compose, systemd) sees the failure and restarts it whole.
    assert worker.process.wait(timeout=30) == 128 + signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)


def test_retryable_error_is_retried_with_the_sources_wait(cluster: Any) -> None:
    start, client, store, tmp = cluster
    config = write_config(tmp)
    text = config.read_text(encoding="utf-8").replace(
        "path: data/pv.csv", "path: data/pv.csv\n      min_file_age: 8s"
    )
    config.write_text(text, encoding="utf-8")
    (tmp / "data" / "pv.csv").touch()  # just written: "may still be being written"
    start(config, "--concurrency", "1")
    client.send_task("dxkpi.collect", args=("portal", SINCE, UNTIL))
    wait_for(lambda: any(r["status"] == "success" for r in store.runs("portal")), what="success")
    statuses = [r["status"] for r in sorted(store.runs("portal"), key=lambda r: r["id"])]
    assert statuses[0] == "retrying" and statuses[-1] == "success"
    assert store.count_observations() == 6


def test_fatal_error_is_recorded_once_and_not_retried(cluster: Any) -> None:
    start, client, store, tmp = cluster
    config = write_config(tmp, csv="date,page,page_views\n2024-04-01,/top,12\n2024-04-02,/top,x\n")
    worker = start(config, "--concurrency", "1")
    client.send_task("dxkpi.collect", args=("portal", SINCE, UNTIL))
    [run] = wait_for(lambda: finished_runs(store, "portal"), what="the failed run")
    time.sleep(2.0)
    log = worker.log.read_text()
    # An expected error: the runner's one line, not Celery's "raised unexpected" and a traceback.
    assert "run 1 failed" in log and "Traceback" not in log and "unexpected" not in log
    assert len(store.runs("portal")) == 1
    assert run["status"] == "failed" and run["error_class"] == "SourceDataError"
    assert "pv.csv:3" in run["error_message"]
    assert store.count_observations() == 0


class EmbeddedRun:
    """`dxkpi run` on a data dir of the test's, with its output in a log file."""

    def __init__(self, tmp_path: Path, config: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("DXKPI_")}
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dxkpi.collector",
                    "--config",
                    str(config),
                    "--data-dir",
                    str(tmp_path / "data-dir"),
                    "run",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )

    def scrape(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def portal_up(self, what: str) -> str:
        """Wait until /metrics shows the portal source up; return the body."""
        body: str = wait_for(
            lambda: (
                (b := self.scrape())
                and 'dxkpi_source_up{org="default",source="portal"} 1.0' in b
                and b
            ),
            timeout=90,
            what=what,
        )
        return body

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        sys.stderr.write(self.log.read_text(errors="replace")[-3000:])


def test_embedded_run_needs_no_redis_or_postgres(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run = EmbeddedRun(tmp_path, config, tmp_path / "run.log")
    try:
        body = run.portal_up("the embedded worker's first collection on /metrics")
    finally:
        run.stop()
    assert 'dxkpi_portal_page_views{org="default",page="/top",source="portal"} 130.0' in body
    assert (tmp_path / "data-dir" / "dxkpi.sqlite").exists()
    assert (tmp_path / "data-dir" / "broker.db").exists()


def test_a_warm_start_collects_nothing_twice(tmp_path: Path) -> None:
    """A second `run` within the source's interval (1h) neither kicks the source off again nor
    lets beat catch up: the store holds one run, not two."""
    config = write_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'data-dir' / 'dxkpi.sqlite'}")
    first = EmbeddedRun(tmp_path, config, tmp_path / "first.log")
    try:
        first.portal_up("the first run")
    finally:
        first.stop()
    second = EmbeddedRun(tmp_path, config, tmp_path / "second.log")
    try:
        second.portal_up("the second start's exporter")
        # Long enough for a kicked-off or caught-up run to have been taken and recorded.
        wait_for(
            lambda: (
                "celery@" in (tmp_path / "second.log").read_text(errors="replace")
                and "beat: Starting" in (tmp_path / "second.log").read_text(errors="replace")
            ),
            timeout=60,
            what="the second start's worker and beat",
        )
        time.sleep(6)
    finally:
        second.stop()
    assert "collecting 0 source(s) now; 1 with a success" in (tmp_path / "second.log").read_text()
    assert len(store.runs("portal")) == 1


def test_backfill_task_queues_one_collect_per_window(cluster: Any) -> None:
    start, client, store, tmp = cluster
    config = write_config(tmp)
    start(config, "--concurrency", "2")
    client.send_task(
        "dxkpi.backfill", args=("portal", "2024-02-01T00:00:00+09:00", "2024-05-01T00:00:00+09:00")
    )
    # csvfile allows 31-day windows: Feb 1 + 31 days, + 31 days, then the rest = 3 windows
    runs = wait_for(
        lambda: (r := finished_runs(store, "portal")) and len(r) >= 3 and r,
        what="three backfill runs",
    )
    assert sorted(r["kind"] for r in runs) == ["backfill"] * 3
    assert all(r["status"] == "success" for r in runs)
    assert store.count_observations() == 6
    assert store.cursor("portal")[0] is None  # backfills leave the scheduled cursor alone
