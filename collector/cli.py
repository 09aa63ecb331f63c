"""The `dxkpi` command line."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import DBAPIError, ProgrammingError

from collector.errors import ConfigError, DxkpiError, SourceError
from collector.redact import redact
from collector.runtime import Runtime, resolve, set_current

if TYPE_CHECKING:
    from collector.contract import Window

console = Console(stderr=True)
out = Console()

RECOMMENDED_POOL = "threads"
RECOMMENDED_CONCURRENCY = 32


def _runtime(ctx: click.Context) -> Runtime:
    obj = ctx.ensure_object(dict)
    if "runtime" not in obj:
        try:
            runtime = resolve(obj.get("config"), obj.get("data_dir"))
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            ctx.exit(2)
        set_current(runtime)
        obj["runtime"] = runtime
    result: Runtime = obj["runtime"]
    return result


def _when(text: str | None, runtime: Runtime, *, default: datetime | None = None) -> datetime:
    """Parse --since/--until: an ISO date (midnight in the config's timezone) or datetime."""
    if text is None:
        assert default is not None
        return default
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: write an ISO date such as 2024-04-01") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=runtime.loaded.config.tz)


class _Commands(click.Group):
    """Expected failures (a wrong URL, a store without tables, a data error) end a command with
    one line and exit 1; tracebacks are for bugs."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DxkpiError as exc:
            problem = str(exc)
        except DBAPIError as exc:
            problem = _store_problem(exc)
        except KeyError as exc:
            if not str(exc.args[0] if exc.args else "").startswith("No such transport"):
                raise
            problem = (
                f"the broker URL's scheme is unknown ({exc.args[0]}): use redis:// or rediss://"
            )
        click.echo(f"error: {redact(problem).splitlines()[0]}", err=True)
        ctx.exit(1)


def _store_problem(exc: DBAPIError) -> str:
    said = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
    missing = "no such table" in said or (
        isinstance(exc, ProgrammingError) and "does not exist" in said
    )
    if missing:
        return f"the store has no tables yet: run `dxkpi migrate` ({said})"
    return f"the store cannot be used: {said} (check DXKPI_STORAGE_URL or storage.url)"


@click.group(cls=_Commands)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $DXKPI_CONFIG, else the example config shipped with dxkpi).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Where the embedded SQLite store and broker live (default: $DXKPI_DATA_DIR, "
    "else the config's data_dir, else ~/.local/share/dxkpi).",
)
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING…")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, data_dir: str | None, log_level: str) -> None:
    """dxkpi: collect digital-transformation KPIs and serve them to Prometheus."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    obj = ctx.ensure_object(dict)
    obj["config"] = config_path
    obj["data_dir"] = data_dir
    obj["log_level"] = log_level


def _child_args(ctx: click.Context, runtime: Runtime) -> list[str]:
    return [
        sys.executable,
        "-m",
        "collector",
        "--config",
        str(runtime.loaded.path),
        "--data-dir",
        str(runtime.data_dir),
        "--log-level",
        ctx.obj["log_level"],
    ]


def _describe(runtime: Runtime) -> None:
    console.print(f"config:   {runtime.loaded.path}", highlight=False)
    console.print(f"data dir: {runtime.data_dir}", highlight=False)
    console.print(f"store:    {redact(runtime.storage_url)}", highlight=False)
    console.print(f"broker:   {redact(runtime.broker_url)}", highlight=False)


@main.command()
@click.option("--listen", default=None, help="HOST:PORT for /metrics (default from config).")
@click.option("--concurrency", default=4, show_default=True, help="Worker threads.")
@click.pass_context
def run(ctx: click.Context, listen: str | None, concurrency: int) -> None:
    """Everything in one: migrate, a Celery worker, beat, and the exporter (embedded default)."""
    # Started with `&` from a script, the shell gives it SIGINT ignored: take it back (before
    # the children start, so they get it too), or Ctrl-C and `kill -INT` would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runtime = _runtime(ctx)
    _describe(runtime)
    runtime.store.migrate()
    base = _child_args(ctx, runtime)
    children = [
        subprocess.Popen([*base, "worker", "--concurrency", str(concurrency)]),
        subprocess.Popen([*base, "beat"]),
    ]

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        from tasks.app import app

        # Collect every source once now, instead of waiting a whole interval for beat.
        for source in runtime.loaded.config.sources:
            app.send_task("dxkpi.collect", args=(source.id,))
        _serve(runtime, listen)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


@main.command()
@click.option("--pool", default=RECOMMENDED_POOL, show_default=True, help="threads, prefork, solo.")
@click.option(
    "--concurrency",
    default=None,
    type=int,
    help=f"Parallel runs per process (recommended with threads: {RECOMMENDED_CONCURRENCY}; "
    "collection is I/O).",
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes, each with its own pool (recommended: one per core; threads of one "
    "process share one core).",
)
@click.option(
    "--hostname",
    default=None,
    help="Celery node name (default celery@%h); with --processes N the processes are named "
    "<name>1@… to <name>N@….",
)
@click.option("--beat/--no-beat", default=False, help="Also run the beat scheduler (one per site).")
@click.pass_context
def worker(
    ctx: click.Context,
    pool: str,
    concurrency: int | None,
    processes: int,
    hostname: str | None,
    beat: bool,
) -> None:
    """A Celery worker that runs collections."""
    runtime = _runtime(ctx)  # before importing the app: it is built from the current runtime
    # Ready only with a usable store: an unreachable one or one without tables is one line now,
    # not a retry loop in every task.
    problem = runtime.store.schema_problem()
    if problem:
        raise DxkpiError(problem)
    if processes > 1:
        name, _, host = (hostname or "celery@%h").partition("@")
        base = [*_child_args(ctx, runtime), "worker", "--pool", pool]
        if concurrency is not None:
            base += ["--concurrency", str(concurrency)]
        commands = [
            # Beat must run once per site: in the first process only.
            [
                *base,
                "--hostname",
                f"{name}{i}@{host or '%h'}",
                *(["--beat"] if beat and i == 1 else []),
            ]
            for i in range(1, processes + 1)
        ]
        ctx.exit(_supervise(commands))
    from tasks.app import app

    argv = ["worker", "--loglevel", ctx.obj["log_level"], "--pool", pool, "-Q", runtime.queue]
    argv += ["--concurrency", str(concurrency or RECOMMENDED_CONCURRENCY)]
    # One queue, no peers to learn from or report to: gossip, mingle and the event heartbeat
    # cost every process CPU and round trips and give this deployment nothing.
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if hostname:
        argv += ["--hostname", hostname]
    if beat:
        argv.append("--beat")
    _quiet_celery_per_task_lines()
    _import_connectors(runtime)
    # The store's engine imports its dialect and driver: at start, not in the first runs.
    runtime.store  # noqa: B018
    # Everything imported so far lives as long as the worker: keep the cyclic GC from scanning
    # it again on every collection (a large share of a short run's CPU with 32 threads).
    gc.freeze()
    app.worker_main(argv)


def _quiet_celery_per_task_lines() -> None:
    """Celery logs two INFO lines per task (received, succeeded). The runner logs one line per
    run and `collection_runs` records it, retries are logged by the task, failures stay at ERROR:
    at INFO those two lines only cost every run CPU (about a tenth of it). DEBUG keeps them."""
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _import_connectors(runtime: Runtime) -> None:
    """Import the configured sources' connectors now rather than in a process's first runs (and
    before `gc.freeze`). One that fails to import is left to fail its own runs, as it would."""
    from collector.registry import load_connector

    for name in sorted({source.connector for source in runtime.loaded.config.sources}):
        try:
            load_connector(name)
        except Exception:
            logging.getLogger("dxkpi.worker").warning("connector %s does not load", name)


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def _supervise(commands: list[list[str]]) -> int:
    """Run one worker process per command until all have exited; return the exit code.

    A signal is passed on to every process (Celery's meaning: TERM/INT a warm shutdown that
    finishes running tasks, QUIT a cold one). The processes get a process group of their own so
    that a Ctrl-C in a terminal reaches them once, through here, and not twice (a second INT is a
    cold shutdown). If one process exits on its own, the others are stopped too and its code is
    returned, so that whatever supervises `dxkpi worker` sees the failure and restarts the lot.
    """
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in FORWARDED_SIGNALS:  # before the first start: no child may be left behind
        signal.signal(signum, forward)
    for command in commands:
        if stopping:
            break
        children.append(subprocess.Popen(command, process_group=0))
    code = 0
    running = list(children)
    while running:
        time.sleep(0.2)
        for child in [c for c in running if c.poll() is not None]:
            running.remove(child)
            status = child.returncode
            # A process killed by a signal: the shell's convention, 128 + its number.
            child_code = status if status >= 0 else 128 - status
            if code == 0:
                code = child_code
            if not stopping:
                console.print(
                    f"worker process {child.pid} exited with {child_code}: stopping the others",
                    highlight=False,
                )
                forward(signal.SIGTERM, None)
    return code


@main.command()
@click.pass_context
def beat(ctx: click.Context) -> None:
    """The beat scheduler: queues each source's collection on its schedule. Run exactly one."""
    _runtime(ctx)
    from tasks.app import app

    app.start(["beat", "--loglevel", ctx.obj["log_level"]])


@main.command()
@click.option("--listen", default=None, help="HOST:PORT (default 127.0.0.1:9810, from config).")
@click.option(
    "--web.config.file",
    "web_config",
    type=click.Path(dir_okay=False),
    help="TLS and basic auth, in Prometheus exporter-toolkit's web config format.",
)
@click.pass_context
def exporter(ctx: click.Context, listen: str | None, web_config: str | None) -> None:
    """Serve /metrics and /healthz from the store."""
    runtime = _runtime(ctx)
    _serve(runtime, listen, web_config)


def _serve(runtime: Runtime, listen: str | None, web_config: str | None = None) -> None:
    from collector.exporter import Exporter, make_server, parse_listen
    from collector.webserver import load_web_config

    host, port = parse_listen(listen or runtime.loaded.config.exporter.listen)
    web = load_web_config(web_config) if web_config else None
    exp = Exporter(runtime.store, runtime.loaded)
    exp.start()
    server = make_server(exp, host, port, web=web)
    scheme = "https" if web is not None and web.tls_server_config else "http"
    console.print(f"serving {scheme}://{host}:{server.server_address[1]}/metrics", highlight=False)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        exp.stop()


@main.command()
@click.argument("source")
@click.option("--since", help="Window start (ISO date/datetime; default: from the cursor).")
@click.option("--until", help="Window end (default: now).")
@click.option("--dry-run", is_flag=True, help="Print what would be stored; store nothing.")
@click.pass_context
def collect(
    ctx: click.Context, source: str, since: str | None, until: str | None, dry_run: bool
) -> None:
    """Collect one source now, in this process."""
    from collector.contract import Window
    from collector.runner import collect_source

    runtime = _runtime(ctx)
    now = datetime.now(UTC)
    window = None
    if since:
        window = Window(start=_when(since, runtime), end=_when(until, runtime, default=now))
    store = None
    if not dry_run:
        store = runtime.store
        store.migrate()
    try:
        result = collect_source(
            runtime.loaded, store, source, window=window, kind="manual", dry_run=dry_run
        )
    except (SourceError, DxkpiError) as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    if dry_run:
        items = result.observations or []
        table = Table(title=f"{source}: {len(items)} observations would be stored (dry run)")
        for column in ("metric", "labels", "period", "granularity", "value"):
            table.add_column(column)
        for obs in items[:50]:
            labels = ",".join(f"{k}={v}" for k, v in sorted(obs.labels.items()))
            table.add_row(
                obs.metric, labels, obs.start.isoformat(), obs.granularity, f"{obs.value:g}"
            )
        out.print(table)
        if len(items) > 50:
            out.print(f"… and {len(items) - 50} more")
        return
    out.print(
        f"{source}: {result.status}, {result.written} observations written "
        f"({result.changed} new or changed), window {result.window.start.isoformat()} .. "
        f"{result.window.end.isoformat()}"
    )


@main.command()
@click.argument("source")
@click.option("--since", required=True, help="Start (ISO date), e.g. 2021-04-01.")
@click.option("--until", help="End (default: now).")
@click.option("--enqueue", is_flag=True, help="Queue the chunks for the workers instead.")
@click.pass_context
def backfill(ctx: click.Context, source: str, since: str, until: str | None, enqueue: bool) -> None:
    """Collect a past range, split into the source API's allowed windows."""
    from collector.runner import ReadAhead, backfill_windows, build_connector, collect_source

    runtime = _runtime(ctx)
    start = _when(since, runtime)
    end = _when(until, runtime, default=datetime.now(UTC))
    if enqueue:
        from tasks.app import app

        app.send_task("dxkpi.backfill", args=(source, start.isoformat(), end.isoformat()))
        out.print(f"queued backfill of {source} from {start.isoformat()} to {end.isoformat()}")
        return
    try:
        windows = backfill_windows(build_connector(runtime.loaded, source), start, end)
    except DxkpiError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    store = runtime.store
    store.migrate()
    written = 0
    failed: list[Window] = []
    # The next window's first items are read (in a thread) while this window's last batch is
    # stored; the next window's own run stores them, or fails with the error met reading them.
    ahead: list[ReadAhead] = []

    def read_ahead(window: Window) -> Callable[[], None]:
        return lambda: ahead.append(ReadAhead(build_connector(runtime.loaded, source), window))

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[written]} observations"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"backfill {source}", total=len(windows), written=0)
        try:
            for window, following in zip(windows, [*windows[1:], None], strict=True):
                try:
                    result = collect_source(
                        runtime.loaded,
                        store,
                        source,
                        window=window,
                        kind="backfill",
                        ahead=ahead.pop() if ahead else None,
                        on_collected=read_ahead(following) if following else None,
                    )
                except SourceError as exc:
                    # Recorded as a gap (its failed run); the other windows are still read.
                    progress.console.print(f"error: {exc}", highlight=False, markup=False)
                    failed.append(window)
                    progress.update(task, advance=1)
                    continue
                if result.status == "skipped":
                    progress.stop()
                    console.print(
                        f"[red]error[/red] another run of {source} holds its lease; retry later"
                    )
                    ctx.exit(1)
                written += result.written
                progress.update(task, advance=1, written=written)
        finally:
            for unused in ahead:  # its window's run did not happen
                unused.close()
    out.print(f"{source}: backfilled {len(windows)} windows, {written} observations")
    if failed:
        spans = ", ".join(f"{w.start.date()} to {w.end.date()}" for w in failed)
        click.echo(
            f"error: {len(failed)} window(s) failed and are recorded as gaps: {spans}; the "
            "source's scheduled runs read them again, or rerun backfill for them",
            err=True,
        )
        ctx.exit(1)


@main.command("check-config")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.pass_context
def check_config(ctx: click.Context, file: str | None) -> None:
    """Validate a config file; list every problem with file:line and exit non-zero."""
    from collector.config import load_config
    from collector.runtime import EXAMPLE_CONFIG

    path = file or ctx.obj.get("config") or os.environ.get("DXKPI_CONFIG") or str(EXAMPLE_CONFIG)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        # Plain lines (no wrapping): editors and grep jump to file:line.
        for problem in exc.problems:
            click.echo(str(problem))
        click.echo(f"{len(exc.problems)} problem(s) in {path}", err=True)
        ctx.exit(1)
    config = loaded.config
    click.echo(f"{loaded.path}: OK ({len(config.sources)} sources, {len(config.kpis)} KPIs)")


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the store's tables (Alembic)."""
    runtime = _runtime(ctx)
    runtime.store.migrate()
    out.print(f"store at {redact(runtime.storage_url)} is up to date", highlight=False)


@main.command()
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Print the config's JSON Schema (for editors)."""
    from collector.schema import config_schema

    out.print_json(json.dumps(config_schema(), ensure_ascii=False))


def _ts(ts: float | None, runtime: Runtime) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, runtime.loaded.config.tz).strftime("%Y-%m-%d %H:%M")


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Each KPI's value, baseline, target, progress and last change; each source's health."""
    from collector.fiscal import reiwa_label
    from collector.kpi import KpiCalculator

    runtime = _runtime(ctx)
    store = runtime.store
    store.migrate()
    kpis = Table(title="KPIs")
    kpis.add_column("KPI", no_wrap=True)
    for column in ("name", "value", "baseline", "target", "progress", "expected", "last good move"):
        kpis.add_column(column)
    for state in KpiCalculator(store, runtime.loaded.config).compute_all(time.time()):
        kpi = state.kpi
        kpis.add_row(
            kpi.id,
            kpi.name_ja,
            "-" if state.value is None else f"{state.value:,.4g}",
            f"{kpi.baseline.value:,.4g} ({reiwa_label(kpi.baseline.fiscal_year)})",
            f"{kpi.target.value:,.4g} ({reiwa_label(kpi.target.fiscal_year)})",
            "-" if state.progress is None else f"{state.progress:.0%}",
            f"{state.expected_progress:.0%}",
            _ts(state.last_change_ts, runtime),
        )
    out.print(kpis)
    sources = Table(title="Sources")
    sources.add_column("source", no_wrap=True)
    for column in ("connector", "last run", "last success", "last error"):
        sources.add_column(column)
    health = {h.source: h for h in store.source_health()}
    for source in runtime.loaded.config.sources:
        h = health.get(source.id)
        sources.add_row(
            source.id,
            source.connector,
            (h.last_status or "-") if h else "never",
            _ts(h.last_success_at if h else None, runtime),
            (h.last_error or "")[:120] if h and h.last_status != "success" else "",
        )
    out.print(sources)


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["main"]
