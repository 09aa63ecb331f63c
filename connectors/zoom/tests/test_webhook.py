"""The Zoom webhook handler alone: the URL validation handshake, the signature over the exact
bytes, the replay window, and what a meeting and a join add."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from dxkpi.collector.events import Accepted, Rejected, Reply, WebhookRequest
from dxkpi.collector.testing import context_for
from dxkpi.connectors.zoom import ZoomSettings, ZoomWebhook

SECRET = "zoom-secret-token"
NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def handler(replay_window: float = 300) -> ZoomWebhook:
    settings = ZoomSettings.model_validate(
        {
            "account_id": "a",
            "client_id": "c",
            "client_secret": "s",
            "departments": {"host-1": "防災課", "kato@pref.example.jp": "情報政策課"},
        }
    )
    return ZoomWebhook(
        settings, SecretStr(SECRET), context_for("zoom_main"), replay_window=replay_window
    )


def signed(event: dict[str, Any], stamp: float = NOW.timestamp()) -> WebhookRequest:
    body = json.dumps(event, separators=(",", ":")).encode()
    ts = str(int(stamp))
    digest = hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    headers = {"x-zm-request-timestamp": ts, "x-zm-signature": "v0=" + digest.hexdigest()}
    return WebhookRequest(headers, body, NOW)


MEETING = {
    "uuid": "4444AAAiAAAAAiAiAiiAii==",
    "id": "123456789",
    "host_id": "host-1",
    "start_time": "2026-12-02T23:30:00Z",
    "end_time": "2026-12-03T00:42:29Z",
    "duration": 30,
}


def test_url_validation() -> None:
    result = handler().handle(
        signed({"event": "endpoint.url_validation", "payload": {"plainToken": "abc"}})
    )
    expected = hmac.new(SECRET.encode(), b"abc", hashlib.sha256).hexdigest()
    assert result == Reply(200, {"plainToken": "abc", "encryptedToken": expected})


def test_meeting_ended_counts_on_the_tokyo_day_it_started_with_its_real_length() -> None:
    result = handler().handle(signed({"event": "meeting.ended", "payload": {"object": MEETING}}))
    assert isinstance(result, Accepted)
    assert result.event_id == "meeting.ended:4444AAAiAAAAAiAiAiiAii=="
    got = {(o.metric, o.start.date().isoformat()): o.value for o in result.observations}
    # 23:30 UTC on 2 December is 08:30 on 3 December in Tokyo; 72.5 minutes round to 72.
    assert got == {
        ("zoom_meetings", "2026-12-03"): 1,
        ("zoom_department_meetings", "2026-12-03"): 1,
        ("zoom_department_meeting_duration_seconds", "2026-12-03"): 72 * 60,
    }


def test_a_host_outside_the_departments_counts_account_wide_only() -> None:
    meeting = {**MEETING, "host_id": "someone-else"}
    result = handler().handle(signed({"event": "meeting.ended", "payload": {"object": meeting}}))
    assert isinstance(result, Accepted)
    assert [o.metric for o in result.observations] == ["zoom_meetings"]


def test_a_join_is_one_participant() -> None:
    joined = {
        **MEETING,
        "participant": {"participant_uuid": "p1", "join_time": "2026-12-02T23:31:00Z"},
    }
    result = handler().handle(
        signed({"event": "meeting.participant_joined", "payload": {"object": joined}})
    )
    assert isinstance(result, Accepted)
    assert [(o.metric, o.value) for o in result.observations] == [
        ("zoom_participants", 1),
        ("zoom_department_participants", 1),
    ]


def test_the_signature_covers_the_exact_bytes() -> None:
    request = signed({"event": "meeting.ended", "payload": {"object": MEETING}})
    spaced = WebhookRequest(
        request.headers, json.dumps(json.loads(request.body)).encode(), request.received_at
    )
    with pytest.raises(Rejected) as refused:
        handler().handle(spaced)  # the same JSON, re-serialised with spaces
    assert refused.value.outcome == "bad_signature"


@pytest.mark.parametrize("age", [301, -301])
def test_a_timestamp_outside_the_window_is_refused(age: int) -> None:
    request = signed(
        {"event": "meeting.ended", "payload": {"object": MEETING}}, NOW.timestamp() - age
    )
    with pytest.raises(Rejected) as refused:
        handler().handle(request)
    assert refused.value.outcome == "stale_timestamp"
    assert SECRET not in refused.value.message
