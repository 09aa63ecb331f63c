"""Storing webhook events: exactly once per vendor event id, added to what the pull stored.

A batch of events is one transaction (the receiver's writer thread groups the events that
arrive while the previous batch commits: one commit for many, which is what lets it take
hundreds a second): the events' ids go into `received_events` (a redelivery finds its id there
and stores nothing), each new event's observations add their values to their periods' rows,
the series' latest values follow, and each source's change counter moves once. It commits
before the receiver answers 2xx, so a crash after the reply loses nothing.

Pull and push feed the same series. A pull's figure for a period is complete up to its run's
window end, so an event that happened before then is in it already: it adds nothing to a row a
pull wrote with a window reaching past the event (the `collection_runs` row the observation
points at says how far). Events after that window add to the pulled figure until the next pull
writes the period again, whole. A day with both is never counted twice. On PostgreSQL the rows
are locked while this is decided, so a pull cannot rewrite them in between. (An event that
happened after a pull's window but was stored while that pull was still writing is overwritten
by it, and counted again by the next pull: a short undercount, never a double count.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select, text

from dxkpi.collector.events import Accepted
from dxkpi.collector.storage.schema import collection_runs, observations
from dxkpi.collector.storage.store import _PG_LATEST, Store

Key = tuple[int, int, str]

_ADD = text(
    "INSERT INTO observations (series_id, period_start, granularity, value, updated_at, run_id) "
    "VALUES (:s, :p, :g, :v, :now, NULL) "
    "ON CONFLICT (series_id, period_start, granularity) DO UPDATE "
    "SET value = observations.value + excluded.value, updated_at = excluded.updated_at"
)
_LATEST = text(
    "UPDATE series SET last_start = :p, last_value = :v "
    "WHERE id = :s AND (last_start IS NULL OR last_start <= :p)"
)
_BUMP = text(
    "UPDATE source_state SET generation = generation + 1 WHERE source IN :sources"
).bindparams(bindparam("sources", expanding=True))


def store_event(store: Store, source: str, event: Accepted) -> bool:
    """Store one verified event of `source`; False when its id was stored before."""
    return store_events(store, [(source, event)])[0]


def store_events(store: Store, events: Sequence[tuple[str, Accepted]]) -> list[bool]:
    """Store a batch of verified events in one transaction; for each, whether it was new
    (False: its id was stored before, or earlier in this batch)."""
    # Series ids are resolved (new series inserted) before the transaction: a series is only an
    # identity, harmless if its event then turns out to be a redelivery.
    ids: list[list[int]] = []
    for source, event in events:
        store._ensure_state(source)
        changes = list(event.observations)
        ids.append(store._resolve_series(source, changes) if changes else [])
    now = store.clock()
    first: dict[tuple[str, str], int] = {}
    for n, (source, event) in enumerate(events):
        first.setdefault((source, event.event_id), n)
    rows = [
        {
            "source": source,
            "event_id": event.event_id,
            "kind": event.kind,
            "occurred": event.occurred_at.timestamp(),
            "now": now,
            "n": len(event.observations),
        }
        for (source, event) in (events[n] for n in first.values())
    ]
    with store.engine.begin() as connection:
        claimed = _claim(store, connection, rows)
        new = [
            first[source, event.event_id] == n and (source, event.event_id) in claimed
            for n, (source, event) in enumerate(events)
        ]
        contributions: list[tuple[Key, float, float]] = []
        sources: set[str] = set()
        for n, (source, event) in enumerate(events):
            if not new[n]:
                continue
            sources.add(source)
            occurred = event.occurred_at.timestamp()
            for obs, series_id in zip(event.observations, ids[n], strict=True):
                key = (series_id, int(obs.start.timestamp()), obs.granularity.value)
                contributions.append((key, float(obs.value), occurred))
        if contributions:
            pulled = _pulled_until(store, connection, {key for key, _, _ in contributions})
            sums: dict[Key, float] = defaultdict(float)
            for key, value, occurred in contributions:
                until = pulled.get(key)
                if until is None or until < occurred:
                    sums[key] += value
            if sums and store.dialect == "postgresql":
                _add_postgres(connection, sums, now)
            elif sums:
                connection.execute(
                    _ADD,
                    [
                        {"s": s, "p": p, "g": g, "v": v, "now": now}
                        for (s, p, g), v in sorted(sums.items())
                    ],
                )
                _follow_latest(connection, sorted(sums))
        if sources:
            connection.execute(_BUMP, {"sources": sorted(sources)})
    return new


# PostgreSQL: one statement of arrays each, with no SQL compiled per batch (a batch is a few
# round trips whatever its size).
_PG_PULLED = """
SELECT o.series_id, o.period_start, o.granularity, r.window_end
FROM observations o JOIN collection_runs r ON r.id = o.run_id
WHERE (o.series_id, o.period_start) IN (SELECT * FROM unnest(%(s)s::bigint[], %(p)s::bigint[]))
ORDER BY o.series_id, o.period_start
FOR UPDATE OF o
"""
_PG_ADD = """
INSERT INTO observations (series_id, period_start, granularity, value, updated_at, run_id)
SELECT t.s, t.p, t.g, t.v, %(now)s, NULL
FROM unnest(%(s)s::bigint[], %(p)s::bigint[], %(g)s::text[], %(v)s::float8[]) AS t(s, p, g, v)
ON CONFLICT (series_id, period_start, granularity) DO UPDATE
SET value = observations.value + excluded.value, updated_at = excluded.updated_at
RETURNING series_id, period_start, value
"""


def _add_postgres(connection: Connection, sums: dict[Key, float], now: float) -> None:
    keys = sorted(sums)  # one order for every writer: row locks taken alike never deadlock
    added = connection.exec_driver_sql(
        _PG_ADD,
        {
            "s": [k[0] for k in keys],
            "p": [k[1] for k in keys],
            "g": [k[2] for k in keys],
            "v": [sums[k] for k in keys],
            "now": now,
        },
    )
    newest: dict[int, tuple[int, float]] = {}
    for series_id, start, value in added:
        if series_id not in newest or start >= newest[series_id][0]:
            newest[series_id] = (start, value)
    ids = sorted(newest)
    connection.exec_driver_sql(
        _PG_LATEST,
        {"s": ids, "p": [newest[i][0] for i in ids], "v": [newest[i][1] for i in ids]},
    )


# One statement of arrays for the whole batch: which ids were not stored before.
_PG_CLAIM = """
INSERT INTO received_events (source, event_id, kind, occurred_at, received_at, observations)
SELECT * FROM unnest(%(source)s::text[], %(event_id)s::text[], %(kind)s::text[],
                     %(occurred)s::float8[], %(now)s::float8[], %(n)s::int[])
