from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
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
from dxkpi.connectors.uipath import UiPathConnector, UiPathSettings
from dxkpi.connectors.uipath.tests.fake_orchestrator import FakeOrchestrator, job

INVOICE = "請求書データ入力"
RESIDENT = "住民票発行集計"
CLEANUP = "ログ整理"
MINUTES = {INVOICE: 12, RESIDENT: 30}
NOV_1 = datetime(2026, 11, 1, tzinfo=TOKYO)
SECRET = FakeOrchestrator().client_secret
NOW = datetime(2026, 11, 20, 9, tzinfo=TOKYO)
SERVER = SharedServer()
_serving = SERVER.module_fixture()


def settings(**overrides: Any) -> dict[str, Any]:
    fake = FakeOrchestrator()
    values: dict[str, Any] = {
        "orchestrator_url": f"{SERVER.url or 'https://cloud.uipath.com'}/pref-example/"
        "DefaultTenant/orchestrator_",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "folder_ids": [201, 202],
        "manual_minutes_per_run": MINUTES,
    }
    values.update(overrides)
    return values


@contextmanager
def running(
    fake: FakeOrchestrator | None = None, clock: FakeClock | None = None, **over: Any
) -> Iterator[tuple[UiPathConnector, list[FakeRequest]]]:
    fake = fake or FakeOrchestrator()
    clock = clock or FakeClock(NOW)
    fake.clock = clock.timestamp
    seen = SERVER.plug(lambda request: fake.handle(request))
    yield build(UiPathConnector, settings(), context_for("uipath_main", clock=clock), **over), seen


def table(obs: list[Observation]) -> dict[tuple[str, str, str, str], float]:
    return {
        (o.metric, o.start.date().isoformat(), o.labels["process"], o.labels.get("result", "")): (
            o.value
        )
        for o in obs
    }


def test_recorded_jobs_counted_per_process_result_and_tokyo_day() -> None:
    with running() as (connector, _):
        got = table(observations(connector.collect(days(NOV_1, 2))))
    nov1 = "2026-11-01"
    # Ended 00:30 JST and 23:59:59.997 JST count for 11-01; 00:00:00 JST on 11-02 does not.
    assert got["rpa_runs", nov1, INVOICE, "successful"] == 3
    assert got["rpa_runs", nov1, INVOICE, "faulted"] == 1
    assert got["rpa_runs", nov1, INVOICE, "stopped"] == 0
    # Folder 202's runs add to folder 201's.
    assert got["rpa_runs", nov1, RESIDENT, "successful"] == 1
    assert got["rpa_runs", nov1, RESIDENT, "faulted"] == 1
    assert got["rpa_runs", nov1, RESIDENT, "stopped"] == 1
    assert got["rpa_time_saved_seconds", nov1, INVOICE, ""] == 3 * 12 * 60
    # Faulted and stopped runs save nothing.
    assert got["rpa_time_saved_seconds", nov1, RESIDENT, ""] == 1 * 30 * 60
    assert got["rpa_runs", "2026-11-02", INVOICE, "successful"] == 1
    assert got["rpa_time_saved_seconds", "2026-11-02", RESIDENT, ""] == 30 * 60


