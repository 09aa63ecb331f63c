"""Settings of a sql source: which database, which query, and which result columns mean what."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dxkpi.collector.contract import ConnectorSettings
from dxkpi.collector.durations import Duration
from dxkpi.connectors._tables.settings import (
    MetricColumn,
    distinct_metrics_and_labels,
    snake_case_label_names,
)
from dxkpi.connectors.sql.guard import DIALECTS, check_select

# The window's bounds, bound as dates: the only parameters a query may name.
PARAMETERS = ("since", "until")
# SQLAlchemy's own rule for `:name` in text(): not after a colon (a `::date` cast) or a word.
_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError(
            "url is not a SQLAlchemy URL: write e.g. postgresql+psycopg://reader@db.example.lg.jp/stats"
        ) from None


class SqlSettings(ConnectorSettings):
    # A SQLAlchemy URL without its password: postgresql+psycopg://reader@host:5432/db,
    # mysql+pymysql://reader@host/db, sqlite:///relative/or/absolute.db
    url: str = Field(min_length=1)
    password: SecretStr | None = None
    query: str = Field(min_length=1)
    # The database stops the query after this long (PostgreSQL statement_timeout, MariaDB
    # max_statement_time, MySQL max_execution_time, SQLite a progress handler).
    statement_timeout: Duration = timedelta(seconds=30)
    connect_timeout: Duration = timedelta(seconds=10)
    # More rows than this is refused: every row is validated before anything is stored.
    max_rows: int = Field(default=100_000, ge=1)
    period_column: str = Field(min_length=1)
    granularity: Literal["auto", "day", "month", "fiscal_year"] = "auto"
    labels: dict[str, str] = Field(default_factory=dict)
    static_labels: dict[str, str] = Field(default_factory=dict)
    metrics: list[MetricColumn] = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _supported_url(cls, url: str) -> str:
        parsed = parse_url(url)
        backend = parsed.get_backend_name()
        if backend not in DIALECTS:
            raise ValueError(
                f"database {backend!r} is not supported: use postgresql, mysql, mariadb or sqlite"
                " (only these have a read-only transaction and a statement timeout dxkpi sets)"
            )
        if parsed.password is not None:
            raise ValueError(
                "the url must not hold the password: write `password: ${DB_PASSWORD}` beside it"
            )
        return url

    @field_validator("statement_timeout", "connect_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value

    @field_validator("labels", "static_labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        return snake_case_label_names(labels)

    @model_validator(mode="after")
    def _query_reads_only(self) -> SqlSettings:
        check_select(self.query, self.backend)
        unknown = sorted(set(_PARAMETER.findall(self.query)) - set(PARAMETERS))
        if unknown:
            raise ValueError(
                f"the query names :{', :'.join(unknown)}; only :since and :until (the window's"
                " first day and the day after its last) are bound"
            )
        distinct_metrics_and_labels(self.metrics, self.labels, self.static_labels)
        return self

    @property
    def backend(self) -> str:
        return parse_url(self.url).get_backend_name()

    def parameters(self) -> list[str]:
        """The window parameters the query uses."""
        return [p for p in PARAMETERS if p in _PARAMETER.findall(self.query)]
