"""Faults to a single process. The faults to a whole deployment (Redis, PostgreSQL, workers,
beats, the vendor, the exporter's clients) are in tests/test_fault_suite.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.test_celery_e2e import wait_for

pytestmark = pytest.mark.slow


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
