"""5. ga4_backfill — two years of GA4 daily page views for 2,000 page paths, end to end.

The local GA4 fake (`connectors/ga4/tests/fake_ga4.py`: service-account token endpoint and
`runReport` with limit/offset paging) serves on loopback in this process; the backfill runs as
its own process, exactly as an operator would: `dxkpi --config X backfill SOURCE --since ...`
(windows split by the runner, each one through `collect_source` into PostgreSQL). About 1.46M
observations. A one-day backfill through the same command is the baseline for memory (what
the process needs before any volume).

Figures: backfill obs/s (from the first window's start to the last one's finish, as recorded in
`collection_runs`: process start-up excluded) / `Store.write` obs/s from `ingest` in this run
(target >= 0.5); the backfill process's peak RSS (VmHWM, polled) / 500 MB (target
<= 1). Without `ingest` in the run, a smaller Store.write measurement is made here instead.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import suppress
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import ingest
from bench.harness import (
    Bench,
    NotRun,
    Outcome,
    child_env,
    dxkpi_command,
    fmt,
    per_second,
    proc_status_kib,
    tail,
    write_config,
)
from dxkpi.collector.contract import TOKYO
from dxkpi.collector.storage import Store
from dxkpi.collector.testing import loopback_server

FULL_PATHS = 2_000
DAYS = 730
SINCE = date(2023, 11, 1)
TARGET_PEAK_BYTES = 500_000_000
MB = 1_000_000
SOURCE = "ga4_bench"
KEY_ENV = "DXKPI_BENCH_GA4_KEY"


def backfill(config: Path, since: date, days: int, key: str, log: Path) -> dict[str, Any]:
    """Run `dxkpi backfill` as a child; its wall time and peak RSS (VmHWM)."""
    until = since + timedelta(days=days)
    command = dxkpi_command(
        config, "backfill", SOURCE, "--since", since.isoformat(), "--until", until.isoformat()
    )
    started = time.perf_counter()
    peak_kib = 0
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=child_env(**{KEY_ENV: key})
        )
    # VmHWM only grows, so its last reading before the exit is the peak (to within a poll).
    # Not rusage: Linux counts a vfork()ed child's parent memory into the child's ru_maxrss.
    while process.poll() is None:
        with suppress(OSError, RuntimeError):  # exiting: /proc has no more memory lines
            peak_kib = max(peak_kib, proc_status_kib(process.pid, "VmHWM"))
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"backfill exited with {process.returncode}:\n{tail(log)}")
    return {"seconds": seconds, "peak_rss_bytes": peak_kib * 1024}


def store_write_rate(bench: Bench) -> float:
    """Store.write obs/s: from `ingest` in this run, else measured here on a smaller set."""
    rate = bench.shared.get("store_write_obs_per_s")
    if rate is not None:
        return rate
    with bench.database.schema("ga4_store_baseline") as url:
        result = ingest.store_ingest(url, bench.size(ingest.FULL_SERIES, 10), 20, 5_000)
    rate = float(result["first"]["obs_per_s"])
    bench.shared["store_write_obs_per_s"] = rate
    return rate


def run(bench: Bench) -> Outcome:
    try:
        from dxkpi.collector.registry import load_connector
        from dxkpi.connectors.ga4.tests.fake_ga4 import PROPERTY_ID, FakeGa4, key_file, new_key

        load_connector("ga4")
    except Exception as exc:
        raise NotRun(f"the GA4 connector or its fake is not available ({exc!r})") from None
    outcome = Outcome("ga4_backfill")
    n_paths = bench.size(FULL_PATHS, minimum=2)
    days = DAYS if bench.scale >= 0.05 else 62
    rate = store_write_rate(bench)
    folder = bench.dir("ga4")
    key = new_key()
    fake = FakeGa4(public_key=key.public_key(), paths=[f"/pages/{i:05d}/" for i in range(n_paths)])
    since_ts = datetime(SINCE.year, SINCE.month, SINCE.day, tzinfo=TOKYO).timestamp()
    with bench.database.schema("ga4") as url, loopback_server(fake) as (base_url, requests):
        fake.token_uri = f"{base_url}/token"
        config = write_config(
            folder / "ga4.yaml",
            {
                "data_dir": str(folder),
                "storage": {"url": url},
                "sources": [
                    {
                        "id": SOURCE,
                        "connector": "ga4",
                        "settings": {
                            "property_id": PROPERTY_ID,
                            "service_account_json": "${" + KEY_ENV + "}",
                            "by_page_path": True,
                            "api_base_url": base_url,
                            "token_uri": fake.token_uri,
                        },
                    }
                ],
            },
        )
        store = Store(url)
        try:
            store.migrate()
            key_text = key_file(key, fake.token_uri)
            # The baseline's day is outside the measured range: it stores nothing that counts.
            baseline = backfill(config, SINCE - timedelta(days=1), 1, key_text, folder / "b.log")
            before = store.count_observations()
            measured = backfill(config, SINCE, days, key_text, folder / "ga4.log")
            stored = store.count_observations() - before
            requests_made = len(requests)
            runs = [r for r in store.runs(SOURCE, limit=100_000) if r["window_start"] >= since_ts]
        finally:
            store.close()
    expected = days * (n_paths + 1)  # per day: one total of active users + each page's views
    if stored != expected:
        raise AssertionError(f"the backfill stored {stored} observations, expected {expected}")

    # From the first window's start to the last one's finish, as the runs table records them:
    # the process's start-up (imports, config) is not part of the rate.
    working = max(r["finished_at"] for r in runs) - min(r["started_at"] for r in runs)
    backfill_rate = per_second(stored, working)
    outcome.ratio(
        "backfill obs/s / Store.write obs/s",
        backfill_rate / rate,
        f"{fmt(backfill_rate, 'obs/s')} ({stored:,} obs, {len(runs)} windows in {working:.1f}s; "
        f"the process took {measured['seconds']:.1f}s) vs {fmt(rate, 'obs/s')}",
        target=0.5,
    )
    peak = measured["peak_rss_bytes"]
    outcome.ratio(
        "backfill peak RSS / 500 MB",
        peak / TARGET_PEAK_BYTES,
        f"{peak / MB:.0f} MB (a one-day backfill peaks at "
        f"{baseline['peak_rss_bytes'] / MB:.0f} MB)",
        target=1.0,
        comparison="<=",
    )
    outcome.raw.update(
        page_paths=n_paths,
        days=days,
        observations=stored,
        http_requests=requests_made,
        store_write_obs_per_s=round(rate),
        backfill={k: round(v, 3) for k, v in measured.items()},
        windows=len(runs),
        windows_seconds=round(working, 3),
        one_day_baseline={k: round(v, 3) for k, v in baseline.items()},
    )
    return outcome
