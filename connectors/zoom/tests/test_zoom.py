"""The Zoom connector against a fake Zoom on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from dxkpi.collector.contract import TOKYO, Observation, Window
from dxkpi.collector.errors import (
    FatalSourceError,
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
    days,
    observations,
)
from dxkpi.connectors.zoom import ZoomConnector, duration_seconds
from dxkpi.connectors.zoom.tests.fake_zoom import (
    ACCOUNT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    FakeZoom,
    Meeting,
)

MARCH_3 = datetime(2025, 3, 3, tzinfo=TOKYO)
NOW = datetime(2025, 3, 10, 9, 0, tzinfo=TOKYO)
SERVER = SharedServer()
_serving = SERVER.module_fixture()


class Server:
    """A fresh fake Zoom, with March 2025's usage, behind the module's loopback server."""

    def __init__(self) -> None:
        self.fake = FakeZoom()
        for day in range(1, 32):
            self.fake.usage[date(2025, 3, day)] = {
                "meetings": day,
                "participants": 3 * day,
                "meeting_minutes": 45 * day,
                "new_users": day % 3,
            }
        self.fake.usage[date(2025, 3, 4)] = {}  # a day without any meeting
        self.seen = SERVER.plug(lambda request: self.fake(request))

    def connector(self, clock: FakeClock | None = None, **settings: Any) -> ZoomConnector:
        base = {
            "account_id": ACCOUNT_ID,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "api_base_url": SERVER.url,
            "oauth_base_url": SERVER.url,
        }
        context = context_for("zoom_main", clock=clock or FakeClock(NOW))
        return build(ZoomConnector, base, context, **settings)

    def api_requests(self) -> list[FakeRequest]:
        return [r for r in self.seen if r.path != "/oauth/token"]


@pytest.fixture
def zoom() -> Server:
    return Server()


def by_key(got: list[Observation]) -> dict[tuple[str, str, date], float]:
    return {(o.metric, o.labels.get("department", ""), o.start.date()): o.value for o in got}


# -- contract --------------------------------------------------------------------------------


class TestZoomContract(ConnectorContract):
    connector_name = "zoom"
    secrets = (CLIENT_SECRET,)

    def setup_method(self) -> None:
        self.server = Server()

    def invalid_settings(self) -> list[dict[str, Any]]:
        good = {"account_id": "a", "client_id": "c", "client_secret": "s"}
        return [
            {k: v for k, v in good.items() if k != "client_secret"},
            {**good, "page_size": 301},
            {**good, "departments": {"a@example.jp": " "}},
            {**good, "api_base_url": "api.zoom.us"},
            {**good, "unknown": 1},
        ]

    @contextmanager
    def healthy_case(self) -> Iterator[tuple[ZoomConnector, Window]]:
        self.server.fake.meetings["a@pref.example.jp"] = [Meeting("2025-03-03T01:00:00Z", 30, 4)]
        yield (
            self.server.connector(departments={"a@pref.example.jp": "情報政策課"}),
            days(MARCH_3, 2),
        )

    @contextmanager
    def retryable_case(self) -> Iterator[tuple[ZoomConnector, Window]]:
        self.server.fake.fail("/v2/report/daily", *[FakeResponse(503, "busy")] * 10)
        yield self.server.connector(), days(MARCH_3, 2)

    @contextmanager
    def fatal_case(self) -> Iterator[tuple[ZoomConnector, Window]]:
        yield self.server.connector(client_secret="wrong-" + CLIENT_SECRET), days(MARCH_3, 2)


# -- account-wide daily report -----------------------------------------------------------------


def test_daily_report_values_in_base_units(zoom: Server) -> None:
    got = observations(zoom.connector().collect(days(MARCH_3, 2)))
    values = by_key(got)
    assert values[("zoom_meetings", "", date(2025, 3, 3))] == 3
    assert values[("zoom_participants", "", date(2025, 3, 3))] == 9
    assert values[("zoom_meeting_duration_seconds", "", date(2025, 3, 3))] == 45 * 3 * 60
    assert values[("zoom_new_users", "", date(2025, 3, 3))] == 0
    # A day without meetings is a real zero, not a gap.
    assert values[("zoom_meetings", "", date(2025, 3, 4))] == 0
    assert {o.start for o in got} == {MARCH_3, MARCH_3 + timedelta(days=1)}
    assert len(got) == 8
    daily = zoom.api_requests()[0]
    assert daily.query == {"year": ["2025"], "month": ["3"]}


def test_a_day_still_running_is_left_for_the_next_run(zoom: Server) -> None:
    window = Window(MARCH_3, MARCH_3 + timedelta(days=1, hours=15))
    got = observations(zoom.connector().collect(window))
    assert {o.start for o in got} == {MARCH_3}
    assert not list(zoom.connector().collect(Window(MARCH_3, MARCH_3 + timedelta(hours=9))))


def test_a_window_across_months_reads_each_month(zoom: Server) -> None:
    got = observations(zoom.connector().collect(days(datetime(2025, 2, 27, tzinfo=TOKYO), 4)))
    assert [r.query["month"] for r in zoom.api_requests()] == [["2"], ["3"]]
    assert sorted({o.start.date() for o in got}) == [
        date(2025, 2, 27),
        date(2025, 2, 28),
        date(2025, 3, 1),
        date(2025, 3, 2),
    ]


def test_reading_twice_yields_the_same_keys(zoom: Server) -> None:
    connector = zoom.connector()
    first = by_key(observations(connector.collect(days(MARCH_3, 3))))
    second = by_key(observations(connector.collect(days(MARCH_3, 3))))
    assert first == second


# -- per department -----------------------------------------------------------------------------


def test_department_totals_from_user_meeting_reports(zoom: Server) -> None:
    zoom.fake.meetings = {
        "kato@pref.example.jp": [
            Meeting("2025-03-03T01:00:00Z", 30, 4),
            # 23:30 UTC on the 3rd is the morning of the 4th in Tokyo.
            Meeting("2025-03-03T23:30:00Z", 60, 2),
            Meeting("2025-03-02T02:00:00Z", 15, 2),  # before the window
        ],
        "sato@pref.example.jp": [Meeting("2025-03-03T05:00:00Z", 45, 10)],
        "userIdXYZ": [Meeting("2025-03-03T06:00:00Z", 10, 3)],
    }
    departments = {
        "kato@pref.example.jp": "情報政策課",
        "sato@pref.example.jp": "情報政策課",
        "userIdXYZ": "防災課",
    }
    got = observations(zoom.connector(departments=departments).collect(days(MARCH_3, 3)))
    values = by_key(got)
    march_3, march_4, march_5 = (date(2025, 3, d) for d in (3, 4, 5))
    assert values[("zoom_department_meetings", "情報政策課", march_3)] == 2
    assert values[("zoom_department_participants", "情報政策課", march_3)] == 14
    assert values[("zoom_department_meeting_duration_seconds", "情報政策課", march_3)] == 75 * 60
    assert values[("zoom_department_meetings", "情報政策課", march_4)] == 1
    assert values[("zoom_department_meeting_duration_seconds", "情報政策課", march_4)] == 3600
    assert values[("zoom_department_meetings", "防災課", march_3)] == 1
    # Zeros for days without meetings, so a deleted meeting's day is overwritten on re-read.
    assert values[("zoom_department_meetings", "防災課", march_5)] == 0
    assert values[("zoom_department_meetings", "情報政策課", march_5)] == 0
    meeting_reads = [r for r in zoom.api_requests() if r.path.endswith("/meetings")]
    assert meeting_reads[0].query["from"] == ["2025-03-03"]
    assert meeting_reads[0].query["to"] == ["2025-03-05"]
    assert meeting_reads[0].query["page_size"] == ["300"]


def test_meeting_report_pages_are_followed(zoom: Server) -> None:
    zoom.fake.meetings = {
        "kato@pref.example.jp": [Meeting(f"2025-03-03T0{h}:00:00Z", 10, 2) for h in range(5)]
    }
    connector = zoom.connector(departments={"kato@pref.example.jp": "総務課"}, page_size=2)
    values = by_key(observations(connector.collect(days(MARCH_3, 1))))
    assert values[("zoom_department_meetings", "総務課", date(2025, 3, 3))] == 5
    pages = [r for r in zoom.api_requests() if r.path.endswith("/meetings")]
    assert [r.arg("next_page_token") for r in pages] == [None, "tok-2", "tok-4"]


def test_user_report_requests_stay_within_one_month(zoom: Server) -> None:
    zoom.fake.meetings = {"kato@pref.example.jp": []}
    connector = zoom.connector(departments={"kato@pref.example.jp": "総務課"})
    list(connector.collect(days(datetime(2025, 2, 20, tzinfo=TOKYO), 20)))
    reads = [(r.arg("from"), r.arg("to")) for r in zoom.api_requests() if "meetings" in r.path]
    assert reads == [("2025-02-20", "2025-02-28"), ("2025-03-01", "2025-03-11")]


def test_unknown_user_is_a_config_error_naming_the_user(zoom: Server) -> None:
    zoom.fake.meetings = {}
    connector = zoom.connector(departments={"nobody@pref.example.jp": "総務課"})
    with pytest.raises(FatalSourceError) as caught:
        list(connector.collect(days(MARCH_3, 1)))
    assert "nobody@pref.example.jp" in str(caught.value)
    assert "-> 404" in str(caught.value)


# -- auth ------------------------------------------------------------------------------------


def test_one_token_serves_many_requests_and_is_renewed_after_an_hour(zoom: Server) -> None:
    clock = FakeClock(NOW)
    connector = zoom.connector(clock=clock)
    list(connector.collect(days(datetime(2025, 2, 27, tzinfo=TOKYO), 4)))
    assert zoom.fake.tokens_issued == 1
    token_call = zoom.seen[0]
    assert token_call.method == "POST" and token_call.path == "/oauth/token"
    assert token_call.query == {"grant_type": ["account_credentials"], "account_id": [ACCOUNT_ID]}
    clock.advance(timedelta(hours=1))
    list(connector.collect(days(MARCH_3, 1)))
    assert zoom.fake.tokens_issued == 2


def test_a_revoked_token_is_replaced_once(zoom: Server) -> None:
    connector = zoom.connector()
    list(connector.collect(days(MARCH_3, 1)))
    zoom.fake.revoke_tokens()
    assert observations(connector.collect(days(MARCH_3, 1)))
    assert zoom.fake.tokens_issued == 2


def test_wrong_account_id_is_an_auth_error(zoom: Server) -> None:
    with pytest.raises(SourceAuthError) as caught:
        list(zoom.connector(account_id="other").collect(days(MARCH_3, 1)))
    assert "POST /oauth/token -> 400" in str(caught.value)
    assert "invalid_request" in str(caught.value)


def test_missing_scope_is_reported_with_zooms_message(zoom: Server) -> None:
    body = {"code": 4711, "message": "Invalid access token, does not contain scopes:[report:read]"}
    zoom.fake.fail("/v2/report/daily", FakeResponse(400, body))
    with pytest.raises(FatalSourceError, match=r"GET /v2/report/daily -> 400.*scopes"):
        list(zoom.connector().collect(days(MARCH_3, 1)))


# -- rate limits and failures ----------------------------------------------------------------


def test_daily_limit_429_waits_until_the_iso_retry_after(zoom: Server) -> None:
    clock = FakeClock(NOW)
    resume = (clock.now() + timedelta(seconds=120)).astimezone().isoformat()
    limited = FakeResponse(
        429,
        {"code": 429, "message": "You have exceeded the daily rate limit."},
        {"Retry-After": resume, "X-RateLimit-Type": "Daily-limit"},
    )
    zoom.fake.fail("/v2/report/daily", limited)
    assert observations(zoom.connector(clock=clock).collect(days(MARCH_3, 1)))
    assert clock.recorded == [120.0]


def test_daily_limit_beyond_the_retry_budget_is_retryable_with_the_wait(zoom: Server) -> None:
    clock = FakeClock(NOW)
    limited = FakeResponse(429, {"code": 429}, {"Retry-After": "2025-03-11T00:00:00Z"})
    zoom.fake.fail("/v2/report/daily", limited)
    with pytest.raises(RetryableSourceError) as caught:
        list(zoom.connector(clock=clock).collect(days(MARCH_3, 1)))
    assert (
        caught.value.retry_after
        == (datetime(2025, 3, 11, 9, tzinfo=TOKYO) - clock.now()).total_seconds()
    )
    assert clock.recorded == []


def test_429_without_retry_after_and_5xx_back_off(zoom: Server) -> None:
    clock = FakeClock(NOW)
    zoom.fake.fail("/v2/report/daily", FakeResponse(429, {"code": 429}), FakeResponse(502, ""))
    assert observations(zoom.connector(clock=clock).collect(days(MARCH_3, 1)))
    assert len(clock.recorded) == 2 and 1 <= clock.recorded[0] < 2 and 2 <= clock.recorded[1] < 3


def test_html_instead_of_json_is_retried(zoom: Server) -> None:
    page = FakeResponse(
        200, "<html>Zoom is under maintenance</html>", {"Content-Type": "text/html"}
    )
    zoom.fake.fail("/v2/report/daily", *[page] * 6)
    with pytest.raises(RetryableSourceError, match="GET /v2/report/daily -> 200: expected JSON"):
        list(zoom.connector().collect(days(MARCH_3, 1)))


def test_a_report_without_dates_is_a_data_error(zoom: Server) -> None:
    zoom.fake.fail("/v2/report/daily", FakeResponse(200, {"year": 2025, "month": 3}))
    with pytest.raises(SourceDataError, match="no 'dates' list"):
        list(zoom.connector().collect(days(MARCH_3, 1)))


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [(45, 2700.0), (0, 0.0), ("05:27", 19620.0), ("0:45", 2700.0), ("1:02:03", 3723.0)],
)
def test_duration_seconds(value: Any, seconds: float) -> None:
    assert duration_seconds(value) == seconds


@pytest.mark.parametrize("value", ["5 min", "05:75", None, True, ""])
def test_duration_seconds_rejects_what_it_cannot_read(value: Any) -> None:
    with pytest.raises(ValueError):
        duration_seconds(value)
