from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest

from dxkpi.collector.contract import TOKYO, Checkpoint, Observation, Window
from dxkpi.collector.errors import (
    RetryableSourceError,
    SourceAuthError,
    SourceDataError,
)
from dxkpi.collector.testing import (
    ConnectorContract,
    FakeClock,
    FakeRequest,
    FakeResponse,
    SharedServer,
    build,
    context_for,
    observations,
)
from dxkpi.connectors.googleplay import GooglePlayConnector, GooglePlaySettings
from dxkpi.connectors.googleplay.tests.fake_gcs import FakeGcs, new_service_account, utf16_csv

KEY_FILE, PUBLIC_KEY = new_service_account()
OTHER_KEY_FILE, _ = new_service_account()
EMAIL = KEY_FILE["client_email"]
BUCKET = "pubsite_prod_rev_01234567890987654321"
KURASHI = "jp.example.kurashi"
OCT = "installs_jp.example.kurashi_202610_overview.csv"
NOV = "installs_jp.example.kurashi_202611_overview.csv"
NOW = datetime(2026, 11, 20, 9, tzinfo=TOKYO)
SERVER = SharedServer()
_serving = SERVER.module_fixture()


def play(*testdata: str) -> FakeGcs:
    fake = FakeGcs(PUBLIC_KEY, EMAIL, bucket=BUCKET)
    for filename in testdata:
        fake.put_testdata(filename)
    return fake


def settings(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "bucket": BUCKET,
        "service_account_key": json.dumps(KEY_FILE),
        "apps": [{"app": "kurashi_navi", "package": KURASHI}],
        "storage_url": SERVER.url or "https://storage.googleapis.com",
        "token_uri": f"{SERVER.url}/token" if SERVER.url else None,
    }
    values.update(overrides)
    return values


@contextmanager
def running(
    fake: FakeGcs,
    clock: FakeClock | None = None,
    handler: Callable[[FakeRequest], FakeResponse] | None = None,
    **over: Any,
) -> Iterator[tuple[GooglePlayConnector, list[FakeRequest]]]:
    clock = clock or FakeClock(NOW)
    fake.clock = clock.timestamp
    fake.base_url = SERVER.url
    seen = SERVER.plug(handler or (lambda request: fake.handle(request)))
    context = context_for("play_main", clock=clock)
    yield build(GooglePlayConnector, settings(), context, **over), seen


def between(first: str, last: str) -> Window:
    """The window covering the days first..last (inclusive), Tokyo time."""
    start = datetime.fromisoformat(first).replace(tzinfo=TOKYO)
    end = datetime.fromisoformat(last).replace(tzinfo=TOKYO) + timedelta(days=1)
    return Window(start, end)


def by_day(obs: list[Observation], metric: str) -> dict[str, float]:
    return {o.start.date().isoformat(): o.value for o in obs if o.metric == metric}


def test_recorded_reports_give_daily_user_installs_across_months() -> None:
    with running(play(OCT, NOV)) as (connector, _):
        got = observations(connector.collect(between("2026-10-30", "2026-11-03")))
    assert by_day(got, "app_first_time_downloads") == {
        "2026-10-30": 8,
        "2026-10-31": 15,
        "2026-11-01": 8,
        "2026-11-02": 13,
        "2026-11-03": 18,
    }
    assert by_day(got, "app_uninstalls") == {
        "2026-10-30": 2,
        "2026-10-31": 3,
        "2026-11-01": 1,
        "2026-11-02": 2,
        "2026-11-03": 0,
    }
    downloads = [o for o in got if o.metric == "app_first_time_downloads"]
    assert {(o.labels["app"], o.labels["platform"]) for o in downloads} == {
        ("kurashi_navi", "android")
    }
    assert downloads[0].start == datetime(2026, 10, 30, tzinfo=TOKYO)


def test_every_published_day_is_present_and_unpublished_days_are_not() -> None:
    with running(play(NOV)) as (connector, _):
        got = observations(connector.collect(between("2026-11-04", "2026-11-20")))
    downloads = by_day(got, "app_first_time_downloads")
    # The file has no row for 11-05: a day without events still counts, as zero.
    assert downloads["2026-11-05"] == 0 and downloads["2026-11-04"] == 6
    # Play has published up to 11-18; 11-19 and 11-20 come with a later file.
    assert sorted(downloads)[-1] == "2026-11-18" and len(downloads) == 15


