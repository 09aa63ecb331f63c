"""Clean start, clean stop (issue 9, item 7), with real processes of `dxkpi`.

Every process says a start-up problem in one line and exits non-zero; every process stops
promptly on SIGTERM and on SIGINT, also when a script's `&` started it with SIGINT ignored; a
worker in the middle of a collection against a slow API stops within its --stop-timeout.
The bounds below (15 s) are hang guards, not measurements.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dxkpi.collector.testing import FakeRequest, FakeResponse, loopback_server
from tests.conftest import write_config
from tests.test_celery_e2e import wait_for

pytestmark = pytest.mark.slow

CANARY = "pw-start-9f3c1a"
STOPS_WITHIN = 15.0


def dxkpi_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXKPI_")}
    env["DXKPI_DATA_DIR"] = str(tmp_path / "not" / "yet" / "made")
    return {**env, **extra}


def command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dxkpi.collector", "--config", str(config), *args]


def run_to_exit(config: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    done = subprocess.run(
        command(config, *args), env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout + done.stderr


PROCESSES = {
    "run": ("run", "--listen", "127.0.0.1:0"),
    "worker": ("worker",),
    "beat": ("beat",),
    "exporter": ("exporter", "--listen", "127.0.0.1:0"),
    "receiver": ("receiver", "--listen", "127.0.0.1:0"),
    "migrate": ("migrate",),
    "status": ("status",),
}


@pytest.mark.parametrize("name", list(PROCESSES))
def test_a_wrong_database_url_is_one_line_and_a_non_zero_exit(
    name: str, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    config = write_config(tmp_path)
    wrong = pg_url.replace("root@", f"nosuch:{CANARY}@")
    env = dxkpi_env(tmp_path, DXKPI_STORAGE_URL=wrong, DXKPI_BROKER_URL=redis_url)
    code, output = run_to_exit(config, env, *PROCESSES[name])
    assert code == 1, output
    assert "Traceback" not in output and CANARY not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and 'role "nosuch" does not exist' in errors[0], output
    # `run` first says which config, data dir, store and broker it uses; the rest say one line.
    assert len(output.splitlines()) == (5 if name == "run" else 1), output


@pytest.mark.parametrize("name", ["run", "worker", "beat"])
def test_an_unknown_broker_scheme_is_one_line(name: str, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = dxkpi_env(tmp_path, DXKPI_BROKER_URL="foo://127.0.0.1:6379/5")
    code, output = run_to_exit(config, env, *PROCESSES[name])
    assert code == 1
    assert output == (
        "error: the broker URL's scheme 'foo' is unknown: use redis:// or rediss:// "
        "(DXKPI_BROKER_URL or broker.url)\n"
    )


class Process:
    """A `dxkpi` process started as a script's `cmd &` starts it (SIGINT ignored, if asked)."""

    def __init__(
        self, config: Path, env: dict[str, str], log: Path, *args: str, ignore_sigint: bool
    ) -> None:
        self.log = log
        restore: Callable[[], Any] | None = (
            (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        )
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command(config, *args),
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=restore,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, words: str) -> None:
        wait_for(
            lambda: words in self.text() or self.process.poll() is not None,
            what=f"{words!r} in the log",
        )
        assert self.process.poll() is None, self.text()

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOPS_WITHIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {STOPS_WITHIN:.0f} s after {signal.Signals(signum).name}:\n"
                + self.text()[-3000:]
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A migrated SQLite store in a data directory, a Redis queue of its own."""
    config = write_config(tmp_path)
    env = dxkpi_env(
        tmp_path, DXKPI_BROKER_URL=redis_url, DXKPI_QUEUE=f"dxkpi-test-{uuid.uuid4().hex[:8]}"
    )
    code, output = run_to_exit(config, env, "migrate")
    assert code == 0, output
    yield config, env


READY = {
    "worker": "ready.",
    "beat": "beat: Starting",
    "exporter": "serving http",
    "receiver": "receiving on",
    "run": "serving http",
}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("name", list(READY))
def test_every_process_stops_promptly_whatever_the_parent_shell_did(
    name: str, signum: int, deployment: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, env = deployment
    process = Process(config, env, tmp_path / "p.log", *PROCESSES[name], ignore_sigint=True)
    try:
        process.wait_for(READY[name])
        code = process.stop(signum)
        assert code == 0, process.text()[-3000:]
        assert "Traceback" not in process.text()
    finally:
        process.kill()


def test_beat_makes_its_data_directory_and_keys_its_state_by_deployment(
    deployment: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    config, env = deployment
    data_dir = Path(env["DXKPI_DATA_DIR"])
    fresh = data_dir / "beat" / "first-start"
    process = Process(
        config,
        {**env, "DXKPI_DATA_DIR": str(fresh)},
        tmp_path / "b.log",
        "beat",
        ignore_sigint=False,
    )
    try:
        process.wait_for(READY["beat"])
        states = wait_for(lambda: list(fresh.glob("celerybeat-schedule*")), what="beat state")
        assert all(s.name.startswith(f"celerybeat-schedule-{env['DXKPI_QUEUE']}-") for s in states)
        assert process.stop(signal.SIGTERM) == 0
    finally:
        process.kill()


def test_two_deployments_sharing_a_data_directory_keep_their_own_beat_state(
    tmp_path: Path,
) -> None:
    from dxkpi.collector.runtime import resolve
    from dxkpi.tasks.app import create_app

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_config(tmp_path / "a")
    second = write_config(tmp_path / "b")
    shared = tmp_path / "shared"
    files = {
        create_app(resolve(config, shared)).conf.beat_schedule_filename
        for config in (first, second)
    }
    assert len(files) == 2 and all(Path(f).parent == shared for f in files)


def test_an_exporter_on_a_store_without_tables_is_unhealthy_until_migrated(
    tmp_path: Path, redis_url: str
) -> None:
    import urllib.error
    import urllib.request

    config = write_config(tmp_path)
    env = dxkpi_env(tmp_path, DXKPI_BROKER_URL=redis_url)
    exporter = Process(
        config,
        env,
        tmp_path / "e.log",
        "exporter",
        "--listen",
        "127.0.0.1:0",
        ignore_sigint=False,
    )

    def status(base: str, path: str) -> int:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as refused:
            return int(refused.code)

    try:
        exporter.wait_for(READY["exporter"])
        found = re.search(r"serving (http://\S+)/metrics", exporter.text())
        assert found, exporter.text()
        base = found.group(1)
        assert status(base, "/healthz") == 503
        assert status(base, "/metrics") == 503
        code, output = run_to_exit(config, env, "migrate")
        assert code == 0, output
        wait_for(lambda: status(base, "/healthz") == 200, what="healthy after migrate")
        assert exporter.stop(signal.SIGTERM) == 0
    finally:
        exporter.kill()


SLOW_SOURCE = """
  - id: slow
    connector: plausible
    schedule: {{every: 1h}}
    start: 2024-04-01
    settings:
      site_id: www.pref.example.jp
      api_key: ${{SLOW_API_KEY}}
      base_url: {url}
