"""UiPath Orchestrator webhooks (Tenant › Webhooks): robot jobs as they finish.

Orchestrator's contract, and its traps:

- `X-UiPath-Signature` is the base64 HMAC-SHA256, keyed by the webhook's secret, of the raw
  body. There is no timestamp header: the event's own `Timestamp` is checked against the
  replay window instead, and the `EventId` (unique per event) makes a redelivery store nothing.
- `job.completed`, `job.faulted` and `job.stopped` carry the job (`Job.State`, `Job.EndTime`,
  the process as `Job.Release.Name` or, in older versions, `Job.ReleaseName`).
- Orchestrator does not store or retry webhook events (a failed call loses the event, and a
  failing URL is disabled for an hour): the scheduled OData pull stays the source of truth and
  the webhook makes the figures current between pulls.

A finished job adds 1 to `rpa_runs{process, result}` on the Tokyo day it ended, and a successful
one its process's `manual_minutes_per_run` to `rpa_time_saved_seconds`, as the pull counts them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime

from dxkpi.collector.contract import Granularity, Observation
from dxkpi.collector.events import (
    Accepted,
    Rejected,
    Reply,
    WebhookHandler,
    WebhookRequest,
    bad_event,
    bad_signature,
    json_object,
    same_digest,
    unknown_event,
)
from dxkpi.connectors.uipath._connector import RESULTS, UiPathSettings

# Event type -> the job state it reports (the `result` label through RESULTS).
EVENTS = {"job.completed": "Successful", "job.faulted": "Faulted", "job.stopped": "Stopped"}
SIGNATURE = "x-uipath-signature"


def sign(secret: str, body: bytes) -> str:
    """Base64 HMAC-SHA256 of the body keyed by the webhook's secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


class UiPathWebhook(WebhookHandler[UiPathSettings]):
    name = "uipath"

    def handle(self, request: WebhookRequest) -> Accepted | Reply:
        signature = request.headers.get(SIGNATURE)
        if not signature:
            raise Rejected(401, "missing_signature", "X-UiPath-Signature is required")
        if not same_digest(sign(self.secret.get_secret_value(), request.body), signature):
            raise bad_signature()
        event = json_object(request.body)
        kind = event.get("Type")
        if kind == "ping":  # Orchestrator's "test" button
            return Reply(200, {"ok": True})
        if kind not in EVENTS:
            raise unknown_event(kind, sorted(EVENTS))
        event_id = event.get("EventId")
        if not isinstance(event_id, str) or not event_id:
            raise bad_event("the event has no EventId")
        sent = _moment(event.get("Timestamp"), "Timestamp")
        age = (request.received_at - sent).total_seconds()
        if abs(age) > self.replay_window:
            raise Rejected(
                401,
                "stale_timestamp",
                f"the event's Timestamp is {age:.0f}s from now; allowed ±{self.replay_window:.0f}s",
            )
        job = event.get("Job")
        if not isinstance(job, Mapping):
            raise bad_event(f"{kind} without a Job object")
        release = job.get("Release")
        process = release.get("Name") if isinstance(release, Mapping) else None
        process = process or job.get("ReleaseName")
        if not isinstance(process, str) or not process:
            raise bad_event("the job has neither Release.Name nor ReleaseName")
        state = str(job.get("State") or EVENTS[kind])
        result = RESULTS.get(state)
        if result is None:
            raise bad_event(f"job state {state!r} is not a final state ({', '.join(RESULTS)})")
        ended = _moment(job.get("EndTime"), "Job.EndTime")
        tz = self.context.timezone
        day = ended.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        changes = [
            Observation("rpa_runs", 1, day, Granularity.DAY, {"process": process, "result": result})
        ]
        minutes = self.settings.manual_minutes_per_run.get(process, 0.0)
        if result == "successful":
            changes.append(
                Observation(
                    "rpa_time_saved_seconds",
                    minutes * 60,
                    day,
                    Granularity.DAY,
                    {"process": process},
                )
            )
        return Accepted(f"{kind}:{event_id}", ended, tuple(changes), kind)


def _moment(value: object, name: str) -> datetime:
    try:
        text = str(value)
        # Orchestrator writes 7 fractional digits ("…48.5790797Z"): Python reads at most 6.
        if "." in text:
            head, _, tail = text.partition(".")
            digits = "".join(c for c in tail if c.isdigit())
            text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise bad_event(f"{name} is not an ISO 8601 time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