def test_old_column_names_are_read() -> None:
    fake = play("installs_jp.example.bousai_201905_overview.csv")
    apps = [{"app": "bousai", "package": "jp.example.bousai"}]
    with running(fake, clock=FakeClock(datetime(2019, 6, 10, tzinfo=TOKYO)), apps=apps) as (c, _):
        got = observations(c.collect(between("2019-05-09", "2019-05-10")))
    assert by_day(got, "app_first_time_downloads") == {"2019-05-09": 3, "2019-05-10": 4}
    assert by_day(got, "app_uninstalls") == {"2019-05-09": 0, "2019-05-10": 1}


def test_newer_event_columns_are_used_when_user_columns_are_gone() -> None:
    fake = play()
    fake.put(
        f"stats/installs/{NOV}",
        utf16_csv(
            "Date,Package name,Install events,Update events,Uninstall events\r\n"
            "2026-11-01,jp.example.kurashi,21,300,4\r\n"
        ),
    )
    with running(fake) as (connector, _):
        got = observations(connector.collect(between("2026-11-01", "2026-11-01")))
    assert by_day(got, "app_first_time_downloads") == {"2026-11-01": 21}
    assert by_day(got, "app_uninstalls") == {"2026-11-01": 4}


def test_a_proxy_page_in_place_of_the_report_is_retryable() -> None:
    fake = play()
    fake.put(f"stats/installs/{NOV}", b"<html><title>502 Bad Gateway</title></html>")
    with running(fake) as (connector, _), pytest.raises(RetryableSourceError) as caught:
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    assert "expected the installs report CSV" in str(caught.value)
    assert "'502 Bad Gateway'" in str(caught.value) and "renamed" not in str(caught.value)


def test_unknown_columns_name_the_file_and_the_headers_seen() -> None:
    fake = play()
    fake.put(f"stats/installs/{NOV}", utf16_csv("Date,Package Name,Acquisitions\r\n"))
    with running(fake) as (connector, _), pytest.raises(SourceDataError) as caught:
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    text = str(caught.value)
    assert f"gs://{BUCKET}/stats/installs/{NOV}:1" in text
    assert "headers seen: Date, Package Name, Acquisitions" in text
    assert "'Daily User Installs'" in text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Date,Daily User Installs,Daily User Uninstalls\r\n11/01/2026,3,0\r\n", ":2: date"),
        ("Date,Daily User Installs,Daily User Uninstalls\r\n2026-11-01,many,0\r\n", "'many'"),
        ("Date,Daily User Installs,Daily User Uninstalls\r\n2026-11-01,3\r\n", "2 cells"),
    ],
)
def test_bad_rows_name_the_line(body: str, expected: str) -> None:
    fake = play()
    fake.put(f"stats/installs/{NOV}", utf16_csv(body))
    with running(fake) as (connector, _), pytest.raises(SourceDataError) as caught:
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    assert expected in str(caught.value)


def test_checkpoint_skips_unchanged_files_and_rereads_rewritten_ones() -> None:
    fake = play(OCT, NOV)
    window = between("2026-10-29", "2026-11-02")
    with running(fake) as (connector, _):
        first = list(connector.collect(window))
        cursor = first[-1]
        assert isinstance(cursor, Checkpoint)
        assert fake.downloads == [f"stats/installs/{OCT}", f"stats/installs/{NOV}"]

        again = list(connector.collect(Window(window.start, window.end, cursor.cursor)))
        assert observations(again) == [] and len(fake.downloads) == 2

        # Play rewrites the current month: only that file is read again.
        fake.put_testdata(NOV)
        third = list(connector.collect(Window(window.start, window.end, cursor.cursor)))
        assert fake.downloads[2:] == [f"stats/installs/{NOV}"]
        assert sorted(by_day(observations(third), "app_first_time_downloads")) == [
            "2026-11-01",
            "2026-11-02",
        ]

        # Days of an unchanged file not handled before are read.
        wider = list(
            connector.collect(Window(window.start - timedelta(days=3), window.end, cursor.cursor))
        )
        assert fake.downloads[3:] == [f"stats/installs/{OCT}", f"stats/installs/{NOV}"]
        assert len(observations(wider)) == 2 * 8


def test_unreadable_checkpoint_reads_everything_again() -> None:
    with running(play(NOV)) as (connector, _):
        day = between("2026-11-01", "2026-11-01")
        got = list(connector.collect(Window(day.start, day.end, "{oops")))
    assert len(observations(got)) == 2


