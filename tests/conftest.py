"""Shared fixtures: real PostgreSQL and Redis (fail under CI=true when unreachable, skip otherwise),
a SQLite store, and a small config whose source is a real CSV file."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from dxkpi.collector.storage import Store

PG_ADMIN_URL = os.environ.get(
    "DXKPI_TEST_PG_ADMIN", "postgresql+psycopg://root@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DXKPI_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI") == "true"


def unavailable(service: str, error: BaseException) -> None:
    message = f"{service} is unreachable: {error}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the services the tests need must run)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway database for this test session; yields its URL."""
    name = f"dxkpi_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def reset_postgres(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    reset_postgres(pg_database)
    return pg_database


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    store = Store(pg_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Store:
    name = "sqlite_store" if request.param == "sqlite" else "pg_store"
    result: Store = request.getfixturevalue(name)
    return result


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        unavailable("Redis", exc)
    return REDIS_URL


PAGE_VIEWS_CSV = """date,page,page_views
2024-04-01,/top,100
2024-04-01,/apply,40
2024-04-02,/top,120
2024-04-02,/apply,35
2024-04-03,/top,130
2024-04-03,/apply,50
"""


def write_config(tmp_path: Path, extra: str = "", csv: str = PAGE_VIEWS_CSV) -> Path:
    """A config with one csvfile source (`portal`) and one KPI fed by it."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    csv_path = data / "pv.csv"
    csv_path.write_text(csv, encoding="utf-8")
    # The connector waits for files to settle; make this one old enough.
    os.utime(csv_path, (1_700_000_000, 1_700_000_000))
    config = tmp_path / "dxkpi.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            sources:
              - id: portal
                connector: csvfile
                schedule: {every: 1h}
                start: 2024-04-01
                settings:
                  path: data/pv.csv
                  period_column: date
                  labels: {page: page}
                  metrics:
                    - {name: portal_page_views, column: page_views, unit: page_views}
            kpis:
              - id: portal_views
                name_ja: ポータルPV
                name_en: Portal page views
                area: reconstruction
                unit: page_views
                baseline: {value: 1000, fiscal_year: R6}
                target: {value: 2000, fiscal_year: R7}
                feed: {kind: fiscal_year_sum, metric: portal_page_views}
            """
        )
        + extra,
        encoding="utf-8",
    )
    return config
