"""The Matomo connector against a fake Matomo on loopback."""

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
    FakeResponse,
    SharedServer,
    build,
    context_for,
    days,
    observations,
)
from dxkpi.connectors.matomo import MatomoConnector
from dxkpi.connectors.matomo.tests.fake_matomo import (
    PREFIX,
    SITE_ID,
    TOKEN,
    FakeMatomo,
    matomo_error,
)

JUNE_2 = datetime(2025, 6, 2, tzinfo=TOKYO)
SERVER = SharedServer()
_serving = SERVER.module_fixture()


class Server:
    """A fresh fake Matomo, with June 2025's visits, behind the module's loopback server."""

    def __init__(self) -> None:
        self.fake = FakeMatomo(visits={date(2025, 6, d): 10 * d for d in range(1, 31)})
        self.fake.visits[date(2025, 6, 3)] = 0  # a day nobody visited
        self.seen = SERVER.plug(lambda request: self.fake(request))
        self.sleeps: list[float] = []

    def connector(self, **settings: Any) -> MatomoConnector:
        base = {"base_url": f"{SERVER.url}{PREFIX}/", "site_id": SITE_ID, "token_auth": TOKEN}
        context = context_for("matomo_web", sleeps=self.sleeps)
        return build(MatomoConnector, base, context, **settings)


@pytest.fixture
def matomo() -> Server:
    return Server()


def by_key(got: list[Observation]) -> dict[tuple[str, date], float]:
    return {(o.metric, o.start.date()): o.value for o in got}


class TestMatomoContract(ConnectorContract):
    connector_name = "matomo"
    secrets = (TOKEN,)

    def setup_method(self) -> None:
        self.server = Server()

    def invalid_settings(self) -> list[dict[str, Any]]:
        good = {"base_url": "https://matomo.pref.example.jp/", "site_id": 1, "token_auth": "t"}
        return [
            {k: v for k, v in good.items() if k != "base_url"},
            {**good, "base_url": "matomo.pref.example.jp"},
            {**good, "site_id": 0},
            {k: v for k, v in good.items() if k != "token_auth"},
        ]

    @contextmanager
    def healthy_case(self) -> Iterator[tuple[MatomoConnector, Window]]:
        yield self.server.connector(), days(JUNE_2, 3)

    @contextmanager
    def retryable_case(self) -> Iterator[tuple[MatomoConnector, Window]]:
        self.server.fake.fail(*[FakeResponse(503, "<html>Maintenance</html>")] * 10)
        yield self.server.connector(), days(JUNE_2, 3)

    @contextmanager
    def fatal_case(self) -> Iterator[tuple[MatomoConnector, Window]]:
        yield self.server.connector(token_auth="0" * 32), days(JUNE_2, 3)


def test_visits_and_page_views_per_day_with_zero_days(matomo: Server) -> None:
    got = observations(matomo.connector().collect(days(JUNE_2, 3)))
    values = by_key(got)
    assert values[("matomo_visits", date(2025, 6, 2))] == 20
    assert values[("matomo_page_views", date(2025, 6, 2))] == matomo.fake.page_views(20)
    # Matomo answers [] for a day without visits: that is zero.
    assert values[("matomo_visits", date(2025, 6, 3))] == 0
    assert values[("matomo_page_views", date(2025, 6, 3))] == 0
    assert len(got) == 6
    assert {o.start for o in got} == {JUNE_2 + timedelta(days=n) for n in range(3)}


def test_one_request_per_method_with_the_token_in_the_body_only(matomo: Server) -> None:
    list(matomo.connector().collect(days(JUNE_2, 3)))
    assert [r.arg("method") for r in matomo.seen] == ["VisitsSummary.get", "Actions.get"]
    for request in matomo.seen:
        assert request.method == "POST" and request.path == f"{PREFIX}/index.php"
        assert request.arg("date") == "2025-06-02,2025-06-04" and request.arg("period") == "day"
        assert request.arg("idSite") == str(SITE_ID) and request.arg("format") == "JSON"
        assert "token_auth" not in request.query
        assert request.form() == {"token_auth": [TOKEN]}


