"""8. orgs — one beat cycle over 60 organisations × 8 sources, and the read side at that size.

Each organisation has 8 Plausible sources (`connectors/plausible`), with its own API key in its
own `${ENV}` variable, all pointed at the Plausible fake (`connectors/plausible/tests/
fake_plausible.py`) on loopback, wrapped so each API request answers after 200 ms (a run is one
request). The config is generated source by source (480 entries, each with its `org`), with one
KPI per organisation (its first site's page views over the fiscal year).

- Cycle. Baseline: serial, `collect_source` one source after another in this process (as `dxkpi
  collect` runs them, logging nothing), on a sample of the sources in a schema of its own; the
  serial cycle is the sample's time × sources / sample (a full serial cycle at full size lasts
  about two minutes). Measured: a real worker as the README recommends (`dxkpi worker --pool
  threads --concurrency 32 --processes <cores>`, default log level, default
  `DXKPI_ORG_CONCURRENCY`), over Redis and a PostgreSQL store, given one beat cycle: every
  `dxkpi.collect` entry of `dxkpi.tasks.schedule.beat_schedule(config)` sent with its options, in
  the schedule's order, once every worker process answers a ping and a warm-up task has run; wall
  time from the first send to the last run's `finished_at`. Target: serial / Celery >= 10.
  Starvation: `collection_runs` must hold exactly one scheduled run per source, successful.
  The worker's log gives the runs deferred by the per-organisation limit and the KPI history
  refreshes the cycle caused (counted once the refresh delay has passed).
- Read side. The exporter (a snapshot rebuild, then `GET /metrics` over loopback) and `dxkpi
  status` (in this process, through click, config loading included) over the store the cycle
  filled, against the same over the shipped example (6 sources, 11 KPIs) collected into a
  schema of its own. Ratios: 480-source figure / example figure.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from contextlib import ExitStack, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.fanout import (
    CONCURRENCY,
    PROCESSES,
    clear_queue,
    environment,
    redis_broker,
    tree_cpu_seconds,
    wait_nodes,
    wait_runs,
)
from bench.harness import (
    Bench,
    NotRun,
    Outcome,
    best_time,
    child_env,
    collapsed_profile,
    dxkpi_command,
    fmt_ms,
    py_spy,
    stop_process,
    tail,
    write_config,
)
from dxkpi.collector.config import LoadedConfig, load_config
from dxkpi.collector.contract import Window
from dxkpi.collector.runner import collect_source
from dxkpi.collector.storage import Store
from dxkpi.collector.testing import FakeRequest, FakeResponse, Handler, loopback_server

FULL_ORGS = 60
SOURCES_PER_ORG = 8
FULL_SERIAL_SAMPLE = 96
DELAY_SECONDS = 0.2
WARMUP = "warmup_site"
# The organisation whose API hangs in the second cycle: the prefecture itself, with many sources.
HANGING_ORG = "pref"
FULL_HANGING_SOURCES = 40
EXAMPLE = Path(__file__).resolve().parent.parent / "collector" / "example"


def slow(handler: Handler, delay: float) -> Handler:
    def answer(request: FakeRequest) -> FakeResponse:
        time.sleep(delay)
        return handler(request)

    return answer


def org_id(i: int) -> str:
    return f"m{i:02d}"


def key_env(org: str) -> str:
    return f"DXKPI_BENCH_{org.upper()}_PLAUSIBLE_KEY"


def org_key(org: str) -> str:
    return f"pl-bench-key-of-{org}-0123456789"


def site(source_id: str, org: str, base_url: str, site_id: str) -> dict[str, Any]:
    return {
        "id": source_id,
        "org": org,
        "connector": "plausible",
        "schedule": {"every": "1h"},
        "lookback": "3d",
        "settings": {
            "site_id": site_id,
            "api_key": "${" + key_env(org) + "}",
            "base_url": base_url,
            "requests_per_hour": 100_000,
        },
    }


def org_kpi(org: str, source_id: str) -> dict[str, Any]:
    return {
        "id": f"{org}_page_views",
        "org": org,
        "name_ja": f"{org} のページビュー数",
        "name_en": f"Page views of {org}",
        "area": "bench",
        "unit": "views",
        "baseline": {"value": 10_000, "fiscal_year": "R6"},
        "target": {"value": 20_000, "fiscal_year": "R8"},
        "feed": {"kind": "fiscal_year_sum", "metric": "plausible_page_views", "source": source_id},
    }


def orgs_config(
    path: Path,
    url: str,
    broker: str,
    base_url: str,
    site_id: str,
    orgs: list[str],
    hanging: tuple[str, int] | None = None,
) -> Path:
    """The organisations' sources and KPIs; with `hanging` (its API's URL, how many sources),
    also the sources of the organisation `HANGING_ORG`, whose API hangs."""
    sources = [site(WARMUP, "warmup", base_url, site_id)]
    kpis = []
    for org in orgs:
        ids = [f"{org}_site_{n}" for n in range(1, SOURCES_PER_ORG + 1)]
        sources += [site(s, org, base_url, site_id) for s in ids]
        kpis.append(org_kpi(org, ids[0]))
    if hanging is not None:
        hanging_url, count = hanging
        sources += [
            site(f"{HANGING_ORG}_site_{n}", HANGING_ORG, hanging_url, site_id)
            for n in range(1, count + 1)
        ]
    ids = ["warmup", *orgs] + ([HANGING_ORG] if hanging is not None else [])
    config = {
        "data_dir": str(path.parent),
        "storage": {"url": url},
        "broker": {"url": broker},
        "organisations": [
            {"id": o, "name_ja": o, "name_en": o, "kind": "municipality"} for o in ids
        ],
        "sources": sources,
        "kpis": kpis,
    }
    return write_config(path, config)


def runs_per_source(store: Store, sources: list[str]) -> dict[str, tuple[int, int]]:
    """source -> (scheduled runs, of which successful)."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT source, count(*), count(*) FILTER (WHERE status = 'success') "
                "FROM collection_runs WHERE kind = 'scheduled' AND source = ANY(:sources) "
                "GROUP BY source"
            ),
            {"sources": sources},
        ).all()
    return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}