def test_process_without_minutes_is_counted_saves_nothing_and_warns_once(caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    with running() as (connector, _):
        first = table(observations(connector.collect(days(NOV_1, 1))))
        list(connector.collect(days(NOV_1, 1)))
    assert first["rpa_runs", "2026-11-01", CLEANUP, "successful"] == 1
    assert first["rpa_time_saved_seconds", "2026-11-01", CLEANUP, ""] == 0
    warnings = [r.getMessage() for r in caplog.records if CLEANUP in r.getMessage()]
    assert len(warnings) == 1 and "manual_minutes_per_run" in warnings[0]


def test_every_day_has_every_declared_process_even_without_runs() -> None:
    with running(FakeOrchestrator(jobs=[])) as (connector, _):
        got = observations(connector.collect(days(NOV_1, 3)))
    assert len(got) == 3 * 2 * (3 + 1)
    assert {o.value for o in got} == {0}
    assert {o.start for o in got} == {NOV_1 + timedelta(days=d) for d in range(3)}


def test_filter_covers_whole_days_and_final_states_only() -> None:
    window = Window(NOV_1 + timedelta(hours=10), NOV_1 + timedelta(days=1, hours=3))
    with running() as (connector, seen):
        got = table(observations(connector.collect(window)))
    jobs_requests = [r for r in seen if r.path.endswith("/odata/Jobs")]
    assert jobs_requests[0].arg("$filter") == (
        "EndTime ge 2026-10-31T15:00:00.000Z and EndTime lt 2026-11-01T18:00:00.000Z and "
        "(State eq 'Successful' or State eq 'Faulted' or State eq 'Stopped')"
    )
    assert jobs_requests[0].headers["X-UIPATH-OrganizationUnitId"] == "201"
    assert jobs_requests[-1].headers["X-UIPATH-OrganizationUnitId"] == "202"
    # 11-01 counts every run of the day, though the window starts at 10:00.
    assert got["rpa_runs", "2026-11-01", INVOICE, "successful"] == 3
    # 11-02 so far: the run at 00:00 JST; the one at 10:00 JST is after the window's end.
    assert got["rpa_runs", "2026-11-02", INVOICE, "successful"] == 1
    assert got["rpa_runs", "2026-11-02", RESIDENT, "successful"] == 0


def test_same_window_twice_yields_the_same_observations() -> None:
    with running() as (connector, _):
        assert observations(connector.collect(days(NOV_1, 2))) == observations(
            connector.collect(days(NOV_1, 2))
        )


def test_pages_with_top_skip_until_odata_count() -> None:
    many = [job(1000 + i, INVOICE, "Successful", "2026-11-01T01:00:00Z") for i in range(7)]
    with running(FakeOrchestrator(jobs=many), page_size=3, folder_ids=[201]) as (connector, seen):
        got = table(observations(connector.collect(days(NOV_1, 1))))
    pages = [(r.arg("$skip"), r.arg("$top"), r.arg("$count")) for r in seen if r.arg("$top")]
    assert pages == [("0", "3", "true"), ("3", "3", "true"), ("6", "3", "true")]
    assert got["rpa_runs", "2026-11-01", INVOICE, "successful"] == 7


def test_a_job_shifting_pages_is_counted_once() -> None:
    many = [job(1000 + i, INVOICE, "Successful", "2026-11-01T01:00:00Z") for i in range(6)]
    fake = FakeOrchestrator(jobs=many)
    handle = fake.handle

    def insert_after_first_page(request: FakeRequest) -> FakeResponse:
        response = handle(request)
        if request.arg("$skip") == "0":
            # A job with a low Id finishes while we page: the next page repeats one job.
            fake.jobs.append(job(999, INVOICE, "Successful", "2026-11-01T02:00:00Z"))
        return response

    fake.handle = insert_after_first_page  # type: ignore[method-assign]
    with running(fake, page_size=3, folder_ids=[201]) as (connector, _):
        got = table(observations(connector.collect(days(NOV_1, 1))))
    assert got["rpa_runs", "2026-11-01", INVOICE, "successful"] == 6


def rate_limited_run(
    runs: int, requests_per_minute: int
) -> tuple[dict[tuple[str, str, str, str], float], FakeOrchestrator, FakeClock, list[FakeRequest]]:
    """One day of `runs` jobs, read a job a page from a tenant that allows 5 requests a minute
    (the real limit is 100; 5 keeps the test short, as each request costs real time)."""
    many = [job(1000 + i, INVOICE, "Successful", "2026-11-01T01:00:00Z") for i in range(runs)]
    clock = FakeClock(NOW)
    fake = FakeOrchestrator(jobs=many, rate_limit=5)
    over = {"page_size": 1, "folder_ids": [201], "requests_per_minute": requests_per_minute}
    with running(fake, clock, **over) as (connector, seen):
        got = table(observations(connector.collect(days(NOV_1, 1))))
    return got, fake, clock, seen


def test_request_budget_keeps_under_the_tenant_rate_limit() -> None:
    got, fake, clock, seen = rate_limited_run(12, requests_per_minute=5)
    assert got["rpa_runs", "2026-11-01", INVOICE, "successful"] == 12
    assert fake.throttled == 0 and len([r for r in seen if r.arg("$top")]) == 12
    assert 120 <= sum(clock.recorded) <= 121  # two full minutes of waiting for 12 requests


def test_without_the_budget_the_tenant_limit_answers_429_and_we_wait_it_out() -> None:
    got, fake, clock, _ = rate_limited_run(7, requests_per_minute=1000)
    assert got["rpa_runs", "2026-11-01", INVOICE, "successful"] == 7
    assert fake.throttled == 1 and clock.recorded == [61.0]


def test_429_waits_exactly_retry_after() -> None:
    clock = FakeClock(NOW)
    fake = FakeOrchestrator(
        script=[FakeResponse(429, {"message": "Too many"}, {"Retry-After": "9"})]
    )
    with running(fake, clock) as (connector, _):
        got = observations(connector.collect(days(NOV_1, 1)))
    assert clock.recorded == [9.0] and got


def test_429_without_retry_after_backs_off() -> None:
    clock = FakeClock(NOW)
    fake = FakeOrchestrator(script=[FakeResponse(429), FakeResponse(502)])
    with running(fake, clock) as (connector, _):
        got = observations(connector.collect(days(NOV_1, 1)))
    assert len(clock.recorded) == 2 and clock.recorded[1] > clock.recorded[0] > 0 and got


def test_persistent_5xx_is_retryable_and_names_the_request() -> None:
    fake = FakeOrchestrator(script=[FakeResponse(503, "Service Unavailable")] * 10)
    with running(fake) as (connector, _), pytest.raises(RetryableSourceError) as caught:
        list(connector.collect(days(NOV_1, 1)))
    assert "GET /pref-example/DefaultTenant/orchestrator_/odata/Jobs -> 503" in str(caught.value)


def test_token_is_requested_with_client_credentials_in_the_body_and_reused() -> None:
    fake = FakeOrchestrator()
    with running(fake) as (connector, seen):
        list(connector.collect(days(NOV_1, 2)))
    assert [r.path for r in seen].count("/pref-example/identity_/connect/token") == 1
    (form,) = fake.token_forms
    assert form["grant_type"] == "client_credentials" and form["scope"] == "OR.Jobs.Read"


def test_expired_token_is_fetched_again_once() -> None:
    fake = FakeOrchestrator()
    with running(fake) as (connector, _):
        list(connector.collect(days(NOV_1, 1)))
        fake.expire_tokens()
        got = observations(connector.collect(days(NOV_1, 1)))
    assert got and len(fake.token_forms) == 2


def test_token_is_renewed_before_it_runs_out() -> None:
    clock = FakeClock(NOW)
    fake = FakeOrchestrator()
    with running(fake, clock) as (connector, _):
        for minutes in (0, 40, 58, 70):
            clock.move_to(NOW + timedelta(minutes=minutes))
            list(connector.collect(days(NOV_1, 1)))
    assert len(fake.token_forms) == 2


def test_wrong_secret_is_an_auth_error_that_never_shows_it(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        running(client_secret="wrong-secret-value") as (connector, _),
        pytest.raises(SourceAuthError) as caught,
    ):
        list(connector.collect(days(NOV_1, 1)))
    assert "POST /pref-example/identity_/connect/token -> 400" in str(caught.value)
    assert "invalid_client" in str(caught.value)
    for text in (str(caught.value), caplog.text):
        assert "wrong-secret-value" not in text


def test_scope_not_granted_is_an_auth_error() -> None:
    with running(scope="OR.Administration") as (connector, _), pytest.raises(SourceAuthError) as e:
        list(connector.collect(days(NOV_1, 1)))
    assert "invalid_scope" in str(e.value)


def test_folder_without_access_is_fatal_naming_the_folder_and_the_vendor_message() -> None:
    with running(folder_ids=[201, 999]) as (connector, _), pytest.raises(FatalSourceError) as e:
        list(connector.collect(days(NOV_1, 1)))
    assert "odata/Jobs -> 400 in folder 999" in str(e.value)
    assert "Folder does not exist" in str(e.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"Id": 1, "ReleaseName": INVOICE, "State": "Successful", "EndTime": "yesterday"},
        {"Id": 2, "State": "Successful", "EndTime": "2026-11-01T01:00:00Z"},
        {"Id": 3, "ReleaseName": INVOICE, "State": "Exploded", "EndTime": "2026-11-01T01:00:00Z"},
    ],
)
def test_malformed_job_is_a_data_error(bad: dict[str, Any]) -> None:
    page = {"@odata.count": 1, "value": [bad]}
    with (
        running(FakeOrchestrator(script=[FakeResponse(200, page)])) as (connector, _),
        pytest.raises(SourceDataError) as caught,
    ):
        list(connector.collect(days(NOV_1, 1)))
    assert f"job {bad['Id']}" in str(caught.value) and "folder 201" in str(caught.value)


