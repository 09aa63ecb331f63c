"""The receiver over real HTTP (waitress on loopback) against real stores: the push API, the
webhooks' hostile inputs, self-metrics, exactly-once storage, and the exporter woken at once."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from dxkpi.collector.config import LoadedConfig, load_config
from dxkpi.collector.contract import Observation
from dxkpi.collector.errors import ConfigError
from dxkpi.collector.events import Accepted
from dxkpi.collector.exporter import Exporter
from dxkpi.collector.storage import Store
from dxkpi.collector.storage.events import store_event
from dxkpi.collector.testing import running_receiver

TOKEN = "push-token-Sup3rSecret"
ZOOM_SECRET = "zoom-webhook-S3cret-token"
UIPATH_SECRET = "uipath-webhook-S3cret"
CONFIG = """\
sources:
  - id: zoom_main
    connector: zoom
    settings:
      account_id: acc
      client_id: cid
      client_secret: ${ZOOM_CLIENT_SECRET}
      departments: {host-kato: 情報政策課}
  - id: uipath_main
    connector: uipath
    settings:
      orchestrator_url: https://cloud.example/org/tenant/orchestrator_
      client_id: app
      client_secret: ${UIPATH_CLIENT_SECRET}
      folder_ids: [1]
      manual_minutes_per_run: {請求書データ入力: 12}
receiver:
  max_body_bytes: 4096
  rate_limit: {per_second: 5, burst: RATE_BURST}
  webhooks:
    - {source: zoom_main, secret: "${ZOOM_WEBHOOK_SECRET}"}
    - {source: uipath_main, secret: "${UIPATH_WEBHOOK_SECRET}"}
  clients:
    - id: dx_office
      token_sha256: ${DX_OFFICE_TOKEN_SHA256}
      metrics:
        - {name: e_application_forms, unit: forms, labels: [municipality]}
        - {name: paper_sheets, unit: sheets}
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "pull-secret-zoom")
    monkeypatch.setenv("UIPATH_CLIENT_SECRET", "pull-secret-uipath")
    monkeypatch.setenv("ZOOM_WEBHOOK_SECRET", ZOOM_SECRET)
    monkeypatch.setenv("UIPATH_WEBHOOK_SECRET", UIPATH_SECRET)
    monkeypatch.setenv("DX_OFFICE_TOKEN_SHA256", hashlib.sha256(TOKEN.encode()).hexdigest())


def configure(tmp_path: Path, burst: int = 1000, extra: str = "", threads: int = 8) -> LoadedConfig:
    text = CONFIG.replace("RATE_BURST", str(burst)).replace(
        "  max_body_bytes: 4096\n", f"  max_body_bytes: 4096\n  threads: {threads}\n"
    )
    path = tmp_path / "dxkpi.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return load_config(path)


@pytest.fixture
def receiver(env: None, tmp_path: Path, store: Store) -> Iterator[str]:
    with running_receiver(store, configure(tmp_path)) as url:
        yield url


