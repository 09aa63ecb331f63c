"""4. rss — the exporter's resident memory at 100k series.

`dxkpi --config X exporter` runs as its own process against a PostgreSQL store holding 100k
series (written through `Store.write`, one day each); after one full scrape its VmRSS (and peak,
VmHWM) is read from /proc/<pid>/status. The metric is declared summable, so each series exports
three samples (latest, fiscal year to date, month to date). The same exporter over an empty
store, started in the same run, is the baseline. Target: VmRSS <= 200 MB (10^6 bytes). Below
--scale 1 the 100k figure is projected from the measured per-series cost, and that projection
is held to the target.
"""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path
from typing import Any

from bench.harness import (
    Bench,
    Outcome,
    child_env,
    dxkpi_command,
    free_port,
    proc_status_kib,
    stop_process,
    tail,
    wait_for,
    write_config,
)
from bench.workload import csv_source, page_views
from dxkpi.collector.storage import Store

FULL_SERIES = 100_000
TARGET_BYTES = 200_000_000
MB = 1_000_000
SOURCE = "bench"


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def reachable(port: int) -> bool:
    try:
        return get(port, "/metrics")[0] == 200
    except OSError:
        return False


def exporter_memory(config: Path, log: Path) -> dict[str, Any]:
    """Start the exporter, wait for its first snapshot, scrape once, read its memory."""
    port = free_port()
    command = dxkpi_command(config, "exporter", "--listen", f"127.0.0.1:{port}")
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())
    try:
        try:
            wait_for(lambda: reachable(port), 300, "exporter", process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{tail(log)}") from None
        status, body = get(port, "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics -> {status}")
        return {
            "vm_rss_bytes": proc_status_kib(process.pid, "VmRSS") * 1024,
            "vm_hwm_bytes": proc_status_kib(process.pid, "VmHWM") * 1024,
            "body_bytes": len(body),
            "samples": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        }
    finally:
        stop_process(process)


def run(bench: Bench) -> Outcome:
    outcome = Outcome("rss")
    n_series = bench.size(FULL_SERIES, minimum=100)
    folder = bench.dir("rss")
    measured: dict[str, dict[str, Any]] = {}
    for name, count in (("empty", 0), ("full", n_series)):
        with bench.database.schema(f"rss_{name}") as url:
            store = Store(url)
            try:
                store.migrate()
                if count:
                    store.write(SOURCE, page_views(count, 1), batch_size=20_000)
            finally:
                store.close()
            config = write_config(
                folder / f"{name}.yaml",
                {"data_dir": str(folder), "storage": {"url": url}, "sources": [csv_source(SOURCE)]},
            )
            measured[name] = exporter_memory(config, folder / f"{name}.log")

    empty, full = measured["empty"]["vm_rss_bytes"], measured["full"]["vm_rss_bytes"]
    # At tiny scales the difference is noise and can come out negative (the full exporter may
    # have returned more freed heap than the empty one): a series never costs less than nothing.
    per_series = max(0.0, (full - empty) / n_series)
    label = f"{n_series // 1000}k series" if n_series >= 1000 else f"{n_series} series"
    if n_series == FULL_SERIES:
        outcome.ratio(
            "exporter VmRSS / 200 MB, 100k series",
            full / TARGET_BYTES,
            f"{full / MB:.0f} MB (peak {measured['full']['vm_hwm_bytes'] / MB:.0f} MB)",
            target=1.0,
            comparison="<=",
        )
    else:
        projected = empty + per_series * FULL_SERIES
        outcome.ratio(
            "projected VmRSS at 100k / 200 MB",
            projected / TARGET_BYTES,
            f"{projected / MB:.0f} MB projected from {full / MB:.0f} MB at {label}",
            target=1.0,
            comparison="<=",
        )
    outcome.ratio(
        f"VmRSS {label} / empty store",
        full / empty,
        f"{full / MB:.0f} MB vs {empty / MB:.0f} MB; {per_series:,.0f} bytes per series "
        f"({measured['full']['samples']:,} samples exported)",
    )
    outcome.raw.update(series=n_series, bytes_per_series=round(per_series), **measured)
    return outcome
