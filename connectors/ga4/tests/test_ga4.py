"""The GA4 connector against a fake Google on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest

from dxkpi.collector.contract import TOKYO, Observation, SourceContext, Window
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
from dxkpi.connectors.ga4 import Ga4Connector, Ga4Settings
from dxkpi.connectors.ga4.tests.fake_ga4 import (
    CLIENT_EMAIL,
    PROPERTY_ID,
    FakeGa4,
    google_error,
    key_file,
    new_key,
)

APRIL_1 = datetime(2025, 4, 1, tzinfo=TOKYO)
NOW = datetime(2025, 4, 20, 9, 0, tzinfo=TOKYO)
KEY = new_key()
KEY_JSON = key_file(KEY, "https://oauth2.googleapis.com/token")
# A line of the private key's body: it must never appear in an error or a log line.
KEY_LINE = json.loads(KEY_JSON)["private_key"].splitlines()[3]
SERVER = SharedServer()
_serving = SERVER.module_fixture()


class Server:
    """A fresh fake Google behind the module's loopback server."""

    def __init__(self) -> None:
        self.url = SERVER.url
        self.key_json, self.key_line = KEY_JSON, KEY_LINE
        self.fake = FakeGa4(KEY.public_key(), token_uri=f"{self.url}/token")
        self.seen = SERVER.plug(lambda request: self.fake(request))

    def connector(self, clock: FakeClock | None = None, **settings: Any) -> Ga4Connector:
        base = {
            "property_id": PROPERTY_ID,
            "service_account_json": self.key_json,
            "api_base_url": self.url,
            "token_uri": f"{self.url}/token",
        }
        context = context_for("ga4_main", clock=clock or FakeClock(NOW))
        return build(Ga4Connector, base, context, **settings)


@pytest.fixture
def ga4() -> Server:
    return Server()


def by_key(got: list[Observation]) -> dict[tuple[str, str, date], float]:
    return {(o.metric, o.labels.get("page_path", ""), o.start.date()): o.value for o in got}


def page_views(fake: FakeGa4, day: date) -> int:
    return sum(fake.views(day, i) for i in range(len(fake.paths)))


# -- contract --------------------------------------------------------------------------------


class TestGa4Contract(ConnectorContract):
    connector_name = "ga4"
    secrets = (KEY_LINE,)

    def setup_method(self) -> None:
        self.server = Server()

    def invalid_settings(self) -> list[dict[str, Any]]:
        good = {"property_id": "123", "service_account_file": "key.json"}
        return [
            {"property_id": "123"},
            {**good, "property_id": "properties/123"},
            {**good, "service_account_json": "{}"},
            {"property_id": "123", "service_account_json": "not json"},
            {**good, "page_size": 250_001},
            {**good, "extra": True},
        ]

    @contextmanager
    def healthy_case(self) -> Iterator[tuple[Ga4Connector, Window]]:
        yield self.server.connector(by_page_path=True), days(APRIL_1, 3)

    @contextmanager
    def retryable_case(self) -> Iterator[tuple[Ga4Connector, Window]]:
        exhausted = google_error(
            429, "RESOURCE_EXHAUSTED", "Exhausted property tokens per hour for a property."
        )
        self.server.fake.fail("/v1beta/", *[exhausted] * 10)
        yield self.server.connector(), days(APRIL_1, 3)

    @contextmanager
    def fatal_case(self) -> Iterator[tuple[Ga4Connector, Window]]:
        yield self.server.connector(property_id="999"), days(APRIL_1, 3)


# -- values ----------------------------------------------------------------------------------


def test_daily_totals_and_zero_days(ga4: Server) -> None:
    ga4.fake.empty_days = {date(2025, 4, 2)}
    got = observations(ga4.connector().collect(days(APRIL_1, 3)))
    values = by_key(got)
    april_1, april_2 = date(2025, 4, 1), date(2025, 4, 2)
    assert values[("ga4_page_views", "", april_1)] == page_views(ga4.fake, april_1)
    assert values[("ga4_active_users", "", april_1)] == ga4.fake.users(april_1)
    # GA4 has no row for a day without data: that is a zero, not a gap.
    assert values[("ga4_page_views", "", april_2)] == 0
    assert values[("ga4_active_users", "", april_2)] == 0
    assert len(got) == 6
    assert all(o.start == datetime.combine(o.start.date(), datetime.min.time(), TOKYO) for o in got)
    (report,) = ga4.fake.reports
    assert report["dateRanges"] == [{"startDate": "2025-04-01", "endDate": "2025-04-03"}]
    assert report["dimensions"] == [{"name": "date"}]
    assert report["metrics"] == [{"name": "activeUsers"}, {"name": "screenPageViews"}]