def push(url: str, body: object, token: str = TOKEN) -> requests.Response:
    return requests.post(
        f"{url}/api/v1/observations",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def zoom_post(
    url: str, event: dict[str, object], *, stamp: float | None = None
) -> requests.Response:
    body = json.dumps(event).encode()
    ts = str(int(stamp if stamp is not None else time.time()))
    digest = hmac.new(ZOOM_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256)
    headers = {
        "x-zm-request-timestamp": ts,
        "x-zm-signature": "v0=" + digest.hexdigest(),
        "Content-Type": "application/json",
    }
    return requests.post(f"{url}/webhooks/zoom_main", data=body, headers=headers, timeout=10)


def meeting_ended(uuid: str = "m-uuid-1==", host: str = "host-kato") -> dict[str, object]:
    return {
        "event": "meeting.ended",
        "event_ts": 1_733_200_000_000,
        "payload": {
            "account_id": "acc",
            "object": {
                "uuid": uuid,
                "id": "85012345678",
                "host_id": host,
                "topic": "定例会",
                "type": 2,
                "start_time": "2026-12-01T01:00:00Z",
                "end_time": "2026-12-01T01:45:00Z",
                "duration": 60,
                "timezone": "Asia/Tokyo",
            },
        },
    }


def values(store: Store, source: str) -> dict[tuple[str, str], float]:
    return {
        (r.metric, r.labels_json): r.last_value or 0.0
        for r in store.series_rows()
        if r.source == source
    }


def outcome_count(url: str, endpoint: str, outcome: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    line = f'dxkpi_receiver_requests_total{{endpoint="{endpoint}",outcome="{outcome}"}} '
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


# -- push API ---------------------------------------------------------------------------------


def test_pushed_rows_are_stored_with_reiwa_periods(receiver: str, store: Store) -> None:
    rows = [
        {
            "metric": "e_application_forms",
            "labels": {"municipality": "盛岡市"},
            "period": "令和3年度",
            "value": 1200,
        },
        {
            "metric": "e_application_forms",
            "labels": {"municipality": "盛岡市"},
            "period": "2021年5月",
            "value": 90,
        },
        {"metric": "paper_sheets", "period": "R3", "value": 4.5e6},
    ]
    answer = push(receiver, {"observations": rows})
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 3
    points = {
        (p.granularity, datetime.fromtimestamp(p.start, UTC).date().isoformat(), p.value)
        for p in _points(store, "dx_office", "e_application_forms")
    }
    # R3 is FY2021, from 2021-04-01 Tokyo (2021-03-31 15:00 UTC).
    assert points == {("fiscal_year", "2021-03-31", 1200.0), ("month", "2021-04-30", 90.0)}
    # The same push again stores the same values: nothing changes.
    assert push(receiver, {"observations": rows}).json()["changed"] == 0


def _points(store: Store, source: str, metric: str) -> list[object]:
    from sqlalchemy import text

    with store.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT o.period_start AS start, o.granularity AS granularity, o.value AS value "
                "FROM observations o JOIN series s ON s.id = o.series_id "
                "WHERE s.source = :source AND s.metric = :metric"
            ),
            {"source": source, "metric": metric},
        ).all()
    return list(rows)


def test_a_request_with_one_bad_row_stores_nothing_and_names_row_and_field(
    receiver: str, store: Store
) -> None:
    rows = [
        {"metric": "paper_sheets", "period": "R3", "value": 1},
        {"metric": "paper_sheets", "period": "令和99年13月", "value": 2},
        {"metric": "paper_sheets", "period": "R4", "value": "many"},
        {"metric": "e_application_forms", "labels": {}, "period": "R4", "value": 3},
    ]
    answer = push(receiver, rows)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert "row 2: field 'period'" in error
    assert "row 3: field 'value'" in error
    assert "row 4: field 'labels'" in error and "municipality" in error
    assert "Nothing was stored" in error
    assert store.series_rows() == [] or values(store, "dx_office") == {}
    assert outcome_count(receiver, "push", "invalid_rows") == 1


def test_push_needs_a_known_token_and_an_allowed_metric(receiver: str, store: Store) -> None:
    row = {"metric": "paper_sheets", "period": "R3", "value": 1}
    assert push(receiver, row, token="wrong").status_code == 401
    no_auth = requests.post(f"{receiver}/api/v1/observations", json=row, timeout=10)
    assert no_auth.status_code == 401
    forbidden = push(receiver, [row, {"metric": "zoom_meetings", "period": "R3", "value": 1}])
    assert forbidden.status_code == 403
    assert "row 2: field 'metric'" in forbidden.json()["error"]
    assert values(store, "dx_office") == {}
    assert outcome_count(receiver, "push", "unauthorized") == 2
    assert outcome_count(receiver, "push", "forbidden_metric") == 1


def upload(url: str, data: bytes, token: str = TOKEN) -> requests.Response:
    return requests.post(
        f"{url}/api/v1/observations.csv",
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
        timeout=10,
    )