ON CONFLICT DO NOTHING
RETURNING source, event_id
"""
_CLAIM = text(
    "INSERT INTO received_events (source, event_id, kind, occurred_at, received_at, observations) "
    "VALUES (:source, :event_id, :kind, :occurred, :now, :n) ON CONFLICT DO NOTHING"
)


def _claim(
    store: Store, connection: Connection, rows: list[dict[str, Any]]
) -> set[tuple[str, str]]:
    if store.dialect == "postgresql":
        columns = {name: [row[name] for row in rows] for name in rows[0]}
        return {(s, e) for s, e in connection.exec_driver_sql(_PG_CLAIM, columns)}
    claimed = set()
    for row in rows:  # SQLite: one writer at a time anyway, and no round trips
        if connection.execute(_CLAIM, row).rowcount:
            claimed.add((row["source"], row["event_id"]))
    return claimed


def _pulled_until(store: Store, connection: Connection, keys: set[Key]) -> dict[Key, float]:
    """For each key stored by a pull, the end of that pull's window (locked on PostgreSQL)."""
    found: dict[Key, float] = {}
    if store.dialect == "postgresql":
        ordered = sorted(keys)
        params = {"s": [k[0] for k in ordered], "p": [k[1] for k in ordered]}
        for s, p, g, window_end in connection.exec_driver_sql(_PG_PULLED, params):
            if (s, p, g) in keys:
                found[s, p, g] = float(window_end)
        return found
    query = (
        select(
            observations.c.series_id,
            observations.c.period_start,
            observations.c.granularity,
            collection_runs.c.window_end,
        )
        .select_from(
            observations.join(collection_runs, collection_runs.c.id == observations.c.run_id)
        )
        .where(
            observations.c.series_id.in_(bindparam("ids", expanding=True)),
            observations.c.period_start.in_(bindparam("starts", expanding=True)),
        )
        .order_by(observations.c.series_id, observations.c.period_start)
    )
    params = {"ids": sorted({k[0] for k in keys}), "starts": sorted({k[1] for k in keys})}
    for s, p, g, window_end in connection.execute(query, params):
        if (s, p, g) in keys:
            found[s, p, g] = float(window_end)
    return found


def _follow_latest(connection: Connection, keys: list[Key]) -> None:
    """Each touched series' latest value, read back after the additions."""
    query = select(
        observations.c.series_id,
        observations.c.period_start,
        observations.c.granularity,
        observations.c.value,
    ).where(
        observations.c.series_id.in_(bindparam("ids", expanding=True)),
        observations.c.period_start.in_(bindparam("starts", expanding=True)),
    )
    wanted = set(keys)
    params = {"ids": sorted({k[0] for k in keys}), "starts": sorted({k[1] for k in keys})}
    newest: dict[int, tuple[int, float]] = {}
    for s, p, g, value in connection.execute(query, params):
        if (s, p, g) in wanted and (s not in newest or p >= newest[s][0]):
            newest[s] = (p, float(value))
    if newest:
        connection.execute(
            _LATEST, [{"s": s, "p": p, "v": v} for s, (p, v) in sorted(newest.items())]
        )


def forget_events(store: Store, received_before: float) -> int:
    """Drop the ids of events received before then (vendors redeliver within hours or days, so
    an id older than that will not come back); how many were dropped."""
    with store.engine.begin() as connection:
        done = connection.execute(
            text("DELETE FROM received_events WHERE received_at < :before"),
            {"before": received_before},
        )
    return int(done.rowcount)
