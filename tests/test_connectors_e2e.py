"""One source of every connector kind, collected by one real Celery worker (a `dxkpi worker`
subprocess over Redis) from the connectors' loopback fakes into PostgreSQL, then exported:
the stored values are the fakes' values, every source is up on /metrics, the text passes
`promtool check metrics`, and no secret reaches the worker's log or the metrics."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from secrets import token_hex
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dxkpi.collector.config import load_config
from dxkpi.collector.contract import TOKYO
from dxkpi.collector.exporter import Exporter
from dxkpi.collector.storage import Store
from dxkpi.collector.testing import Handler, loopback_server
from dxkpi.connectors._google.fake_token import key_file as google_key_file
from dxkpi.connectors.appstore.tests.fake_appstore import (
    FakeAppStore,
    new_team_key,
    report,
    report_row,
)
from dxkpi.connectors.csvfile.tests.fake_csvfile import FileShare
from dxkpi.connectors.ga4.tests.fake_ga4 import PROPERTY_ID, FakeGa4, key_file, new_key
from dxkpi.connectors.googleplay.tests.fake_gcs import TESTDATA, FakeGcs, new_service_account
from dxkpi.connectors.gsheets.tests.fake_gsheets import SPREADSHEET_ID, FakeSheets
from dxkpi.connectors.httpjson.tests.fake_statsapi import PATH as STATS_PATH
from dxkpi.connectors.httpjson.tests.fake_statsapi import TOKEN as STATS_TOKEN
from dxkpi.connectors.httpjson.tests.fake_statsapi import FakeStatsApi
from dxkpi.connectors.kintone.tests.fake_kintone import APP as KINTONE_APP
from dxkpi.connectors.kintone.tests.fake_kintone import DOMAIN_TOKEN as KINTONE_TOKEN
from dxkpi.connectors.kintone.tests.fake_kintone import FakeKintone
from dxkpi.connectors.matomo.tests.fake_matomo import PREFIX, SITE_ID, FakeMatomo
from dxkpi.connectors.matomo.tests.fake_matomo import TOKEN as MATOMO_TOKEN
from dxkpi.connectors.plausible.tests.fake_plausible import SITE_ID as PLAUSIBLE_SITE
from dxkpi.connectors.plausible.tests.fake_plausible import FakePlausible
from dxkpi.connectors.uipath.tests.fake_orchestrator import FakeOrchestrator, recorded_jobs
from dxkpi.connectors.zoom.tests.fake_zoom import ACCOUNT_ID, CLIENT_ID, FakeZoom
from dxkpi.connectors.zoom.tests.fake_zoom import CLIENT_SECRET as ZOOM_SECRET
from tests import test_celery_e2e
from tests.conftest import IN_CI
from tests.test_celery_e2e import wait_for

pytestmark = pytest.mark.slow

# The worker, the broker, the store and their teardown (logs to stderr) as test_celery_e2e has them.
cluster = test_celery_e2e.cluster

INVOICE = "請求書データ入力"  # a process in the recorded Orchestrator jobs
PLAY_NOVEMBER = "installs_jp.example.kurashi_202611_overview.csv"


@dataclass(frozen=True)
class Keys:
    """Credentials the fakes accept; generated per test where the fake lets us choose them."""

    ga4_key: Any = field(default_factory=new_key)
    appstore: tuple[str, Any] = field(default_factory=new_team_key)
    googleplay: tuple[dict[str, str], Any] = field(default_factory=new_service_account)
    plausible_key: str = field(default_factory=lambda: f"pl-{token_hex(16)}")
    uipath_secret: str = field(default_factory=lambda: f"uip-{token_hex(16)}")
    gsheets_key: Any = field(default_factory=new_key)

    def env(self) -> dict[str, str]:
        """What the config's `${...}` references resolve to, in the worker and in this process."""
        return {
            "E2E_ZOOM_CLIENT_SECRET": ZOOM_SECRET,
            "E2E_GA4_KEY_JSON": key_file(self.ga4_key, "https://oauth2.googleapis.com/token"),
            "E2E_MATOMO_TOKEN": MATOMO_TOKEN,
            "E2E_PLAUSIBLE_KEY": self.plausible_key,
            "E2E_APPSTORE_KEY": self.appstore[0],
            "E2E_GOOGLEPLAY_KEY_JSON": json.dumps(self.googleplay[0]),
            "E2E_UIPATH_SECRET": self.uipath_secret,
            "E2E_KINTONE_TOKEN": KINTONE_TOKEN,
            "E2E_HTTPJSON_TOKEN": STATS_TOKEN,
            "E2E_GSHEETS_KEY_JSON": google_key_file(
                self.gsheets_key, "https://oauth2.googleapis.com/token"
            ),
        }


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> Keys:
    # Autouse fixtures run before the other fixtures of their scope, so `cluster` copies an
    # environment that already holds the secrets into the worker's.
    generated = Keys()
    for name, value in generated.env().items():
        monkeypatch.setenv(name, value)
    return generated


