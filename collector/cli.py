"""The `dxkpi` command line."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from datetime import time as dt_time
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import DBAPIError, ProgrammingError

from dxkpi.collector.errors import ConfigError, DxkpiError, SourceError
from dxkpi.collector.redact import redact
from dxkpi.collector.runtime import Runtime, resolve, set_current
from dxkpi.collector.storage import Store, require_current_schema

if TYPE_CHECKING:
    from dxkpi.collector.config import Config, SourceConfig
    from dxkpi.collector.contract import Window
    from dxkpi.collector.exporter import Exporter
    from dxkpi.collector.receiver.serve import ReceiverServer
    from dxkpi.collector.webserver import BoundedHTTPServer

console = Console(stderr=True)
out = Console()

NAME_WIDTH = 20  # `status`: cells of a KPI name per line, two lines at most
ORG_WIDTH = 14  # `status` with several organisations: cells of an organisation's name

ORG_OPTION = click.option(
    "--org",
    "orgs",
    multiple=True,
    metavar="ID",
    help="Only this organisation's figures, or a roll-up's (its id, e.g. all) with its "
    "members'; repeatable.",
)


def _org_scope(config: Config, orgs: tuple[str, ...]) -> set[str] | None:
    """The org label values `--org` picks (None: every one); an unknown id is a usage error."""
    if not orgs:
        return None
    try:
        return config.org_scope(orgs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--org") from None


RECOMMENDED_POOL = "threads"
# Seconds a stopping worker lets running collections finish (below Docker's 10 s before SIGKILL).
DEFAULT_STOP_TIMEOUT = 5.0
RECOMMENDED_CONCURRENCY = 32


def _runtime(ctx: click.Context, *, read_only: bool = False) -> Runtime:
    """The runtime of this invocation; a read-only command's creates no directory."""
    obj = ctx.ensure_object(dict)
    if "runtime" not in obj:
        # A ConfigError is reported by the group, one line per problem.
        runtime = resolve(obj.get("config"), obj.get("data_dir"), make_dirs=not read_only)
        set_current(runtime)
        obj["runtime"] = runtime
    result: Runtime = obj["runtime"]
    return result


def _read_store(ctx: click.Context) -> tuple[Runtime, Store]:
    """The runtime and store of a command that only reads: it neither creates nor upgrades a
    store, and says to run `dxkpi migrate` when the schema is missing or behind."""
    runtime = _runtime(ctx, read_only=True)
    require_current_schema(runtime.store)
    return runtime, runtime.store


def _when(text: str | None, runtime: Runtime, *, default: datetime | None = None) -> datetime:
    """Parse --since/--until: an ISO date (midnight in the config's timezone) or datetime."""
    if text is None:
        assert default is not None
        return default
    from dxkpi.collector.clock import parse_datetime

    try:
        return parse_datetime(text, runtime.loaded.config.tz)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: write an ISO date such as 2024-04-01") from exc


CONFIG_HELP = "Config file (default: $DXKPI_CONFIG, else the example config shipped with dxkpi)."
DATA_DIR_HELP = (
    "Where the embedded SQLite store and broker live (default: $DXKPI_DATA_DIR, else the "
    "config's data_dir, else ~/.local/share/dxkpi/<config folder>-<hash of the config's path>)."
)
LOG_LEVEL_HELP = "DEBUG, INFO, WARNING…"


