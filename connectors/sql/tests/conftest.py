"""The fixture databases (real servers: CI=true fails when one is unreachable, else skips)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dxkpi.connectors.sql.tests import databases
from tests.conftest import unavailable


@pytest.fixture
def pg_db() -> Iterator[databases.Database]:
    try:
        context = databases.postgres()
        database = context.__enter__()
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    try:
        yield database
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[databases.Database]:
    with databases.sqlite(tmp_path) as database:
        yield database


@pytest.fixture
def maria_db() -> Iterator[databases.Database]:
    try:
        context = databases.mariadb()
        database = context.__enter__()
    except Exception as exc:
        unavailable("MariaDB", exc)
    try:
        yield database
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(params=["postgres", "sqlite", "mariadb"])
def any_db(request: pytest.FixtureRequest) -> databases.Database:
    name = {"postgres": "pg_db", "sqlite": "sqlite_db", "mariadb": "maria_db"}[request.param]
    database: databases.Database = request.getfixturevalue(name)
    return database


@pytest.fixture(params=["postgres", "mariadb"])
def server_db(request: pytest.FixtureRequest) -> databases.Database:
    database: databases.Database = request.getfixturevalue(
        f"{request.param}_db".replace("postgres_", "pg_").replace("mariadb_", "maria_")
    )
    return database
