"""Pull and push agree: the same meetings (Zoom) and jobs (UiPath) read by the connector from a
loopback fake of the vendor and sent as signed webhooks to the real receiver give the same
figures; a day with both is not counted twice; redeliveries store nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from dxkpi.collector.config import LoadedConfig, load_config
from dxkpi.collector.contract import TOKYO, Window
from dxkpi.collector.runner import collect_source
from dxkpi.collector.storage import Store
from dxkpi.collector.testing import loopback_server, running_receiver
from dxkpi.connectors.uipath.tests.fake_orchestrator import FakeOrchestrator, job
from dxkpi.connectors.zoom.tests.fake_zoom import (
    ACCOUNT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    FakeZoom,
    Meeting,
)

ZOOM_SECRET = "zoom-webhook-secret-token"
UIPATH_SECRET = "uipath-webhook-secret"
KATO, SATO = "host-kato", "host-sato"
DEPARTMENTS = {KATO: "情報政策課", SATO: "防災課"}
# Three days of meetings (UTC start, minutes, participants) by host.
MEETINGS = {
    KATO: [
        Meeting("2025-03-03T01:00:00Z", 45, 6),
        Meeting("2025-03-03T05:30:00Z", 30, 3),
        Meeting("2025-03-04T00:10:00Z", 90, 12),
    ],
    SATO: [Meeting("2025-03-03T14:50:00Z", 20, 2), Meeting("2025-03-05T02:00:00Z", 60, 5)],
}
PULLED = Window(datetime(2025, 3, 3, tzinfo=TOKYO), datetime(2025, 3, 6, tzinfo=TOKYO))


def fake_zoom() -> FakeZoom:
    fake = FakeZoom(meetings={user: list(found) for user, found in MEETINGS.items()})
    for day in range(1, 32):
        fake.usage[date(2025, 3, day)] = {}
    for found in MEETINGS.values():
        for meeting in found:
            day = datetime.fromisoformat(meeting.start_time).astimezone(TOKYO).date()
            usage = fake.usage[day]
            usage["meetings"] = usage.get("meetings", 0) + 1
            usage["participants"] = usage.get("participants", 0) + meeting.participants_count
    return fake


@contextmanager
def zoom_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoadedConfig]:
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("ZOOM_WEBHOOK_SECRET", ZOOM_SECRET)
    fake = fake_zoom()
    with loopback_server(fake) as (url, _seen):
        path = tmp_path / "dxkpi.yaml"
        path.write_text(
            textwrap.dedent(
                f"""\
                sources:
                  - id: zoom_main
                    connector: zoom
                    settings:
                      account_id: {ACCOUNT_ID}
                      client_id: {CLIENT_ID}
                      client_secret: ${{ZOOM_CLIENT_SECRET}}
                      api_base_url: {url}
                      oauth_base_url: {url}
                      departments: {json.dumps(DEPARTMENTS, ensure_ascii=False)}
                receiver:
                  webhooks:
                    - {{source: zoom_main, secret: "${{ZOOM_WEBHOOK_SECRET}}"}}
                """
            ),
            encoding="utf-8",
        )
        yield load_config(path)


def zoom_events(host: str, index: int, meeting: Meeting) -> list[dict[str, Any]]:
    """What Zoom sends for one meeting: a join per participant, then the end."""
    start = datetime.fromisoformat(meeting.start_time)
    meeting_object = {
        "uuid": f"{host}-{index}==",
        "id": str(80_000_000_000 + index),
        "host_id": host,
        "topic": "会議",
        "type": 2,
        "start_time": meeting.start_time,
        "timezone": "Asia/Tokyo",
        "duration": 60,
    }
    events: list[dict[str, Any]] = []
    for n in range(meeting.participants_count):
        joined = start + timedelta(seconds=10 * n)
        participant = {
            "user_id": str(16_000_000 + n),
            "participant_uuid": f"p-{host}-{index}-{n}",
            "user_name": f"参加者{n}",
            "join_time": joined.isoformat().replace("+00:00", "Z"),
        }
        events.append(
            {
                "event": "meeting.participant_joined",
                "payload": {
                    "account_id": ACCOUNT_ID,
                    "object": {**meeting_object, "participant": participant},
                },
            }
        )
    end = start + timedelta(minutes=meeting.duration)
    ended = {**meeting_object, "end_time": end.isoformat().replace("+00:00", "Z")}
    events.append(
        {"event": "meeting.ended", "payload": {"account_id": ACCOUNT_ID, "object": ended}}
    )
    return events


def send_zoom(url: str, event: dict[str, Any]) -> None:
    body = json.dumps(event).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(ZOOM_SECRET.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256)
    answer = requests.post(
        f"{url}/webhooks/zoom_main",
        data=body,
        headers={"x-zm-request-timestamp": stamp, "x-zm-signature": "v0=" + digest.hexdigest()},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


PUSHED_ZOOM = {
    "zoom_meetings",
    "zoom_participants",
    "zoom_department_meetings",
    "zoom_department_participants",
    "zoom_department_meeting_duration_seconds",
}


def figures(store: Store, source: str, metrics: set[str]) -> dict[tuple[str, str, str], float]:
    """Every non-zero stored value of `metrics`: (metric, labels, Tokyo day) -> value."""
    out: dict[tuple[str, str, str], float] = {}
    for row in store.series_rows():
        if row.source != source or row.metric not in metrics:
            continue
        for point in store.points([row.id]):
            if point[1]:
                day = datetime.fromtimestamp(point[0], TOKYO).date().isoformat()
                out[row.metric, row.labels_json, day] = point[1]
    return out


def test_zoom_pull_and_push_agree_and_a_day_with_both_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    with zoom_config(tmp_path, monkeypatch) as loaded:
        pulled = Store(f"sqlite:///{tmp_path / 'pulled.sqlite'}")
        pulled.migrate()
        collect_source(loaded, pulled, "zoom_main", window=PULLED, kind="backfill")
        expected = figures(pulled, "zoom_main", PUSHED_ZOOM)
        pulled.close()
        assert (
            expected[
                "zoom_department_meeting_duration_seconds",
                '{"department":"情報政策課"}',
                "2025-03-03",
            ]
            == (45 + 30) * 60
        )

        events = [
            e
            for host, found in MEETINGS.items()
            for i, m in enumerate(found)
            for e in zoom_events(host, i, m)
        ]
        late = events.pop()  # Zoom's last delivery comes only after the pull
        with running_receiver(store, loaded) as url:
            for event in events:
                send_zoom(url, event)
            for event in events[:5]:  # redeliveries
                send_zoom(url, event)
            collect_source(loaded, store, "zoom_main", window=PULLED, kind="backfill")
            assert figures(store, "zoom_main", PUSHED_ZOOM) == expected
            # The pull has counted that meeting already: its late event adds nothing.
            send_zoom(url, late)
            assert figures(store, "zoom_main", PUSHED_ZOOM) == expected

        # Push alone, into a store no pull has touched, gives the pull's figures too.
        pushed = Store(f"sqlite:///{tmp_path / 'pushed.sqlite'}")
        pushed.migrate()
        with running_receiver(pushed, loaded) as url:
            for event in [*events, late]:
                send_zoom(url, event)
        assert figures(pushed, "zoom_main", PUSHED_ZOOM) == expected
        pushed.close()


def test_events_after_the_pull_window_add_to_the_pulled_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """A pull that ran at 12:00 on 3 March (UiPath counts the running day) then an event for a
    job that ended at 13:00: the day shows both."""
    monkeypatch.setenv("UIPATH_CLIENT_SECRET", FakeOrchestrator().client_secret)
    monkeypatch.setenv("UIPATH_WEBHOOK_SECRET", UIPATH_SECRET)
    fake = FakeOrchestrator(
        jobs=[
            job(1, "請求書データ入力", "Successful", "2025-03-03T00:30:00Z"),
            job(2, "請求書データ入力", "Faulted", "2025-03-03T01:00:00Z"),
        ]
    )
    with loopback_server(fake.handle) as (url, _seen):
        loaded = uipath_config(tmp_path, url)
        noon = datetime(2025, 3, 3, 12, tzinfo=TOKYO)
        collect_source(loaded, store, "uipath_main", window=Window(PULLED.start, noon))
        with running_receiver(store, loaded) as receiver:
            # Job 2's event arrives late (after the pull counted it): nothing added.
            send_uipath(
                receiver, job_event("ev-2", "job.faulted", 2, "Faulted", "2025-03-03T01:00:00Z")
            )
            # Job 3 ended after the pull's window: added to the pulled day.
            send_uipath(
                receiver,
                job_event("ev-3", "job.completed", 3, "Successful", "2025-03-03T04:00:00Z"),
            )
            send_uipath(
                receiver,
                job_event("ev-3", "job.completed", 3, "Successful", "2025-03-03T04:00:00Z"),
            )
    got = figures(store, "uipath_main", {"rpa_runs", "rpa_time_saved_seconds"})
    assert got == {
        ("rpa_runs", '{"process":"請求書データ入力","result":"successful"}', "2025-03-03"): 2,
        ("rpa_runs", '{"process":"請求書データ入力","result":"faulted"}', "2025-03-03"): 1,
        ("rpa_time_saved_seconds", '{"process":"請求書データ入力"}', "2025-03-03"): 2 * 12 * 60,
    }


def uipath_config(tmp_path: Path, url: str) -> LoadedConfig:
    path = tmp_path / "uipath.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            sources:
              - id: uipath_main
                connector: uipath
                settings:
                  orchestrator_url: {url}/pref-example/DefaultTenant/orchestrator_
                  client_id: {FakeOrchestrator().client_id}
                  client_secret: ${{UIPATH_CLIENT_SECRET}}
                  folder_ids: [201]
                  manual_minutes_per_run: {{請求書データ入力: 12, 住民票発行集計: 30}}
            receiver:
              webhooks:
                - {{source: uipath_main, secret: "${{UIPATH_WEBHOOK_SECRET}}"}}
            """
        ),
        encoding="utf-8",
    )
    return load_config(path)


