"""Telling the exporter that a change counter moved, as soon as it commits.

Two paths, both only wake-ups (the exporter still compares the counters, so a lost or extra
wake-up costs nothing but one poll):

- in the same process (`dxkpi run`: the receiver beside the exporter), `changed()` wakes every
  `ChangeWaiter` of the process at once;
- across processes on PostgreSQL, migration 0004's trigger sends `NOTIFY dxkpi_changed` when a
  counter moves, delivered at commit; a `ChangeWaiter` started with the store's URL LISTENs on
  its own connection (reconnecting after a failure). On SQLite there is no such channel and the
  exporter's poll (5 s by default) is what notices a worker's writes.
"""

from __future__ import annotations

import logging
import threading
import weakref

log = logging.getLogger("dxkpi.notify")

CHANNEL = "dxkpi_changed"
_waiters: weakref.WeakSet[ChangeWaiter] = weakref.WeakSet()
_lock = threading.Lock()


def changed() -> None:
    """A change counter moved in this process: wake this process's waiters."""
    with _lock:
        waiters = list(_waiters)
    for waiter in waiters:
        waiter.wake()


class ChangeWaiter:
    """`wait(timeout)` returns True as soon as a change was announced, else after `timeout`."""

    def __init__(self, url: str | None = None) -> None:
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        with _lock:
            _waiters.add(self)
        if url is not None and url.startswith("postgresql"):
            self._thread = threading.Thread(
                target=self._listen, args=(url,), name="dxkpi-listen", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def close(self) -> None:
        self._stop.set()
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen(self, url: str) -> None:
        import psycopg

        conninfo = "postgresql://" + url.split("://", 1)[1]
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    # Wake once on (re)connecting: changes may have come while we were away.
                    self.wake()
                    while not self._stop.is_set():
                        # A short timeout so that close() is seen within a second.
                        for _ in connection.notifies(timeout=1.0):
                            self.wake()
            except Exception as exc:  # the poll still works; try again shortly
                log.warning(
                    "LISTEN %s failed, relying on the poll: %s", CHANNEL, type(exc).__name__
                )
                self._stop.wait(5.0)