@dataclass(frozen=True)
class Expect:
    """The value a metric must have for one Tokyo day."""

    metric: str
    labels: dict[str, str]
    day: date
    value: float


@dataclass
class Source:
    id: str
    connector: str
    settings: dict[str, Any]
    since: date
    until: date  # exclusive
    expect: list[Expect]

    def entry(self) -> dict[str, Any]:
        return {"id": self.id, "connector": self.connector, "settings": self.settings}

    def window(self) -> tuple[str, str]:
        return midnight(self.since).isoformat(), midnight(self.until).isoformat()


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), TOKYO)


def serve(stack: ExitStack, handler: Handler) -> str:
    url, _seen = stack.enter_context(loopback_server(handler))
    return str(url)


# -- one source per connector, each against its fake -----------------------------------------


def zoom_source(stack: ExitStack) -> Source:
    fake = FakeZoom(
        usage={
            date(2025, 3, d): {"meetings": d, "participants": 3 * d, "meeting_minutes": 45 * d}
            for d in range(1, 32)
        }
    )
    url = serve(stack, fake)
    day = date(2025, 3, 3)
    settings = {
        "account_id": ACCOUNT_ID,
        "client_id": CLIENT_ID,
        "client_secret": "${E2E_ZOOM_CLIENT_SECRET}",
        "api_base_url": url,
        "oauth_base_url": url,
    }
    usage = fake.usage[day]
    return Source(
        "zoom_e2e",
        "zoom",
        settings,
        date(2025, 3, 2),
        date(2025, 3, 5),
        [
            Expect("zoom_meetings", {}, day, usage["meetings"]),
            Expect("zoom_meeting_duration_seconds", {}, day, usage["meeting_minutes"] * 60),
        ],
    )


def ga4_source(stack: ExitStack, keys: Keys) -> Source:
    fake = FakeGa4(keys.ga4_key.public_key())
    url = serve(stack, fake)
    fake.token_uri = f"{url}/token"  # the audience the fake wants in the service account's JWT
    settings = {
        "property_id": PROPERTY_ID,
        "service_account_json": "${E2E_GA4_KEY_JSON}",
        "api_base_url": url,
        "token_uri": fake.token_uri,
    }
    day = date(2025, 4, 2)
    views = sum(fake.views(day, i) for i in range(len(fake.paths)))
    return Source(
        "ga4_e2e",
        "ga4",
        settings,
        date(2025, 4, 1),
        date(2025, 4, 4),
        [
            Expect("ga4_page_views", {}, day, views),
            Expect("ga4_active_users", {}, day, fake.users(day)),
        ],
    )


def gsheets_source(stack: ExitStack, keys: Keys) -> Source:
    fake = FakeSheets(keys.gsheets_key.public_key())
    fake.sheet(
        "実績",
        [
            ["年月", "課名", "申請件数"],
            ["令和7年4月", "市民課", 1234],
            ["令和7年4月", "税務課", 56],
            ["令和7年5月", "市民課", 1301],
        ],
    )
    url = serve(stack, fake)
    fake.token.token_uri = f"{url}/token"
    settings = {
        "spreadsheet_id": SPREADSHEET_ID,
        "range": "実績!A1:C",
        "service_account_json": "${E2E_GSHEETS_KEY_JSON}",
        "api_base_url": url,
        "token_uri": fake.token.token_uri,
        "period_column": "年月",
        "granularity": "month",
        "labels": {"section": "課名"},
        "metrics": [{"name": "applications", "column": "申請件数", "unit": "applications"}],
    }
    return Source(
        "gsheets_e2e",
        "gsheets",
        settings,
        date(2025, 4, 1),
        date(2025, 6, 1),
        [
            Expect("applications", {"section": "市民課"}, date(2025, 4, 1), 1234),
            Expect("applications", {"section": "税務課"}, date(2025, 4, 1), 56),
            Expect("applications", {"section": "市民課"}, date(2025, 5, 1), 1301),
        ],
    )


