"""Leases and runs that heal: a run whose process died shows as abandoned once its lease expires,
the source's next run closes it, and a task's retry takes over the lease its own earlier
attempt left behind. With real processes killed by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from dxkpi.collector import runner
from dxkpi.collector.config import load_config
from dxkpi.collector.runtime import resolve, set_current
from dxkpi.collector.storage import Store
from tests.conftest import write_config
from tests.tcp_proxy import TcpProxy


def plan(cursor_end: float | None, checkpoint: str | None) -> tuple[float, float]:
    return 0.0, 1.0


def test_a_dead_holders_run_is_abandoned_and_the_next_run_closes_it(store: Store) -> None:
    ok = store.start_run("src", "scheduled", 0, 1)
    store.finish_run(ok, "success", 3)
    dead = store.start_leased_run("src", "scheduled", "worker-a", 60, plan)
    assert dead is not None
    [health] = store.source_health()
    assert health.last_status == "success", "its holder may still be working: not abandoned yet"
    assert health.runs_by_status == {"success": 1, "running": 1}
    store.acquire_lease("src", "worker-a", -1)  # what an unrenewed lease becomes
    [health] = store.source_health()
    assert health.last_status == "abandoned"
    assert (
        health.last_error is not None and "abandoned: the process running it" in health.last_error
    )
    assert health.runs_by_status == {"success": 1, "running": 0, "abandoned": 1}
    taken = store.start_leased_run("src", "scheduled", "worker-b", 60, plan)
    assert taken is not None
    statuses = {run["id"]: run["status"] for run in store.runs("src")}
    assert statuses == {ok: "success", dead: "abandoned", taken: "running"}
    store.finish_run(taken, "success", 1, release_lease_of="worker-b")
    [health] = store.source_health()
    assert health.last_status == "success"
    assert health.runs_by_status == {"success": 2, "abandoned": 1}


CHILD = """
import sys, time
from dxkpi.collector.runner import LeaseHeartbeat
from dxkpi.collector.storage import Store

store = Store(sys.argv[1])
run = store.start_leased_run("src", "scheduled", "child", 2.0, lambda c, k: (0.0, 1.0))
LeaseHeartbeat(store, "src", "child", 2.0, 0.5)
print(run, flush=True)
time.sleep(600)
"""


def test_a_killed_worker_frees_its_source_within_its_lease(store: Store, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen(
        [sys.executable, str(script), store.url], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        run_id = int(child.stdout.readline())
        time.sleep(3.0)  # longer than the lease: only the heartbeat keeps it
        assert store.source_health()[0].last_status is None, "alive: still running"
        assert store.start_leased_run("src", "scheduled", "other", 60, plan) is None
        os.kill(child.pid, signal.SIGKILL)
        killed = time.monotonic()
        while store.source_health()[0].last_status != "abandoned":
            assert time.monotonic() - killed < 5.0, "not shown abandoned within the lease"
            time.sleep(0.1)
        recovered = time.monotonic() - killed
        print(f"kill -9 with a 2 s lease: shown abandoned after {recovered:.2f} s")
        taken = store.start_leased_run("src", "scheduled", "other", 60, plan)
        assert taken is not None and taken != run_id
        assert {r["id"]: r["status"] for r in store.runs("src")}[run_id] == "abandoned"
        assert recovered < 2.5
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_retry_takes_over_the_lease_its_own_attempt_left(tmp_path: Path) -> None:
    from dxkpi.tasks.collect import collect

    config = write_config(tmp_path)
    runtime = resolve(config, tmp_path / "data-dir")
    runtime.storage_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    runtime.store.migrate()
    set_current(runtime)
    try:
        # The first attempt took the lease, then lost the database before it could record its
        # end: the lease and a `running` run are left behind.
        first = runtime.store.start_leased_run("portal", "scheduled", "task:t-1", 600, plan)
        result = collect.apply(args=("portal",), task_id="t-1").get()
        assert result["status"] == "success", "the retry must not skip behind its own lease"
        assert {r["id"]: r["status"] for r in runtime.store.runs("portal")}[first] == "abandoned"
        other = collect.apply(args=("portal",), task_id="t-2").get()
        assert other["status"] == "success", "the lease was released at the end"
    finally:
        set_current(None)
        runtime.store.close()


def test_a_failed_run_is_recorded_once_the_database_is_back(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away mid-run and is back a second later: the run's failure is still
    recorded (not left `running`), and the lease is released for the retry."""
    url = make_url(pg_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    store = Store(url.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    store.migrate()
    loaded = load_config(write_config(tmp_path))
    monkeypatch.setattr(runner, "WRITE_BATCH", 2)  # several batches from six rows

    def restart_database(_stats: object) -> None:
        proxy.stop()
        threading.Timer(1.0, proxy.start).start()

    try:
        with pytest.raises(OperationalError):
            runner.collect_source(loaded, store, "portal", on_batch=restart_database)
        [run] = store.runs("portal")
        assert run["status"] == "failed" and run["error_class"] == "OperationalError"
        assert store.acquire_lease("portal", "the-retry", 60), "the lease was released"
    finally:
        proxy.stop()
        store.close()
