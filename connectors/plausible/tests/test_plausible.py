"""The Plausible connector against a fake Stats API on loopback."""

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
    FakeResponse,
    SharedServer,
    build,
    context_for,
    days,
    observations,
)
from dxkpi.connectors.plausible import PlausibleConnector
from dxkpi.connectors.plausible.tests.fake_plausible import (
    API_KEY,
    SITE_ID,
    FakePlausible,
    plausible_error,
)

JUNE_2 = datetime(2025, 6, 2, tzinfo=TOKYO)
NOW = datetime(2025, 6, 20, 9, 0, tzinfo=TOKYO)
SERVER = SharedServer()
_serving = SERVER.module_fixture()


class Server:
    """A fresh fake Plausible, with June 2025's traffic, behind the module's loopback server."""

    def __init__(self) -> None:
        self.fake = FakePlausible(
            traffic={date(2025, 6, d): (100 + d, 40 + d) for d in range(1, 31)}
        )
        del self.fake.traffic[date(2025, 6, 3)]  # nobody came: Plausible says nothing
        self.seen = SERVER.plug(lambda request: self.fake(request))

    def connector(self, clock: FakeClock | None = None, **settings: Any) -> PlausibleConnector:
        base = {"site_id": SITE_ID, "api_key": API_KEY, "base_url": SERVER.url}
        context = context_for("plausible_web", clock=clock or FakeClock(NOW))
        return build(PlausibleConnector, base, context, **settings)


@pytest.fixture
def plausible() -> Server:
    return Server()


def by_key(got: list[Observation]) -> dict[tuple[str, date], float]:
    return {(o.metric, o.start.date()): o.value for o in got}


class TestPlausibleContract(ConnectorContract):
    connector_name = "plausible"
    secrets = (API_KEY,)

    def setup_method(self) -> None:
        self.server = Server()

    def invalid_settings(self) -> list[dict[str, Any]]:
        good = {"site_id": "pref.example.jp", "api_key": "k"}
        return [
            {"site_id": "pref.example.jp"},
            {**good, "site_id": "https://pref.example.jp/"},
            {**good, "base_url": "plausible.io"},
            {**good, "requests_per_hour": 0},
        ]

    @contextmanager
    def healthy_case(self) -> Iterator[tuple[PlausibleConnector, Window]]:
        yield self.server.connector(), days(JUNE_2, 3)

    @contextmanager
    def retryable_case(self) -> Iterator[tuple[PlausibleConnector, Window]]:
        self.server.fake.hourly_limit = 0
        yield self.server.connector(), days(JUNE_2, 3)

    @contextmanager
    def fatal_case(self) -> Iterator[tuple[PlausibleConnector, Window]]:
        yield self.server.connector(api_key="wrong-" + API_KEY), days(JUNE_2, 3)


