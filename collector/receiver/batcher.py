"""One writer thread that stores webhook events in batches, each batch one transaction.

A request thread hands its verified event over and waits for the commit before it answers, so
an event is durable before its 2xx; the events that arrive while one batch commits make the
next batch. One commit (one WAL flush) then serves many events: at 16 concurrent senders the
rate is several times that of one transaction per event (bench/, `receiver`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

from dxkpi.collector.events import Accepted
from dxkpi.collector.storage import Store
from dxkpi.collector.storage.events import forget_events, store_events
from dxkpi.collector.storage.notify import changed

log = logging.getLogger("dxkpi.receiver")

# The most events one transaction takes: bounds its lock time and its statement size.
MAX_BATCH = 500
# How long a request waits for its batch to commit before it answers 503.
COMMIT_TIMEOUT = 30.0
# Event ids are kept this long (Zoom and UiPath redeliver within hours), and pruned hourly.
KEEP_EVENT_IDS = 30 * 86400.0
PRUNE_EVERY = 3600.0

_Item = tuple[str, Accepted, "Future[bool]"]


class EventWriter:
    def __init__(self, store: Store, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._pruned_at = 0.0
        self._thread = threading.Thread(target=self._run, name="dxkpi-event-writer", daemon=True)
        self._thread.start()

    def store_event(self, source: str, event: Accepted) -> bool:
        """Store `event` (False: a redelivery); raises what the store raised."""
        future: Future[bool] = Future()
        self._queue.put((source, event, future))
        return future.result(timeout=COMMIT_TIMEOUT)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=COMMIT_TIMEOUT)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(more)
            self._write(batch)
            self._prune()

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            dropped = forget_events(self.store, now - KEEP_EVENT_IDS)
        except Exception as exc:  # the next hour tries again; storing events matters more
            log.warning("could not prune old event ids: %s", type(exc).__name__)
            return
        if dropped:
            log.info("forgot %d event ids received over 30 days ago", dropped)

    def _write(self, batch: list[_Item]) -> None:
        events = [(source, event) for source, event, _ in batch]
        try:
            try:
                results = store_events(self.store, events)
            except Exception as exc:  # a deadlock with a pull, a dropped connection: once more
                log.info("storing %d events failed (%s); trying once more", len(batch), exc)
                results = store_events(self.store, events)
        except Exception as exc:
            for _, _, future in batch:
                future.set_exception(exc)
            return
        for (_, _, future), stored in zip(batch, results, strict=True):
            future.set_result(stored)
        if any(results):
            changed()