def test_a_shift_jis_csv_upload_is_read_as_the_csvfile_connector_reads_files(
    receiver: str, store: Store
) -> None:
    table = (
        "metric,period,value,municipality\r\n"
        'e_application_forms,令和3年度,"1,200",盛岡市\r\n'
        "e_application_forms,令和4年度,－,盛岡市\r\n"  # no figure reported: skipped
        "paper_sheets,R3,△12,\r\n"
    )
    answer = upload(receiver, table.encode("cp932"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 2
    got = values(store, "dx_office")
    assert got[("e_application_forms", '{"municipality":"盛岡市"}')] == 1200
    assert got[("paper_sheets", "{}")] == -12


def test_a_csv_upload_with_a_bad_row_stores_nothing_and_names_the_row(
    receiver: str, store: Store
) -> None:
    table = "metric,period,value\npaper_sheets,R3,1\npaper_sheets,R4,12x\n"
    answer = upload(receiver, table.encode())
    assert answer.status_code == 422
    assert "row 3: field 'value'" in answer.json()["error"]
    bad_period = upload(receiver, b"metric,period,value\npaper_sheets,someday,1\n")
    assert "row 2: field 'period'" in bad_period.json()["error"]
    assert values(store, "dx_office") == {}


# -- webhooks: the Zoom handshake and events ----------------------------------------------------


def test_zoom_url_validation_answers_the_hmac_of_the_plain_token(receiver: str) -> None:
    answer = zoom_post(
        receiver,
        {"event": "endpoint.url_validation", "payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"}},
    )
    assert answer.status_code == 200
    expected = hmac.new(ZOOM_SECRET.encode(), b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()
    assert answer.json() == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected}


def test_a_redelivered_event_is_stored_once(receiver: str, store: Store) -> None:
    first = zoom_post(receiver, meeting_ended())
    assert first.status_code == 200, first.text
    again = zoom_post(receiver, meeting_ended())  # Zoom retries when it saw no 2xx in time
    assert again.status_code == 200 and again.json()["duplicate"] is True
    zoom_post(receiver, meeting_ended(uuid="m-uuid-2=="))
    got = values(store, "zoom_main")
    assert got[("zoom_meetings", "{}")] == 2
    assert got[("zoom_department_meetings", '{"department":"情報政策課"}')] == 2
    assert (
        got[("zoom_department_meeting_duration_seconds", '{"department":"情報政策課"}')]
        == 2 * 45 * 60
    )
    assert outcome_count(receiver, "webhook", "accepted") == 2
    assert outcome_count(receiver, "webhook", "duplicate") == 1


def test_concurrent_redeliveries_store_once(receiver: str, store: Store) -> None:
    answers: list[int] = []

    def send() -> None:
        answers.append(zoom_post(receiver, meeting_ended(uuid="same==")).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 8
    assert values(store, "zoom_main")[("zoom_meetings", "{}")] == 1


# -- hostile input ----------------------------------------------------------------------------


def test_hostile_requests_get_a_clear_4xx_and_store_nothing(
    receiver: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps(meeting_ended()).encode()
    url = f"{receiver}/webhooks/zoom_main"
    now = str(int(time.time()))
    good = (
        "v0="
        + hmac.new(ZOOM_SECRET.encode(), f"v0:{now}:".encode() + body, hashlib.sha256).hexdigest()
    )
    cases = {
        "missing_signature": requests.post(url, data=body, timeout=10),
        "bad_signature": requests.post(
            url,
            data=body,
            headers={"x-zm-request-timestamp": now, "x-zm-signature": "v0=" + "0" * 64},
            timeout=10,
        ),
        # A captured request sent again ten minutes later: its signature is right, its time not.
        "stale_timestamp": zoom_post(receiver, meeting_ended(), stamp=time.time() - 600),
        # The signature of one body on another.
        "tampered": requests.post(
            url,
            data=body.replace(b"host-kato", b"host-evil"),
            headers={"x-zm-request-timestamp": now, "x-zm-signature": good},
            timeout=10,
        ),
        "malformed_json": _signed_raw(receiver, b'{"event": "meeting.ended", '),
        "unknown_event": zoom_post(
            receiver, {"event": "recording.completed", "payload": {"object": {}}}
        ),
        "too_large": requests.post(url, data=b"x" * 5000, timeout=10),
        "not_found": requests.post(f"{receiver}/webhooks/nobody", data=b"{}", timeout=10),
        "wrong_method": requests.get(url, timeout=10),
    }
    statuses = {name: answer.status_code for name, answer in cases.items()}
    assert statuses == {
        "missing_signature": 401,
        "bad_signature": 401,
        "stale_timestamp": 401,
        "tampered": 401,
        "malformed_json": 400,
        "unknown_event": 400,
        "too_large": 413,
        "not_found": 404,
        "wrong_method": 405,
    }
    for name, answer in cases.items():
        assert answer.json()["error"], name
    assert values(store, "zoom_main") == {}
    for outcome, count in {
        "missing_signature": 1,
        "bad_signature": 2,
        "stale_timestamp": 1,
        "malformed_json": 1,
        "unknown_event": 1,
        "too_large": 1,
    }.items():
        assert outcome_count(receiver, "webhook", outcome) == count, outcome
    logged = caplog.text
    assert "refused (bad_signature)" in logged
    for secret in (ZOOM_SECRET, UIPATH_SECRET, TOKEN, good):
        assert secret not in logged


def _signed_raw(url: str, body: bytes) -> requests.Response:
    ts = str(int(time.time()))
    digest = hmac.new(ZOOM_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {"x-zm-request-timestamp": ts, "x-zm-signature": "v0=" + digest}
    return requests.post(f"{url}/webhooks/zoom_main", data=body, headers=headers, timeout=10)


@pytest.mark.postgres
def test_a_store_that_is_down_answers_503_with_retry_after(
    env: None, tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The vendor then sends the event again; nothing is half stored."""
    down = Store(pg_url.rsplit("/", 1)[0] + "/dxkpi_no_such_database")
    try:
        with running_receiver(down, configure(tmp_path)) as url:
            answer = zoom_post(url, meeting_ended())
            assert answer.status_code == 503
            assert int(answer.headers["Retry-After"]) >= 1
            pushed = push(url, {"metric": "paper_sheets", "period": "R3", "value": 1})
            assert pushed.status_code == 503
            assert outcome_count(url, "webhook", "store_unavailable") == 1
            assert outcome_count(url, "push", "store_unavailable") == 1
    finally:
        down.close()
    assert ZOOM_SECRET not in caplog.text and TOKEN not in caplog.text


def test_a_burst_over_the_rate_limit_gets_429_with_retry_after(
    env: None, tmp_path: Path, sqlite_store: Store
) -> None:
    with running_receiver(sqlite_store, configure(tmp_path, burst=3)) as url:
        answers = [
            push(url, {"metric": "paper_sheets", "period": "R3", "value": n}) for n in range(6)
        ]
        statuses = [a.status_code for a in answers]
        assert statuses[:3] == [200, 200, 200]
        assert 429 in statuses[3:]
        limited = next(a for a in answers if a.status_code == 429)
        assert int(limited.headers["Retry-After"]) >= 1
        assert outcome_count(url, "push", "rate_limited") == statuses.count(429)


def test_behind_a_trusted_proxy_the_limit_is_per_caller(
    env: None, tmp_path: Path, sqlite_store: Store
) -> None:
    loaded = configure(tmp_path, burst=2)
    loaded.config = loaded.config.model_copy(
        update={
            "receiver": loaded.config.receiver.model_copy(update={"trusted_proxy": "127.0.0.1"})
        }
    )
    with running_receiver(sqlite_store, loaded) as url:

        def send(caller: str) -> int:
            return requests.post(
                f"{url}/api/v1/observations",
                json={"metric": "paper_sheets", "period": "R3", "value": 1},
                headers={"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": caller},
                timeout=10,
            ).status_code

        assert [send("203.0.113.7") for _ in range(3)] == [200, 200, 429]
        assert send("198.51.100.9") == 200  # another caller has its own bucket


def test_a_slow_client_holds_no_worker_thread(
    env: None, tmp_path: Path, sqlite_store: Store
) -> None:
    loaded = configure(tmp_path, threads=1)
    assert loaded.config.receiver.threads == 1
    with running_receiver(sqlite_store, loaded) as url:
        host, port = url.removeprefix("http://").split(":")
        slow = socket.create_connection((host, int(port)))
        slow.sendall(
            b"POST /api/v1/observations HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"
        )
        try:
            started = time.monotonic()
            answer = push(url, {"metric": "paper_sheets", "period": "R3", "value": 7})
            assert answer.status_code == 200
            assert time.monotonic() - started < 2
        finally:
            slow.close()


def test_old_event_ids_are_forgotten(store: Store) -> None:
    from dxkpi.collector.storage.events import forget_events

    event = Accepted("old", datetime.now(UTC), ())
    assert store_event(store, "zoom_main", event)
    assert forget_events(store, time.time() - 3600) == 0
    assert forget_events(store, time.time() + 1) == 1
    assert store_event(store, "zoom_main", event)  # forgotten: it would count again


# -- config -----------------------------------------------------------------------------------


def test_config_refuses_inline_secrets_bad_hashes_and_unknown_webhook_sources(
    env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DX_OFFICE_TOKEN_SHA256", "not-a-hash")
    text = (
        CONFIG.replace("RATE_BURST", "10")
        .replace(
            '{source: uipath_main, secret: "${UIPATH_WEBHOOK_SECRET}"}',
            '{source: uipath_main, secret: "inline-secret"}\n'
            '    - {source: nowhere, secret: "${ZOOM_WEBHOOK_SECRET}"}\n'
            '    - {source: portal, secret: "${ZOOM_WEBHOOK_SECRET}"}',
        )
        .replace(
            "sources:\n",
            "sources:\n  - {id: portal, connector: csvfile, settings: {path: x.csv, "
            "period_column: d, metrics: [{name: pv, column: pv, unit: views}]}}\n",
        )
    )
    path = tmp_path / "dxkpi.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "receiver.webhooks[1].secret" in message and "never written inline" in message
    assert "receiver.webhooks[2].source" in message and "nowhere" in message
    assert "receiver.webhooks[3].source" in message and "'csvfile' takes no webhooks" in message
    assert "receiver.clients[0].token_sha256" in message and "sha256sum" in message
    assert "inline-secret" not in message


def test_pushed_metrics_can_feed_a_kpi(env: None, tmp_path: Path) -> None:
    loaded = configure(
        tmp_path,
        extra=textwrap.dedent(
            """\
            kpis:
              - id: forms
                name_ja: 電子申請件数
                name_en: e-applications
                area: administration
                unit: forms
                baseline: {value: 100, fiscal_year: R2}
                target: {value: 900, fiscal_year: R7}
                feed: {kind: fiscal_year_sum, metric: e_application_forms}
            """
        ),
    )
    assert loaded.metric_specs["dx_office"]["e_application_forms"].unit == "forms"


# -- freshness --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_the_exporter_sees_a_write_of_another_process_within_a_second(
    env: None, tmp_path: Path, pg_store: Store
) -> None:
    """The writer's store and the exporter's are separate connections, and nothing in this
    process announces the write (as when the receiver or a worker is another process); the
    exporter polls only every minute here, so only NOTIFY can make it this fast."""
    loaded = configure(tmp_path)
    exporter_store, writer_store = Store(pg_store.url), Store(pg_store.url)
    exporter = Exporter(exporter_store, loaded, refresh_interval=60.0)
    exporter.start()
    try:
        time.sleep(0.5)  # the listener connects
        event = Accepted(
            "e-1", datetime.now(UTC), (Observation("zoom_meetings", 1, datetime.now(UTC)),)
        )
        sent = time.monotonic()
        assert store_event(writer_store, "zoom_main", event)
        while b"dxkpi_zoom_meetings{" not in _metrics(exporter):
            assert time.monotonic() - sent < 1.0, "not on /metrics within a second"
            time.sleep(0.01)
    finally:
        exporter.stop()
        exporter_store.close()
        writer_store.close()


def test_the_receiver_wakes_the_exporter_of_its_process_at_once(
    env: None, tmp_path: Path, sqlite_store: Store
) -> None:
    """`dxkpi run` on SQLite: no NOTIFY there, but the receiver beside the exporter wakes it."""
    loaded = configure(tmp_path)
    exporter = Exporter(sqlite_store, loaded, refresh_interval=60.0)
    exporter.start()
    try:
        with running_receiver(sqlite_store, loaded) as url:
            sent = time.monotonic()
            assert (
                push(url, {"metric": "paper_sheets", "period": "R3", "value": 5}).status_code == 200
            )
            while b"dxkpi_paper_sheets{" not in _metrics(exporter):
                assert time.monotonic() - sent < 1.0, "not on /metrics within a second"
                time.sleep(0.01)
    finally:
        exporter.stop()


def _metrics(exporter: Exporter) -> bytes:
    snapshot = exporter.snapshot
    return snapshot.text if snapshot is not None else b""


# -- dxkpi run ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_run_shows_a_pushed_figure_on_metrics_within_a_second(tmp_path: Path) -> None:
    """`dxkpi run` on the embedded default (SQLite, no Redis): the receiver runs beside the
    exporter and wakes it, so a pushed figure is on /metrics within a second of its 2xx, and
    on the KPI board it feeds (the config's portal_views KPI: a fiscal year's page views)."""
    from tests.conftest import write_config

    metrics_port, receiver_port = _free_port(), _free_port()
    config = write_config(
        tmp_path,
        extra=textwrap.dedent(
            f"""\
            receiver:
              listen: 127.0.0.1:{receiver_port}
              clients:
                - id: dx_office
                  token_sha256: ${{DX_OFFICE_TOKEN_SHA256}}
                  metrics:
                    - {{name: paper_sheets, unit: sheets}}
                    - {{name: portal_page_views, unit: page_views}}
            """
        ),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXKPI_")}
    env["DX_OFFICE_TOKEN_SHA256"] = hashlib.sha256(TOKEN.encode()).hexdigest()
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *[sys.executable, "-m", "dxkpi.collector", "--config", str(config)],
                *["--data-dir", str(tmp_path / "data"), "run"],
                *["--listen", f"127.0.0.1:{metrics_port}"],
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    receiver = f"http://127.0.0.1:{receiver_port}"
    try:
        deadline = time.monotonic() + 90
        while not _answers(f"{receiver}/healthz") or not _answers(
            f"http://127.0.0.1:{metrics_port}/metrics"
        ):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        answer = push(receiver, {"metric": "paper_sheets", "period": "令和3年度", "value": 4200})
        assert answer.status_code == 200, answer.text
        accepted = time.monotonic()
        while 'dxkpi_paper_sheets{org="default",source="dx_office"} 4200.0' not in _scrape(
            metrics_port
        ):
            assert time.monotonic() - accepted < 1.0, "not on /metrics within a second"
            time.sleep(0.02)
        # FY2021's page views, pushed as one fiscal-year figure: the KPI's reported period.
        answer = push(receiver, {"metric": "portal_page_views", "period": "R3", "value": 1234567})
        assert answer.status_code == 200, answer.text
        accepted = time.monotonic()
        while "1,234,567" not in _scrape(metrics_port, path="/"):
            assert time.monotonic() - accepted < 1.0, "not on the KPI board within a second"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _scrape(port: int, path: str = "/metrics") -> str:
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).text
    except requests.RequestException:
        return ""
