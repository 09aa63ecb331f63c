"""The KPI history in PostgreSQL, as Grafana reads it.

The shipped example is collected through the real connectors and runner into a real PostgreSQL,
`refresh_kpi_periods` stores its KPI figures, and the postgres init script of docker-compose
(grafana/postgres-init/) creates the read-only login. Then every SQL query of every dashboard
panel and variable runs as that login, with Grafana's variables filled in as Grafana writes
them, and must return rows: the fixture has data for every KPI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InternalError, ProgrammingError
from test_dashboards import sql_queries, substitute

from dxkpi.collector.cli import main
from dxkpi.collector.clock import parse_moment
from dxkpi.collector.config import Config, load_config
from dxkpi.collector.kpi import KpiCalculator
from dxkpi.collector.kpi_history import refresh_kpi_periods
from dxkpi.collector.runner import collect_source
from dxkpi.collector.runtime import set_current
from dxkpi.collector.storage import Store
from dxkpi.collector.storage.kpi_periods import KpiHistory, read_kpi_history, replace_kpi_history
from tests.conftest import PG_ADMIN_URL, reset_postgres, write_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "collector" / "example"
INIT_SCRIPT = ROOT / "grafana" / "postgres-init" / "10-dxkpi-readers.sh"
AS_OF = "2026-12-03"  # the day the example's data was last looked at
VIEWS = ("dxkpi_kpis_v", "dxkpi_kpi_periods_v", "dxkpi_kpi_outcomes_v", "dxkpi_kpi_path_v")


@dataclass
class History:
    store: Store
    config: Config
    reader: Engine  # the read-only login Grafana uses
    database: str


def quoted(values: list[str]) -> str:
    """A multi-value variable as Grafana's SQL data sources write it: 'a','b'."""
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def run_init_script(database: str, reader: str) -> None:
    """grafana/postgres-init/10-dxkpi-readers.sh, as the postgres image runs it, on `database`."""
    if shutil.which("psql") is None:
        message = "psql is not installed (Debian: apt-get install postgresql-client)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    admin = make_url(PG_ADMIN_URL)
    env = os.environ | {
        "PGHOST": admin.host or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "POSTGRES_USER": admin.username or "postgres",
        "POSTGRES_DB": database,
        "GRAFANA_DB_USER": reader,
        "GRAFANA_DB_PASSWORD": f"pw-{uuid.uuid4().hex}",
    }
    result = subprocess.run(
        ["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # quiet when it has nothing to say


def connect_as(reader: str, database: str) -> Engine:
    url = make_url(PG_ADMIN_URL).set(username=reader, password=None, database=database)
    return create_engine(url)


def drop_role(role: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    engine.dispose()


def collect_example(folder: Path, store: Store) -> Config:
    shutil.copytree(EXAMPLE, folder)
    for path in (folder / "data").iterdir():  # settled: older than the csv min_file_age
        os.utime(path, (time.time() - 3600,) * 2)
    loaded = load_config(folder / "dxkpi.yaml")
    for source in loaded.config.sources:
        result = collect_source(loaded, store, source.id)
        assert result.status == "success", (source.id, result)
    return loaded.config


@pytest.fixture(scope="module")
def history(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    reset_postgres(pg_database)
    store = Store(pg_database)
    store.migrate()
    config = collect_example(tmp_path_factory.mktemp("history") / "example", store)
    refresh_kpi_periods(store, config, parse_moment(AS_OF, config.tz))
    # The views exist before the role here (an older database): the script grants them.
    reader = f"dxkpi_grafana_test_{uuid.uuid4().hex[:8]}"
    database = make_url(pg_database).database
    assert database
    run_init_script(database, reader)
    engine = connect_as(reader, database)
    yield History(store, config, engine, database)
    engine.dispose()
    store.close()
    drop_role(reader)


def fill_in(sql: str, variables: dict[str, list[str]]) -> str:
    return substitute(sql, {name: quoted(values) for name, values in variables.items()})


def run(engine: Engine, sql: str) -> tuple[list[str], list[Any]]:
    with engine.connect() as connection:
        result = connection.execute(text(sql.replace(":", r"\:")))
        return list(result.keys()), list(result.fetchall())


def test_every_panel_and_variable_query_returns_rows_for_all_kpis(history: History) -> None:
    config = history.config
    variables = {
        "kpi": [kpi.id for kpi in config.kpis],
        "area": sorted({kpi.area for kpi in config.kpis}),
        "org": [org.id for org in config.organisations],
    }
    queries = sql_queries()
    assert len(queries) >= 7
    empty = []
    for query in queries:
        columns, rows = run(history.reader, fill_in(query.sql, variables))
        if not rows:
            empty.append(f"{query.dashboard} / {query.panel} ({query.ref})")
        if "AS time" in query.sql:  # Grafana's time_series format: time, metric, value
            assert columns == ["time", "metric", "value"], query
            times = [row[0] for row in rows]
            assert times == sorted(times) and all(t.tzinfo for t in times), query
    assert not empty, "queries without rows:\n" + "\n".join(empty)


def test_every_repeated_panel_shows_each_kpi(history: History) -> None:
    """Grafana runs the panels of the per-KPI row once per KPI: each must show something."""
    repeated: dict[str, list[str]] = {}
    for query in sql_queries():
        if query.repeated:
            repeated.setdefault(query.panel, []).append(query.sql)
    assert len(repeated) == 2
    for kpi in history.config.kpis:
        for panel, sqls in repeated.items():
            rows = [
                row
                for sql in sqls
                for row in run(history.reader, fill_in(sql, {"kpi": [kpi.id], "org": [kpi.org]}))[1]
            ]
            assert rows, f"{panel}: nothing for {kpi.id}"


def test_views_hold_the_figures_of_the_data_files(history: History) -> None:
    # annual_indicators.csv: smart_agriculture_farms 525 (R2) ... 712 (R6), 758 (R7).
    _, rows = run(
        history.reader,
        "SELECT fiscal_year_short, value, complete FROM dxkpi_kpi_periods_v "
        "WHERE kpi = 'smart_agriculture_farms' ORDER BY fiscal_year",
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("R2", 525, True),
        ("R3", 571, True),
        ("R4", 618, True),
        ("R5", 664, True),
        ("R6", 712, True),
        ("R7", 758, True),
    ]
    # The same figures as `status` and the gauges: one computation.
    states = KpiCalculator(history.store, history.config).compute_all(
        parse_moment(AS_OF, history.config.tz)
    )
    _, kpis = run(history.reader, "SELECT kpi, value, progress, status FROM dxkpi_kpis_v")
    assert {r[0]: (r[1], r[2], r[3]) for r in kpis} == {
        s.kpi.id: (s.value, s.progress, s.status_word) for s in states
    }
    _, outcomes = run(
        history.reader,
        "SELECT kpi, target_fiscal_year_short, outcome FROM dxkpi_kpi_outcomes_v",
    )
    # Every example target is R7 (FY2025), over, with its figure in.
    assert {r[0] for r in outcomes} == {kpi.id for kpi in history.config.kpis}
    assert {(r[1], r[2] in ("achieved", "missed")) for r in outcomes} == {("R7", True)}


def test_the_reader_may_read_the_views_only(history: History) -> None:
    for view in VIEWS:
        run(history.reader, f"SELECT * FROM {view} LIMIT 1")
    for statement in (
        "SELECT * FROM kpi_periods",
        "SELECT * FROM observations",
        "SELECT * FROM series",
    ):
        with pytest.raises(ProgrammingError, match="permission denied"):
            run(history.reader, statement)
    for statement in ("DELETE FROM kpis", "CREATE TABLE grafana_was_here (x int)"):
        with pytest.raises(InternalError, match="read-only transaction"):
            run(history.reader, statement)
        # Even a session that turns read-only off has no right to write.
        with history.reader.connect() as connection, pytest.raises(ProgrammingError):
            connection.execute(text("SET TRANSACTION READ WRITE"))
            connection.execute(text(statement))


def test_a_refresh_replaces_the_rows_and_concurrent_refreshes_queue(history: History) -> None:
    before = read_kpi_history(history.store)
    moment = parse_moment(AS_OF, history.config.tz)
    errors: list[BaseException] = []

    def refresh() -> None:
        try:
            refresh_kpi_periods(history.store, history.config, moment)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    after = read_kpi_history(history.store)
    assert after.periods == before.periods and after.outcomes == before.outcomes
    assert after.path == before.path
    assert len(after.periods) > 100 and len(after.kpis) == len(history.config.kpis)


def test_a_kpi_dropped_from_the_config_leaves_no_rows(history: History) -> None:
    kept = history.config.model_copy(update={"kpis": history.config.kpis[:1]})
    try:
        refresh_kpi_periods(history.store, kept, parse_moment(AS_OF, history.config.tz))
        stored = read_kpi_history(history.store)
        assert {row["kpi"] for row in stored.periods} == {kept.kpis[0].id}
        assert [row["kpi"] for row in stored.kpis] == [kept.kpis[0].id]
    finally:
        refresh_kpi_periods(history.store, history.config, parse_moment(AS_OF, history.config.tz))


def test_a_misspelt_column_fails_the_refresh_and_keeps_the_old_rows(history: History) -> None:
    before = read_kpi_history(history.store)
    broken = KpiHistory(kpis=[dict(before.kpis[0]) | {"valeu": 1.0}])
    with pytest.raises(ValueError, match="kpis has no column valeu"):
        replace_kpi_history(history.store, broken)
    assert read_kpi_history(history.store).periods == before.periods


def test_the_migration_grants_the_views_to_a_reader_role_made_first(
    tmp_path: Path, history: History
) -> None:
    """docker-compose's order: the init script runs on the new volume, then `dxkpi migrate`."""
    database = f"dxkpi_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    reader = f"dxkpi_grafana_test_{uuid.uuid4().hex[:8]}"
    url = make_url(PG_ADMIN_URL).set(database=database)
    store = Store(url.render_as_string(hide_password=False))
    engine = None
    try:
        run_init_script(database, reader)
        store.migrate()
        engine = connect_as(reader, database)
        for view in VIEWS:
            assert run(engine, f"SELECT count(*) FROM {view}")[1] == [(0,)]
        with pytest.raises(ProgrammingError, match="permission denied"):
            run(engine, "SELECT * FROM kpis")
    finally:
        if engine is not None:
            engine.dispose()
        store.close()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}"'))
        admin.dispose()
        drop_role(reader)


def test_refresh_kpis_command_stores_the_history(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    args = ["--config", str(config), "--data-dir", str(tmp_path / "d")]
    runner = CliRunner()
    try:
        result = runner.invoke(main, [*args, "migrate"])
        assert result.exit_code == 0, result.output
        set_current(None)
        result = runner.invoke(main, [*args, "collect", "portal", "--since", "2024-04-01"])
        assert result.exit_code == 0, result.output
        set_current(None)
        result = runner.invoke(main, [*args, "refresh-kpis", "--as-of", "2024-04-10"])
        assert result.exit_code == 0, result.output
        assert "stored 1 periods and 0 target outcomes of 1 KPIs as of 2024-04-10" in result.output
    finally:
        set_current(None)
    store = Store(f"sqlite:///{tmp_path / 'd' / 'dxkpi.sqlite'}")
    try:
        stored = read_kpi_history(store)
    finally:
        store.close()
    (period,) = stored.periods
    # FY2024 so far (3 days of page views): running, not complete.
    assert period["label"] == "FY2024" and period["value"] == 475 and period["complete"] is False
    assert [row["status"] for row in stored.kpis] == ["no_data"]