def _set_global(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """A global option given after the subcommand: it overrides the one given before."""
    if value is None:
        return
    assert param.name is not None
    ctx.ensure_object(dict)[param.name] = value
    if param.name == "log_level":
        logging.getLogger().setLevel(value.upper())


def _global_options() -> list[click.Parameter]:
    """--config, --data-dir and --log-level, as every subcommand also accepts them."""
    common: dict[str, Any] = {"expose_value": False, "callback": _set_global, "default": None}
    return [
        click.Option(
            ["--config", "config"], type=click.Path(dir_okay=False), help=CONFIG_HELP, **common
        ),
        click.Option(["--data-dir", "data_dir"], type=click.Path(), help=DATA_DIR_HELP, **common),
        click.Option(["--log-level", "log_level"], help=LOG_LEVEL_HELP, **common),
    ]


class _Cli(click.Group):
    """The command group: global options work before and after the subcommand, and a failure
    dxkpi expects (config, store, port, data directory) is one line and a non-zero exit."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(_global_options())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            ctx.exit(2)
        except DxkpiError as exc:
            said = str(exc)
        except DBAPIError as exc:
            # The store's server is down, refuses us, or has no tables: one line, no password.
            said = _store_problem(exc)
        except KeyError as exc:
            if not str(exc.args[0] if exc.args else "").startswith("No such transport"):
                raise
            said = f"the broker URL's scheme is unknown ({exc.args[0]}): use redis:// or rediss://"
        click.echo(f"error: {redact(said).rstrip()}", err=True)
        ctx.exit(1)


def _store_problem(exc: DBAPIError) -> str:
    said = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
    missing = "no such table" in said or (
        isinstance(exc, ProgrammingError) and "does not exist" in said
    )
    if missing:
        return f"the store has no tables yet: run `dxkpi migrate` ({said})"
    return f"the store cannot be used: {said} (check DXKPI_STORAGE_URL or storage.url)"


@click.group(cls=_Cli)
@click.version_option(package_name="dxkpi", prog_name="dxkpi")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--data-dir", type=click.Path(), help=DATA_DIR_HELP)
@click.option("--log-level", default="INFO", show_default=True, help=LOG_LEVEL_HELP)
@click.pass_context
def main(ctx: click.Context, config_path: str | None, data_dir: str | None, log_level: str) -> None:
    """dxkpi: collect digital-transformation KPIs and serve them to Prometheus."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic announces each of its plugins at INFO on every start: noise before a one-line error.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    _stop_on_signals()
    obj = ctx.ensure_object(dict)
    obj["config"] = config_path
    obj["data_dir"] = data_dir
    obj["log_level"] = log_level


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop every command promptly, whatever the parent shell did.

    A non-interactive shell starts `dxkpi … &` with SIGINT ignored, and Python then leaves it
    ignored: take it back (before any child starts, so children get it too). SIGTERM, whose
    default kills at once, unwinds like Ctrl-C instead, so servers close their sockets and
    threads. Celery's worker and beat install their own handlers over these."""
    if threading.current_thread() is not threading.main_thread():
        return  # the CLI called from a thread (tests): only a main thread can set handlers
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _check_store(runtime: Runtime) -> None:
    """Connect once, so that a wrong URL, a refused login or a server that is not there is one
    line and a non-zero exit at start, not a process that runs and fails later."""
    with runtime.store.engine.connect():
        pass


def _check_broker(runtime: Runtime) -> None:
    """An unknown broker scheme is one line before Celery starts (its banner, its warnings)."""
    from kombu.transport import resolve_transport

    scheme = runtime.broker_url.partition("://")[0]
    try:
        resolve_transport(scheme.partition("+")[0])
    except KeyError:
        raise DxkpiError(
            f"the broker URL's scheme {scheme!r} is unknown: use redis:// or rediss:// "
            "(DXKPI_BROKER_URL or broker.url)"
        ) from None


def _child_args(ctx: click.Context, runtime: Runtime) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dxkpi.collector",
        "--config",
        str(runtime.loaded.path),
        "--data-dir",
        str(runtime.data_dir),
        "--log-level",
        ctx.obj["log_level"],
    ]


def _describe(runtime: Runtime) -> None:
    # Plain lines: a long path must stay whole to be copied.
    click.echo(f"config:   {runtime.loaded.path}", err=True)
    click.echo(f"data dir: {runtime.data_dir}", err=True)
    click.echo(f"store:    {redact(runtime.storage_url)}", err=True)
    click.echo(f"broker:   {redact(runtime.broker_url)}", err=True)