def job_event(event_id: str, kind: str, job_id: int, state: str, end: str) -> dict[str, Any]:
    return {
        "Type": kind,
        "EventId": event_id,
        "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        "TenantId": 1,
        "FolderId": 201,
        "Job": {
            "Id": job_id,
            "Key": f"00000000-0000-0000-0000-{job_id:012d}",
            "State": state,
            "StartTime": end,
            "EndTime": end,
            "Release": {"Id": 7, "Key": "rel", "ProcessKey": "Invoice", "Name": "請求書データ入力"},
        },
    }


def send_uipath(url: str, event: dict[str, Any]) -> None:
    body = json.dumps(event, ensure_ascii=False).encode()
    signature = base64.b64encode(hmac.new(UIPATH_SECRET.encode(), body, hashlib.sha256).digest())
    answer = requests.post(
        f"{url}/webhooks/uipath_main",
        data=body,
        headers={"X-UiPath-Signature": signature.decode(), "Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def test_uipath_pull_and_push_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    monkeypatch.setenv("UIPATH_CLIENT_SECRET", FakeOrchestrator().client_secret)
    monkeypatch.setenv("UIPATH_WEBHOOK_SECRET", UIPATH_SECRET)
    ends = ["2025-03-03T00:30:00Z", "2025-03-03T16:00:00Z", "2025-03-04T02:00:00Z"]
    jobs = [
        job(10 + i, process, state, end, folder=201)
        for i, (process, state, end) in enumerate(
            (p, s, e)
            for p in ("請求書データ入力", "住民票発行集計")
            for s in ("Successful", "Faulted", "Stopped")
            for e in ends
        )
    ]
    fake = FakeOrchestrator(jobs=jobs)
    with loopback_server(fake.handle) as (url, _seen):
        loaded = uipath_config(tmp_path, url)
        pulled = Store(f"sqlite:///{tmp_path / 'pulled.sqlite'}")
        pulled.migrate()
        collect_source(loaded, pulled, "uipath_main", window=PULLED, kind="backfill")
        metrics = {"rpa_runs", "rpa_time_saved_seconds"}
        expected = figures(pulled, "uipath_main", metrics)
        pulled.close()
        kinds = {"Successful": "job.completed", "Faulted": "job.faulted", "Stopped": "job.stopped"}
        with running_receiver(store, loaded) as receiver:
            for found in jobs:
                event = job_event(
                    f"ev-{found['Id']}",
                    kinds[found["State"]],
                    found["Id"],
                    found["State"],
                    found["EndTime"],
                )
                event["Job"]["Release"]["Name"] = found["ReleaseName"]
                send_uipath(receiver, event)
    assert (
        len(expected) == 2 * 3 * 2 + 2 * 2
    )  # runs per process/result/day, time saved per process/day
    assert figures(store, "uipath_main", metrics) == expected
