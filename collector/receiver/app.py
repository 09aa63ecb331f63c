"""The receiver's WSGI application: webhooks and pushed figures in, stored before the 2xx.

Routes:
    POST /webhooks/<source>       a vendor's signed event, verified by the source's connector
    POST /api/v1/observations     figures in hand, with a client's bearer token (JSON)
    POST /api/v1/observations.csv the same as a CSV file (read by the csvfile connector)
    GET  /metrics                 `dxkpi_receiver_requests_total{endpoint,outcome}`
    GET  /healthz                 200, or 503 when the store is unreachable

Every answer is JSON. Refusals are 4xx with `{"error": ...}` saying what to fix; a store that
cannot take the write is 503 with Retry-After, so the vendor sends the event again. Nothing of a
refused request is stored, and neither secrets, tokens nor signatures are logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from dxkpi.collector.config import LoadedConfig
from dxkpi.collector.contract import Observation
from dxkpi.collector.events import (
    Accepted,
    AnyWebhookHandler,
    Rejected,
    Reply,
    UploadProblem,
    WebhookRequest,
)
from dxkpi.collector.receiver.batcher import EventWriter
from dxkpi.collector.receiver.config import ClientConfig, ReceiverConfig
from dxkpi.collector.receiver.push import check_rows, read_rows
from dxkpi.collector.redact import redact
from dxkpi.collector.registry import load_upload, load_webhook
from dxkpi.collector.storage import Store
from dxkpi.collector.storage.notify import changed

log = logging.getLogger("dxkpi.receiver")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WEBHOOK_PREFIX = "/webhooks/"
PUSH_PATH = "/api/v1/observations"
UPLOAD_PATH = "/api/v1/observations.csv"
# Outcomes shown at 0 before they happen, so that rate() works from the first request.
OUTCOMES = ("accepted", "duplicate", "handshake", "rejected", "rate_limited", "store_unavailable")
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class TokenBuckets:
    """A token bucket per key (the remote address): `rate` per second, `burst` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 100_000:  # forget idle callers rather than grow forever
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > now - 60}
            return (1 - tokens) / self.rate