def test_page_views_and_visitors_with_zeros_for_omitted_days(plausible: Server) -> None:
    got = observations(plausible.connector().collect(days(JUNE_2, 3)))
    values = by_key(got)
    assert values[("plausible_page_views", date(2025, 6, 2))] == 102
    assert values[("plausible_visitors", date(2025, 6, 2))] == 42
    # Plausible returned nothing for the 3rd: that is zero traffic, recorded as such.
    assert values[("plausible_page_views", date(2025, 6, 3))] == 0
    assert values[("plausible_visitors", date(2025, 6, 3))] == 0
    assert values[("plausible_page_views", date(2025, 6, 4))] == 104
    assert len(got) == 6
    (query,) = plausible.fake.queries
    assert query == {
        "site_id": SITE_ID,
        "metrics": ["pageviews", "visitors"],
        "date_range": ["2025-06-02", "2025-06-04"],
        "dimensions": ["time:day"],
    }
    assert plausible.seen[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_a_window_without_any_traffic_is_all_zeros(plausible: Server) -> None:
    plausible.fake.traffic.clear()
    got = observations(plausible.connector().collect(days(JUNE_2, 2)))
    assert [(o.metric, o.value) for o in got] == [
        ("plausible_page_views", 0.0),
        ("plausible_visitors", 0.0),
    ] * 2


def test_visitors_are_declared_not_additive() -> None:
    specs = {m.name: m for m in PlausibleConnector.metrics}
    assert specs["plausible_visitors"].aggregation == "none"
    assert specs["plausible_page_views"].aggregation == "sum"


def test_a_day_still_running_is_not_read(plausible: Server) -> None:
    got = observations(plausible.connector().collect(Window(JUNE_2, JUNE_2 + timedelta(hours=40))))
    assert {o.start for o in got} == {JUNE_2}
    (query,) = plausible.fake.queries
    assert query["date_range"] == ["2025-06-02", "2025-06-02"]


@pytest.mark.parametrize("budgeted", [True, False], ids=["budget", "no-budget"])
def test_the_hourly_budget_waits_instead_of_hitting_429(plausible: Server, budgeted: bool) -> None:
    # The fake enforces a real sliding hour of 3 requests on the tests' clock.
    key = f"budget-test-key-{budgeted}"
    plausible.fake.keys.add(key)
    clock = FakeClock(NOW)
    plausible.fake.hourly_limit = 3
    plausible.fake.clock = clock.now
    connector = plausible.connector(
        clock=clock, api_key=key, requests_per_hour=3 if budgeted else 600
    )
    for _ in range(3):
        list(connector.collect(days(JUNE_2, 1)))
    if budgeted:
        list(connector.collect(days(JUNE_2, 1)))
        assert clock.recorded == [3600.0]
        assert len(plausible.fake.queries) == 4  # none refused
    else:
        with pytest.raises(RetryableSourceError, match="limited to 3 requests per hour"):
            list(connector.collect(days(JUNE_2, 1)))


def test_budget_is_shared_by_sources_with_the_same_key(plausible: Server) -> None:
    plausible.fake.keys.add("shared-key")
    clock = FakeClock(NOW)
    first = plausible.connector(clock=clock, api_key="shared-key", requests_per_hour=2)
    second = plausible.connector(clock=clock, api_key="shared-key", requests_per_hour=2)
    list(first.collect(days(JUNE_2, 1)))
    list(second.collect(days(JUNE_2, 1)))
    assert clock.recorded == []
    list(first.collect(days(JUNE_2, 1)))
    assert clock.recorded == [3600.0]


def test_429_is_retried_and_honours_retry_after(plausible: Server) -> None:
    clock = FakeClock(NOW)
    plausible.fake.fail(
        FakeResponse(429, {"error": "Too many API requests."}, {"Retry-After": "42"}),
        FakeResponse(429, {"error": "Too many API requests."}),
        FakeResponse(500, {"error": "Internal server error"}),
    )
    assert observations(plausible.connector(clock=clock).collect(days(JUNE_2, 1)))
    assert clock.recorded[0] == 42.0
    assert len(clock.recorded) == 3 and 2 <= clock.recorded[1] < 3 and 4 <= clock.recorded[2] < 5


def test_over_the_hourly_limit_is_retryable(plausible: Server) -> None:
    plausible.fake.hourly_limit = 0
    with pytest.raises(RetryableSourceError, match=r"POST /api/v2/query -> 429.*600|limited"):
        list(plausible.connector().collect(days(JUNE_2, 1)))


def test_a_bad_key_is_an_auth_error_at_once(plausible: Server) -> None:
    with pytest.raises(SourceAuthError) as caught:
        list(plausible.connector(api_key="nope").collect(days(JUNE_2, 1)))
    assert "POST /api/v2/query -> 401" in str(caught.value)
    assert "Invalid API key or site ID" in str(caught.value)
    assert len(plausible.seen) == 1  # a static key cannot be refreshed: no second try


def test_a_bad_query_is_fatal_with_plausibles_message(plausible: Server) -> None:
    plausible.fake.fail(plausible_error(400, "#/date_range: Invalid date range"))
    with pytest.raises(FatalSourceError, match="Invalid date range"):
        list(plausible.connector().collect(days(JUNE_2, 1)))


def test_a_gateway_page_is_retried(plausible: Server) -> None:
    page = FakeResponse(200, "<html>Bad gateway</html>", {"Content-Type": "text/html"})
    plausible.fake.fail(page)
    assert list(plausible.connector().collect(days(JUNE_2, 1))), "served once: asked again"
    plausible.fake.fail(*[page] * 6)
    with pytest.raises(RetryableSourceError, match="expected JSON, received text/html"):
        list(plausible.connector().collect(days(JUNE_2, 1)))


def test_malformed_answers_are_data_errors(plausible: Server) -> None:
    plausible.fake.fail(
        FakeResponse(200, {"meta": {}}),
        FakeResponse(200, {"results": [{"metrics": [1], "dimensions": ["2025-06-02"]}]}),
        FakeResponse(200, {"results": [{"metrics": [1, 2], "dimensions": ["2025-05-01"]}]}),
        FakeResponse(200, {"results": [{"metrics": ["x", 2], "dimensions": ["2025-06-02"]}]}),
    )
    for expected in ("no 'results'", "1 metrics", "outside", "cannot be"):
        with pytest.raises(SourceDataError, match=expected):
            list(plausible.connector().collect(days(JUNE_2, 1)))
