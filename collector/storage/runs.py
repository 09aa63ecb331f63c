"""Runs, cursors and leases of the store: `Store` has these methods from `RunsAndLeases`.

A run is a row of `collection_runs`; a source's cursor, checkpoint, lease and change counter are
its row of `source_state`. A run's lease, cursor read and run record are one transaction
(`start_leased_run`), its outcome, cursor move and lease release one more (`finish_run`). A run
left `running` by a holder that died shows as abandoned once its lease expires
(`source_health`), and the source's next run closes it.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, text, update
from sqlalchemy.sql.elements import TextClause

from dxkpi.collector.redact import redact
from dxkpi.collector.storage.schema import collection_runs, series, source_state


@dataclass(frozen=True)
class Gap:
    """A backfill window that failed for good and that no later successful run has covered."""

    source: str
    window_start: float
    window_end: float
    error: str | None
    failed_at: float | None


@dataclass(frozen=True)
class SourceHealth:
    source: str
    last_status: str | None
    last_started_at: float | None
    last_finished_at: float | None
    last_success_at: float | None
    last_error: str | None
    runs_by_status: dict[str, int]
    # Backfill windows that failed for good and are not read since (see `Store.gaps`).
    gaps: int = 0
    # When the run going on now started (its holder alive: the lease is held); None when idle.
    running_since: float | None = None


# (cursor_end, checkpoint) read under the lease -> the run's (window_start, window_end).
WindowPlan = Callable[[float | None, str | None], tuple[float, float]]


@dataclass(frozen=True)
class OrgShare:
    """An organisation's share of the workers: at most `limit` of its `sources` hold a lease at
    once (runs going on now), so that its slow or hanging API never holds every worker thread."""

    org: str
    sources: tuple[str, ...]
    limit: int


class OrgAtLimit(Exception):
    """`limit` runs of the organisation go on now: this one must wait its turn (the task puts
    itself back in the queue; it holds no thread meanwhile)."""

    def __init__(self, share: OrgShare) -> None:
        self.share = share
        super().__init__(
            f"organisation {share.org}: {share.limit} of its sources are being collected now "
            "(DXKPI_ORG_CONCURRENCY); this run waits its turn"
        )


# Rows in source_state are never deleted: each source's row is inserted once per process.
_ENSURE_STATE = text(
    "INSERT INTO source_state (source, generation) VALUES (:source, 0) ON CONFLICT DO NOTHING"
)
# Take the lease unless someone else holds an unexpired one (the holder itself renews it).
_CLAIM_LEASE = text(
    "UPDATE source_state SET lease_holder = :holder, lease_expires = :expires "
    "WHERE source = :source "
    "AND (lease_holder IS NULL OR lease_expires < :now OR lease_holder = :holder) "
    "RETURNING cursor_end, checkpoint"
)
# Under the lease no other run of the source is alive: a run still `running` was left by a holder
# that died (kill -9, a lost database) or could not record its end. It is closed as abandoned.
_CLOSE_ABANDONED = text(
    "UPDATE collection_runs SET status = 'abandoned', finished_at = :now, "
    "error_class = 'AbandonedRun', error_message = :message "
    "WHERE source = :source AND status = 'running'"
)
ABANDONED_MESSAGE = (
    "abandoned: the process running it stopped before it finished (killed, crashed, or lost "
    "the database) and its lease expired; its window is read again by the next run. If this "
    "repeats, look at the worker's log and memory limits"
)
# Leases held now by other runs of an organisation's sources (its runs going on).
_ORG_RUNNING = (
    select(func.count())
    .select_from(source_state)
    .where(
        source_state.c.source.in_(bindparam("sources", expanding=True)),
        source_state.c.source != bindparam("source"),
        source_state.c.lease_holder.is_not(None),
        source_state.c.lease_expires >= bindparam("now"),
    )
)
# One organisation's lease-taking at a time (PostgreSQL), so that two runs cannot both see
# room for one more; released at the end of the transaction.
_LOCK_ORG = text("SELECT pg_advisory_xact_lock(hashtext(:org))")
_INSERT_RUN = text(
    "INSERT INTO collection_runs (source, kind, window_start, window_end, started_at, status, "
    "attempt, observations_written) "
    "VALUES (:source, :kind, :window_start, :window_end, :now, 'running', :attempt, 0) "
    "RETURNING id"
)


def _record_run(
    connection: Connection,
    source: str,
    kind: str,
    window: tuple[float, float],
    now: float,
    attempt: int,
) -> int:
    """Insert a run as running; its id."""
    params = {"source": source, "kind": kind, "now": now, "attempt": attempt}
    params.update(window_start=window[0], window_end=window[1])
    return int(connection.execute(_INSERT_RUN, params).scalar_one())


_FINISH_RUN = text(
    "UPDATE collection_runs SET finished_at = :now, status = :status, "
    "observations_written = :written, error_class = :error_class, error_message = :error_message "
    "WHERE id = :run_id RETURNING source"
)


@functools.cache
def _state_after_run(cursor: bool, checkpoint: bool, release: bool) -> TextClause:
    """The source's row after a run: the change counter, and as asked the cursor (forward only),
    the checkpoint, and the lease (if the run's holder still has it), in one statement."""
    changes = ["generation = generation + 1"]
    if cursor:
        changes.append(
            "cursor_end = CASE WHEN cursor_end IS NULL OR cursor_end < :cursor "
            "THEN :cursor ELSE cursor_end END"
        )
    if checkpoint:
        changes.append("checkpoint = :checkpoint")
    if release:
        # SET sees the row as it was: both columns test the holder before either changes.
        changes.append(
            "lease_holder = CASE WHEN lease_holder = :holder THEN NULL ELSE lease_holder END"
        )
        changes.append(
            "lease_expires = CASE WHEN lease_holder = :holder THEN NULL ELSE lease_expires END"
        )
    return text(f"UPDATE source_state SET {', '.join(changes)} WHERE source = :source")


class RunsAndLeases:
    """The runs, cursors and leases half of `Store` (which sets `engine`)."""

    engine: Engine
    orgs: Mapping[str, str]
    _known_sources: set[str]

    def _ensure_state(self, source: str) -> None:
        if source in self._known_sources:
            return
        with self.engine.begin() as connection:
            connection.execute(_ENSURE_STATE, {"source": source})
            # The source's series follow it when the config moves it to another organisation.
            org = self.orgs.get(source, "default")
            connection.execute(
                update(series).where(series.c.source == source, series.c.org != org).values(org=org)
            )
        self._known_sources.add(source)

    # -- runs ---------------------------------------------------------------------------

    def start_run(
        self, source: str, kind: str, window_start: float, window_end: float, attempt: int = 1
    ) -> int:
        """Record a run as running, without a lease (`start_leased_run` is what the runner uses)."""
        self._ensure_state(source)
        with self.engine.begin() as connection:
            window = (window_start, window_end)
            return _record_run(connection, source, kind, window, time.time(), attempt)

    def start_leased_run(
        self,
        source: str,
        kind: str,
        holder: str,
        ttl: float,
        plan_window: WindowPlan,
        attempt: int = 1,
        share: OrgShare | None = None,
    ) -> int | None:
        """Take the source's lease, read its cursor and record the run as running, all in one
        transaction: a run's bookkeeping costs the worker CPU and round trips, and several small
        transactions cost more than one. `plan_window(cursor_end, checkpoint)` picks the window
        from the cursor as the lease holder sees it. None, and nothing recorded, if another
        holder has an unexpired lease. With `share`, raises `OrgAtLimit` (nothing recorded) if
        `share.limit` other sources of the organisation hold a lease now."""
        now = time.time()
        with self.engine.begin() as connection:
            if source not in self._known_sources:
                connection.execute(_ENSURE_STATE, {"source": source})
            if share is not None:
                if connection.dialect.name == "postgresql":
                    connection.execute(_LOCK_ORG, {"org": share.org})
                running = connection.execute(
                    _ORG_RUNNING, {"sources": list(share.sources), "source": source, "now": now}
                ).scalar_one()
                if running >= share.limit:
                    raise OrgAtLimit(share)
            claimed = connection.execute(
                _CLAIM_LEASE,
                {"source": source, "holder": holder, "now": now, "expires": now + ttl},
            ).first()
            if claimed is None:
                return None
            connection.execute(
                _CLOSE_ABANDONED, {"source": source, "now": now, "message": ABANDONED_MESSAGE}
            )
            window = plan_window(claimed[0], claimed[1])
            run_id = _record_run(connection, source, kind, window, now, attempt)
        self._known_sources.add(source)
        return run_id

    def finish_run(
        self,
        run_id: int,
        status: str,
        written: int,
        error_class: str | None = None,
        error_message: str | None = None,
        *,
        advance_cursor_to: float | None = None,
        checkpoint: str | None = None,
        release_lease_of: str | None = None,
    ) -> None:
        """Record a run's outcome; in the same transaction move the cursor forward (never back),
        save the checkpoint, and release the lease if `release_lease_of` still holds it."""
        with self.engine.begin() as connection:
            source = connection.execute(
                _FINISH_RUN,
                {
                    "run_id": run_id,
                    "now": time.time(),
                    "status": status,
                    "written": written,
                    "error_class": error_class,
                    "error_message": error_message[:4000] if error_message else None,
                },
            ).scalar_one()
            connection.execute(
                _state_after_run(
                    advance_cursor_to is not None,
                    checkpoint is not None,
                    release_lease_of is not None,
                ),
                {
                    "source": source,
                    "cursor": advance_cursor_to,
                    "checkpoint": checkpoint,
                    "holder": release_lease_of,
                },
            )

    def source_health(self) -> list[SourceHealth]:
        with self.engine.connect() as connection:
            counts: dict[str, dict[str, int]] = {}
            for source, status, count in connection.execute(
                text("SELECT source, status, count(*) FROM collection_runs GROUP BY source, status")
            ):
                counts.setdefault(source, {})[status] = int(count)
            last = {
                row.source: row
                for row in connection.execute(
                    text(
                        "SELECT r.id, r.source, r.status, r.started_at, r.finished_at, "
                        "r.error_message "
                        "FROM collection_runs r JOIN (SELECT source, max(id) AS id FROM "
                        "collection_runs WHERE status <> 'running' GROUP BY source) x "
                        "ON x.id = r.id"
                    )
                )
            }
            # Runs still `running`, by whether their source's lease is held: while it is, the run
            # is going on now; once it is free or expired, its holder died and it is shown as
            # abandoned (the next run of the source closes it for good).
            abandoned: dict[str, Any] = {}
            running: dict[str, float] = {}
            for runs in connection.execute(
                text(
                    "SELECT r.source, (s.lease_holder IS NOT NULL AND s.lease_expires >= :now) "
                    "AS alive, max(r.id) AS id, min(r.started_at) AS first_started_at, "
                    "max(r.started_at) AS started_at, count(*) AS n, "
                    "max(s.lease_expires) AS expired_at "
                    "FROM collection_runs r JOIN source_state s ON s.source = r.source "
                    "WHERE r.status = 'running' GROUP BY r.source, alive"
                ),
                {"now": time.time()},
            ):
                if runs.alive:
                    running[runs.source] = runs.first_started_at
                else:
                    abandoned[runs.source] = runs
            success: dict[str, float] = {
                row[0]: row[1]
                for row in connection.execute(
                    text(
                        "SELECT source, max(finished_at) FROM collection_runs "
                        "WHERE status = 'success' GROUP BY source"
                    )
                )
            }
        gaps = Counter(gap.source for gap in self.gaps())
        out = []
        for source in sorted(set(counts) | set(last)):
            row = last.get(source)
            by_status = counts.get(source, {})
            dead = abandoned.get(source)
            if dead is not None:
                by_status["running"] -= dead.n
                by_status["abandoned"] = by_status.get("abandoned", 0) + dead.n
            if dead is not None and (row is None or dead.id > row.id):
                health = SourceHealth(
                    source=source,
                    last_status="abandoned",
                    last_started_at=dead.started_at,
                    last_finished_at=dead.expired_at,
                    last_success_at=success.get(source),
                    last_error=ABANDONED_MESSAGE,
                    runs_by_status=by_status,
                    gaps=gaps[source],
                    running_since=running.get(source),
                )
            else:
                health = SourceHealth(
                    source=source,
                    last_status=row.status if row else None,
                    last_started_at=row.started_at if row else None,
                    last_finished_at=row.finished_at if row else None,
                    last_success_at=success.get(source),
                    # Runs recorded before every secret was redacted are scrubbed on the way out.
                    last_error=redact(row.error_message) if row and row.error_message else None,
                    runs_by_status=by_status,
                    gaps=gaps[source],
                    running_since=running.get(source),
                )
            out.append(health)
        return out

    def dead_runs(self) -> int:
        """Runs still `running` whose source's lease is free or expired: their holder died.
        A lease expiring changes nothing stored, so the exporter asks this besides the change
        counters to show such a run abandoned without waiting for the source's next run."""
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FROM collection_runs r "
                        "JOIN source_state s ON s.source = r.source WHERE r.status = 'running' "
                        "AND (s.lease_holder IS NULL OR COALESCE(s.lease_expires, 0) < :now)"
                    ),
                    {"now": time.time()},
                ).scalar_one()
            )

    def gaps(self, source: str | None = None) -> list[Gap]:
        """Backfill windows whose last run failed or was abandoned and that no later successful
        run has covered, oldest window first. They come from the run records: the record of a
        failed window is the gap, and a later run that reads it again closes it."""
        query = (
            "SELECT f.source, f.window_start, f.window_end, max(f.id) AS id "
            "FROM collection_runs f WHERE f.kind = 'backfill' "
            "AND f.status IN ('failed', 'abandoned') "
            + ("AND f.source = :source " if source is not None else "")
            + "AND NOT EXISTS (SELECT 1 FROM collection_runs s WHERE s.source = f.source "
            "AND s.status = 'success' AND s.id > f.id "
            "AND s.window_start <= f.window_start AND s.window_end >= f.window_end) "
            "GROUP BY f.source, f.window_start, f.window_end"
        )
        with self.engine.connect() as connection:
            found = connection.execute(text(query), {"source": source}).all()
            if not found:
                return []
            last = {
                row.id: row
                for row in connection.execute(
                    select(
                        collection_runs.c.id,
                        collection_runs.c.error_message,
                        collection_runs.c.finished_at,
                    ).where(collection_runs.c.id.in_([row.id for row in found]))
                )
            }
        gaps = [
            Gap(
                row.source,
                row.window_start,
                row.window_end,
                redact(last[row.id].error_message) if last[row.id].error_message else None,
                last[row.id].finished_at,
            )
            for row in found
        ]
        return sorted(gaps, key=lambda g: (g.source, g.window_start))

    def runs(self, source: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(collection_runs).order_by(collection_runs.c.id.desc()).limit(limit)
        if source is not None:
            query = query.where(collection_runs.c.source == source)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    # -- cursors and leases ------------------------------------------------------------------

    def cursor(self, source: str) -> tuple[float | None, str | None]:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(source_state.c.cursor_end, source_state.c.checkpoint).where(
                    source_state.c.source == source
                )
            ).first()
        return (row[0], row[1]) if row else (None, None)

    def save_cursor(self, source: str, cursor_end: float | None, checkpoint: str | None) -> None:
        """Store what is given; None leaves that part as it was."""
        self._ensure_state(source)
        values: dict[str, Any] = {}
        if cursor_end is not None:
            values["cursor_end"] = cursor_end
        if checkpoint is not None:
            values["checkpoint"] = checkpoint
        if not values:
            return
        with self.engine.begin() as connection:
            connection.execute(
                update(source_state).where(source_state.c.source == source).values(**values)
            )

    def acquire_lease(self, source: str, holder: str, ttl: float) -> bool:
        """Take the source's lease unless someone else holds an unexpired one."""
        self._ensure_state(source)
        now = time.time()
        with self.engine.begin() as connection:
            claimed = connection.execute(
                _CLAIM_LEASE,
                {"source": source, "holder": holder, "now": now, "expires": now + ttl},
            ).first()
            return claimed is not None

    def release_lease(self, source: str, holder: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(source_state)
                .where(source_state.c.source == source, source_state.c.lease_holder == holder)
                .values(lease_holder=None, lease_expires=None)
            )