def test_by_page_path(ga4: Server) -> None:
    got = observations(ga4.connector(by_page_path=True).collect(days(APRIL_1, 2)))
    values = by_key(got)
    april_1 = date(2025, 4, 1)
    assert values[("ga4_page_views", "/bousai/", april_1)] == ga4.fake.views(april_1, 2)
    assert values[("ga4_active_users", "", april_1)] == ga4.fake.users(april_1)
    assert ("ga4_page_views", "", april_1) not in values  # no unlabelled total beside pages
    assert len([o for o in got if o.metric == "ga4_page_views"]) == 2 * 3
    totals, pages = ga4.fake.reports
    assert totals["metrics"] == [{"name": "activeUsers"}]
    assert pages["dimensions"] == [{"name": "date"}, {"name": "pagePath"}]
    assert [o["dimension"]["dimensionName"] for o in pages["orderBys"]] == ["date", "pagePath"]


def test_active_users_are_declared_not_additive() -> None:
    specs = {m.name: m for m in Ga4Connector.metrics}
    assert specs["ga4_active_users"].aggregation == "none"
    assert specs["ga4_page_views"].aggregation == "sum"


def test_finality_covers_gas_processing_delay() -> None:
    assert Ga4Connector.finality >= timedelta(days=2)


def test_a_day_still_running_is_not_read(ga4: Server) -> None:
    got = observations(ga4.connector().collect(Window(APRIL_1, APRIL_1 + timedelta(hours=30))))
    assert {o.start for o in got} == {APRIL_1}


# -- paging and streaming ------------------------------------------------------------------------


def test_pages_through_row_count_with_limit_and_offset(ga4: Server) -> None:
    connector = ga4.connector(by_page_path=True, page_size=4)
    got = observations(connector.collect(days(APRIL_1, 5)))
    assert len([o for o in got if o.metric == "ga4_page_views"]) == 15
    page_reads = [r for r in ga4.fake.reports if len(r["dimensions"]) == 2]
    assert [(r["offset"], r["limit"]) for r in page_reads] == [
        ("0", "4"),
        ("4", "4"),
        ("8", "4"),
        ("12", "4"),
    ]


def test_every_page_and_day_read_across_pages(ga4: Server) -> None:
    ga4.fake.empty_days = {date(2025, 4, 3)}
    got = observations(ga4.connector(by_page_path=True, page_size=4).collect(days(APRIL_1, 5)))
    values = by_key(got)
    for day in [date(2025, 4, d) for d in (1, 2, 4, 5)]:
        for i, path in enumerate(ga4.fake.paths):
            assert values.pop(("ga4_page_views", path, day)) == ga4.fake.views(day, i)
        assert values.pop(("ga4_active_users", "", day)) == ga4.fake.users(day)
    assert values == {("ga4_active_users", "", date(2025, 4, 3)): 0}


def test_the_fake_writes_rows_as_json_dumps_would() -> None:
    # The fake writes its rows as text: the same bytes as dicts through `json.dumps`.
    paths = ["/", '/"{0}"\\{x}/', "/くらし/", "/%E3%81%82/"]
    fake = FakeGa4(KEY.public_key(), paths=paths, empty_days={date(2025, 4, 2)})
    for dims, metrics in [
        (["date", "pagePath"], ["screenPageViews"]),
        (["pagePath", "date"], ["activeUsers", "screenPageViews"]),
        (["date"], ["activeUsers", "screenPageViews"]),
    ]:
        body = fake._run_report(
            {
                "dateRanges": [{"startDate": "2025-04-01", "endDate": "2025-04-03"}],
                "dimensions": [{"name": d} for d in dims],
                "metrics": [{"name": m} for m in metrics],
                "offset": "1",
                "limit": "6",
            }
        ).body
        report = json.loads(body)
        by_page = "pagePath" in dims
        expected = []
        for day in (date(2025, 4, 1), date(2025, 4, 3)):
            for i, path in enumerate(paths if by_page else [""]):
                cells = {"date": day.strftime("%Y%m%d"), "pagePath": path}
                values = {
                    "screenPageViews": fake.views(day, i) if by_page else page_views(fake, day),
                    "activeUsers": fake.users(day),
                }
                expected.append(
                    {
                        "dimensionValues": [{"value": cells[d]} for d in dims],
                        "metricValues": [{"value": str(values[m])} for m in metrics],
                    }
                )
        assert report["rows"] == expected[1:7]
        assert report["rowCount"] == len(expected)
        assert body == json.dumps(report).encode()


def test_totals_add_up_the_pages(ga4: Server) -> None:
    got = observations(ga4.connector().collect(days(APRIL_1, 2)))
    for day in (date(2025, 4, 1), date(2025, 4, 2)):
        assert by_key(got)[("ga4_page_views", "", day)] == page_views(ga4.fake, day)


