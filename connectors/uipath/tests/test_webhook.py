"""The UiPath webhook handler alone: signature, replay window, event types, the job's fields."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from dxkpi.collector.events import Accepted, Rejected, Reply, WebhookRequest
from dxkpi.collector.testing import context_for
from dxkpi.connectors.uipath import UiPathSettings, UiPathWebhook

SECRET = "uipath-hook-secret"
NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def handler() -> UiPathWebhook:
    settings = UiPathSettings.model_validate(
        {
            "orchestrator_url": "https://cloud.uipath.com/org/tenant/orchestrator_",
            "client_id": "app",
            "client_secret": "pull-secret",
            "folder_ids": [1],
            "manual_minutes_per_run": {"請求書データ入力": 12},
        }
    )
    return UiPathWebhook(settings, SecretStr(SECRET), context_for("uipath_main"))


def event(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Type": "job.completed",
        "EventId": "3e5af0113e674ae597c579cb35ed8630",
        "Timestamp": "2026-12-03T08:59:58.5790797Z",
        "TenantId": 1,
        "Job": {
            "Id": 42,
            "State": "Successful",
            "EndTime": "2026-12-02T15:30:00Z",
            "Release": {"Name": "請求書データ入力"},
        },
    }
    base.update(over)
    return base


def request(body: bytes, signature: str | None = None) -> WebhookRequest:
    if signature is None:
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
        signature = base64.b64encode(digest).decode()
    return WebhookRequest({"x-uipath-signature": signature}, body, NOW)


def test_a_completed_job_is_a_run_and_its_minutes_on_its_tokyo_day() -> None:
    result = handler().handle(request(json.dumps(event()).encode()))
    assert isinstance(result, Accepted)
    assert result.event_id == "job.completed:3e5af0113e674ae597c579cb35ed8630"
    runs, saved = result.observations
    # 15:30 UTC on 2 December is 00:30 on 3 December in Tokyo.
    assert runs.start.isoformat() == "2026-12-03T00:00:00+09:00"
    assert (runs.metric, runs.value, dict(runs.labels)) == (
        "rpa_runs",
        1,
        {"process": "請求書データ入力", "result": "successful"},
    )
    assert (saved.metric, saved.value) == ("rpa_time_saved_seconds", 12 * 60)


def test_a_faulted_job_saves_nothing() -> None:
    body = event(Type="job.faulted")
    body["Job"]["State"] = "Faulted"
    result = handler().handle(request(json.dumps(body).encode()))
    assert isinstance(result, Accepted)
    assert [(o.metric, o.labels["result"]) for o in result.observations] == [
        ("rpa_runs", "faulted")
    ]


@pytest.mark.parametrize(
    ("body", "signature", "outcome"),
    [
        (json.dumps(event()).encode(), "", "missing_signature"),
        (json.dumps(event()).encode(), "bm90IHRoZSBzaWduYXR1cmU=", "bad_signature"),
        (json.dumps(event(Timestamp="2026-12-03T08:40:00Z")).encode(), None, "stale_timestamp"),
        (b"{not json", None, "malformed_json"),
        (json.dumps(event(Type="queueItem.added")).encode(), None, "unknown_event"),
        (json.dumps(event(Job={"Id": 1, "State": "Successful"})).encode(), None, "bad_event"),
    ],
)
def test_refusals(body: bytes, signature: str | None, outcome: str) -> None:
    with pytest.raises(Rejected) as refused:
        handler().handle(request(body, signature))
    assert refused.value.outcome == outcome
    assert SECRET not in refused.value.message


def test_the_ping_of_the_test_button_is_answered_and_stores_nothing() -> None:
    result = handler().handle(request(json.dumps({"Type": "ping", "EventId": "x"}).encode()))
    assert isinstance(result, Reply) and result.status == 200


def test_an_old_version_naming_the_process_release_name_is_read() -> None:
    body = event()
    body["Job"] = {
        "Id": 1,
        "State": "Stopped",
        "EndTime": "2026-12-03T00:00:00",
        "ReleaseName": "X_Prod",
    }
    body["Type"] = "job.stopped"
    result = handler().handle(request(json.dumps(body).encode()))
    assert isinstance(result, Accepted)
    assert result.observations[0].labels == {"process": "X_Prod", "result": "stopped"}
    assert result.occurred_at == datetime(2026, 12, 3, tzinfo=UTC) - timedelta(0)