def test_listing_is_paged() -> None:
    fake = play(OCT, NOV)
    for extra in ("country", "device", "app_version", "os_version", "language"):
        fake.put(f"stats/installs/installs_{KURASHI}_202611_{extra}.csv", b"\xff\xfe")
    with running(fake) as (connector, seen):
        got = observations(connector.collect(between("2026-11-01", "2026-11-01")))
    listings = [r for r in seen if r.path == f"/storage/v1/b/{BUCKET}/o"]
    assert len(listings) == 4 and listings[0].arg("pageToken") is None
    assert all(r.arg("prefix") == f"stats/installs/installs_{KURASHI}_" for r in listings)
    assert len(got) == 2


def test_object_names_are_percent_encoded() -> None:
    fake = play(NOV)
    with running(fake) as (connector, seen):
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    (download,) = [r for r in seen if r.arg("alt") == "media"]
    assert download.path.endswith("/o/stats%2Finstalls%2F" + NOV)
    assert download.arg("generation") == str(fake.objects[f"stats/installs/{NOV}"].generation)


def test_package_without_reports_is_a_data_error() -> None:
    apps = [{"app": "kanko", "package": "jp.example.kanko"}]
    with running(play(OCT), apps=apps) as (connector, _), pytest.raises(SourceDataError) as caught:
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    assert "no installs reports for jp.example.kanko" in str(caught.value)
    assert f"gs://{BUCKET}/stats/installs/installs_jp.example.kanko_*_overview.csv" in str(
        caught.value
    )


def test_months_before_the_first_report_are_not_on_record() -> None:
    with running(play(NOV)) as (connector, seen):
        got = observations(connector.collect(between("2026-10-25", "2026-11-02")))
    assert sorted(by_day(got, "app_first_time_downloads")) == ["2026-11-01", "2026-11-02"]
    assert [r.arg("alt") for r in seen].count("media") == 1


def test_current_month_without_a_file_yet_is_skipped() -> None:
    clock = FakeClock(datetime(2026, 12, 1, 9, tzinfo=TOKYO))
    with running(play(OCT, NOV), clock=clock) as (connector, _):
        got = observations(connector.collect(between("2026-11-17", "2026-12-01")))
    assert sorted(by_day(got, "app_first_time_downloads")) == ["2026-11-17", "2026-11-18"]


def test_missing_past_month_between_reports_is_an_error() -> None:
    fake = play(OCT)
    fake.put_testdata(NOV)
    del fake.objects[f"stats/installs/{OCT}"]
    fake.put("stats/installs/installs_jp.example.kurashi_202609_overview.csv", b"")
    with running(fake) as (connector, _), pytest.raises(SourceDataError) as caught:
        list(connector.collect(between("2026-10-30", "2026-11-01")))
    assert f"{OCT} is missing" in str(caught.value)


def test_expired_token_is_refreshed_once() -> None:
    fake = play(NOV)
    with running(fake) as (connector, seen):
        list(connector.collect(between("2026-11-01", "2026-11-01")))
        fake.expire_tokens()
        got = observations(connector.collect(between("2026-11-02", "2026-11-02")))
    assert len(got) == 2
    assert len(fake.assertions) == 2
    assert [r.path for r in seen].count("/token") == 2


def test_token_is_renewed_before_it_runs_out() -> None:
    fake = play(NOV)
    clock = FakeClock(NOW)
    with running(fake, clock=clock) as (connector, seen):
        for minutes in (0, 30, 58, 62):
            clock.move_to(NOW + timedelta(minutes=minutes))
            list(connector.collect(between("2026-11-01", "2026-11-01")))
    assert [r.path for r in seen].count("/token") == 2
    assert all(
        a["scope"] == "https://www.googleapis.com/auth/devstorage.read_only"
        for a in fake.assertions
    )
    assert all(int(a["exp"]) - int(a["iat"]) <= 3600 for a in fake.assertions)


