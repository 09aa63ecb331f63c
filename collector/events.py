"""The webhook contract: how a connector turns a vendor's signed HTTP event into observations.

A connector that can take its vendor's webhooks sets `WEBHOOK` in its package to a subclass of
`WebhookHandler`. The receiver (`collector/receiver/`) builds one per configured webhook from the
source's settings (the same settings its pull uses, so both count alike), the webhook's secret
and the source's context, and calls `handle` with each request it takes in. The handler

- verifies the request (signature, timestamp) and raises `Rejected` when it must be refused;
- answers a vendor's handshake itself (`Reply`, e.g. Zoom's URL validation);
- otherwise returns an `Accepted` event: the vendor's event id (the idempotency key: a second
  delivery of the same id stores nothing), when the thing happened, and the observations it
  adds to its periods (a meeting adds 1 to its day's meeting count).

Like connectors, handlers never import Celery, SQLAlchemy or prometheus-client: the receiver
stores the event durably before it answers 2xx.
"""

from __future__ import annotations

import abc
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import SecretStr

from dxkpi.collector.contract import ConnectorSettings, Observation, SourceContext


@dataclass(frozen=True)
class WebhookRequest:
    """One request as received: headers with lower-case names, the raw body (signatures are
    computed over the exact bytes), and when it arrived."""

    headers: Mapping[str, str]
    body: bytes
    received_at: datetime


@dataclass(frozen=True)
class Accepted:
    """A verified event. `observations` are increments: each adds its value to its period.

    `occurred_at` is when the thing happened at the vendor (a meeting's end, a job's end): a
    pull whose window reached past it has counted it already, so it then adds nothing."""

    event_id: str
    occurred_at: datetime
    observations: tuple[Observation, ...] = ()
    kind: str = ""


@dataclass(frozen=True)
class Reply:
    """An answer the handler gives itself (a vendor's handshake); nothing is stored."""

    status: int
    body: Mapping[str, Any] = field(default_factory=dict)


class Rejected(Exception):
    """The request is refused. `outcome` is the label counted in
    `dxkpi_receiver_requests_total{outcome}`; `message` goes back to the caller and the log, so
    it never holds a secret or a signature."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message


def bad_signature(message: str = "the signature does not match the body") -> Rejected:
    return Rejected(401, "bad_signature", message)


def same_digest(expected: str, given: str) -> bool:
    """Constant-time comparison of two signatures, so a caller cannot time its way to one."""
    return hmac.compare_digest(expected.encode(), given.encode())


S = TypeVar("S", bound=ConnectorSettings)


class WebhookHandler(abc.ABC, Generic[S]):
    """Base of webhook handlers. Subclasses set `name` and implement `handle`."""

    name: ClassVar[str]

    def __init__(
        self,
        settings: S,
        secret: SecretStr,
        context: SourceContext,
        *,
        replay_window: float = 300.0,
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.context = context
        # Seconds a signed request's time may differ from its `received_at`.
        self.replay_window = replay_window

    @abc.abstractmethod
    def handle(self, request: WebhookRequest) -> Accepted | Reply:
        """Verify the request and read it; raise `Rejected` to refuse it."""


AnyWebhookHandler = WebhookHandler[Any]


def json_object(body: bytes) -> Mapping[str, Any]:
    """The body as a JSON object, or `Rejected` (400 malformed_json) saying what is wrong."""
    import json

    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected(400, "malformed_json", f"the body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise Rejected(400, "malformed_json", "the body must be a JSON object")
    return parsed


def unknown_event(kind: object, known: list[str]) -> Rejected:
    return Rejected(
        400,
        "unknown_event",
        f"event type {kind!r} is not handled; subscribe only to: {', '.join(known)}",
    )


def bad_event(message: str) -> Rejected:
    """A verified event whose fields cannot be read."""
    return Rejected(422, "bad_event", message)


# -- uploads ----------------------------------------------------------------------------------

# A pushed row as the push API reads it: its number (as the sender counts rows: a spreadsheet's
# row number for a file, 1-based for JSON) and its fields (metric, labels, period, value).
NumberedRow = tuple[int, dict[str, Any]]


class UploadProblem(Exception):
    """An uploaded file cannot be read; the message names the rows and what is wrong."""


class UploadParser(Protocol):
    """Reads an uploaded table into pushed rows (a connector package's `UPLOAD`: csvfile's reads
    CSV in the encodings and number forms Japanese offices use). `ratio_metrics` are the metrics
    whose cells may be written as percentages. Raises `UploadProblem`."""

    def __call__(self, body: bytes, ratio_metrics: frozenset[str]) -> list[NumberedRow]: ...