def example_store(folder: Path, url: str) -> Path:
    """The shipped example, copied here with its storage in `url`, every source collected."""
    target = folder / "example"
    shutil.copytree(EXAMPLE, target, dirs_exist_ok=True)
    config = target / "dxkpi.yaml"
    body = config.read_text(encoding="utf-8")
    config.write_text(f"storage: {{url: '{url}'}}\n{body}", encoding="utf-8")
    loaded = load_config(config)
    store = Store(url)
    try:
        store.migrate()
        window = Window(start=datetime(2015, 1, 1, tzinfo=UTC), end=datetime.now(UTC))
        for source in loaded.config.sources:
            collect_source(loaded, store, source.id, window=window, kind="backfill")
    finally:
        store.close()
    return config


def read_side(config: Path, repeats: int, scrapes: int) -> dict[str, float]:
    """Best snapshot rebuild, median `GET /metrics`, best `dxkpi status`, over `config`'s store."""
    from click.testing import CliRunner

    from bench.scrape import scrape
    from dxkpi.collector.cli import main
    from dxkpi.collector.exporter import Exporter
    from dxkpi.collector.webserver import make_server

    loaded = load_config(config)
    assert loaded.config.storage.url is not None
    store = Store(loaded.config.storage.url)
    exporter = Exporter(store, loaded)
    try:
        rebuild = best_time(exporter.rebuild, repeats)
        server = make_server(exporter, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            times, sizes = zip(*(scrape(port) for _ in range(scrapes)), strict=True)
        finally:
            server.shutdown()
            server.server_close()
    finally:
        store.close()
    runner = CliRunner()

    def status() -> None:
        result = runner.invoke(main, ["--config", str(config), "status"], catch_exceptions=False)
        if result.exit_code != 0:
            raise RuntimeError(f"dxkpi status exited {result.exit_code}: {result.output[-500:]}")

    return {
        "rebuild_seconds": rebuild,
        "scrape_seconds": statistics.median(times),
        "body_bytes": float(sizes[-1]),
        "status_seconds": best_time(status, repeats),
    }


def serial_sample(
    bench: Bench, folder: Path, broker: str, base_url: str, site_id: str, orgs: list[str], n: int
) -> tuple[float, int]:
    """Seconds for `n` sources (one every so many, across the organisations) collected one
    after another, in a schema of their own (the cycle's runs then start from the same state)."""
    with bench.database.schema("orgs_serial") as url:
        config = orgs_config(folder / "serial.yaml", url, broker, base_url, site_id, orgs)
        loaded = load_config(config)
        store = Store(url)
        try:
            store.migrate()
            ids = [s.id for s in loaded.config.sources if s.id != WARMUP]
            step = max(1, len(ids) // n)
            sample = ids[::step][:n]
            started = time.perf_counter()
            for source in sample:
                result = collect_source(loaded, store, source, kind="manual")
                if result.status != "success":
                    raise RuntimeError(f"serial run of {source}: {result.status}")
            return time.perf_counter() - started, len(sample)
        finally:
            store.close()


def send_beat_cycle(app: Any, loaded: LoadedConfig, sources: set[str]) -> int:
    """Every collect entry of the beat schedule for `sources`, as beat sends it."""
    from dxkpi.tasks.schedule import beat_schedule

    sent = 0
    for entry in beat_schedule(loaded.config).values():
        if entry["task"] == "dxkpi.collect" and entry["args"][0] in sources:
            app.send_task(entry["task"], args=entry["args"], **entry["options"])
            sent += 1
    return sent


def runs_since(store: Store, sources: list[str], since: float) -> tuple[int, int, float | None]:
    """(runs of `sources` started since `since`, of which finished, latest finish)."""
    with store.engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT count(*), count(finished_at), max(finished_at) FROM collection_runs "
                "WHERE kind = 'scheduled' AND source = ANY(:sources) AND started_at >= :since"
            ),
            {"sources": sources, "since": since},
        ).one()
    return int(row[0]), int(row[1]), row[2]