def test_rows_stream_out_with_at_most_the_next_page_fetched_ahead(ga4: Server) -> None:
    stream = iter(ga4.connector(by_page_path=True, page_size=3).collect(days(APRIL_1, 3)))
    first_page_view = next(o for o in stream if o.metric == "ga4_page_views" and o.labels)  # type: ignore[union-attr]
    assert first_page_view.labels == {"page_path": "/"}  # type: ignore[union-attr]
    # The totals, the first page of pages, and (in the background) the second one: no further.
    deadline = time.monotonic() + 5
    while len(ga4.fake.reports) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(ga4.fake.reports) == 3
    rest = list(stream)
    assert len(ga4.fake.reports) == 1 + 3
    assert len(rest) == 3 * 3 - 1


def test_a_stream_left_early_stops_fetching(ga4: Server) -> None:
    stream = ga4.connector(by_page_path=True, page_size=3).collect(days(APRIL_1, 3))
    next(o for o in stream if o.labels)
    stream.close()  # e.g. the store failed: the page in flight is dropped, nothing more asked
    time.sleep(0.1)
    assert len(ga4.fake.reports) <= 3


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        (
            google_error(403, "PERMISSION_DENIED", "User does not have sufficient permissions."),
            SourceAuthError,
            r"POST /v1beta/properties/\d+:runReport -> 403: credentials refused: User does not",
        ),
        (
            FakeResponse(200, "<html>502</html>", {"Content-Type": "text/html"}),
            RetryableSourceError,
            r"POST /v1beta/properties/\d+:runReport -> 200",
        ),
        (
            FakeResponse(
                200,
                {
                    "rows": [{"dimensionValues": [], "metricValues": [{"value": "1"}]}],
                    "rowCount": 9,
                },
            ),
            SourceDataError,
            r"a report row cannot be read \(IndexError",
        ),
    ],
)
def test_a_page_fetched_ahead_fails_as_it_would_in_line(
    ga4: Server, failure: FakeResponse, error: type[Exception], message: str
) -> None:
    def second_page_fails(request: FakeRequest) -> FakeResponse:
        body = request.json() if request.path.endswith(":runReport") else {}
        if len(body.get("dimensions", ())) == 2 and body.get("offset") == "3":
            return failure
        return ga4.fake(request)

    SERVER.plug(second_page_fails)
    stream = ga4.connector(by_page_path=True, page_size=3).collect(days(APRIL_1, 3))
    got = []
    with pytest.raises(error, match=message):
        got.extend(stream)
    assert len([o for o in got if o.labels]) == 3  # the first page, then the error


def test_an_empty_report_has_no_rows_and_no_row_count(ga4: Server) -> None:
    ga4.fake.empty_days = {date(2025, 4, d) for d in range(1, 4)}
    got = observations(ga4.connector(by_page_path=True).collect(days(APRIL_1, 3)))
    assert {(o.metric, o.value) for o in got} == {("ga4_active_users", 0.0)}
    assert len(ga4.fake.reports) == 2


# -- auth ------------------------------------------------------------------------------------


def test_one_service_account_token_for_all_requests(ga4: Server) -> None:
    list(ga4.connector(by_page_path=True, page_size=2).collect(days(APRIL_1, 3)))
    assert ga4.fake.tokens_issued == 1
    assert len(ga4.fake.reports) > 3


def test_a_revoked_token_is_replaced_once(ga4: Server) -> None:
    connector = ga4.connector()
    list(connector.collect(days(APRIL_1, 1)))
    ga4.fake.valid_tokens.clear()
    assert observations(connector.collect(days(APRIL_1, 1)))
    assert ga4.fake.tokens_issued == 2


def test_no_access_to_the_property_names_the_service_account(ga4: Server) -> None:
    with pytest.raises(SourceAuthError) as caught:
        list(ga4.connector(property_id="999").collect(days(APRIL_1, 1)))
    text = str(caught.value)
    assert "POST /v1beta/properties/999:runReport -> 403" in text
    assert CLIENT_EMAIL in text and "sufficient permissions" in text


def test_a_refused_assertion_is_an_auth_error_at_the_token_endpoint(ga4: Server) -> None:
    other = json.loads(key_file(new_key(), "x"))
    connector = ga4.connector(service_account_json=json.dumps(other))
    with pytest.raises(SourceAuthError, match=r"POST /token -> 400.*invalid_grant"):
        list(connector.collect(days(APRIL_1, 1)))


