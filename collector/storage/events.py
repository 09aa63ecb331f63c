"""Storing webhook events: exactly once per vendor event id, added to what the pull stored.

One event is one transaction: its id goes into `received_events` (a redelivery finds it there
and stores nothing), each of its observations adds its value to its period's row, the series'
latest value follows, and the source's change counter moves. It commits before the receiver
answers 2xx, so a crash after the reply loses nothing.

Pull and push feed the same series. A pull's figure for a period is complete up to its run's
window end, so an event that happened before then is in it already: it adds nothing to a row a
pull wrote with a window reaching past the event (the `collection_runs` row the observation
points at says how far). Events after that window add to the pulled figure until the next pull
writes the period again, whole. A day with both is never counted twice.
"""

from __future__ import annotations

from sqlalchemy import text

from collector.events import Accepted
from collector.storage.store import Store

_CLAIM = text(
    "INSERT INTO received_events (source, event_id, kind, occurred_at, received_at, observations) "
    "VALUES (:source, :event_id, :kind, :occurred, :now, :n) ON CONFLICT DO NOTHING"
)
# Add to the period unless a pull whose window reached past the event wrote the row.
_ADD = text(
    "INSERT INTO observations (series_id, period_start, granularity, value, updated_at, run_id) "
    "VALUES (:s, :p, :g, :v, :now, NULL) "
    "ON CONFLICT (series_id, period_start, granularity) DO UPDATE "
    "SET value = observations.value + excluded.value, updated_at = excluded.updated_at "
    "WHERE observations.run_id IS NULL OR NOT EXISTS (SELECT 1 FROM collection_runs r "
    "WHERE r.id = observations.run_id AND r.window_end >= :occurred) "
    "RETURNING value"
)
_LATEST = text(
    "UPDATE series SET last_start = :p, last_value = :v "
    "WHERE id = :s AND (last_start IS NULL OR last_start <= :p)"
)
_BUMP = text("UPDATE source_state SET generation = generation + 1 WHERE source = :source")


def store_event(store: Store, source: str, event: Accepted) -> bool:
    """Store one verified event of `source`; False when its id was stored before (nothing
    changes then)."""
    changes = list(event.observations)
    # Series ids are resolved (and new series inserted) before the event's transaction: a
    # series is only an identity, harmless if the event then turns out to be a redelivery.
    store._ensure_state(source)
    ids = store._resolve_series(source, changes) if changes else []
    now = store.clock()
    occurred = event.occurred_at.timestamp()
    with store.engine.begin() as connection:
        claimed = connection.execute(
            _CLAIM,
            {
                "source": source,
                "event_id": event.event_id,
                "kind": event.kind,
                "occurred": occurred,
                "now": now,
                "n": len(changes),
            },
        )
        if claimed.rowcount == 0:
            return False
        for obs, series_id in zip(changes, ids, strict=True):
            start = int(obs.start.timestamp())
            row = connection.execute(
                _ADD,
                {
                    "s": series_id,
                    "p": start,
                    "g": obs.granularity.value,
                    "v": float(obs.value),
                    "now": now,
                    "occurred": occurred,
                },
            ).first()
            if row is not None:
                connection.execute(_LATEST, {"s": series_id, "p": start, "v": row[0]})
        connection.execute(_BUMP, {"source": source})
    return True