@main.command()
@click.option("--listen", default=None, help="HOST:PORT for /metrics (default from config).")
@click.option("--concurrency", default=4, show_default=True, help="Worker threads.")
@click.pass_context
def run(ctx: click.Context, listen: str | None, concurrency: int) -> None:
    """Everything in one: migrate, a Celery worker, beat, and the exporter (embedded default)."""
    from dxkpi.collector.supervisor import sources_to_kick_off

    # SIGINT is taken back from a script's `&` in main(), before the children start.
    runtime = _runtime(ctx)
    _check_broker(runtime)
    _describe(runtime)
    exp, server = _bind(runtime, listen)  # first: a busy port fails before anything starts
    runtime.store.migrate()
    # Beat starts afresh, without catching up on runs its last life missed: the kick-off
    # below collects what is due, and beat takes over one interval later.
    for leftover in runtime.data_dir.glob(f"{runtime.beat_state.name}*"):
        leftover.unlink()
    base = _child_args(ctx, runtime)
    children = [
        subprocess.Popen([*base, "worker", "--concurrency", str(concurrency)]),
        subprocess.Popen([*base, "beat"]),
    ]

    try:
        from dxkpi.tasks.app import app

        last_success = {h.source: h.last_success_at for h in runtime.store.source_health()}
        due = sources_to_kick_off(runtime.loaded.config.sources, last_success, time.time())
        # Collect now what has no recent success, instead of waiting a whole interval for beat.
        for source_id in due:
            app.send_task("dxkpi.collect", args=(source_id,))
        recent = len(runtime.loaded.config.sources) - len(due)
        click.echo(
            f"collecting {len(due)} source(s) now; {recent} with a success within their "
            "interval wait for their schedule",
            err=True,
        )
        _start_receiver(runtime)
        _serve(exp, server)
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
@click.option(
    "--stop-timeout",
    default=DEFAULT_STOP_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a stopping worker lets running collections finish; then it exits anyway "
    "(their tasks are redelivered, their leases expire).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    pool: str,
    concurrency: int | None,
    processes: int,
    hostname: str | None,
    beat: bool,
    stop_timeout: float,
) -> None:
    """A Celery worker that runs collections."""
    runtime = _runtime(ctx)  # before importing the app: it is built from the current runtime
    _check_broker(runtime)
    # Ready only with a usable store: an unreachable one or one without tables is one line now,
    # not a retry loop in every task.
    problem = runtime.store.schema_problem()
    if problem:
        raise DxkpiError(problem)
    if processes > 1:
        name, _, host = (hostname or "celery@%h").partition("@")
        base = [*_child_args(ctx, runtime), "worker", "--pool", pool]
        base += ["--stop-timeout", str(stop_timeout)]
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
        from dxkpi.collector.supervisor import supervise

        ctx.exit(supervise(commands))
    from dxkpi.tasks.app import app

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
    _bound_warm_shutdown(stop_timeout)
    _import_connectors(runtime)
    # The store's engine imports its dialect and driver: at start, not in the first runs.
    runtime.store  # noqa: B018
    # Everything imported so far lives as long as the worker: keep the cyclic GC from scanning
    # it again on every collection (a large share of a short run's CPU with 32 threads).
    gc.freeze()
    app.worker_main(argv)