def wait_cycle(
    store: Store, sources: list[str], since: float, timeout: float, worker: Any, log: Path
) -> float:
    """Until every source of `sources` has a run started since `since` and finished; the
    latest finish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail(log)}")
        _, done, last = runs_since(store, sources, since)
        if done >= len(sources) and last is not None:
            return float(last)
        time.sleep(0.05)
    raise RuntimeError(f"{len(sources)} runs not finished after {timeout:.0f}s:\n{tail(log)}")


def hanging(handler: Handler, released: threading.Event) -> Handler:
    def answer(request: FakeRequest) -> FakeResponse:
        released.wait(timeout=120)
        return handler(request)

    return answer


def run(bench: Bench) -> Outcome:
    try:
        from celery import Celery

        from dxkpi.collector.registry import load_connector
        from dxkpi.connectors.plausible.tests.fake_plausible import SITE_ID, FakePlausible
        from dxkpi.tasks.collect import DEFAULT_ORG_CONCURRENCY
        from dxkpi.tasks.kpis import REFRESH_DELAY

        load_connector("plausible")
    except Exception as exc:
        raise NotRun(
            f"the Plausible connector, its fake or Celery is unavailable ({exc!r})"
        ) from None
    broker, chosen, redis_client = redis_broker()

    outcome = Outcome("orgs")
    orgs = [org_id(i) for i in range(1, bench.size(FULL_ORGS, minimum=2) + 1)]
    keys = {key_env(org): org_key(org) for org in [*orgs, "warmup"]}
    n_sample = min(len(orgs) * SOURCES_PER_ORG, bench.size(FULL_SERIAL_SAMPLE, minimum=4))
    repeats = 3 if bench.scale >= 0.05 else 1
    scrapes = 30 if bench.scale >= 0.05 else 3
    # The KPI history refreshes are counted once the refresh delay has passed; not at a tiny
    # scale (the smoke test), where the count means nothing.
    settle = REFRESH_DELAY + 1 if bench.scale >= 0.05 else 0.0
    folder = bench.dir("orgs")
    log = folder / "worker.log"
    fake = FakePlausible(keys=set(keys.values()), hourly_limit=10**9)
    n_hanging = bench.size(FULL_HANGING_SOURCES, minimum=2)
    keys[key_env(HANGING_ORG)] = org_key(HANGING_ORG)
    released = threading.Event()
    hanging_fake = FakePlausible(keys={org_key(HANGING_ORG)}, hourly_limit=10**9)
    with (
        bench.database.schema("orgs") as url,
        bench.database.schema("orgs_example") as example_url,
        loopback_server(slow(fake, DELAY_SECONDS)) as (base_url, _),
        loopback_server(hanging(hanging_fake, released)) as (hanging_url, hanging_seen),
        ExitStack() as variables,
    ):
        variables.callback(released.set)
        for name, value in keys.items():
            variables.enter_context(environment(name, value))
        serial_seconds, sampled = serial_sample(
            bench, folder, broker, base_url, SITE_ID, orgs, n_sample
        )
        config = orgs_config(
            folder / "orgs.yaml", url, broker, base_url, SITE_ID, orgs, (hanging_url, n_hanging)
        )
        loaded = load_config(config)
        sources = [s.id for s in loaded.config.sources if s.org not in ("warmup", HANGING_ORG)]
        stuck = [s.id for s in loaded.config.sources if s.org == HANGING_ORG]
        n_sources = len(sources)
        serial = serial_seconds * n_sources / sampled
        store = Store(url)
        worker: subprocess.Popen[bytes] | None = None
        app = Celery("dxkpi-bench", broker=broker)
        app.conf.task_default_queue = "dxkpi"
        try:
            store.migrate()
            clear_queue(redis_client, chosen)
            command = dxkpi_command(
                config,
                "worker",
                *("--pool", "threads", "--concurrency", str(CONCURRENCY)),
                *("--processes", str(PROCESSES)),
                log_level=None,
            )
            with log.open("wb") as out:
                worker = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=child_env(**keys)
                )
            wait_nodes(app, PROCESSES, 120, worker, log)
            app.send_task("dxkpi.collect", args=(WARMUP,))
            wait_runs(store, [WARMUP], 120, worker, log)
            time.sleep(settle)  # the warm-up's KPI history refresh, out of the way
            refreshes_before = log.read_text(errors="replace").count("KPI history: stored")

            worker_cpu = tree_cpu_seconds(worker.pid)
            profile = bench.artifacts / "orgs-worker.pyspy.txt"
            with py_spy(worker.pid, profile, subprocesses=True) if bench.profile else nullcontext():
                sent_at = time.time()
                sent = send_beat_cycle(app, loaded, set(sources))
                ok, last_finish = wait_runs(store, sources, max(60.0, serial * 3), worker, log)
            cycle = last_finish - sent_at
            worker_cpu = tree_cpu_seconds(worker.pid) - worker_cpu
            time.sleep(settle + 1 if settle else 0.0)
            worker_log = log.read_text(errors="replace")
            refreshes = worker_log.count("KPI history: stored") - refreshes_before
            deferred = worker_log.count("this run waits its turn")
            counts = runs_per_source(store, sources)

            # A second cycle as the first: its runs read the same windows again and change
            # nothing, as do those of the third, which it is the baseline of.
            repeat_at = time.time()
            send_beat_cycle(app, loaded, set(sources))
            last_finish = wait_cycle(store, sources, repeat_at, max(60.0, serial * 3), worker, log)
            cycle_repeat = last_finish - repeat_at
            # The third: the hanging organisation's runs are queued first, then the others'.
            # Its API answers nothing until the others are all collected.
            second_at = time.time()
            send_beat_cycle(app, loaded, set(stuck))
            send_beat_cycle(app, loaded, set(sources))
            last_finish = wait_cycle(store, sources, second_at, max(60.0, serial * 3), worker, log)
            cycle_hanging = last_finish - second_at
            stuck_started, _, _ = runs_since(store, stuck, second_at)
            stuck_requests = len(hanging_seen)
            released.set()
            wait_cycle(store, stuck, second_at, 120, worker, log)
        finally:
            if worker is not None:
                stop_process(worker)
            clear_queue(redis_client, chosen)
            app.close()
            store.close()
        starved = [s for s in sources if counts.get(s, (0, 0))[0] == 0]
        repeated = [s for s in sources if counts.get(s, (0, 0))[0] > 1]
        failed = [s for s in sources if counts.get(s, (0, 0))[1] != counts.get(s, (0, 0))[0]]
        if sent != n_sources or starved or repeated or failed or ok != n_sources:
            raise RuntimeError(
                f"{sent} sent for {n_sources} sources; starved {starved[:5]}, collected more "
                f"than once {repeated[:5]}, failed {failed[:5]}:\n{tail(log)}"
            )

        example = example_store(folder, example_url)
        small = read_side(example, repeats, scrapes)
        large = read_side(config, repeats, scrapes)

    outcome.ratio(
        f"serial / Celery, {len(orgs)} orgs × {SOURCES_PER_ORG} sources",
        serial / cycle,
        f"serial {serial:.1f}s (from {sampled} runs in {serial_seconds:.1f}s) vs one beat "
        f"cycle {cycle:.2f}s ({PROCESSES} processes × {CONCURRENCY} threads; each API call "
        f"answers after {DELAY_SECONDS * 1000:.0f} ms); every source collected once",
        target=10,
    )
    outcome.ratio(
        f"cycle while a {n_hanging}-source organisation hangs / cycle",
        cycle_hanging / cycle_repeat,
        f"{cycle_hanging:.2f}s vs {cycle_repeat:.2f}s (a repeat cycle, as this one) for the other "
        f"{n_sources} sources; the hanging organisation's runs, "
        f"queued first, took {stuck_started} threads (DXKPI_ORG_CONCURRENCY, default "
        f"{DEFAULT_ORG_CONCURRENCY}), the rest of them waited off the threads",
        target=1.5,
        comparison="<=",
    )
    for name, label in (
        ("rebuild_seconds", "exporter rebuild"),
        ("scrape_seconds", "GET /metrics"),
        ("status_seconds", "dxkpi status"),
    ):
        outcome.ratio(
            f"{label}, {n_sources} sources / example",
            large[name] / small[name],
            f"{fmt_ms(large[name])} vs {fmt_ms(small[name])} (example: 6 sources, 11 KPIs; "
            f"here {n_sources} sources, {len(orgs)} KPIs)",
        )
    outcome.notes.append(
        f"one cycle: {deferred} runs deferred by the per-organisation limit, {refreshes} KPI "
        f"history refreshes (one per {REFRESH_DELAY:.0f} s burst per worker process, was one "
        f"per run: {n_sources}); worker CPU {worker_cpu / n_sources * 1000:.0f} ms per run"
    )
    if bench.profile:
        outcome.raw["worker_profile"] = collapsed_profile(profile, top=25)
    outcome.raw.update(
        orgs=len(orgs),
        sources=n_sources,
        delay_seconds=DELAY_SECONDS,
        concurrency=CONCURRENCY,
        processes=PROCESSES,
        serial_sample_runs=sampled,
        serial_sample_seconds=round(serial_seconds, 3),
        serial_seconds_estimated=round(serial, 3),
        cycle_seconds=round(cycle, 3),
        runs_deferred=deferred,
        hanging_sources=n_hanging,
        repeat_cycle_seconds=round(cycle_repeat, 3),
        cycle_while_hanging_seconds=round(cycle_hanging, 3),
        hanging_runs_started=stuck_started,
        hanging_requests=stuck_requests,
        kpi_refreshes=refreshes,
        worker_cpu_seconds=round(worker_cpu, 3),
        ideal_seconds=round(
            -(-n_sources // (CONCURRENCY * PROCESSES)) * serial_seconds / sampled, 3
        ),
        read_side={"example": small, "orgs": large},
    )
    return outcome