def matomo_source(stack: ExitStack) -> Source:
    fake = FakeMatomo(visits={date(2025, 6, d): 10 * d for d in range(1, 31)})
    url = serve(stack, fake)
    settings = {
        "base_url": f"{url}{PREFIX}/",
        "site_id": SITE_ID,
        "token_auth": "${E2E_MATOMO_TOKEN}",
    }
    day = date(2025, 6, 2)
    visits = fake.visits[day]
    return Source(
        "matomo_e2e",
        "matomo",
        settings,
        date(2025, 6, 1),
        date(2025, 6, 4),
        [
            Expect("matomo_visits", {}, day, visits),
            Expect("matomo_page_views", {}, day, fake.page_views(visits)),
        ],
    )


def plausible_source(stack: ExitStack, keys: Keys) -> Source:
    fake = FakePlausible(
        keys={keys.plausible_key},
        traffic={date(2025, 6, d): (100 + d, 40 + d) for d in range(1, 31)},
    )
    url = serve(stack, fake)
    settings = {"site_id": PLAUSIBLE_SITE, "api_key": "${E2E_PLAUSIBLE_KEY}", "base_url": url}
    day = date(2025, 6, 2)
    page_views, visitors = fake.traffic[day]
    return Source(
        "plausible_e2e",
        "plausible",
        settings,
        date(2025, 6, 1),
        date(2025, 6, 4),
        [
            Expect("plausible_page_views", {}, day, page_views),
            Expect("plausible_visitors", {}, day, visitors),
        ],
    )


def appstore_source(stack: ExitStack, keys: Keys) -> Source:
    day = date(2026, 11, 2)
    apple_id, first_time, updates = "1500000001", (41, 7), 30
    rows = [report_row(day.isoformat(), apple_id, "KURASHI-NAVI", "1F", u) for u in first_time]
    rows.append(report_row(day.isoformat(), apple_id, "KURASHI-NAVI", "7", updates))
    # Other days of the window answer "no sales": zeros.
    fake = FakeAppStore(keys.appstore[1], reports={day.isoformat(): report(rows)})
    url = serve(stack, fake.handle)
    settings = {
        "issuer_id": fake.issuer_id,
        "key_id": fake.key_id,
        "private_key": "${E2E_APPSTORE_KEY}",
        "vendor_number": fake.vendor_number,
        "apps": [{"app": "kurashi_navi", "apple_id": apple_id}],
        "base_url": url,
    }
    ios = {"app": "kurashi_navi", "platform": "ios"}
    return Source(
        "appstore_e2e",
        "appstore",
        settings,
        date(2026, 11, 1),
        date(2026, 11, 4),
        [
            Expect("app_first_time_downloads", ios, day, sum(first_time)),
            Expect("app_first_time_downloads", ios, date(2026, 11, 3), 0),
            Expect("app_updates", {"app": "kurashi_navi"}, day, updates),
        ],
    )


def googleplay_source(stack: ExitStack, keys: Keys) -> Source:
    info, public_key = keys.googleplay
    fake = FakeGcs(public_key, info["client_email"])
    fake.put_testdata(PLAY_NOVEMBER)
    url = serve(stack, fake.handle)
    fake.base_url = url  # the fake's token URI, the JWT's audience
    package = PLAY_NOVEMBER.removeprefix("installs_").removesuffix("_202611_overview.csv")
    settings = {
        "bucket": fake.bucket,
        "service_account_key": "${E2E_GOOGLEPLAY_KEY_JSON}",
        "apps": [{"app": "kurashi_navi", "package": package}],
        "storage_url": url,
        "token_uri": f"{url}/token",
    }
    day = date(2026, 11, 2)
    # Play writes UTF-16 with a BOM; the connector reads Daily User Installs as downloads.
    text = (TESTDATA / PLAY_NOVEMBER).read_bytes().decode("utf-16")
    row = next(r for r in csv.DictReader(io.StringIO(text)) if r["Date"] == day.isoformat())
    return Source(
        "googleplay_e2e",
        "googleplay",
        settings,
        date(2026, 11, 1),
        date(2026, 11, 4),
        [
            Expect(
                "app_first_time_downloads",
                {"app": "kurashi_navi", "platform": "android"},
                day,
                float(row["Daily User Installs"]),
            ),
            Expect(
                "app_uninstalls", {"app": "kurashi_navi"}, day, float(row["Daily User Uninstalls"])
            ),
        ],
    )