def _bound_warm_shutdown(seconds: float) -> None:
    """SIGTERM or SIGINT make Celery's warm shutdown wait for running tasks, however long they
    take: a collection waiting on a slow API or a Retry-After kept a worker up for minutes. Give
    them `seconds`, then exit. Nothing is lost: tasks are acknowledged late, so their messages go
    back to the queue, and a dead holder's lease expires within a minute (its run is closed as
    abandoned by the next one)."""
    from celery.signals import worker_shutting_down
    from celery.worker.state import active_requests

    def give_up() -> None:
        logging.getLogger("dxkpi.worker").warning(
            "collections still running %gs after the stop signal: exiting without them "
            "(their tasks go back to the queue; raise --stop-timeout to wait longer)",
            seconds,
        )
        # Back on the queue now, not after the broker's visibility timeout (an hour on Redis):
        # what kombu does when a channel closes cleanly, for each channel that delivered them.
        channels = {id(r.message.channel): r.message.channel for r in list(active_requests)}
        for channel in channels.values():
            with contextlib.suppress(Exception):
                channel.qos.restore_unacked()
        logging.shutdown()
        os._exit(1)

    def on_shutdown(**_: Any) -> None:
        timer = threading.Timer(seconds, give_up)
        timer.daemon = True  # a warm shutdown that finishes in time exits without waiting for it
        timer.start()

    worker_shutting_down.connect(on_shutdown, weak=False)


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
    from dxkpi.collector.registry import load_connector

    for name in sorted({source.connector for source in runtime.loaded.config.sources}):
        try:
            load_connector(name)
        except Exception:
            logging.getLogger("dxkpi.worker").warning("connector %s does not load", name)


@main.command()
@click.pass_context
def beat(ctx: click.Context) -> None:
    """The beat scheduler: queues each source's collection on its schedule. Run exactly one."""
    runtime = _runtime(ctx)
    _check_broker(runtime)
    _check_store(runtime)
    from dxkpi.tasks.app import app

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
    # Reachable is required; tables are not: until `dxkpi migrate` ran, /healthz says so (503).
    _check_store(runtime)
    with contextlib.suppress(KeyboardInterrupt):  # SIGTERM or Ctrl-C: a clean stop
        _serve(*_bind(runtime, listen, web_config))


def _bind(
    runtime: Runtime, listen: str | None, web_config: str | None = None
) -> tuple[Exporter, BoundedHTTPServer]:
    """The exporter and its listening socket; a busy or bad address is a one-line error."""
    from dxkpi.collector import clock
    from dxkpi.collector.exporter import Exporter, make_server, parse_listen
    from dxkpi.collector.webserver import load_web_config, raise_open_file_limit

    address = listen or runtime.loaded.config.exporter.listen
    try:
        host, port = parse_listen(address)
    except ValueError as exc:
        raise DxkpiError(str(exc)) from None
    tz = runtime.loaded.config.tz
    exp = Exporter(runtime.store, runtime.loaded, clock=lambda: clock.now(tz))
    web = load_web_config(web_config) if web_config else None
    raise_open_file_limit()  # idle clients cost a descriptor each, not a thread
    try:
        server = make_server(exp, host, port, web=web)
    except OSError as exc:
        reason = (
            "the port is in use (another dxkpi?)"
            if exc.errno == errno.EADDRINUSE
            else exc.strerror or str(exc)
        )
        raise DxkpiError(
            f"cannot listen on {address}: {reason}; choose another address with --listen "
            "HOST:PORT or exporter.listen in the config"
        ) from None
    return exp, server


