"""Is the store's schema the one this dxkpi expects? Asked by the commands that only read.

Only `dxkpi migrate` (and `dxkpi run`, which is its own deployment) changes a schema: a command
that reads must neither create a store nor upgrade one behind an operator's back. The revision is
read with one plain query, not through Alembic, so that reading it prints nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from dxkpi.collector.errors import DxkpiError
from dxkpi.collector.redact import redact
from dxkpi.collector.storage.store import MIGRATIONS, Store, sqlite_file


class SchemaNotCurrentError(DxkpiError):
    """The store has no tables yet, or a schema other than this dxkpi's."""


@contextmanager
def _alembic_quiet() -> Iterator[None]:
    # Importing Alembic's script machinery logs its plugins at INFO: not news to someone who
    # asked for a status.
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _revisions() -> tuple[str, set[str]]:
    """This dxkpi's head revision and every revision it knows."""
    with _alembic_quiet():
        from alembic.script import ScriptDirectory

        script = ScriptDirectory(str(MIGRATIONS))
        head = script.get_current_head()
        known = {revision.revision for revision in script.walk_revisions()}
    assert head is not None
    return head, known


def store_revision(store: Store) -> str | None:
    """The store's Alembic revision; None when it has no tables (a missing SQLite file is not
    created)."""
    file = sqlite_file(store.url)
    if file is not None and not file.is_file():
        return None
    with store.engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if revision is None else str(revision)


def require_current_schema(store: Store) -> None:
    """Unless the store is at head, raise `SchemaNotCurrentError`: one line saying what to run."""
    where = f"the store at {redact(store.url)}"
    try:
        revision = store_revision(store)
    except OperationalError as exc:
        raise SchemaNotCurrentError(f"cannot read {where}: {exc.orig}") from None
    head, known = _revisions()
    if revision == head:
        return
    if revision is None:
        raise SchemaNotCurrentError(f"{where} has no tables yet: run `dxkpi migrate`")
    if revision in known:
        raise SchemaNotCurrentError(
            f"{where} is at schema revision {revision}, this dxkpi needs {head}: "
            "run `dxkpi migrate`"
        )
    raise SchemaNotCurrentError(
        f"{where} is at schema revision {revision}, which this dxkpi does not know "
        "(a newer dxkpi migrated it): upgrade dxkpi"
    )
