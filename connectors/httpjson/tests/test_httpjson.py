"""The httpjson connector against a fake JSON statistics endpoint on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from dxkpi.collector.config import load_config
from dxkpi.collector.contract import TOKYO, Granularity, Observation, Window
from dxkpi.collector.errors import (
    ConfigError,
    FatalSourceError,
    RetryableSourceError,
    SourceAuthError,
    SourceDataError,
)
from dxkpi.collector.testing import (
    ConnectorContract,
    FakeResponse,
    SharedServer,
    build,
    context_for,
    loopback_server,
    observations,
)
from dxkpi.connectors.httpjson import HttpJsonConnector
from dxkpi.connectors.httpjson.tests.fake_statsapi import PATH, TOKEN, FakeStatsApi

SERVER = SharedServer()
_serving = SERVER.module_fixture()
APRIL = datetime(2026, 4, 1, tzinfo=TOKYO)
JULY = datetime(2026, 7, 1, tzinfo=TOKYO)
METRICS = [
    {"name": "online_applications", "field": "counts.online", "unit": "applications"},
    {"name": "applications_received", "field": "counts.total", "unit": "applications"},
    {"name": "application_reports", "unit": "reports"},
]
PAGINATION: dict[str, dict[str, Any]] = {
    "page": {"style": "page", "param": "page", "size_param": "per_page", "size": 7},
    "offset": {"style": "offset", "param": "offset", "size_param": "limit", "size": 7},
    "link_header": {"style": "link_header"},
    "next_link": {"style": "next_link", "next": "links.next"},
}


def seeded(style: str = "page") -> FakeStatsApi:
    fake = FakeStatsApi(style=style)  # type: ignore[arg-type]
    fake.add("2026-04-03", "盛岡市", 12, "20")
    fake.add("令和8年4月20日", "盛岡市", "８", "1,010")  # full-width digits, separators, 令和
    fake.add("2026/4/7", "花巻市", "1,234", 2000)
    fake.add("2026-06-30T23:30:00+09:00", "盛岡市", 5, 5)
    fake.add("2026-07-01", "盛岡市", 99, 99)  # outside the window
    return fake


class Server:
    def __init__(self, fake: FakeStatsApi | None = None) -> None:
        self.fake = fake or seeded()
        self.fake.base_url = SERVER.url
        self.seen = SERVER.plug(lambda request: self.fake(request))
        self.sleeps: list[float] = []

    def connector(self, **settings: Any) -> HttpJsonConnector:
        base: dict[str, Any] = {
            "url": f"{SERVER.url}{PATH}",
            "params": {"from": "{start}", "to": "{last_day:%Y-%m-%d}"},
            "auth_token": TOKEN,
            "pagination": PAGINATION[self.fake.style],
            "records": "data",
            "record_id": "id",
            "period": "date",
            "granularity": "month",
            "labels": {"municipality": "municipality.name"},
            "metrics": METRICS,
        }
        base.update(settings)
        base = {k: v for k, v in base.items() if v is not None}
        context = context_for("eapp_stats", sleeps=self.sleeps)
        return build(HttpJsonConnector, base, context)


@pytest.fixture
def api() -> Server:
    return Server()


def values(got: list[Observation]) -> dict[tuple[str, str, date], float]:
    return {(o.metric, o.labels.get("municipality", ""), o.start.date()): o.value for o in got}


class TestHttpJsonContract(ConnectorContract):
    connector_name = "httpjson"
    secrets = (TOKEN,)

    def setup_method(self) -> None:
        self.server = Server()

    def invalid_settings(self) -> list[dict[str, Any]]:
        good = {
            "url": "https://eapp.example.jp/api/stats",
            "records": "data",
            "period": "date",
            "metrics": [{"name": "forms", "field": "n", "unit": "forms"}],
        }
        return [
            {k: v for k, v in good.items() if k != "records"},
            {**good, "url": "eapp.example.jp/api"},
            {**good, "url": "https://eapp.example.jp/api?from=2026-04-01"},
            {**good, "records": "data[?"},
            {**good, "labels": {"city": "municipality.[name"}},
            {**good, "params": {"from": "{begin}"}},
            {**good, "params": {"from": "{start.year}"}},
            {**good, "headers": {"Authorization": "Bearer abc"}},
            {**good, "pagination": {"style": "next_link"}},
            {**good, "pagination": {"style": "page"}},
            {**good, "pagination": {"style": "cursor"}},
            {**good, "missing": "zero"},
        ]

    @contextmanager
    def healthy_case(self) -> Iterator[tuple[HttpJsonConnector, Window]]:
        yield self.server.connector(), Window(APRIL, JULY)

    @contextmanager
    def retryable_case(self) -> Iterator[tuple[HttpJsonConnector, Window]]:
        self.server.fake.fail(*[FakeResponse(503, "busy")] * 6)
        yield self.server.connector(), Window(APRIL, JULY)

    @contextmanager
    def fatal_case(self) -> Iterator[tuple[HttpJsonConnector, Window]]:
        yield self.server.connector(auth_token="expired-" + TOKEN), Window(APRIL, JULY)


def test_records_are_extracted_and_added_up_per_month(api: Server) -> None:
    got = observations(api.connector().collect(Window(APRIL, JULY)))
    v = values(got)
    assert v[("online_applications", "盛岡市", date(2026, 4, 1))] == 20
    assert v[("applications_received", "盛岡市", date(2026, 4, 1))] == 1030
    assert v[("application_reports", "盛岡市", date(2026, 4, 1))] == 2
    assert v[("online_applications", "花巻市", date(2026, 4, 1))] == 1234
    assert v[("online_applications", "盛岡市", date(2026, 5, 1))] == 0  # no records: zero
    assert v[("online_applications", "盛岡市", date(2026, 6, 1))] == 5  # 23:30 Tokyo: June
    assert len(got) == 3 * 2 * 3
    assert {o.granularity for o in got} == {Granularity.MONTH}
    request = api.seen[0]
    assert request.query["from"] == ["2026-04-01"] and request.query["to"] == ["2026-06-30"]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("style", sorted(PAGINATION))
def test_every_paging_style_reads_every_record_exactly_once(style: str) -> None:
    fake = FakeStatsApi(style=style)  # type: ignore[arg-type]
    for i in range(47):
        fake.add(f"2026-05-{i % 28 + 1:02d}", "盛岡市", i, 1)
    server = Server(fake)
    got = values(observations(server.connector().collect(Window(APRIL, JULY))))
    assert got[("application_reports", "盛岡市", date(2026, 5, 1))] == 47
    assert got[("online_applications", "盛岡市", date(2026, 5, 1))] == sum(range(47))
    assert sorted(fake.served) == sorted(r["id"] for r in fake.records)
    assert len(fake.served) == 47  # none twice
    pages = len(server.seen)
    expected = {"page": 7, "offset": 7, "link_header": 3, "next_link": 3}[style]
    if style in ("page", "offset"):
        # 47 = 6 x 7 + 5: the short seventh page ends it.
        assert pages == expected
    else:
        assert pages == expected  # 20 a page: 20, 20, 7
        # The next page is the link the server gave, with the window it carries.
        assert server.seen[1].query["from"] == ["2026-04-01"]


def test_a_page_style_without_a_size_stops_at_the_empty_page() -> None:
    fake = FakeStatsApi(style="page", default_page_size=20)
    for i in range(25):
        fake.add("2026-05-01", "盛岡市", i, 1)
    server = Server(fake)
    got = values(
        observations(
            server.connector(pagination={"style": "page", "param": "page"}).collect(
                Window(APRIL, JULY)
            )
        )
    )
    assert got[("application_reports", "盛岡市", date(2026, 5, 1))] == 25
    assert [r.query["page"] for r in server.seen] == [["1"], ["2"], ["3"]]


def test_daily_granularity_and_fiscal_year_windows(api: Server) -> None:
    daily = values(observations(api.connector(granularity="day").collect(Window(APRIL, JULY))))
    assert daily[("online_applications", "盛岡市", date(2026, 4, 20))] == 8
    assert daily[("online_applications", "盛岡市", date(2026, 4, 21))] == 0
    yearly = values(
        observations(api.connector(granularity="fiscal_year").collect(Window(APRIL, JULY)))
    )
    assert yearly[("online_applications", "盛岡市", date(2026, 4, 1))] == 12 + 8 + 5 + 99
    assert api.seen[-1].query["to"] == ["2027-03-31"]


def test_a_fiscal_year_label_as_the_period(api: Server) -> None:
    api.fake.records = []
    api.fake.add("2026-04-01", "盛岡市", 10, 10, fy="令和8年度")
    got = values(
        observations(
            api.connector(period="fy", granularity="fiscal_year").collect(Window(APRIL, JULY))
        )
    )
    assert got[("online_applications", "盛岡市", date(2026, 4, 1))] == 10
    with pytest.raises(SourceDataError, match="is a fiscal year but granularity is month"):
        list(api.connector(period="fy").collect(Window(APRIL, JULY)))


def test_429_honours_retry_after_and_a_5xx_burst_is_retried(api: Server) -> None:
    api.fake.fail(
        FakeResponse(429, {"error": "rate_limited"}, {"Retry-After": "17"}),
        FakeResponse(500, {"error": "internal"}),
        FakeResponse(502, "<html><title>502 Bad Gateway</title></html>"),
        FakeResponse(503, "busy"),
    )
    assert observations(api.connector().collect(Window(APRIL, JULY)))
    assert api.sleeps[0] == 17.0 and len(api.sleeps) == 4


def test_a_5xx_that_does_not_end_is_retryable(api: Server) -> None:
    api.fake.fail(*[FakeResponse(500, {"error": "internal"})] * 6)
    with pytest.raises(RetryableSourceError, match=rf"GET {PATH} -> 500"):
        list(api.connector().collect(Window(APRIL, JULY)))


def test_an_expired_token_is_an_auth_error_without_the_token(
    api: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    expired = "old-" + TOKEN
    with pytest.raises(SourceAuthError) as caught:
        list(api.connector(auth_token=expired).collect(Window(APRIL, JULY)))
    text = str(caught.value)
    assert f"GET {PATH} -> 401" in text and "The access token expired" in text
    assert "auth_token" in text  # what to do
    assert expired not in text and expired not in caplog.text
    assert len(api.seen) == 1


def test_a_token_revoked_between_pages_stops_the_run_with_nothing_yielded() -> None:
    fake = FakeStatsApi(style="link_header")
    for i in range(30):
        fake.add("2026-05-01", "盛岡市", i, 1)
    connector = Server(fake).connector()

    def revoke_after_the_first_page(request: Any) -> FakeResponse:
        response = fake(request)
        fake.tokens.clear()
        return response

    seen = SERVER.plug(revoke_after_the_first_page)
    got: list[Any] = []
    with pytest.raises(SourceAuthError, match="The access token expired"):
        for item in connector.collect(Window(APRIL, JULY)):
            got.append(item)
    assert got == []  # page 1's records are not stored as if they were the month's
    assert [r.query["page"] for r in seen[1:]] == [["2"]]


def test_the_token_goes_in_the_declared_header(api: Server) -> None:
    api.fake.tokens = {TOKEN}
    connector = api.connector(auth_header="X-Api-Key", auth_scheme="")
    with pytest.raises(SourceAuthError):  # the fake wants Bearer: refused, but look at what went
        list(connector.collect(Window(APRIL, JULY)))
    assert api.seen[0].headers["X-Api-Key"] == TOKEN
    assert "Authorization" not in api.seen[0].headers


def test_malformed_json_is_retryable_and_says_what_came(api: Server) -> None:
    api.fake.fail(
        FakeResponse(200, b'{"data": [{"id": "r1", ', {"Content-Type": "application/json"})
    )
    with pytest.raises(RetryableSourceError, match="not valid JSON from byte"):
        list(api.connector().collect(Window(APRIL, JULY)))
    api.fake.fail(
        FakeResponse(200, "<html><title>Login</title></html>", {"Content-Type": "text/html"})
    )
    with pytest.raises(RetryableSourceError, match="an HTML page titled 'Login'"):
        list(api.connector().collect(Window(APRIL, JULY)))


def test_a_page_without_its_records_names_the_expression(api: Server) -> None:
    api.fake.fail(FakeResponse(200, {"items": [], "total": 0}))
    with pytest.raises(SourceDataError) as caught:
        list(api.connector().collect(Window(APRIL, JULY)))
    text = str(caught.value)
    assert "page 1: records 'data' found nothing" in text and "items, total" in text


def test_a_field_missing_from_a_record_names_field_and_record(api: Server) -> None:
    del api.fake.records[2]["counts"]["total"]
    api.fake.records[1]["municipality"] = None
    with pytest.raises(SourceDataError) as caught:
        list(api.connector().collect(Window(APRIL, JULY)))
    text = str(caught.value)
    assert "2 record(s) of GET /api/v1/stats/applications" in text
    assert "record 'r00003': field 'counts.total' is missing or null" in text
    assert "record 'r00002': label municipality: field 'municipality.name' is missing" in text


def test_missing_values_may_be_declared_not_reported(api: Server) -> None:
    api.fake.records[0]["counts"]["online"] = None
    got = values(observations(api.connector(missing="skip").collect(Window(APRIL, JULY))))
    assert got[("online_applications", "盛岡市", date(2026, 4, 1))] == 8
    assert got[("application_reports", "盛岡市", date(2026, 4, 1))] == 2


def test_unreadable_cells_are_listed_and_nothing_is_yielded(api: Server) -> None:
    api.fake.records[0]["counts"]["online"] = "12件"
    api.fake.records[1]["date"] = "来月"
    got: list[Any] = []
    with pytest.raises(SourceDataError) as caught:
        for item in api.connector().collect(Window(APRIL, JULY)):
            got.append(item)
    assert got == []
    text = str(caught.value)
    assert "record 'r00001': field 'counts.online': '12件' is not a number" in text
    assert "record 'r00002': period field 'date': '来月' is not a period" in text


def test_a_next_link_to_another_host_is_refused_and_gets_no_token() -> None:
    elsewhere: list[Any] = []
    with loopback_server(lambda r: (elsewhere.append(r), FakeResponse(200, {"data": []}))[1]) as (
        other,
        _,
    ):
        fake = seeded("next_link")
        server = Server(fake)
        fake.fail(FakeResponse(200, {"data": [], "links": {"next": f"{other}{PATH}?page=2"}}))
        with pytest.raises(FatalSourceError, match="refusing to follow a link to another host"):
            list(server.connector().collect(Window(APRIL, JULY)))
    assert elsewhere == []


def test_a_next_link_loop_is_stopped(api: Server) -> None:
    looping = {"data": [], "links": {"next": f"{PATH}?from=2026-04-01&to=2026-06-30&c=1"}}
    api.fake.fail(*[FakeResponse(200, looping)] * 3)
    connector = api.connector(pagination=PAGINATION["next_link"])
    with pytest.raises(SourceDataError, match="page 2 links to a page already read"):
        list(connector.collect(Window(APRIL, JULY)))


def test_an_endpoint_ignoring_the_page_parameter_hits_max_pages(api: Server) -> None:
    full = {"data": [api.fake.records[0]] * 7}
    api.fake.fail(*[FakeResponse(200, full)] * 5)
    pagination = {**PAGINATION["page"], "max_pages": 4}
    with pytest.raises(SourceDataError, match="more than 4 pages"):
        list(api.connector(pagination=pagination).collect(Window(APRIL, JULY)))


def test_a_rerun_yields_the_same_observations(api: Server) -> None:
    connector = api.connector()
    first = observations(connector.collect(Window(APRIL, JULY)))
    second = observations(connector.collect(Window(APRIL, JULY)))
    assert first == second


def test_the_example_passes_check_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[1] / "example.yaml"
    monkeypatch.setenv("EAPP_STATS_TOKEN", TOKEN)
    loaded = load_config(example)
    specs = loaded.metric_specs["eapp_statistics"]
    assert specs["online_applications"].labels == ("municipality",)
    inline = tmp_path / "dxkpi.yaml"
    inline.write_text(
        example.read_text(encoding="utf-8").replace("${EAPP_STATS_TOKEN}", "plain-token-value"),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="secrets are never written inline"):
        load_config(inline)
