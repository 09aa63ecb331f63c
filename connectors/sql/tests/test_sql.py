"""The sql connector against real PostgreSQL, SQLite and MariaDB holding a fixture schema."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dxkpi.collector.contract import TOKYO, Granularity, Window
from dxkpi.collector.errors import (
    FatalSourceError,
    RetryableSourceError,
    SourceAuthError,
    SourceDataError,
)
from dxkpi.collector.testing import ConnectorContract, days, observations
from dxkpi.connectors.sql import SqlConnector
from dxkpi.connectors.sql.settings import SqlSettings
from dxkpi.connectors.sql.tests.databases import PASSWORD, Database, query

JUNE_2 = datetime(2025, 6, 2, tzinfo=TOKYO)
TWO_DAYS = days(JUNE_2, 2)  # June 2 and 3: :since 2025-06-02, :until 2025-06-04
FREE_PORT = 20517  # in this test run's range; nothing listens there
ROW_OF = "SELECT DATE '2025-06-02' AS day, 'A01' AS procedure_code,"

EXPECTED = {
    ("applications_online", "A01", 2): 21.0,
    ("applications_online", "B02", 2): 22.0,
    ("applications_all", "A01", 2): 42.0,
    ("applications_all", "B02", 2): 44.0,
    ("applications_online", "A01", 3): 31.0,
    ("applications_online", "B02", 3): 32.0,
    ("applications_all", "A01", 3): 62.0,
    ("applications_all", "B02", 3): 64.0,
}


def by_key(connector: SqlConnector, window: Window = TWO_DAYS) -> dict[tuple[str, str, int], float]:
    got = observations(connector.collect(window))
    assert all(o.granularity is Granularity.DAY and o.start.tzinfo == TOKYO for o in got)
    return {(o.metric, o.labels["procedure"], o.start.day): o.value for o in got}


def test_reads_the_window_from_each_database(any_db: Database) -> None:
    assert by_key(any_db.connector()) == EXPECTED


def test_the_window_is_bound_as_since_and_until(any_db: Database) -> None:
    """The database, not the connector, picks the rows: it counts what it was given."""
    counting = (
        f"SELECT :since AS day, COUNT(*) AS online, COUNT(*) AS total FROM {any_db.table}"
        " WHERE received_on >= :since AND received_on < :until"
    )
    connector = any_db.connector(query=counting, labels={})
    got = observations(connector.collect(days(JUNE_2, 3)))
    assert {(o.metric, o.start.date().isoformat(), o.value) for o in got} == {
        ("applications_online", "2025-06-02", 6.0),
        ("applications_all", "2025-06-02", 6.0),
    }


def test_a_window_ending_mid_day_includes_that_day(sqlite_db: Database) -> None:
    window = Window(JUNE_2, JUNE_2 + timedelta(days=1, hours=9))
    assert {day for _, _, day in by_key(sqlite_db.connector(), window)} == {2, 3}


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("INSERT INTO t VALUES (1)", "must be a SELECT, not INSERT"),
        ("UPDATE t SET n = 1", "must be a SELECT, not UPDATE"),
        ("DELETE FROM t", "must be a SELECT, not DELETE"),
        ("DROP TABLE t", "must be a SELECT, not DROP"),
        ("CREATE TABLE t2 AS SELECT * FROM t", "must be a SELECT, not CREATE"),
        ("TRUNCATE t", "must be a SELECT, not TRUNCATE"),
        ("SELECT 1 AS day; DELETE FROM t", "one SELECT statement, not 2 statements"),
        ("SELECT * INTO t2 FROM t", "SELECT … INTO (it creates a table)"),
        ("WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone", "contains DELETE"),
        ("SELECT * FROM t FOR UPDATE", "a row lock"),
        ("VACUUM", "not VACUUM"),
        ("SELECT FROM WHERE", "cannot be read as postgres SQL"),
        ("SELECT * FROM t WHERE n > :minimum", "names :minimum; only :since and :until"),
    ],
)
def test_anything_but_one_select_is_refused(sql: str, why: str) -> None:
    settings = {
        "url": "postgresql+psycopg://reader@db.example.lg.jp/stats",
        "query": sql,
        "period_column": "day",
        "metrics": [{"name": "applications", "column": "n", "unit": "applications"}],
    }
    with pytest.raises(ValidationError, match=why.replace("(", r"\(").replace(")", r"\)")):
        SqlSettings.model_validate(settings)


def test_a_select_that_writes_is_refused_by_the_read_only_transaction(pg_db: Database) -> None:
    """Defence in depth: `nextval` passes the parser (a function call) but writes."""
    writing = f"{ROW_OF} nextval('visits_seq') AS online, 1 AS total"
    with pytest.raises(FatalSourceError, match="read-only transaction refused") as caught:
        list(pg_db.connector(query=writing).collect(TWO_DAYS))
    assert "cannot execute nextval() in a read-only transaction" in str(caught.value)


def test_a_mariadb_function_that_writes_is_refused_by_the_read_only_transaction(
    maria_db: Database,
) -> None:
    log_table = f"{maria_db.table}_log"
    maria_db.admin(
        f"CREATE TABLE {log_table} (n INTEGER)",
        f"CREATE FUNCTION {log_table}_f() RETURNS INTEGER MODIFIES SQL DATA "
        f"BEGIN INSERT INTO {log_table} VALUES (1); RETURN 1; END",
    )
    reader = maria_db.url.split("//", 1)[1].split("@", 1)[0]
    maria_db.admin(f"GRANT EXECUTE ON FUNCTION {log_table}_f TO '{reader}'@'%'")
    writing = f"{ROW_OF} {log_table}_f() AS online, 1 AS total"
    try:
        with pytest.raises(FatalSourceError, match="read-only transaction refused"):
            list(maria_db.connector(query=writing).collect(TWO_DAYS))
    finally:
        maria_db.admin(f"DROP FUNCTION {log_table}_f", f"DROP TABLE {log_table}")


def test_postgres_statement_timeout_stops_a_slow_query(pg_db: Database) -> None:
    slow = f"{ROW_OF} 1 AS online, 1 AS total FROM pg_sleep(30)"
    connector = pg_db.connector(query=slow, statement_timeout="0.5s")
    with pytest.raises(FatalSourceError) as caught:
        list(connector.collect(TWO_DAYS))
    message = str(caught.value)
    assert "the database stopped the query after statement_timeout (0.5 s)" in message
    assert "canceling statement due to statement timeout" in message
    assert (
        "query \"SELECT DATE '2025-06-02' AS day" in message
        and "raise statement_timeout" in message
    )


def test_mariadb_statement_timeout_stops_a_slow_query(maria_db: Database) -> None:
    slow = f"{ROW_OF} SLEEP(30) AS online, 1 AS total"
    connector = maria_db.connector(query=slow, statement_timeout="0.5s")
    with pytest.raises(FatalSourceError) as caught:
        list(connector.collect(TWO_DAYS))
    message = str(caught.value)
    assert "the database stopped the query after statement_timeout (0.5 s)" in message
    assert "(1969) Query execution was interrupted (max_statement_time exceeded)" in message
    assert PASSWORD not in message


def test_sqlite_statement_timeout_interrupts_a_slow_query(sqlite_db: Database) -> None:
    slow = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000)"
        " SELECT '2025-06-02' AS day, 'A01' AS procedure_code, MAX(i) AS online, 1 AS total FROM n"
    )
    connector = sqlite_db.connector(query=slow, statement_timeout="0.3s")
    with pytest.raises(FatalSourceError, match=r"statement_timeout \(0.3 s\): interrupted"):
        list(connector.collect(TWO_DAYS))


def test_a_column_renamed_at_the_source_names_the_column_and_the_query(any_db: Database) -> None:
    renamed = query(any_db.table).replace("online,", "online AS online_count,")
    with pytest.raises(SourceDataError) as caught:
        list(any_db.connector(query=renamed).collect(TWO_DAYS))
    message = str(caught.value)
    assert "the result has no column 'online' (metrics[applications_online].column)" in message
    assert "it has 'day', 'procedure_code', 'online_count', 'total'" in message
    assert (
        "query 'SELECT received_on AS day, procedure_code, online AS online_count, total"
        f" FROM {any_db.table} WHERE" in message
    )
    assert message.startswith("source 'city_db': ")


def test_a_database_that_is_down_is_retryable(server_db: Database) -> None:
    any_db = server_db
    down = any_db.url.replace(
        any_db.url.split("@", 1)[1].split("/", 1)[0], f"127.0.0.1:{FREE_PORT}"
    )
    with pytest.raises(RetryableSourceError, match="the database cannot be reached now") as caught:
        list(any_db.connector(url=down).collect(TWO_DAYS))
    assert PASSWORD not in str(caught.value)


def test_a_missing_sqlite_file_is_fatal_and_not_created(
    tmp_path: Path, sqlite_db: Database
) -> None:
    missing = tmp_path / "gone.db"
    with pytest.raises(FatalSourceError, match="no such database"):
        list(sqlite_db.connector(url=f"sqlite:///{missing}").collect(TWO_DAYS))
    assert not missing.exists()


def test_a_wrong_password_is_fatal_clear_and_secret_free(
    maria_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + PASSWORD
    with pytest.raises(SourceAuthError) as caught:
        list(maria_db.connector(password=wrong).collect(TWO_DAYS))
    message = str(caught.value)
    assert "the database refused the login: (1045) Access denied for user" in message
    assert "check the url's user and the password's environment variable" in message
    for secret in (wrong, PASSWORD):
        assert secret not in message and secret not in caplog.text


def test_an_unknown_postgres_role_is_fatal_and_secret_free(pg_db: Database) -> None:
    nobody = pg_db.url.replace("dxkpi_reader_", "nobody_")
    with pytest.raises(SourceAuthError, match=r'role "nobody_\w+" does not exist') as caught:
        list(pg_db.connector(url=nobody).collect(TWO_DAYS))
    assert PASSWORD not in str(caught.value)


def test_a_password_in_the_url_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"write `password: \$\{DB_PASSWORD\}`"):
        SqlSettings.model_validate(
            {
                "url": f"postgresql+psycopg://reader:{PASSWORD}@db/stats",
                "query": "SELECT 1 AS day, 1 AS n",
                "period_column": "day",
                "metrics": [{"name": "applications", "column": "n", "unit": "applications"}],
            }
        )


def test_bad_rows_reject_the_result_whole(sqlite_db: Database) -> None:
    bad = (
        "SELECT '2025-06-02' AS day, 'A01' AS procedure_code, 'many' AS online, 1 AS total"
        " UNION ALL SELECT '2025-06-02', 'A01', 3, 1"
    )
    with pytest.raises(SourceDataError) as caught:
        list(sqlite_db.connector(query=bad).collect(TWO_DAYS))
    message = str(caught.value)
    assert "rejected the result whole (nothing was stored)" in message
    assert "row 1: column 'online': 'many' is not a number" in message
    assert "row 2: applications_all for this period and labels is already in row 1" in message


def test_japanese_periods_and_numbers_are_read_as_in_csvfile(sqlite_db: Database) -> None:
    monthly = (
        "SELECT '令和7年6月' AS month, '1,234' AS online, '△5' AS total"
        " UNION ALL SELECT '2025/07', '２，０００', '-'"
    )
    connector = sqlite_db.connector(
        query=monthly,
        period_column="month",
        granularity="month",
        labels={},
        static_labels={"org": "city_a"},
    )
    got = observations(connector.collect(Window(JUNE_2, JUNE_2 + timedelta(days=60))))
    assert {(o.metric, o.start.month, o.value, o.granularity) for o in got} == {
        ("applications_online", 6, 1234.0, Granularity.MONTH),
        ("applications_all", 6, -5.0, Granularity.MONTH),
        ("applications_online", 7, 2000.0, Granularity.MONTH),
    }
    assert all(o.labels == {"org": "city_a"} for o in got)


def test_too_many_rows_are_refused(pg_db: Database) -> None:
    with pytest.raises(SourceDataError, match=r"more than max_rows \(3\) rows"):
        list(pg_db.connector(max_rows=3).collect(TWO_DAYS))


# -- the shared contract ---------------------------------------------------------------------


INVALID_SETTINGS: list[dict[str, Any]] = [
    {},
    {
        "url": "postgresql://r@h/db",
        "query": "DELETE FROM t",
        "period_column": "d",
        "metrics": [{"name": "a", "column": "n", "unit": "x"}],
    },
    {
        "url": "oracle://r@h/db",
        "query": "SELECT 1",
        "period_column": "d",
        "metrics": [{"name": "a", "column": "n", "unit": "x"}],
    },
    {"url": "postgresql://r@h/db", "query": "SELECT 1", "period_column": "d", "metrics": []},
    {
        "url": "not a url",
        "query": "SELECT 1",
        "period_column": "d",
        "metrics": [{"name": "a", "column": "n", "unit": "x"}],
    },
    {
        "url": "postgresql://r@h/db",
        "query": "SELECT 1",
        "period_column": "d",
        "statement_timeout": "0s",
        "metrics": [{"name": "a", "column": "n", "unit": "x"}],
    },
]


class TestSqlContract(ConnectorContract):
    connector_name = "sql"
    secrets = (PASSWORD,)

    @pytest.fixture(autouse=True)
    def _databases(self, pg_db: Database, maria_db: Database) -> None:
        self.pg, self.maria = pg_db, maria_db

    def invalid_settings(self) -> list[dict[str, Any]]:
        return INVALID_SETTINGS

    @contextmanager
    def _case(self, connector: SqlConnector) -> Iterator[tuple[SqlConnector, Window]]:
        yield connector, TWO_DAYS

    def healthy_case(self) -> Any:
        return self._case(self.pg.connector())

    def retryable_case(self) -> Any:
        port = self.pg.url.split("@", 1)[1].split("/", 1)[0]
        return self._case(
            self.pg.connector(url=self.pg.url.replace(port, f"127.0.0.1:{FREE_PORT}"))
        )

    def fatal_case(self) -> Any:
        return self._case(self.maria.connector(password="wrong-" + PASSWORD))


# -- through the config ----------------------------------------------------------------------


def _config(tmp_path: Path, db: Database, password: str) -> Path:
    config = tmp_path / "dxkpi.yaml"
    config.write_text(
        "sources:\n"
        "  - id: city_db\n"
        "    connector: sql\n"
        "    schedule: {every: 1h}\n"
        "    settings:\n"
        f"      url: {db.url}\n"
        f"      password: {password}\n"
        "      query: |\n"
        + "".join(f"        {line}\n" for line in query(db.table).splitlines())
        + "      period_column: day\n"
        "      labels: {procedure: procedure_code}\n"
        "      metrics:\n"
        "        - {name: applications_online, column: online, unit: applications}\n"
        "        - {name: applications_all, column: total, unit: applications}\n",
        encoding="utf-8",
    )
    return config


def test_the_password_comes_from_the_environment(
    tmp_path: Path, pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dxkpi.collector.config import load_config

    monkeypatch.setenv("CITY_DB_PASSWORD", PASSWORD)
    loaded = load_config(_config(tmp_path, pg_db, "${CITY_DB_PASSWORD}"))
    connector = SqlConnector(loaded.settings["city_db"], loaded.context("city_db"))
    assert by_key(connector) == EXPECTED


def test_an_inline_password_is_a_config_error(tmp_path: Path, pg_db: Database) -> None:
    from dxkpi.collector.config import load_config
    from dxkpi.collector.errors import ConfigError

    with pytest.raises(ConfigError, match="secrets are never written inline") as caught:
        load_config(_config(tmp_path, pg_db, PASSWORD))
    assert PASSWORD not in str(caught.value)


def test_the_example_validates() -> None:
    import yaml

    example = Path(__file__).parents[1] / "example.yaml"
    entry = yaml.safe_load(example.read_text(encoding="utf-8"))["sources"][0]
    settings = {**entry["settings"], "password": "from-the-environment"}
    assert SqlSettings.model_validate(settings).parameters() == ["since", "until"]