def uipath_source(stack: ExitStack, keys: Keys) -> Source:
    fake = FakeOrchestrator(client_secret=keys.uipath_secret)
    url = serve(stack, fake.handle)
    minutes = 12
    settings = {
        "orchestrator_url": f"{url}/{fake.organization}/{fake.tenant}/orchestrator_",
        "client_id": fake.client_id,
        "client_secret": "${E2E_UIPATH_SECRET}",
        "folder_ids": sorted(fake.folders),
        "manual_minutes_per_run": {INVOICE: minutes},
    }
    day = date(2026, 11, 1)
    successful = sum(
        1
        for job in recorded_jobs()
        if job["ReleaseName"] == INVOICE
        and job["State"] == "Successful"
        and job["OrganizationUnitId"] in fake.folders
        and datetime.fromisoformat(job["EndTime"]).astimezone(TOKYO).date() == day
    )
    assert successful, "the recorded jobs have successful runs that day"
    return Source(
        "uipath_e2e",
        "uipath",
        settings,
        date(2026, 11, 1),
        date(2026, 11, 3),
        [
            Expect("rpa_runs", {"process": INVOICE, "result": "successful"}, day, successful),
            Expect("rpa_time_saved_seconds", {"process": INVOICE}, day, successful * minutes * 60),
        ],
    )


def csvfile_source(folder: Path) -> Source:
    rows = [
        ("date", "online_applications"),
        ("2026-11-01", 12),
        ("2026-11-02", 19),
        ("2026-11-03", 7),
    ]
    path = FileShare(folder).csv("data/applications.csv", rows)
    os.utime(path, (1_700_000_000, 1_700_000_000))  # settled: older than min_file_age
    settings = {
        "path": "data/applications.csv",
        "period_column": "date",
        "metrics": [
            {"name": "online_applications", "column": "online_applications", "unit": "applications"}
        ],
    }
    day_text, value = rows[2]
    return Source(
        "csvfile_e2e",
        "csvfile",
        settings,
        date(2026, 11, 1),
        date(2026, 11, 4),
        [Expect("online_applications", {}, date.fromisoformat(str(day_text)), float(value))],
    )


def kintone_source(stack: ExitStack) -> Source:
    fake = FakeKintone(types={"受付日": "DATE", "市町村": "DROP_DOWN", "件数": "NUMBER"})
    for day, city, count in [
        (1, "盛岡市", "4"),
        (2, "盛岡市", "7"),
        (2, "盛岡市", "5"),
        (2, "花巻市", "3"),
    ]:
        fake.add(受付日=f"2026-11-{day:02d}", 市町村=city, 件数=count)
    url = serve(stack, fake)
    settings = {
        "base_url": url,
        "app": KINTONE_APP,
        "api_token": "${E2E_KINTONE_TOKEN}",
        "date_field": "受付日",
        "labels": {"municipality": "市町村"},
        "metrics": [{"name": "kintone_applications", "field": "件数", "unit": "applications"}],
    }
    morioka, hanamaki = {"municipality": "盛岡市"}, {"municipality": "花巻市"}
    return Source(
        "kintone_e2e",
        "kintone",
        settings,
        date(2026, 11, 1),
        date(2026, 11, 4),
        [
            Expect("kintone_applications", morioka, date(2026, 11, 2), 12),
            Expect("kintone_applications", hanamaki, date(2026, 11, 2), 3),
            Expect("kintone_applications", morioka, date(2026, 11, 3), 0),
        ],
    )


def httpjson_source(stack: ExitStack) -> Source:
    fake = FakeStatsApi(style="link_header", default_page_size=2)
    for day, online in [(1, 10), (2, 20), (2, "1,000"), (3, 5)]:
        fake.add(f"2026-11-{day:02d}", "盛岡市", online, online)
    url = serve(stack, fake)
    fake.base_url = url  # the Link header's absolute URLs
    settings = {
        "url": f"{url}{STATS_PATH}",
        "params": {"from": "{start}", "to": "{last_day}"},
        "auth_token": "${E2E_HTTPJSON_TOKEN}",
        "pagination": {"style": "link_header"},
        "records": "data",
        "period": "date",
        "metrics": [
            {"name": "eapp_online_applications", "field": "counts.online", "unit": "applications"}
        ],
    }
    return Source(
        "httpjson_e2e",
        "httpjson",
        settings,
        date(2026, 11, 1),
        date(2026, 11, 4),
        [
            Expect("eapp_online_applications", {}, date(2026, 11, 2), 1020),
            Expect("eapp_online_applications", {}, date(2026, 11, 3), 5),
        ],
    )