def _serve(exp: Exporter, server: BoundedHTTPServer) -> None:
    host, port = server.server_address[:2]
    exp.start()
    scheme = "https" if server.tls is not None else "http"
    base = f"{scheme}://{host!s}:{port}"
    console.print(f"serving {base}/metrics", highlight=False)
    console.print(f"KPI board: {base}/", highlight=False)
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
    from dxkpi.collector.contract import Window
    from dxkpi.collector.present import format_exact
    from dxkpi.collector.runner import collect_source

    runtime = _runtime(ctx, read_only=True)
    now = datetime.now(UTC)
    window = None
    if since:
        window = Window(start=_when(since, runtime), end=_when(until, runtime, default=now))
    store = None
    if not dry_run:
        store = _read_store(ctx)[1]
    # A source's failure is one `error:` line from the group.
    result = collect_source(
        runtime.loaded, store, source, window=window, kind="manual", dry_run=dry_run
    )
    if dry_run:
        items = result.observations or []
        table = Table(title=f"{source}: {len(items)} observations would be stored (dry run)")
        table.add_column("metric", overflow="fold")
        table.add_column("labels", overflow="fold")
        table.add_column("period", no_wrap=True)
        table.add_column("granularity", no_wrap=True)
        table.add_column("value", no_wrap=True, justify="right")
        for obs in items[:50]:
            labels = ",".join(f"{k}={v}" for k, v in sorted(obs.labels.items()))
            local = obs.start.astimezone(runtime.loaded.config.tz)
            period = local.strftime("%Y-%m-%d" if local.time() == dt_time() else "%Y-%m-%d %H:%M")
            table.add_row(obs.metric, labels, period, obs.granularity, format_exact(obs.value))
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
    from dxkpi.collector.runner import ReadAhead, backfill_windows, build_connector, collect_source

    runtime = _runtime(ctx, read_only=not enqueue)  # the embedded broker lives in the data dir
    start = _when(since, runtime)
    end = _when(until, runtime, default=datetime.now(UTC))
    if enqueue:
        from dxkpi.tasks.app import app

        app.send_task("dxkpi.backfill", args=(source, start.isoformat(), end.isoformat()))
        out.print(f"queued backfill of {source} from {start.isoformat()} to {end.isoformat()}")
        return
    windows = backfill_windows(build_connector(runtime.loaded, source), start, end)
    store = _read_store(ctx)[1]
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
    from dxkpi.collector.config import load_config
    from dxkpi.collector.runtime import EXAMPLE_CONFIG

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
    click.echo(f"store at {redact(runtime.storage_url)} is up to date")


@main.command()
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Print the config's JSON Schema (for editors)."""
    from dxkpi.collector.schema import config_schema

    out.print_json(json.dumps(config_schema(), ensure_ascii=False))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source, in a list.")
@click.pass_context
def sources(ctx: click.Context, as_json: bool) -> None:
    """Each source: connector, schedule, last success and last error (and runs going too
    long, backfill gaps)."""
    from dxkpi.collector.present import source_note, source_record

    runtime, store = _read_store(ctx)
    tz = runtime.loaded.config.tz
    health = {h.source: h for h in store.source_health()}
    now = time.time()
    sources_ = runtime.loaded.config.sources
    rows = [source_record(source, health.get(source.id), tz, now) for source in sources_]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    cells = [
        [
            _source_name(source, runtime.loaded.config),
            source.connector,
            str(row["schedule"]),
            "never"
            if row["last_status"] is None
            else _ts(health[source.id].last_success_at, runtime),
            # The row names the source already; one line, cut to what fits (--json has it all).
            source_note(row).replace(f"source {source.id!r}: ", ""),
        ]
        for source, row in zip(sources_, rows, strict=True)
    ]
    headers = ["source", "connector", "schedule", "last success", "last error"]
    widths = [max(len(c[i]) for c in [headers, *cells]) for i in range(4)]
    # Only the error gives way to fit the terminal (80 columns when piped); two spaces between.
    room = max(out.width - sum(widths) - 2 * len(widths), len(headers[4]))
    table = Table(*headers, box=None, pad_edge=False)
    for row_cells in cells:
        error = row_cells[4]
        table.add_row(*row_cells[:4], error if len(error) <= room else error[: room - 1] + "…")
    out.print(table)


def _source_name(source: SourceConfig, config: Config) -> str:
    """The source's id; with several organisations, a plain source's org before it (a
    template's expansion, `momo.procedures`, names its org already)."""
    if not config.multi_org or source.id.startswith(f"{source.org}."):
        return source.id
    return f"{source.org}/{source.id}"


def _ts(ts: float | None, runtime: Runtime) -> str:
    from dxkpi.collector.present import format_moment

    return format_moment(ts, runtime.loaded.config.tz)