def test_key_the_token_endpoint_refuses_is_an_auth_error_without_the_key(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    key = json.dumps(OTHER_KEY_FILE)
    with (
        running(play(NOV), service_account_key=key) as (connector, _),
        pytest.raises(SourceAuthError) as caught,
    ):
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    assert "POST /token -> 400" in str(caught.value) and "invalid_grant" in str(caught.value)
    secret_line = OTHER_KEY_FILE["private_key"].splitlines()[1]
    for text in (str(caught.value), caplog.text):
        assert secret_line not in text and "PRIVATE KEY" not in text


def test_bucket_the_account_cannot_read_is_an_auth_error_with_the_play_console_hint() -> None:
    with (
        running(play(NOV), bucket="pubsite_prod_rev_99999999999999999999") as (connector, _),
        pytest.raises(SourceAuthError) as caught,
    ):
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    assert "-> 403" in str(caught.value) and "download bulk reports" in str(caught.value)


def test_429_waits_exactly_retry_after() -> None:
    fake = play(NOV)
    fake.script = [FakeResponse(429, {"error": {"code": 429}}, {"Retry-After": "12"})]
    clock = FakeClock(NOW)
    with running(fake, clock=clock) as (connector, _):
        got = observations(connector.collect(between("2026-11-01", "2026-11-01")))
    assert clock.recorded == [12.0] and len(got) == 2


def test_429_without_retry_after_backs_off() -> None:
    fake = play(NOV)
    fake.script = [FakeResponse(429), FakeResponse(503)]
    clock = FakeClock(NOW)
    with running(fake, clock=clock) as (connector, _):
        got = observations(connector.collect(between("2026-11-01", "2026-11-01")))
    assert len(clock.recorded) == 2 and clock.recorded[1] > clock.recorded[0] > 0 and len(got) == 2


def test_persistent_5xx_is_retryable() -> None:
    fake = play(NOV)
    fake.script = [FakeResponse(503, "backend error")] * 10
    with running(fake) as (connector, _), pytest.raises(RetryableSourceError) as caught:
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    assert f"GET /storage/v1/b/{BUCKET}/o -> 503" in str(caught.value)


def test_listing_that_is_not_json_is_retried() -> None:
    fake = play(NOV)
    fake.script = [FakeResponse(200, "<html>proxy login</html>", {"Content-Type": "text/html"})] * 6
    with running(fake) as (connector, _), pytest.raises(RetryableSourceError):
        list(connector.collect(between("2026-11-01", "2026-11-01")))


def test_file_replaced_between_listing_and_download_is_retryable() -> None:
    fake = play(NOV)

    def rewrite_after_listing(request: FakeRequest) -> FakeResponse:
        response = fake.handle(request)
        if request.path.endswith("/o"):
            fake.put_testdata(NOV)  # a new generation; the listed one is gone
        return response

    with (
        running(fake, handler=rewrite_after_listing) as (connector, _),
        pytest.raises(RetryableSourceError) as caught,
    ):
        list(connector.collect(between("2026-11-01", "2026-11-01")))
    assert "replaced while being read" in str(caught.value)


def test_bucket_accepts_the_uri_play_console_copies() -> None:
    model = GooglePlaySettings.model_validate(settings(bucket=f"gs://{BUCKET}/stats/installs/"))
    assert model.bucket == BUCKET


def test_a_bad_key_file_is_rejected_without_echoing_it() -> None:
    import pydantic

    broken = json.dumps(KEY_FILE)[:-5]
    with pytest.raises(pydantic.ValidationError) as caught:
        GooglePlaySettings.model_validate(settings(service_account_key=broken))
    assert KEY_FILE["private_key"].splitlines()[1] not in str(caught.value)


class TestGooglePlayContract(ConnectorContract):
    connector_name = "googleplay"
    secrets = (KEY_FILE["private_key"].splitlines()[1],)

    def invalid_settings(self) -> list[dict[str, Any]]:
        base = settings()
        return [
            {**base, "apps": []},
            {**base, "apps": [{"app": "x", "package": "not a package"}]},
            {**base, "apps": [{"app": "a", "package": KURASHI}, {"app": "b", "package": KURASHI}]},
            {**base, "bucket": "my-bucket"},
            {**base, "service_account_key": "{}"},
            {**base, "service_account_key": json.dumps({**KEY_FILE, "type": "authorized_user"})},
            {**base, "unknown": 1},
        ]

    @contextmanager
    def _case(self, fake: FakeGcs, **over: Any) -> Iterator[tuple[Any, Window]]:
        with running(fake, **over) as (connector, _):
            yield connector, between("2026-11-01", "2026-11-02")

    def healthy_case(self) -> Any:
        return self._case(play(NOV))

    def retryable_case(self) -> Any:
        fake = play(NOV)
        fake.script = [FakeResponse(500)] * 10
        return self._case(fake)

    def fatal_case(self) -> Any:
        return self._case(play(NOV), service_account_key=json.dumps(OTHER_KEY_FILE))