# -- reading back ---------------------------------------------------------------------------


def stored_value(store: Store, source: str, expect: Expect) -> float | None:
    ids = [
        row.id
        for row in store.series_rows()
        if (row.source, row.metric, row.labels) == (source, expect.metric, expect.labels)
    ]
    start = int(midnight(expect.day).timestamp())
    points = store.points(ids, start, start + 1)
    return points[0][1] if points else None


def all_finished(store: Store, sources: list[Source]) -> dict[str, dict[str, Any]] | None:
    """The latest run of each source once none is still running, else None."""
    latest: dict[str, dict[str, Any]] = {}
    for run in store.runs(limit=1000):  # newest first
        latest.setdefault(run["source"], run)
    if all(s.id in latest and latest[s.id]["status"] != "running" for s in sources):
        return latest
    return None


def secret_markers(value: str) -> set[str]:
    """The secret itself and every line of a PEM key's body it holds (raw or JSON-escaped):
    a key could leak re-wrapped, never whole."""
    markers = {value}
    for body in re.findall(
        r"-----BEGIN [A-Z ]+-----(.*?)-----END", value.replace("\\n", "\n"), re.S
    ):
        markers |= {line for line in body.split() if len(line) >= 32}
    return markers


def test_every_connector_collected_by_a_worker_into_postgres_and_exported(
    cluster: Any, keys: Keys
) -> None:
    start_worker, client, store, tmp = cluster
    with ExitStack() as stack:
        sources = [
            zoom_source(stack),
            ga4_source(stack, keys),
            matomo_source(stack),
            plausible_source(stack, keys),
            appstore_source(stack, keys),
            googleplay_source(stack, keys),
            uipath_source(stack, keys),
            csvfile_source(tmp),
            kintone_source(stack),
            httpjson_source(stack),
            gsheets_source(stack, keys),
        ]
        config = tmp / "dxkpi.yaml"
        config.write_text(
            yaml.safe_dump({"sources": [s.entry() for s in sources]}, allow_unicode=True),
            encoding="utf-8",
        )
        worker = start_worker(config, "--concurrency", "8")
        for source in sources:
            client.send_task("dxkpi.collect", args=(source.id, *source.window()))
        latest = wait_for(
            lambda: all_finished(store, sources), timeout=30, what="a finished run of every source"
        )
        worker.stop()  # flushes its log before it is searched for secrets

    failed = {
        source: f"{run['status']}: {run['error_class']}: {run['error_message']}"
        for source, run in latest.items()
        if run["status"] != "success"
    }
    assert not failed, failed
    assert sorted(latest) == sorted(s.id for s in sources)

    for source in sources:
        for expect in source.expect:
            assert stored_value(store, source.id, expect) == expect.value, (source.id, expect)

    snapshot = Exporter(store, load_config(config)).rebuild()
    text = snapshot.text.decode()
    samples = [
        sample for family in text_string_to_metric_families(text) for sample in family.samples
    ]
    series = {
        (r.source, r.metric, json.dumps(r.labels, sort_keys=True)): r for r in store.series_rows()
    }
    for source in sources:
        up = [
            s.value
            for s in samples
            if s.name == "dxkpi_source_up" and s.labels["source"] == source.id
        ]
        assert up == [1.0], (source.id, up)
        for expect in source.expect:
            labels = {**expect.labels, "source": source.id, "org": "default"}
            exported = [
                s.value
                for s in samples
                if s.name == f"dxkpi_{expect.metric}" and s.labels == labels
            ]
            # Raw series export their latest period's value.
            row = series[(source.id, expect.metric, json.dumps(expect.labels, sort_keys=True))]
            assert exported == [row.last_value], (source.id, expect.metric, exported)

    outputs = (worker.log.read_text(errors="replace"), text, snapshot.openmetrics.decode())
    leaked = {
        name
        for name, value in keys.env().items()
        for marker in secret_markers(value)
        if any(marker in output for output in outputs)
    }
    assert not leaked, f"secrets found in the worker's log or the metrics: {sorted(leaked)}"

    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is missing (Debian package prometheus); .ci/run installs it")
        pytest.skip("promtool is missing: everything else passed")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=snapshot.text, capture_output=True
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
