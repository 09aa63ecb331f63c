"""Zoom webhooks (a Marketplace app's Event Subscriptions): meetings as they end.

Zoom's contract, and its traps:

- Every request carries `x-zm-request-timestamp` (unix seconds) and `x-zm-signature`:
  `v0=` + hex HMAC-SHA256, keyed by the app's *secret token*, of `v0:{timestamp}:{raw body}`.
  The exact bytes count: re-serialised JSON does not verify. A timestamp outside the replay
  window is refused, so a captured request cannot be sent again later.
- `endpoint.url_validation` (when the URL is saved, and every 72 hours) must be answered 200
  with `{"plainToken", "encryptedToken"}`, the latter hex HMAC-SHA256 of the plain token.
- Zoom sends no event id. A meeting instance's `uuid` is unique, so `meeting.ended` is keyed
  by it (a host who rejoins and leaves an ended meeting makes Zoom send it again: counted
  once); a join by meeting uuid, participant and join time.
- `meeting.ended` has `start_time` and `end_time` but not the participant count: participants
  come from `meeting.participant_joined`, one event per join, which is what the meeting report's
  `participants_count` counts. `duration` in the payload is the *scheduled* length: the real one
  is `end_time - start_time`, in whole minutes as the report gives it.

Each meeting counts on the Tokyo day it started (as in the pull), per department of its host
(`settings.departments`, keyed by the host's user id; an email key cannot match an event, which
carries only `host_id`), and account-wide in `zoom_meetings` and `zoom_participants`. The
account-wide `zoom_meeting_duration_seconds` (participant minutes) is left to the pull.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

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
from dxkpi.connectors.zoom.connector import ZoomSettings

EVENTS = ["endpoint.url_validation", "meeting.ended", "meeting.participant_joined"]


def sign(secret: str, message: str | bytes) -> str:
    """Hex HMAC-SHA256 of `message` keyed by the secret token."""
    data = message.encode() if isinstance(message, str) else message
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


class ZoomWebhook(WebhookHandler[ZoomSettings]):
    name = "zoom"

    def handle(self, request: WebhookRequest) -> Accepted | Reply:
        self._verify(request)
        event = json_object(request.body)
        kind = event.get("event")
        payload = event.get("payload")
        if not isinstance(payload, Mapping):
            raise bad_event("the event has no 'payload' object")
        if kind == "endpoint.url_validation":
            plain = payload.get("plainToken")
            if not isinstance(plain, str) or not plain:
                raise bad_event("endpoint.url_validation without a plainToken")
            secret = self.secret.get_secret_value()
            return Reply(200, {"plainToken": plain, "encryptedToken": sign(secret, plain)})
        meeting = payload.get("object")
        if kind not in EVENTS:
            raise unknown_event(kind, EVENTS)
        if not isinstance(meeting, Mapping):
            raise bad_event(f"{kind} without a payload.object")
        if kind == "meeting.ended":
            return self._ended(meeting)
        return self._joined(meeting)

    def _verify(self, request: WebhookRequest) -> None:
        signature = request.headers.get("x-zm-signature")
        stamp = request.headers.get("x-zm-request-timestamp")
        if not signature or not stamp:
            raise Rejected(
                401, "missing_signature", "x-zm-signature and x-zm-request-timestamp are required"
            )
        try:
            sent = float(stamp)
        except ValueError:
            raise Rejected(
                401, "stale_timestamp", "x-zm-request-timestamp is not a number"
            ) from None
        age = request.received_at.timestamp() - sent
        if abs(age) > self.replay_window:
            raise Rejected(
                401,
                "stale_timestamp",
                f"x-zm-request-timestamp is {age:.0f}s from now; "
                f"allowed ±{self.replay_window:.0f}s",
            )
        message = b"v0:" + stamp.encode() + b":" + request.body
        if not same_digest("v0=" + sign(self.secret.get_secret_value(), message), signature):
            raise bad_signature()

    def _ended(self, meeting: Mapping[str, Any]) -> Accepted:
        uuid = _text(meeting, "uuid")
        started = _moment(meeting, "start_time")
        ended = _moment(meeting, "end_time")
        minutes = max(0, round((ended - started).total_seconds() / 60))
        day = self._day(started)
        changes: list[Observation] = [Observation("zoom_meetings", 1, day, Granularity.DAY)]
        department = self._department(meeting)
        if department is not None:
            labels = {"department": department}
            changes.append(Observation("zoom_department_meetings", 1, day, labels=labels))
            changes.append(
                Observation(
                    "zoom_department_meeting_duration_seconds", minutes * 60.0, day, labels=labels
                )
            )
        return Accepted(f"meeting.ended:{uuid}", ended, tuple(changes), "meeting.ended")

    def _joined(self, meeting: Mapping[str, Any]) -> Accepted:
        uuid = _text(meeting, "uuid")
        day = self._day(_moment(meeting, "start_time"))
        participant = meeting.get("participant")
        if not isinstance(participant, Mapping):
            raise bad_event("meeting.participant_joined without payload.object.participant")
        who = participant.get("participant_uuid") or participant.get("user_id") or ""
        joined = _moment(participant, "join_time")
        changes: list[Observation] = [Observation("zoom_participants", 1, day, Granularity.DAY)]
        department = self._department(meeting)
        if department is not None:
            labels = {"department": department}
            changes.append(Observation("zoom_department_participants", 1, day, labels=labels))
        event_id = f"meeting.participant_joined:{uuid}:{who}:{joined.isoformat()}"
        return Accepted(event_id, joined, tuple(changes), "meeting.participant_joined")

    def _department(self, meeting: Mapping[str, Any]) -> str | None:
        departments = self.settings.departments
        for key in ("host_id", "host_email"):
            host = meeting.get(key)
            if isinstance(host, str) and host in departments:
                return departments[host]
        return None

    def _day(self, moment: datetime) -> datetime:
        local = moment.astimezone(self.context.timezone)
        return local.replace(hour=0, minute=0, second=0, microsecond=0)


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str | int) or value == "":
        raise bad_event(f"the event lacks {key!r}")
    return str(value)


def _moment(fields: Mapping[str, Any], key: str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(fields[key]))
    except (KeyError, ValueError):
        raise bad_event(f"the event has no readable {key!r} (ISO 8601 expected)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
