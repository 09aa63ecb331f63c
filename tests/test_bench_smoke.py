"""The benchmark suite at a tiny scale, end to end, so that it cannot rot.

It checks that every benchmark runs (or says why it cannot) and reports finite ratios, never
whether a target is met: at this scale the figures mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench.__main__ import BENCHMARKS
from tests.conftest import PG_ADMIN_URL, unavailable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_runs_at_a_tiny_scale(tmp_path: Path) -> None:
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    output = tmp_path / "latest.json"
    env_pg = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    finished = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "0.001", "--output", str(output)],
        cwd=ROOT,
        env={**os.environ, "DXKPI_BENCH_PG": env_pg},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    results = json.loads(output.read_text())
    assert set(results["benchmarks"]) == set(BENCHMARKS)
    for name, outcome in results["benchmarks"].items():
        status = outcome["status"]
        assert status == "ok" or status.startswith("not run: "), f"{name}: {status}"
        if status == "ok":
            assert outcome["ratios"], f"{name} reported no figure"
            for ratio in outcome["ratios"]:
                assert math.isfinite(ratio["value"]) and ratio["value"] > 0, (name, ratio)
        assert name in finished.stdout  # each one has its line in the table
