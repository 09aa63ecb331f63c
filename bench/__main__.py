"""Run the benchmarks: `.venv/bin/python -m bench [--scale 0.1] [--only NAME ...] [--profile]`.

Prints one table of ratios (each against a baseline measured in this same run) and writes every
raw number to bench/results/latest.json. Exit status 1 if a benchmark broke (an error, not a
missed target: misses are findings, reported in the table).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import Bench, Database, NotRun, Outcome

# Run in this order: ga4_backfill divides by the Store.write rate that ingest measures.
BENCHMARKS = (
    "ingest",
    "render",
    "scrape",
    "rss",
    "ga4_backfill",
    "fanout",
    "orgs",
    "receiver",
    "files",
)
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "latest.json"


def run_one(name: str, bench: Bench) -> Outcome:
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        outcome: Outcome = module.run(bench)
    except NotRun as exc:
        outcome = Outcome(name, status=f"not run: {exc}")
    except Exception as exc:
        outcome = Outcome(name, status=f"error: {type(exc).__name__}: {exc}")
        outcome.notes.extend(traceback.format_exc().splitlines()[-12:])
    outcome.seconds = time.perf_counter() - started
    return outcome


def table(outcomes: list[Outcome]) -> str:
    header = ("benchmark", "figure", "ratio", "target", "met", "measured in this run")
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        if outcome.status != "ok":
            # The first line only: an error's details are in the notes below the table.
            rows.append((outcome.name, outcome.status.splitlines()[0][:160]))
            continue
        for ratio in outcome.ratios:
            met = {True: "yes", False: "MISS", None: ""}[ratio.met]
            value = f"{ratio.value:.3g}"
            rows.append((outcome.name, ratio.name, value, ratio.target_text, met, ratio.detail))
    full = [header, *(row for row in rows if len(row) == len(header))]
    widths = [max(len(row[i]) for row in full) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...]) -> str:
        if len(row) != len(header):
            return f"{row[0].ljust(widths[0])}  {row[1]}"
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        return "  ".join([*cells, row[-1]]).rstrip()

    lines = [line(header), "-" * len(line(header)), *(line(row) for row in rows)]
    for outcome in outcomes:
        for note in outcome.notes:
            lines.append(f"[{outcome.name}] {note}")
        lines.append(f"[{outcome.name}] took {outcome.seconds:.1f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="size factor (1 = full; 0.1 = quick smoke run)"
    )
    parser.add_argument(
        "--only", action="append", choices=BENCHMARKS, help="run just this one (repeatable)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile: cProfile of the store ingest, py-spy of the fanout worker "
        "(profiles are written next to the results file)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    names = [n for n in BENCHMARKS if not args.only or n in args.only]

    database = Database()
    started = datetime.now(UTC)
    outcomes: list[Outcome] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dxkpi-bench-") as workdir:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            bench = Bench(
                args.scale, database, Path(workdir), args.output.parent, profile=args.profile
            )
            for name in names:
                print(f"running {name} (scale {args.scale:g})…", file=sys.stderr, flush=True)
                outcomes.append(run_one(name, bench))
            machine: dict[str, Any] = {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "postgresql": database.server_version(),
                "platform": platform.platform(),
            }
    finally:
        database.drop()

    print(table(outcomes))
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "scale": args.scale,
        "machine": machine,
        "shared": bench.shared,
        "benchmarks": {o.name: o.as_json() for o in outcomes},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"results written to {args.output}", file=sys.stderr)
    return 1 if any(o.status.startswith("error") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