def test_key_file_is_read_relative_to_the_config(ga4: Server, tmp_path: Path) -> None:
    (tmp_path / "ga4-key.json").write_text(ga4.key_json)
    settings = Ga4Settings(
        property_id=PROPERTY_ID,
        service_account_file="ga4-key.json",
        api_base_url=ga4.url,
        token_uri=f"{ga4.url}/token",
    )
    context = SourceContext(source_id="ga4_main", base_dir=tmp_path, sleep=lambda s: None)
    assert observations(Ga4Connector(settings, context).collect(days(APRIL_1, 1)))


def test_a_missing_key_file_is_a_fatal_error(tmp_path: Path) -> None:
    settings = Ga4Settings(property_id=PROPERTY_ID, service_account_file="missing.json")
    with pytest.raises(FatalSourceError, match=r"missing\.json"):
        Ga4Connector(settings, SourceContext(source_id="ga4_main", base_dir=tmp_path))


def test_invalid_key_json_never_echoes_the_secret(ga4: Server) -> None:
    broken = ga4.key_json.replace('"client_email"', '"email"')
    with pytest.raises(pydantic.ValidationError) as caught:
        Ga4Settings(property_id=PROPERTY_ID, service_account_json=broken)
    assert "lacks client_email" in str(caught.value)
    assert ga4.key_line not in str(caught.value)


# -- failures --------------------------------------------------------------------------------


def test_resource_exhausted_then_success_backs_off(ga4: Server) -> None:
    clock = FakeClock(NOW)
    ga4.fake.fail(
        "/v1beta/",
        google_error(429, "RESOURCE_EXHAUSTED", "Exhausted concurrent requests quota."),
        FakeResponse(503, {"error": {"code": 503, "status": "UNAVAILABLE"}}),
    )
    assert observations(ga4.connector(clock=clock).collect(days(APRIL_1, 1)))
    assert len(clock.recorded) == 2 and 1 <= clock.recorded[0] < 2 and 2 <= clock.recorded[1] < 3


def test_persistent_quota_exhaustion_is_retryable(ga4: Server) -> None:
    exhausted = google_error(429, "RESOURCE_EXHAUSTED", "Exhausted property tokens per day.")
    ga4.fake.fail("/v1beta/", *[exhausted] * 6)
    with pytest.raises(RetryableSourceError, match=r"-> 429.*tokens per day"):
        list(ga4.connector().collect(days(APRIL_1, 1)))


def test_html_body_served_once_is_asked_for_again(ga4: Server) -> None:
    ga4.fake.fail("/v1beta/", FakeResponse(200, "<html>502</html>", {"Content-Type": "text/html"}))
    assert list(ga4.connector().collect(days(APRIL_1, 1))), "the next answer is read"


def test_html_body_that_stays_is_retryable_and_says_what_came(ga4: Server) -> None:
    page = FakeResponse(200, "<html>502</html>", {"Content-Type": "text/html"})
    ga4.fake.fail("/v1beta/", *[page] * 6)
    with pytest.raises(
        RetryableSourceError, match=":runReport -> 200: expected JSON, received text/h"
    ):
        list(ga4.connector().collect(days(APRIL_1, 1)))


def test_a_non_numeric_value_is_a_data_error(ga4: Server) -> None:
    row = {"dimensionValues": [{"value": "20250401"}], "metricValues": [{"value": "n/a"}] * 2}
    ga4.fake.fail("/v1beta/", FakeResponse(200, {"rows": [row], "rowCount": 1}))
    with pytest.raises(SourceDataError, match="row cannot be read"):
        list(ga4.connector().collect(days(APRIL_1, 1)))


def test_a_row_outside_the_dates_asked_is_a_data_error(ga4: Server) -> None:
    row = {"dimensionValues": [{"value": "20240401"}], "metricValues": [{"value": "1"}] * 2}
    ga4.fake.fail("/v1beta/", FakeResponse(200, {"rows": [row], "rowCount": 1}))
    with pytest.raises(SourceDataError, match="'20240401', outside the dates asked"):
        list(ga4.connector().collect(days(APRIL_1, 1)))


def test_the_token_is_renewed_when_its_hour_is_up(ga4: Server) -> None:
    clock = FakeClock(NOW)
    connector = ga4.connector(clock=clock)
    list(connector.collect(days(APRIL_1, 1)))
    clock.advance(timedelta(minutes=58, seconds=59))  # within the last minute of 3599 s
    list(connector.collect(days(APRIL_1, 1)))
    assert ga4.fake.tokens_issued == 2


def test_retry_after_from_a_proxy_in_front_of_google_is_honoured(ga4: Server) -> None:
    clock = FakeClock(NOW)
    ga4.fake.fail("/v1beta/", FakeResponse(429, {"error": {"code": 429}}, {"Retry-After": "17"}))
    assert observations(ga4.connector(clock=clock).collect(days(APRIL_1, 1)))
    assert clock.recorded == [17.0]