def _as_of(text: str | None, runtime: Runtime) -> float:
    """--as-of, else the shared clock (DXKPI_AS_OF, else now)."""
    from dxkpi.collector import clock

    tz = runtime.loaded.config.tz
    try:
        return clock.parse_moment(text, tz) if text else clock.now(tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--as-of / DXKPI_AS_OF") from None


def _fiscal_year_option(text: str | None) -> int | None:
    from dxkpi.collector.fiscal import parse_fiscal_year

    if text is None:
        return None
    try:
        return parse_fiscal_year(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fiscal-year") from None


@main.command("refresh-kpis")
@click.option("--as-of", "as_of", help="Compute as of this moment (ISO date or time).")
@click.pass_context
def refresh_kpis(ctx: click.Context, as_of: str | None) -> None:
    """Store every KPI's period figures, outcomes and path for SQL readers (Grafana).

    Workers do this after each collection that changed data and every 15 minutes; run it by
    hand after changing the KPIs in the config, or to chart the figures as they stood then.
    """
    from dxkpi.collector.kpi_history import refresh_kpi_periods

    runtime, store = _read_store(ctx)
    moment = _as_of(as_of, runtime)
    history = refresh_kpi_periods(store, runtime.loaded.config, moment)
    out.print(
        f"stored {len(history.periods)} periods and {len(history.outcomes)} target outcomes "
        f"of {len(history.kpis)} KPIs as of {_ts(moment, runtime)}",
        highlight=False,
    )


@main.command()
@click.option(
    "--fiscal-year", "fiscal_year", help="Each KPI's figure for this fiscal year (R3, FY2021)."
)
@click.option("--as-of", "as_of", help="The figures as they stood then (ISO date or time).")
@click.option("--lang", type=click.Choice(["ja", "en"]), default="ja", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@ORG_OPTION
@click.pass_context
def status(
    ctx: click.Context,
    fiscal_year: str | None,
    as_of: str | None,
    lang: str,
    as_json: bool,
    orgs: tuple[str, ...],
) -> None:
    """Each KPI's reported figure, target, progress and status; each source's health.

    A KPI's figure is that of its latest complete reported period (a fiscal year's total, a
    month's value), or of the fiscal year given with --fiscal-year.
    """
    from rich import box
    from rich.markup import escape

    from dxkpi.collector.kpi import KpiCalculator, KpiState
    from dxkpi.collector.present import (
        STATUS_WORDS,
        Lang,
        clip,
        format_ratio,
        kpi_record,
        org_label,
        period_label,
        rollup_note,
        short_fiscal_year,
        source_note,
        source_record,
        split_value,
    )

    runtime = _runtime(ctx, read_only=True)
    store = runtime.store
    require_current_schema(store)
    tz = runtime.loaded.config.tz
    moment = _as_of(as_of, runtime)
    year = _fiscal_year_option(fiscal_year)
    scope = _org_scope(runtime.loaded.config, orgs)
    states = KpiCalculator(store, runtime.loaded.config).compute_all(moment, fiscal_year=year)
    states = [state for state in states if scope is None or state.org in scope]
    listed = [s for s in runtime.loaded.config.sources if scope is None or s.org in scope]
    health = {h.source: h for h in store.source_health()}
    if as_json:
        records = {
            "as_of": datetime.fromtimestamp(moment, tz).isoformat(),
            "fiscal_year": year,
            "kpis": [kpi_record(state, tz) for state in states],
            "sources": [
                source_record(source, health.get(source.id), tz, time.time()) for source in listed
            ],
        }
        out.print_json(json.dumps(records, ensure_ascii=False))
        return
    language: Lang = "ja" if lang == "ja" else "en"
    when = _ts(moment, runtime)
    title = f"KPIs as of {when}" + (f", {short_fiscal_year(year)} (FY{year})" if year else "")
    config = runtime.loaded.config

    def kpi_table(table_title: str, first_column: str, width: int) -> Table:
        table = Table(
            title=table_title,
            title_justify="left" if config.multi_org else "center",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        table.add_column(first_column, width=width, overflow="fold")
        table.add_column("period", no_wrap=True)
        table.add_column("value", justify="right", no_wrap=True)
        table.add_column("target", justify="right", no_wrap=True)
        table.add_column("prog.", justify="right", no_wrap=True)
        table.add_column("path", justify="right", no_wrap=True)
        table.add_column("status", no_wrap=True)
        return table

    def kpi_row(state: KpiState, name: str, width: int, unit_line: bool) -> list[str]:
        kpi = state.kpi
        word = STATUS_WORDS[state.status_word][language]
        note = ""
        if state.rollup is not None and not state.rollup.complete:
            note = rollup_note(state, language)
        elif state.status_word == "overdue":
            note = f"due {_ts(state.next_data_due_ts, runtime)[:10]}"
        elif state.stalled and state.status_word != "stalled":
            note = STATUS_WORDS["stalled"][language]
        elif state.status_word == "no_data" and state.running_value is not None:
            note = "partial"
        value, unit = split_value(state.value, kpi.unit)
        if not state.complete and state.value is not None:
            value += "*"
        target, _ = split_value(state.target.value, kpi.unit)
        target_year = short_fiscal_year(state.target.fiscal_year)
        progress, path = format_ratio(state.progress), format_ratio(state.expected_progress)
        if not state.plan_applies:
            # A member's part of a summed roll-up: the plan's target is the roll-up's.
            target, target_year, progress, path = "-", "", "", ""
            word = "内訳" if language == "ja" else "part"
        if unit_line:
            # Two lines a KPI: the unit and the target year go under their numbers.
            value_cell = f"{value}\n[dim]{escape(unit)}[/dim]"
            target_cell = f"{target}\n[dim]{target_year}[/dim]"
        else:
            # One line an organisation: the unit is in the KPI's heading.
            value_cell = value
            target_cell = f"{target} [dim]{target_year}[/dim]" if target_year else target
        status_cell = f"{word}\n[dim]{escape(note)}[/dim]" if note or unit_line else word
        return [
            escape(clip(name, width, lines=2)),
            period_label(state, language, short=True),
            value_cell,
            target_cell,
            progress,
            path,
            status_cell,
        ]

    if not config.multi_org:
        # Two lines a KPI at 80 columns: the name wraps to two lines (cut with … past that).
        kpis = kpi_table(title, "指標 / KPI" if language == "ja" else "KPI", NAME_WIDTH)
        for state in states:
            name = state.kpi.name_ja if language == "ja" else state.kpi.name_en
            kpis.add_row(*kpi_row(state, name, NAME_WIDTH, unit_line=True))
        out.print(kpis)
    else:
        # Several organisations: a block per KPI, titled with its name and unit, a line per
        # organisation (the roll-up last), so that the figures keep the width they need.
        out.print(f"[b]{escape(title)}[/b]")
        by_kpi: dict[str, list[KpiState]] = {}
        for state in states:
            by_kpi.setdefault(state.kpi.id, []).append(state)
        for number, group in enumerate(by_kpi.values()):
            kpi = group[0].kpi
            name = kpi.name_ja if language == "ja" else kpi.name_en
            _, unit = split_value(group[0].value or group[0].target.value, kpi.unit)
            heading = f"{name}（{unit}）" if language == "ja" else f"{name} ({unit})"
            table = kpi_table(
                escape(heading), "団体 / org" if language == "ja" else "organisation", ORG_WIDTH
            )
            table.show_header = number == 0
            for state in sorted(group, key=lambda s: s.rollup is not None):
                label = org_label(state, config, language)
                table.add_row(*kpi_row(state, label, ORG_WIDTH, unit_line=False))
            out.print(table)
    if not any(state.value is not None for state in states):
        out.print(
            "No KPI has a complete reported period yet: collect the sources "
            "(`dxkpi collect SOURCE` or `dxkpi backfill SOURCE --since DATE`)."
        )
    if any(not state.complete and state.value is not None for state in states):
        out.print("* the period is not complete yet: a partial figure.")
    sources = Table(title="Sources", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    sources.add_column("source", overflow="fold")
    for column in ("connector", "last run", "last success"):
        sources.add_column(column, overflow="fold")
    sources.add_column("last error", overflow="fold", ratio=2)
    for source in listed:
        h = health.get(source.id)
        note = source_note(source_record(source, h, tz, time.time()))
        sources.add_row(
            _source_name(source, config),
            source.connector,
            (h.last_status or "-") if h else "never",
            _ts(h.last_success_at if h else None, runtime),
            note.replace(f"source {source.id!r}: ", "")[:200],
        )
    out.print(sources)


@main.command()
@click.option(
    "--fiscal-year", "fiscal_year", required=True, help="The year reported on (R3, FY2021)."
)
@click.option("--lang", type=click.Choice(["ja", "en"]), default="ja", show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["xlsx", "md", "html"]), default="md", show_default=True
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="File to write (md/html: stdout)."
)
@click.option("--as-of", "as_of", help="The data as it stood then (ISO date or time).")
@ORG_OPTION
@click.pass_context
def report(
    ctx: click.Context,
    fiscal_year: str,
    lang: str,
    fmt: str,
    output: str | None,
    as_of: str | None,
    orgs: tuple[str, ...],
) -> None:
    """The council report: each KPI's figure for the fiscal year against its plan, and the
    year's operational totals (the same figures as `status --fiscal-year`)."""
    from typing import cast

    from dxkpi.collector.present import Lang
    from dxkpi.collector.report import Format, build_report, render

    year = _fiscal_year_option(fiscal_year)
    assert year is not None
    if fmt == "xlsx" and output is None:
        raise click.UsageError("--format xlsx writes a file: give --output FILE.xlsx")
    from sqlalchemy.exc import DBAPIError

    runtime = _runtime(ctx)
    scope = _org_scope(runtime.loaded.config, orgs)
    try:
        built = build_report(
            runtime.store, runtime.loaded, year, _as_of(as_of, runtime), orgs=scope
        )
    except DBAPIError as exc:
        # A report only reads: a store without tables is told so, not migrated behind its back.
        reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        click.echo(
            f"error: cannot read the store at {redact(runtime.storage_url)} ({reason}); "
            "run `dxkpi migrate` and collect the sources first",
            err=True,
        )
        ctx.exit(1)
    body = render(built, cast(Lang, lang), cast(Format, fmt))
    if output is None:
        click.echo(body.decode("utf-8"), nl=False)
        return
    with open(output, "wb") as f:
        f.write(body)
    console.print(f"wrote {output}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["main"]


@main.command()
@click.option("--listen", default=None, help="HOST:PORT (default 127.0.0.1:9811, from config).")
@click.pass_context
def receiver(ctx: click.Context, listen: str | None) -> None:
    """Take vendor webhooks and pushed figures; each is stored before it is answered."""
    runtime = _runtime(ctx)
    _check_store(runtime)
    with contextlib.suppress(KeyboardInterrupt):  # SIGTERM or Ctrl-C: a clean stop
        _receiver_server(runtime, listen).serve_forever()


def _receiver_server(runtime: Runtime, listen: str | None) -> ReceiverServer:
    from dxkpi.collector.exporter import parse_listen
    from dxkpi.collector.receiver.serve import ReceiverServer

    host, port = parse_listen(listen or runtime.loaded.config.receiver.listen)
    server = ReceiverServer(runtime.store, runtime.loaded, host, port)
    console.print(f"receiving on http://{host}:{server.port}/", highlight=False)
    return server


def _start_receiver(runtime: Runtime) -> None:
    """Inside `dxkpi run`: the receiver in a thread beside the exporter, which it wakes at once
    on each stored event, when the config declares webhooks or push clients."""
    receiver_config = runtime.loaded.config.receiver
    if receiver_config.webhooks or receiver_config.clients:
        _receiver_server(runtime, None).start()