def test_page_that_is_not_odata_is_retried() -> None:
    html = FakeResponse(200, "<html>maintenance</html>", {"Content-Type": "text/html"})
    with (
        running(FakeOrchestrator(script=[html] * 6)) as (connector, _),
        pytest.raises(RetryableSourceError),
    ):
        list(connector.collect(days(NOV_1, 1)))


def test_token_url_defaults_to_the_organizations_identity_server() -> None:
    model = UiPathSettings.model_validate(settings())
    assert model.identity_url().endswith("/pref-example/identity_/connect/token")
    custom = UiPathSettings.model_validate(settings(token_url="https://idp.example/connect/token"))
    assert custom.identity_url() == "https://idp.example/connect/token"


class TestUiPathContract(ConnectorContract):
    connector_name = "uipath"
    secrets = (SECRET,)

    def invalid_settings(self) -> list[dict[str, Any]]:
        base = settings()
        return [
            {**base, "folder_ids": []},
            {**base, "folder_ids": [201, 201]},
            {**base, "manual_minutes_per_run": {INVOICE: -5}},
            {**base, "orchestrator_url": "cloud.uipath.com"},
            {**base, "page_size": 5000},
            {k: v for k, v in base.items() if k != "client_secret"},
            {**base, "unknown": 1},
        ]

    @contextmanager
    def _case(self, fake: FakeOrchestrator, **over: Any) -> Iterator[tuple[Any, Window]]:
        with running(fake, **over) as (connector, _):
            yield connector, days(NOV_1, 2)

    def healthy_case(self) -> Any:
        return self._case(FakeOrchestrator())

    def retryable_case(self) -> Any:
        return self._case(FakeOrchestrator(script=[FakeResponse(500)] * 10))

    def fatal_case(self) -> Any:
        fake = FakeOrchestrator()
        fake.client_secret = "rotated-" + SECRET
        return self._case(fake)