def test_a_day_still_running_is_not_read(matomo: Server) -> None:
    got = observations(matomo.connector().collect(Window(JUNE_2, JUNE_2 + timedelta(hours=47))))
    assert {o.start for o in got} == {JUNE_2}


def test_wrong_token_is_an_auth_error_with_matomos_message(matomo: Server) -> None:
    with pytest.raises(SourceAuthError) as caught:
        list(matomo.connector(token_auth="f" * 32).collect(days(JUNE_2, 1)))
    text = str(caught.value)
    assert "POST /matomo/index.php (VisitsSummary.get) -> 200" in text
    assert "Unable to authenticate" in text and "view access" in text


def test_a_site_without_view_access_is_an_auth_error(matomo: Server) -> None:
    with pytest.raises(SourceAuthError, match="requires 'view' access"):
        list(matomo.connector(site_id=99).collect(days(JUNE_2, 1)))


def test_other_matomo_errors_are_fatal(matomo: Server) -> None:
    matomo.fake.fail(matomo_error("The method 'VisitsSummary.get' does not exist."))
    with pytest.raises(FatalSourceError) as caught:
        list(matomo.connector().collect(days(JUNE_2, 1)))
    assert type(caught.value) is FatalSourceError
    assert "does not exist" in str(caught.value)


def test_a_passing_matomo_error_is_retryable(matomo: Server) -> None:
    matomo.fake.fail(matomo_error("Mysql error: Lock wait timeout exceeded; try restarting"))
    with pytest.raises(RetryableSourceError, match="Lock wait timeout"):
        list(matomo.connector().collect(days(JUNE_2, 1)))


def test_error_as_http_4xx_is_understood_too(matomo: Server) -> None:
    matomo.fake.fail(
        FakeResponse(401, {"result": "error", "message": "You must be logged in to access this."})
    )
    with pytest.raises(SourceAuthError, match=r"-> 401.*logged in"):
        list(matomo.connector().collect(days(JUNE_2, 1)))


def test_maintenance_then_success(matomo: Server) -> None:
    matomo.fake.fail(FakeResponse(503, "<html>Maintenance</html>"), FakeResponse(429, "slow"))
    assert observations(matomo.connector().collect(days(JUNE_2, 1)))
    assert len(matomo.sleeps) == 2


def test_retry_after_is_honoured(matomo: Server) -> None:
    matomo.fake.fail(FakeResponse(429, "", {"Retry-After": "30"}))
    assert observations(matomo.connector().collect(days(JUNE_2, 1)))
    assert matomo.sleeps == [30.0]


def test_html_in_place_of_json_is_retried_and_says_what_came(matomo: Server) -> None:
    matomo.fake.fail(FakeResponse(200, "<html>login</html>", {"Content-Type": "text/html"}))
    with pytest.raises(RetryableSourceError, match="expected JSON, received text/html"):
        list(matomo.connector().collect(days(JUNE_2, 1)))


def test_a_missing_day_is_a_data_error(matomo: Server) -> None:
    matomo.fake.fail(FakeResponse(200, {"2025-06-01": []}))
    with pytest.raises(SourceDataError, match="no entry for 2025-06-02"):
        list(matomo.connector().collect(days(JUNE_2, 1)))


def test_a_non_numeric_value_is_a_data_error(matomo: Server) -> None:
    matomo.fake.fail(FakeResponse(200, {"2025-06-02": {"nb_visits": "lots"}}))
    with pytest.raises(SourceDataError, match="no numeric nb_visits"):
        list(matomo.connector().collect(days(JUNE_2, 1)))


def test_a_403_page_from_a_proxy_is_an_auth_error(matomo: Server) -> None:
    matomo.fake.fail(FakeResponse(403, "<html>Forbidden</html>", {"Content-Type": "text/html"}))
    with pytest.raises(SourceAuthError, match="-> 403"):
        list(matomo.connector().collect(days(JUNE_2, 1)))
