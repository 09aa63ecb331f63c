"""The one kind of statement a sql source may run: a single SELECT that changes nothing.

The query is parsed with sqlglot in the database's own dialect, and refused unless it is one
statement whose every part reads: no INSERT/UPDATE/DELETE/MERGE, no DDL, no `SELECT … INTO`
(which creates a table), no data-modifying CTE (`WITH d AS (DELETE … RETURNING *) SELECT …`),
no `FOR UPDATE` locks, no COPY, and nothing sqlglot cannot read (it parses an unknown command
as a `Command`, which is refused). This is the first of three locks: the query also runs in a
read-only transaction, and the README asks for a role that can only SELECT.
"""

from __future__ import annotations

import logging

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# SQLAlchemy backend name -> sqlglot dialect. Only these have a read-only transaction and a
# statement timeout the connector knows how to set.
DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}

_WRITES: tuple[type[exp.Expression], ...] = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Into,
    exp.Lock,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Copy,
    exp.Command,
)


def check_select(query: str, backend: str) -> None:
    """Raise ValueError saying why `query` is not one read-only SELECT in `backend`'s dialect."""
    dialect = DIALECTS[backend]
    # sqlglot warns through logging when it falls back to a Command; the refusal says it.
    parser_log = logging.getLogger("sqlglot")
    level = parser_log.level
    parser_log.setLevel(logging.ERROR)
    try:
        statements = [s for s in sqlglot.parse(query, read=dialect) if s is not None]
    except SqlglotError as exc:
        raise ValueError(
            f"the query cannot be read as {dialect} SQL: {_first_error(exc)}"
        ) from None
    finally:
        parser_log.setLevel(level)
    if len(statements) != 1:
        raise ValueError(
            f"the query must be one SELECT statement, not {len(statements)} statements"
        )
    statement = statements[0]
    if not isinstance(statement, exp.Query):
        raise ValueError(f"the query must be a SELECT, not {_kind(statement)}")
    for node in statement.walk():
        if isinstance(node, _WRITES):
            raise ValueError(f"the query must only read, but it contains {_kind(node)}")


def _first_error(exc: SqlglotError) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        description = str(first.get("description", "")).split("<Token")[0].strip(" .:")
        return f"{description} (line {first.get('line')}, column {first.get('col')})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _kind(node: exp.Expr) -> str:
    if isinstance(node, exp.Into):
        return "SELECT … INTO (it creates a table)"
    if isinstance(node, exp.Lock):
        return "a row lock (FOR UPDATE / FOR SHARE)"
    if isinstance(node, exp.Command):
        word = str(node.this).split()[0].upper() if node.this else "a command"
        return f"{word} (a command that is not a SELECT)"
    if isinstance(node, exp.TruncateTable):
        return "TRUNCATE"
    return type(node).__name__.upper()
