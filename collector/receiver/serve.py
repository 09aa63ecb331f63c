"""Serving the receiver with waitress, a production WSGI server in pure Python.

Waitress reads each request whole in its I/O thread (asyncore) before a worker thread sees it,
so a slow client holds a socket, not a thread; `channel_timeout` drops one that stalls. Bodies
over `max_body_bytes` are refused by the application (413, counted as `too_large`); a body
announced over twice that is refused by waitress from its headers (413, not counted).
"""

from __future__ import annotations

import threading
from typing import Any

from dxkpi.collector.config import LoadedConfig
from dxkpi.collector.receiver.app import Receiver
from dxkpi.collector.storage import Store

# Seconds a connection may sit idle (a stalled upload) before waitress closes it.
CHANNEL_TIMEOUT = 30


def _proxy(address: str | None) -> dict[str, Any]:
    """waitress's settings to take the caller's address from a trusted proxy's header."""
    if address is None:
        return {}
    return {
        "trusted_proxy": address,
        "trusted_proxy_count": 1,
        "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
    }


class ReceiverServer:
    """A waitress server around a `Receiver`; `port` is the bound port (0 picks a free one)."""

    def __init__(self, store: Store, loaded: LoadedConfig, host: str, port: int) -> None:
        from waitress.server import create_server

        config = loaded.config.receiver
        self.app = Receiver(store, loaded)
        self.server: Any = create_server(
            self.app,
            host=host,
            port=port,
            threads=config.threads,
            # The application refuses (and counts) bodies over max_body_bytes; waitress refuses
            # those over twice that from their Content-Length alone, before reading them.
            max_request_body_size=2 * config.max_body_bytes,
            channel_timeout=CHANNEL_TIMEOUT,
            ident="dxkpi-receiver",
            clear_untrusted_proxy_headers=True,
            **_proxy(config.trusted_proxy),
        )
        self.host = host
        self.port = int(self.server.effective_port)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def serve_forever(self) -> None:
        # waitress's own run() loops until every socket is closed; this loop also ends on
        # stop(), checked twice a second.
        try:
            while not self._stopping.is_set():
                self.server.asyncore.loop(timeout=0.5, map=self.server._map, count=1)
        finally:
            self._close()

    def start(self) -> None:
        """Serve from a background thread (inside `dxkpi run`, and in tests)."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="dxkpi-receiver", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _close(self) -> None:
        for dispatcher in list(self.server._map.values()):
            dispatcher.close()
        self.server.task_dispatcher.shutdown()
        self.app.close()