"""


def test_a_worker_mid_collection_against_a_slow_api_stops_within_its_stop_timeout(
    tmp_path: Path, redis_url: str
) -> None:
    """Celery's warm shutdown waits for running tasks however long they take; the worker gives
    them --stop-timeout seconds (here 2) and then exits."""
    from celery import Celery

    release = threading.Event()
    asked = threading.Event()

    def slow_api(request: FakeRequest) -> FakeResponse:
        asked.set()
        release.wait(120)  # longer than the client's 30 s timeout: the collection is stuck here
        return FakeResponse(503, "still busy")

    queue = f"dxkpi-test-{uuid.uuid4().hex[:8]}"
    with loopback_server(slow_api) as (url, _):
        config = write_config(tmp_path)
        config.write_text(
            config.read_text().replace(
                "sources:\n", "sources:\n" + SLOW_SOURCE.format(url=url).lstrip("\n"), 1
            ),
            encoding="utf-8",
        )
        env = dxkpi_env(
            tmp_path, DXKPI_BROKER_URL=redis_url, DXKPI_QUEUE=queue, SLOW_API_KEY="k-slow-api"
        )
        code, output = run_to_exit(config, env, "migrate")
        assert code == 0, output
        worker = Process(
            config, env, tmp_path / "w.log", "worker", "--stop-timeout", "2", ignore_sigint=True
        )
        client = Celery(broker=redis_url)
        try:
            worker.wait_for(READY["worker"])
            client.send_task("dxkpi.collect", args=("slow",), queue=queue)
            assert asked.wait(60), worker.text()
            worker.process.send_signal(signal.SIGTERM)
            try:
                code = worker.process.wait(timeout=STOPS_WITHIN)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    "the worker ignored SIGTERM mid-collection:\n" + worker.text()[-3000:]
                ) from None
            assert code == 1
            assert "collections still running 2s after the stop signal" in worker.text()
            # The task went back to the queue (rejected with requeue), not only after Redis'
            # visibility timeout.
            import redis

            assert redis.Redis.from_url(redis_url).llen(queue) == 1, worker.text()[-3000:]
        finally:
            release.set()
            worker.kill()
            client.close()
