"""sql: KPI figures from a read-only SELECT against an organisation's own database.

The contract with the database, and its traps:
- The query is one SELECT (checked by `guard.check_select` when the config is loaded), run in a
  read-only transaction (PostgreSQL and MySQL/MariaDB `SET TRANSACTION READ ONLY`, SQLite
  `PRAGMA query_only` on a file opened read-only), so a function that writes (`nextval`, a
  stored function) is refused by the database too.
- The database stops it after `statement_timeout`: PostgreSQL `SET LOCAL statement_timeout`,
  MariaDB `max_statement_time`, MySQL `max_execution_time` (SELECT only, which is all it runs),
  SQLite a progress handler that interrupts the statement.
- `:since` and `:until` are bound as dates in the source's timezone: the window's first day and
  the day after its last (a half-open range: `WHERE day >= :since AND day < :until`).
- Every row is read and checked before anything is yielded, so a bad row stores nothing.
- Drivers put the host, user and database in their messages, never the password; messages are
  still scrubbed of it (`dxkpi.collector.redact`), and of the URL's, should a driver ever quote it.

SQLAlchemy here is only the way to the source's database (any dialect's driver by URL); the
store is none of this connector's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.types import Date

from dxkpi.collector.contract import (
    Checkpoint,
    Connector,
    Granularity,
    MetricSpec,
    Observation,
    SourceContext,
    Window,
    next_midnight,
)
from dxkpi.collector.errors import (
    FatalSourceError,
    RetryableSourceError,
    SourceAuthError,
    SourceDataError,
    SourceError,
)
from dxkpi.collector.redact import redact
from dxkpi.connectors._tables.cells import cell_text, parse_number
from dxkpi.connectors._tables.mapping import overlaps, period_of
from dxkpi.connectors.sql.settings import SqlSettings, parse_url

# How many bad rows one error lists.
MAX_LISTED = 10
_QUERY_SHOWN = 120

# Errors by what a person must do. PostgreSQL SQLSTATEs, MySQL/MariaDB error numbers, SQLite
# error names.
_AUTH = {"28P01", "28000", "1044", "1045", "1698"}
_NO_DATABASE = {"3D000", "1049", "SQLITE_CANTOPEN"}
_TIMEOUT = {"57014", "1969", "3024", "SQLITE_INTERRUPT"}
_READ_ONLY = {"25006", "1792", "SQLITE_READONLY"}
# Connection lost, server shutting down or out of resources, serialization failures.
_TRANSIENT_PREFIXES = ("08", "53", "57P", "40")
_TRANSIENT_MYSQL = {"1040", "1205", "1213", "2002", "2003", "2006", "2013", "2055"}
_AUTH_WORDS = ("password authentication failed", "no password supplied", "pg_hba.conf")


def _short(query: str) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= _QUERY_SHOWN else flat[: _QUERY_SHOWN - 1] + "…"


def _codes(exc: DBAPIError) -> set[str]:
    """What the driver says the error is: a SQLSTATE (psycopg, PyMySQL), a MySQL error number
    (PyMySQL, mysqlclient), an SQLite error name."""
    orig = exc.orig
    codes = {
        str(value)
        for value in (getattr(orig, "sqlstate", None), getattr(orig, "sqlite_errorname", None))
        if value
    }
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        codes.add(str(args[0]))
    return codes


def _said(exc: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's echo of the statement and URL."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) == 2 and isinstance(args[0], int):  # PyMySQL: (1045, "Access denied …")
        said = f"({args[0]}) {args[1]}"
    else:
        said = str(orig) or type(orig).__name__
    return " ".join(said.split())


class SqlConnector(Connector[SqlSettings]):
    name = "sql"
    settings_model = SqlSettings
    metrics = ()  # declared by the settings: see declared_metrics

    def __init__(self, settings: SqlSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        self._url = self._database_url(settings, context.base_dir)
        self._backend = settings.backend
        self._where = f"query {_short(settings.query)!r} on {self._place()}"

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        labels = (*self.settings.labels, *self.settings.static_labels)
        return tuple(
            MetricSpec(
                name=m.name,
                help=m.help
                or f"Column {m.column!r} of the query of source {self.context.source_id}",
                unit=m.unit,
                labels=labels,
                aggregation=m.aggregation,
            )
            for m in self.settings.metrics
        )

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        columns, rows = self._fetch(window)
        yield from self._observations(columns, rows, window)

    # -- the database ----------------------------------------------------------------------

    @staticmethod
    def _database_url(settings: SqlSettings, base_dir: Path) -> URL:
        url = parse_url(settings.url)
        if settings.password is not None:
            url = url.set(password=settings.password.get_secret_value())
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            if not database or database == ":memory:" or database.startswith("file:"):
                raise ValueError("a sqlite url must name a database file: sqlite:///data/stats.db")
            path = Path(database)
            path = path if path.is_absolute() else base_dir / path
            # Opened read-only: SQLite would otherwise create a missing file, and could write.
            url = url.set(database=f"file:{path}", query={**url.query, "mode": "ro", "uri": "true"})
        return url

    def _place(self) -> str:
        url = self._url
        if self._backend == "sqlite":
            return (url.database or "").removeprefix("file:")
        port = f":{url.port}" if url.port else ""
        return f"{self._backend}://{url.username or ''}@{url.host or ''}{port}/{url.database or ''}"

    def _connect_args(self) -> dict[str, Any]:
        seconds = max(1, round(self.settings.connect_timeout.total_seconds()))
        if self._backend == "sqlite":
            return {"timeout": seconds}
        return {"connect_timeout": seconds}

    def _fetch(self, window: Window) -> tuple[list[str], Sequence[Any]]:
        try:
            engine = create_engine(self._url, poolclass=NullPool, connect_args=self._connect_args())
        except NoSuchModuleError as exc:
            raise FatalSourceError(
                self.context.source_id,
                f"no database driver for {self._url.drivername!r}: {_said(exc)}",
                hint="install the driver into dxkpi's environment, e.g. pip install pymysql",
            ) from None
        if self._backend == "sqlite":
            event.listen(engine, "connect", self._sqlite_limits)
        statement = text(self.settings.query).bindparams(
            *(bindparam(name, type_=Date()) for name in self.settings.parameters())
        )
        try:
            with engine.connect() as connection:
                self._read_only_with_timeout(connection)
                result = connection.execute(statement, self._bounds(window))
                columns = list(result.keys())
                self._check_columns(columns)
                rows = result.fetchmany(self.settings.max_rows + 1)
                result.close()
                connection.rollback()
        except DBAPIError as exc:
            raise self._failure(exc) from None
        except SQLAlchemyError as exc:
            raise FatalSourceError(
                self.context.source_id, self._scrub(_said(exc)), where=self._where
            ) from None
        finally:
            engine.dispose()
        if len(rows) > self.settings.max_rows:
            raise SourceDataError(
                self.context.source_id,
                f"the query returned more than max_rows ({self.settings.max_rows}) rows",
                where=self._where,
                hint="aggregate in the query (GROUP BY the period and labels) or raise max_rows",
            )
        return columns, rows

    def _bounds(self, window: Window) -> dict[str, date]:
        tz = self.context.timezone
        since = window.start.astimezone(tz).date()
        end = window.end.astimezone(tz)
        midnight = end.replace(hour=0, minute=0, second=0, microsecond=0)
        until = end.date() if end == midnight else next_midnight(midnight).date()
        bounds = {"since": since, "until": until}
        return {name: bounds[name] for name in self.settings.parameters()}

    def _read_only_with_timeout(self, connection: Connection) -> None:
        seconds = self.settings.statement_timeout.total_seconds()
        if self._backend == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            connection.exec_driver_sql(
                f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}"
            )
        elif self._backend in ("mysql", "mariadb"):
            # Before the first statement of the transaction: it applies to that transaction.
            if getattr(connection.dialect, "is_mariadb", False):
                connection.exec_driver_sql(f"SET SESSION max_statement_time = {seconds:.3f}")
            else:
                connection.exec_driver_sql(
                    f"SET SESSION max_execution_time = {max(1, int(seconds * 1000))}"
                )
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")

    def _sqlite_limits(self, dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")
        deadline = time.monotonic() + self.settings.statement_timeout.total_seconds()
        # A non-zero answer interrupts the statement (sqlite3.OperationalError: interrupted).
        interrupt: Callable[[], int] = lambda: int(time.monotonic() > deadline)  # noqa: E731
        dbapi_connection.set_progress_handler(interrupt, 10_000)

    def _failure(self, exc: DBAPIError) -> SourceError:
        source, codes, said = self.context.source_id, _codes(exc), self._scrub(_said(exc))
        where = self._where
        if (
            codes & _AUTH
            or any(word in said for word in _AUTH_WORDS)
            or ("role" in said and "does not exist" in said)
        ):
            return SourceAuthError(
                source,
                f"the database refused the login: {said}",
                where=where,
                hint="check the url's user and the password's environment variable",
            )
        if codes & _NO_DATABASE or ("database" in said and "does not exist" in said):
            return FatalSourceError(
                source, f"no such database: {said}", where=where, hint="check the url"
            )
        if codes & _TIMEOUT:
            limit = self.settings.statement_timeout.total_seconds()
            return FatalSourceError(
                source,
                f"the database stopped the query after statement_timeout ({limit:g} s): {said}",
                where=where,
                hint="make the query cheaper (an index, GROUP BY in the database) or raise "
                "statement_timeout",
            )
        if codes & _READ_ONLY:
            return FatalSourceError(
                source,
                f"the query tried to write, which the read-only transaction refused: {said}",
                where=where,
                hint="a sql source only reads: call no function that writes",
            )
        transient = any(c.startswith(_TRANSIENT_PREFIXES) for c in codes) or bool(
            codes & _TRANSIENT_MYSQL
        )
        if (
            transient
            or (not codes and exc.connection_invalidated)
            or (not codes and type(exc).__name__ in ("OperationalError", "InterfaceError"))
        ):
            return RetryableSourceError(
                source, f"the database cannot be reached now: {said}", where=where
            )
        return SourceDataError(source, f"the query failed: {said}", where=where)

    def _scrub(self, text_: str) -> str:
        password = self.settings.password
        return redact(text_, [password.get_secret_value()] if password else [])

    # -- rows into observations ------------------------------------------------------------

    def _check_columns(self, columns: list[str]) -> None:
        settings = self.settings
        wanted = [
            ("period_column", settings.period_column),
            *((f"labels.{name}", column) for name, column in settings.labels.items()),
            *((f"metrics[{m.name}].column", m.column) for m in settings.metrics),
        ]
        missing = [(key, column) for key, column in wanted if column not in columns]
        if missing:
            named = ", ".join(f"{column!r} ({key})" for key, column in missing)
            raise SourceDataError(
                self.context.source_id,
                f"the result has no column {named}; it has {', '.join(map(repr, columns))}",
                where=self._where,
                hint="a column was renamed or dropped at the source: alias it in the query "
                "(AS) or change the settings",
            )

    def _observations(
        self, columns: list[str], rows: Sequence[Any], window: Window
    ) -> Iterator[Observation]:
        settings, tz = self.settings, self.context.timezone
        at = {column: i for i, column in enumerate(columns)}
        problems: list[str] = []
        seen: dict[tuple[str, tuple[tuple[str, str], ...], date, Granularity], int] = {}
        kept: list[Observation] = []
        static = tuple(settings.static_labels.items())
        for number, row in enumerate(rows, start=1):
            period_cell = _cell(row[at[settings.period_column]], tz)
            try:
                start, granularity = period_of(period_cell, settings.granularity)
            except ValueError as exc:
                problems.append(f"row {number}: column {settings.period_column!r}: {exc}")
                continue
            labels = tuple(
                (name, cell_text(row[at[column]])) for name, column in settings.labels.items()
            )
            problems.extend(
                f"row {number}: column {settings.labels[n]!r} (label {n}) is empty"
                for n, v in labels
                if not v
            )
            in_window = overlaps(start, granularity, window, tz)
            for metric in settings.metrics:
                try:
                    value = parse_number(
                        _cell(row[at[metric.column]], tz), ratio=metric.unit == "ratio"
                    )
                except ValueError as exc:
                    problems.append(f"row {number}: column {metric.column!r}: {exc}")
                    continue
                if value is None:
                    continue  # NULL is "not reported", not zero
                series = (*labels, *static)
                key = (metric.name, series, start, granularity)
                if key in seen:
                    problems.append(
                        f"row {number}: {metric.name} for this period and labels is already in "
                        f"row {seen[key]} (GROUP BY the period and labels in the query)"
                    )
                    continue
                seen[key] = number
                if in_window:
                    kept.append(
                        Observation(
                            metric=metric.name,
                            value=value * metric.scale,
                            start=datetime.combine(start, datetime.min.time(), tzinfo=tz),
                            granularity=granularity,
                            labels=dict(series),
                        )
                    )
        if problems:
            listed = problems[:MAX_LISTED]
            if len(problems) > MAX_LISTED:
                listed.append(f"... and {len(problems) - MAX_LISTED} more")
            raise SourceDataError(
                self.context.source_id,
                "rejected the result whole (nothing was stored): " + "; ".join(listed),
                where=self._where,
            )
        yield from kept


def _cell(value: object, tz: Any) -> object:
    """A database value as the csvfile cell parsers take it."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(tz)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
