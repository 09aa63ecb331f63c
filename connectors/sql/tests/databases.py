"""Real databases with a municipality's fixture schema: one table of applications per day and
procedure, as an internal e-application system keeps it. PostgreSQL (a throwaway database and a
role that can only SELECT, as the README asks), SQLite (a file) and MariaDB (a table in the
`test` database, read by a user with SELECT on it and a password)."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from dxkpi.collector.testing import build, context_for
from dxkpi.connectors.sql import SqlConnector

PG_ADMIN = os.environ.get(
    "DXKPI_TEST_PG_ADMIN", "postgresql+psycopg://root@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN = os.environ.get("DXKPI_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test")
PASSWORD = "canary-Pw-5d1e9f"  # the reader's password: must never appear in an error or log
DAYS = [date(2025, 6, d) for d in range(1, 6)]
PROCEDURES = ("A01", "B02")


def rows() -> list[tuple[date, str, int, int]]:
    return [
        (day, code, day.day * 10 + n, (day.day * 10 + n) * 2)
        for day in DAYS
        for n, code in enumerate(PROCEDURES, start=1)
    ]


def query(table: str) -> str:
    return (
        f"SELECT received_on AS day, procedure_code, online, total FROM {table}\n"
        " WHERE received_on >= :since AND received_on < :until ORDER BY 1, 2"
    )


@dataclass
class Database:
    backend: str
    url: str  # without the password
    table: str
    password: str | None = None
    admin_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "url": self.url,
            "query": query(self.table),
            "period_column": "day",
            "granularity": "day",
            "labels": {"procedure": "procedure_code"},
            "metrics": [
                {"name": "applications_online", "column": "online", "unit": "applications"},
                {"name": "applications_all", "column": "total", "unit": "applications"},
            ],
        }
        if self.password is not None:
            settings["password"] = self.password
        return {**settings, **overrides}

    def connector(self, source_id: str = "city_db", **overrides: Any) -> SqlConnector:
        return build(SqlConnector, self.settings(**overrides), context_for(source_id))

    def admin(self, *statements: str) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
        engine.dispose()


CREATE = (
    "CREATE TABLE {t}"
    " (received_on DATE, procedure_code VARCHAR(20), online INTEGER, total NUMERIC(10, 0))"
)


def _fill(admin_url: str, table: str) -> None:
    engine = create_engine(admin_url)
    with engine.begin() as connection:
        connection.execute(text(CREATE.format(t=table)))
        connection.execute(
            text(f"INSERT INTO {table} VALUES (:d, :p, :o, :t)"),
            [{"d": d, "p": p, "o": o, "t": t} for d, p, o, t in rows()],
        )
    engine.dispose()


@contextmanager
def postgres() -> Iterator[Database]:
    name = f"dxkpi_src_{uuid.uuid4().hex[:10]}"
    reader = f"dxkpi_reader_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
        connection.execute(text(f"CREATE ROLE {reader} LOGIN PASSWORD '{PASSWORD}'"))
    base = PG_ADMIN.rsplit("/", 1)[0]
    database = Database(
        "postgresql",
        f"{base.replace('root@', f'{reader}@')}/{name}",
        "applications_daily",
        PASSWORD,
        admin_url=f"{base}/{name}",
    )
    _fill(database.admin_url, database.table)
    # The README's minimal permissions: CONNECT, USAGE on the schema, SELECT on the table.
    database.admin(
        f'GRANT CONNECT ON DATABASE "{name}" TO {reader}',
        f"GRANT USAGE ON SCHEMA public TO {reader}",
        f"GRANT SELECT ON applications_daily TO {reader}",
        "CREATE SEQUENCE visits_seq",
        f"GRANT USAGE ON SEQUENCE visits_seq TO {reader}",
    )
    try:
        yield database
    finally:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(text(f"DROP ROLE IF EXISTS {reader}"))
        admin.dispose()


@contextmanager
def sqlite(folder: Path) -> Iterator[Database]:
    path = folder / "city.db"
    with sqlite3.connect(path) as connection:
        connection.execute(CREATE.format(t="applications_daily"))
        connection.executemany(
            "INSERT INTO applications_daily VALUES (?, ?, ?, ?)",
            [(d.isoformat(), p, o, t) for d, p, o, t in rows()],
        )
    connection.close()
    yield Database(
        "sqlite", f"sqlite:///{path}", "applications_daily", admin_url=f"sqlite:///{path}"
    )


@contextmanager
def mariadb() -> Iterator[Database]:
    suffix = uuid.uuid4().hex[:8]
    table, reader = f"dxkpi_apps_{suffix}", f"dxkpi_rd_{suffix}"
    admin_url = MARIADB_ADMIN
    _fill(admin_url, table)
    host = admin_url.split("@", 1)[1]
    database = Database(
        "mysql", f"mysql+pymysql://{reader}@{host}", table, PASSWORD, admin_url=admin_url
    )
    database.admin(
        f"CREATE USER '{reader}'@'%' IDENTIFIED BY '{PASSWORD}'",
        f"GRANT SELECT ON {table} TO '{reader}'@'%'",
    )
    try:
        yield database
    finally:
        database.admin(f"DROP USER IF EXISTS '{reader}'@'%'", f"DROP TABLE IF EXISTS {table}")