class Receiver:
    """The WSGI callable. Build it once; it is safe for waitress's worker threads."""

    def __init__(
        self,
        store: Store,
        loaded: LoadedConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.loaded = loaded
        self.config: ReceiverConfig = loaded.config.receiver
        self.clock = clock
        self.tz = loaded.config.tz
        self.webhooks: dict[str, AnyWebhookHandler] = {}
        for hook in self.config.webhooks:
            source = loaded.source(hook.source)
            handler_class = load_webhook(source.connector)
            assert handler_class is not None  # the config check refused it otherwise
            self.webhooks[hook.source] = handler_class(
                loaded.settings[hook.source],
                hook.secret,
                loaded.context(hook.source),
                replay_window=hook.replay_window.total_seconds(),
            )
        self.clients: dict[str, ClientConfig] = {
            c.token_sha256.get_secret_value().strip().lower(): c for c in self.config.clients
        }
        limit = self.config.rate_limit
        self.buckets = TokenBuckets(limit.per_second, limit.burst)
        self.requests: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self.writer = EventWriter(store)

    def close(self) -> None:
        self.writer.close()

    # -- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith(WEBHOOK_PREFIX):
            endpoint = "webhook"
        elif path in (PUSH_PATH, UPLOAD_PATH):
            endpoint = "push"
        elif path in ("/metrics", "/healthz") and method in ("GET", "HEAD"):
            return self._own(path, start_response)
        else:
            return self._answer(start_response, "other", 404, "rejected", {"error": "not found"})
        if method != "POST":
            return self._answer(
                start_response,
                endpoint,
                405,
                "rejected",
                {"error": "use POST"},
                [("Allow", "POST")],
            )
        wait = self.buckets.take(environ.get("REMOTE_ADDR", ""))
        if wait:
            seconds = str(max(1, math.ceil(wait)))
            body = {"error": f"too many requests; retry after {seconds}s"}
            return self._answer(
                start_response, endpoint, 429, "rate_limited", body, [("Retry-After", seconds)]
            )
        try:
            body_bytes = self._body(environ)
            if endpoint == "webhook":
                status, outcome, answer = self._webhook(
                    path[len(WEBHOOK_PREFIX) :], environ, body_bytes
                )
            else:
                status, outcome, answer = self._push(environ, body_bytes, csv=path == UPLOAD_PATH)
        except Rejected as refusal:
            log.info(
                "%s %s from %s refused (%s): %s",
                method,
                path,
                environ.get("REMOTE_ADDR", "?"),
                refusal.outcome,
                refusal.message,
            )
            return self._answer(
                start_response,
                endpoint,
                refusal.status,
                refusal.outcome,
                {"error": refusal.message},
            )
        except _StoreFailed as failure:
            log.warning("%s %s: the store failed, asked to retry: %s", method, path, failure)
            body = {"error": "the store is unavailable; send again later"}
            return self._answer(
                start_response, endpoint, 503, "store_unavailable", body, [("Retry-After", "5")]
            )
        except Exception:  # a defect of ours: the vendor retries on 5xx
            log.exception("%s %s: unexpected error", method, path)
            body = {"error": "internal error; see the receiver's log"}
            return self._answer(start_response, endpoint, 500, "error", body)
        return self._answer(start_response, endpoint, status, outcome, answer)

    # -- routes ----------------------------------------------------------------------------

    def _webhook(
        self, source: str, environ: dict[str, Any], body: bytes
    ) -> tuple[int, str, dict[str, Any]]:
        handler = self.webhooks.get(source)
        if handler is None:
            raise Rejected(404, "rejected", f"no webhook for {source!r} is configured")
        request = WebhookRequest(_headers(environ), body, datetime.fromtimestamp(self.clock(), UTC))
        result = handler.handle(request)
        if isinstance(result, Reply):
            return result.status, "handshake", dict(result.body)
        return self._store_event(source, result)

    def _store_event(self, source: str, event: Accepted) -> tuple[int, str, dict[str, Any]]:
        try:
            stored = self.writer.store_event(source, event)
        except Exception as exc:
            raise _StoreFailed(redact(f"{type(exc).__name__}: {exc}")) from exc
        if not stored:
            return 200, "duplicate", {"stored": 0, "event": event.event_id, "duplicate": True}
        return 200, "accepted", {"stored": len(event.observations), "event": event.event_id}

    def _push(
        self, environ: dict[str, Any], body: bytes, *, csv: bool
    ) -> tuple[int, str, dict[str, Any]]:
        client = self._client(environ)
        if csv:
            rows = self._upload(body, client)
        else:
            rows = read_rows(body, client, self.tz, self.config.max_rows)
        try:
            # One batch: one transaction, so the request is stored whole or not at all.
            stats = self.store.write(client.id, rows, batch_size=len(rows) + 1)
        except Exception as exc:
            raise _StoreFailed(redact(f"{type(exc).__name__}: {exc}")) from exc
        changed()
        return 200, "accepted", {"stored": stats.observations, "changed": stats.changed}

    def _upload(self, body: bytes, client: ClientConfig) -> list[Observation]:
        parse = load_upload("csvfile")
        if parse is None:
            raise Rejected(404, "rejected", "CSV upload is not available")
        ratios = frozenset(m.name for m in client.metrics if m.unit == "ratio")
        try:
            numbered = parse(body, ratios)
        except UploadProblem as exc:
            raise Rejected(422, "invalid_rows", f"{exc}. Nothing was stored.") from None
        return check_rows(numbered, client, self.tz, self.config.max_rows)

    def _client(self, environ: dict[str, Any]) -> ClientConfig:
        scheme, _, token = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejected(401, "unauthorized", "send Authorization: Bearer <token>")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        client = self.clients.get(digest)
        if client is None:
            raise Rejected(401, "unauthorized", "the bearer token is not a configured client's")
        return client

    def _body(self, environ: dict[str, Any]) -> bytes:
        limit = self.config.max_body_bytes
        length_text = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if length_text:
            try:
                length = int(length_text)
            except ValueError:
                raise Rejected(400, "rejected", "Content-Length is not a number") from None
            if length > limit:
                raise Rejected(413, "too_large", f"the body is {length} bytes; at most {limit}")
            body: bytes = stream.read(length)
        else:  # chunked: read one byte past the limit to know it was passed
            body = stream.read(limit + 1)
            if len(body) > limit:
                raise Rejected(413, "too_large", f"the body is over {limit} bytes")
        return body

    # -- own endpoints and answers ---------------------------------------------------------

    def _own(self, path: str, start_response: StartResponse) -> Iterable[bytes]:
        if path == "/healthz":
            try:
                self.store.ping()
            except Exception as exc:
                text = redact(f"store unreachable: {type(exc).__name__}: {exc}")
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [text.encode()]
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        body = self.metrics_text().encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]

    def metrics_text(self) -> str:
        with self._lock:
            counts = dict(self.requests)
        for endpoint in ("webhook", "push"):
            for outcome in OUTCOMES:
                counts.setdefault((endpoint, outcome), 0)
        lines = [
            "# HELP dxkpi_receiver_requests_total Requests the receiver answered, by endpoint "
            "and outcome.",
            "# TYPE dxkpi_receiver_requests_total counter",
        ]
        for (endpoint, outcome), count in sorted(counts.items()):
            labels = f'endpoint="{endpoint}",outcome="{outcome}"'
            lines.append(f"dxkpi_receiver_requests_total{{{labels}}} {count}")
        return "\n".join(lines) + "\n"

    def _answer(
        self,
        start_response: StartResponse,
        endpoint: str,
        status: int,
        outcome: str,
        body: dict[str, Any],
        headers: list[tuple[str, str]] | None = None,
    ) -> Iterable[bytes]:
        with self._lock:
            self.requests[endpoint, outcome] += 1
        data = json.dumps(body, ensure_ascii=False).encode()
        start_response(
            f"{status} {REASONS.get(status, 'Error')}",
            [
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Length", str(len(data))),
                *(headers or []),
            ],
        )
        return [data]


class _StoreFailed(Exception):
    pass


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    """Request headers by lower-case name (WSGI keeps them as HTTP_X_ZM_SIGNATURE)."""
    headers = {
        key[5:].lower().replace("_", "-"): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = str(environ["CONTENT_TYPE"])
    return headers
