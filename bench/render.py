"""2. render — the `/metrics` body at 10k and 100k series, three ways over the same samples.

- ours: `collector.exposition.render` over the families `SnapshotBuilder.raw_families` builds
  from `SeriesRow`s (the exporter's own code; its label cache warm, as after the first build);
- prometheus-client's plain Gauge path: one labelled `Gauge`, `.labels(...).set(v)` per series,
  then only `generate_latest(registry)` is timed;
- a bare `b"".join` of the same lines, pre-formatted: the floor for producing those bytes.

Each is the fastest of several runs (the least disturbed on a shared machine). Targets:
Gauge / ours >= 20 (ours 20× faster); ours / byte-join <= 2.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from bench.harness import Bench, Outcome, best_time, fmt_ms, timed
from bench.workload import METRIC, page_path, value
from collector.config import Config, LoadedConfig
from collector.exporter import SnapshotBuilder
from collector.exposition import Family, escape_help, render
from collector.storage import SeriesRow, Store, labels_key

SIZES = (10_000, 100_000)
SOURCE = "bench"


def series_rows(count: int) -> list[SeriesRow]:
    return [
        SeriesRow(
            id=i + 1,
            source=SOURCE,
            metric=METRIC,
            labels_json=labels_key({"page_path": page_path(i)}),
            last_start=1_700_000_000,
            last_value=value(i, 0),
        )
        for i in range(count)
    ]


def build_families(rows: list[SeriesRow]) -> tuple[list[Family], float]:
    """The exporter's families for `rows`, and how long a warm rebuild of them takes."""
    # An empty store: the builder asks it for period sums, which only summable metrics declared
    # by a source get (none here), so each series is one sample: its latest value.
    store = Store("sqlite://")
    store.migrate()
    builder = SnapshotBuilder(store, LoadedConfig(config=Config(), path=Path("bench.yaml")))
    now = time.time()
    families = builder.raw_families(rows, now)  # fills the label cache, as a first build does
    warm = timed(lambda: builder.raw_families(rows, now))
    store.close()
    return families, warm


def gauge_registry(families: list[Family], rows: list[SeriesRow]) -> CollectorRegistry:
    (family,) = families
    registry = CollectorRegistry()
    gauge = Gauge(family.name, family.help, ["page_path", "source"], registry=registry)
    for row in rows:
        assert row.last_value is not None
        gauge.labels(page_path=row.labels["page_path"], source=row.source).set(row.last_value)
    return registry


def preformatted_lines(families: list[Family]) -> list[bytes]:
    """The body's lines, each already encoded: what a byte join needs and nothing more."""
    lines: list[bytes] = []
    for family in families:
        help_text = escape_help(family.help)
        lines.append(f"# HELP {family.name} {help_text}\n# TYPE {family.name} gauge\n".encode())
        lines.extend(f"{family.name}{part} {value}\n".encode() for part, value in family.samples)
    return lines


def sample_lines(body: bytes) -> set[bytes]:
    return {line for line in body.splitlines() if line and not line.startswith(b"#")}


def measure(outcome: Outcome, count: int) -> None:
    repeats = 3 if count >= 50_000 else 15
    rows = series_rows(count)
    families, build_seconds = build_families(rows)
    registry = gauge_registry(families, rows)
    lines = preformatted_lines(families)

    ours_body = render(families)
    gauge_body = generate_latest(registry)
    # Same samples three ways, or the comparison means nothing.
    if ours_body != b"".join(lines):
        raise AssertionError("render() and the byte-join disagree")
    if sample_lines(ours_body) != sample_lines(gauge_body):
        raise AssertionError("render() and generate_latest() expose different samples")

    ours = best_time(lambda: render(families), repeats)
    gauge = best_time(lambda: generate_latest(registry), repeats)
    join = best_time(lambda: b"".join(lines), repeats * 3)
    label = f"{count // 1000}k series" if count >= 1000 else f"{count} series"
    outcome.ratio(
        f"Gauge / ours, {label}",
        gauge / ours,
        f"generate_latest {fmt_ms(gauge)} vs render {fmt_ms(ours)}",
        target=20,
    )
    outcome.ratio(
        f"ours / byte-join, {label}",
        ours / join,
        f"render {fmt_ms(ours)} vs b''.join {fmt_ms(join)}",
        target=2,
        comparison="<=",
    )
    outcome.raw[str(count)] = {
        "series": count,
        "body_bytes": len(ours_body),
        "render_seconds": round(ours, 6),
        "generate_latest_seconds": round(gauge, 6),
        "byte_join_seconds": round(join, 6),
        "raw_families_warm_seconds": round(build_seconds, 6),
        "repeats": repeats,
    }


def run(bench: Bench) -> Outcome:
    outcome = Outcome("render")
    for full in SIZES:
        measure(outcome, bench.size(full, minimum=full // 100))
    return outcome
