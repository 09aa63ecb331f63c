from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import jwt
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
from dxkpi.connectors.appstore import AppStoreConnector, AppStoreSettings
from dxkpi.connectors.appstore.tests.fake_appstore import (
    TESTDATA,
    FakeAppStore,
    gone,
    new_team_key,
    no_sales,
    not_yet_available,
    report,
    report_row,
)

PEM, PUBLIC_KEY = new_team_key()
OTHER_PEM, _ = new_team_key()
RECORDED = (TESTDATA / "sales_summary_daily_2026-11-01.tsv").read_text(encoding="utf-8")
NOV_1 = datetime(2026, 11, 1, tzinfo=TOKYO)
NOW = datetime(2026, 11, 20, 9, tzinfo=TOKYO)
SERVER = SharedServer()
_serving = SERVER.module_fixture()


def settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "issuer_id": "57246542-96fe-1a63-e053-0824d011072a",
        "key_id": "2X9R4HXF34",
        "private_key": PEM,
        "vendor_number": "85012345",
        "apps": [
            {"app": "kurashi_navi", "apple_id": "1500000001"},
            {"app": "bousai", "sku": "BOUSAI-APP"},
        ],
        "base_url": base_url,
    }
    values.update(overrides)
    return values


@contextmanager
def running(
    fake: FakeAppStore, clock: FakeClock | None = None, **over: Any
) -> Iterator[tuple[AppStoreConnector, list[FakeRequest]]]:
    clock = clock or FakeClock(NOW)
    fake.clock = clock.timestamp
    seen = SERVER.plug(lambda request: fake.handle(request))
    context = context_for("appstore_main", clock=clock)
    yield build(AppStoreConnector, settings(SERVER.url), context, **over), seen


def values(obs: list[Observation]) -> dict[tuple[str, str, str], float]:
    return {(o.metric, o.labels["app"], o.start.date().isoformat()): o.value for o in obs}


def test_recorded_report_counts_first_time_downloads_only() -> None:
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": RECORDED})
    with running(fake) as (connector, seen):
        got = observations(connector.collect(days(NOV_1, 1)))
    assert values(got) == {
        # 1F x3 rows (41 + 7 + 2); the 3F re-downloads and 7F/7T updates are not downloads.
        ("app_first_time_downloads", "kurashi_navi", "2026-11-01"): 50,
        ("app_updates", "kurashi_navi", "2026-11-01"): 265,
        # 1 + 1T + F1, found by SKU; the IA1 in-app purchase naming it as parent is not a download.
        ("app_first_time_downloads", "bousai", "2026-11-01"): 19,
        ("app_updates", "bousai", "2026-11-01"): 88,
    }
    assert all(o.start == NOV_1 for o in got)
    assert {o.labels.get("platform") for o in got if o.metric == "app_first_time_downloads"} == {
        "ios"
    }
    (request,) = seen
    assert request.arg("filter[reportDate]") == "2026-11-01"
    assert request.arg("filter[vendorNumber]") == "85012345"


def test_no_sales_404_is_zero_for_every_app_not_a_failure() -> None:
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-02": no_sales()})
    with running(fake) as (connector, _):
        got = observations(connector.collect(days(NOV_1 + timedelta(days=1), 1)))
    assert values(got) == {
        ("app_first_time_downloads", "kurashi_navi", "2026-11-02"): 0,
        ("app_updates", "kurashi_navi", "2026-11-02"): 0,
        ("app_first_time_downloads", "bousai", "2026-11-02"): 0,
        ("app_updates", "bousai", "2026-11-02"): 0,
    }


def test_every_day_of_the_window_is_read_and_present() -> None:
    reports: dict[str, Any] = {
        "2026-11-01": RECORDED,
        "2026-11-03": report(
            [
                report_row("2026-11-03", "1500000001", "KURASHI-NAVI", "1T", 4),
                report_row("2026-11-03", "1500000001", "KURASHI-NAVI", "3F", 9),
            ]
        ),
    }
    fake = FakeAppStore(PUBLIC_KEY, reports=reports)  # 11-02 absent: "no sales"
    with running(fake, include_updates=False) as (connector, seen):
        got = observations(connector.collect(days(NOV_1, 3)))
    assert {o.metric for o in got} == {"app_first_time_downloads"}
    downloads = values(got)
    assert downloads[("app_first_time_downloads", "kurashi_navi", "2026-11-02")] == 0
    assert downloads[("app_first_time_downloads", "kurashi_navi", "2026-11-03")] == 4
    assert downloads[("app_first_time_downloads", "bousai", "2026-11-03")] == 0
    assert len(got) == 6 and len(seen) == 3


def test_same_window_twice_yields_the_same_keys() -> None:
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": RECORDED})
    window = Window(NOV_1 + timedelta(hours=5), NOV_1 + timedelta(days=2, hours=3))
    with running(fake) as (connector, _):
        first = observations(connector.collect(window))
        second = observations(connector.collect(window))
    assert first == second
    # The day the window ends in is not over yet at its end, so it is not read.
    assert {o.start.date().isoformat() for o in first} == {"2026-11-01", "2026-11-02"}


def test_day_not_published_yet_is_skipped_while_recent() -> None:
    fake = FakeAppStore(
        PUBLIC_KEY, reports={"2026-11-01": RECORDED, "2026-11-02": not_yet_available()}
    )
    clock = FakeClock(datetime(2026, 11, 3, 8, tzinfo=TOKYO))
    with running(fake, clock=clock) as (connector, _):
        got = observations(connector.collect(days(NOV_1, 2)))
    assert {o.start.date().isoformat() for o in got} == {"2026-11-01"}


def test_day_still_missing_long_after_is_an_error() -> None:
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": not_yet_available()})
    with running(fake) as (connector, _), pytest.raises(FatalSourceError) as caught:
        list(connector.collect(days(NOV_1, 1)))
    assert "GET /v1/salesReports -> 404" in str(caught.value)
    assert "not available yet" in str(caught.value)


def test_report_past_retention_is_fatal_with_a_hint() -> None:
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": gone()})
    with running(fake) as (connector, _), pytest.raises(FatalSourceError) as caught:
        list(connector.collect(days(NOV_1, 1)))
    assert "-> 410" in str(caught.value) and "365 days" in str(caught.value)


def test_wrong_vendor_number_is_an_auth_error_naming_the_role() -> None:
    fake = FakeAppStore(PUBLIC_KEY, vendor_number="85099999")
    with running(fake) as (connector, _), pytest.raises(SourceAuthError) as caught:
        list(connector.collect(days(NOV_1, 1)))
    assert "-> 403" in str(caught.value) and "vendor_number" in str(caught.value)


def test_token_is_es256_with_kid_and_at_most_20_minutes() -> None:
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": RECORDED})
    with running(fake) as (connector, _):
        list(connector.collect(days(NOV_1, 1)))
    (claims,) = fake.tokens_seen
    assert claims["aud"] == "appstoreconnect-v1"
    assert claims["iss"] == "57246542-96fe-1a63-e053-0824d011072a"
    assert 0 < int(claims["exp"]) - int(claims["iat"]) <= 20 * 60


def test_token_is_reminted_after_15_minutes_never_reused_longer() -> None:
    clock = FakeClock(NOW)
    fake = FakeAppStore(PUBLIC_KEY)
    with running(fake, clock=clock) as (connector, _):
        for minutes in (0, 10, 14, 16, 29, 31):
            clock.move_to(NOW + timedelta(minutes=minutes))
            list(connector.collect(days(NOV_1, 1)))
    issued = sorted({int(c["iat"]) for c in fake.tokens_seen})
    start = int(datetime(2026, 11, 20, 9, tzinfo=TOKYO).timestamp())
    assert [(t - start) // 60 for t in issued] == [0, 16, 31]


@pytest.mark.parametrize(
    ("lifetime", "audience", "kid", "accepted"),
    [
        (20 * 60, "appstoreconnect-v1", "2X9R4HXF34", True),
        (21 * 60, "appstoreconnect-v1", "2X9R4HXF34", False),
        (10 * 60, "appstoreconnect-v2", "2X9R4HXF34", False),
        (10 * 60, "appstoreconnect-v1", "OTHERKEY01", False),
        (-60, "appstoreconnect-v1", "2X9R4HXF34", False),
    ],
)
def test_fake_enforces_apples_token_rules(
    lifetime: int, audience: str, kid: str, accepted: bool
) -> None:
    # The fake is only worth its tests if it refuses what Apple refuses.
    now = int(datetime(2026, 11, 20, 9, tzinfo=TOKYO).timestamp())
    claims = {"iss": FakeAppStore(PUBLIC_KEY).issuer_id, "aud": audience, "iat": now}
    claims["exp"] = now + lifetime
    token = jwt.encode(claims, PEM, algorithm="ES256", headers={"kid": kid})
    fake = FakeAppStore(PUBLIC_KEY, clock=lambda: float(now))
    assert (fake.refusal(f"Bearer {token}") is None) is accepted


def test_token_refused_once_is_reminted_and_the_request_retried() -> None:
    refused = FakeResponse(401, {"errors": [{"status": "401", "code": "NOT_AUTHORIZED"}]})
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": RECORDED}, script=[refused])
    with running(fake) as (connector, seen):
        got = observations(connector.collect(days(NOV_1, 1)))
    assert len(got) == 4 and len(seen) == 2
    assert seen[0].headers["Authorization"] != seen[1].headers["Authorization"]


def test_key_of_another_team_is_refused_without_leaking_it(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeAppStore(PUBLIC_KEY)
    with (
        running(fake, private_key=OTHER_PEM) as (connector, seen),
        pytest.raises(SourceAuthError) as caught,
    ):
        list(connector.collect(days(NOV_1, 1)))
    assert "GET /v1/salesReports -> 401" in str(caught.value)
    assert len(seen) == 2  # one fresh token, then give up
    token = seen[0].headers["Authorization"].removeprefix("Bearer ")
    for text in (str(caught.value), caplog.text):
        assert "PRIVATE KEY" not in text and OTHER_PEM.splitlines()[1] not in text
        assert token not in text


def test_429_waits_exactly_retry_after() -> None:
    fake = FakeAppStore(
        PUBLIC_KEY,
        reports={"2026-11-01": RECORDED},
        script=[FakeResponse(429, {"errors": [{"status": "429"}]}, {"Retry-After": "7"})],
    )
    clock = FakeClock(NOW)
    with running(fake, clock=clock) as (connector, _):
        got = observations(connector.collect(days(NOV_1, 1)))
    assert clock.recorded == [7.0] and len(got) == 4


def test_429_without_retry_after_backs_off_then_succeeds() -> None:
    fake = FakeAppStore(
        PUBLIC_KEY, reports={"2026-11-01": RECORDED}, script=[FakeResponse(429), FakeResponse(429)]
    )
    clock = FakeClock(NOW)
    with running(fake, clock=clock) as (connector, _):
        got = observations(connector.collect(days(NOV_1, 1)))
    assert len(clock.recorded) == 2 and clock.recorded[1] > clock.recorded[0] > 0 and len(got) == 4


def test_persistent_5xx_is_retryable() -> None:
    fake = FakeAppStore(PUBLIC_KEY, script=[FakeResponse(503, "Service Unavailable")] * 10)
    with running(fake) as (connector, _), pytest.raises(RetryableSourceError) as caught:
        list(connector.collect(days(NOV_1, 1)))
    assert "GET /v1/salesReports -> 503" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\x1f\x8b\x08\x00garbage", "gzip body is corrupt"),
        (gzip.compress(b"Provider\tSKU\tUnits\nAPPLE\tX\t1\n"), "headers seen: Provider, SKU"),
        (
            gzip.compress(report([report_row("2026-10-31", "1500000001", "K", "1F", 3)]).encode()),
            "Begin Date 2026-10-31 is not the requested 2026-11-01",
        ),
        (
            gzip.compress(
                report([report_row("2026-11-01", "1500000001", "K", "1F", "x")]).encode()
            ),
            "Units 'x' is not a number",
        ),
    ],
)
def test_unreadable_report_is_a_data_error(body: bytes, expected: str) -> None:
    answer = FakeResponse(200, body, {"Content-Type": "application/a-gzip"})
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": answer})
    with running(fake) as (connector, _), pytest.raises(SourceDataError) as caught:
        list(connector.collect(days(NOV_1, 1)))
    assert expected in str(caught.value)
    assert "2026-11-01" in str(caught.value) and "GET /v1/salesReports -> 200" in str(caught.value)


def test_a_proxy_page_in_place_of_the_report_is_retryable() -> None:
    page = b"<html>\r\n<head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    answer = FakeResponse(200, page, {"Content-Type": "text/html"})
    fake = FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": answer})
    with running(fake) as (connector, _), pytest.raises(RetryableSourceError) as caught:
        list(connector.collect(days(NOV_1, 1)))
    assert "GET /v1/salesReports -> 200: expected the gzip sales report for 2026-11-01, " in str(
        caught.value
    )
    assert "an HTML page titled '502 Bad Gateway'" in str(caught.value)


def test_settings_never_print_the_key() -> None:
    model = AppStoreSettings.model_validate(settings("https://example.invalid"))
    assert "PRIVATE KEY" not in repr(model) and "PRIVATE KEY" not in str(model.model_dump())


class TestAppStoreContract(ConnectorContract):
    connector_name = "appstore"
    secrets = (PEM.splitlines()[1],)

    def invalid_settings(self) -> list[dict[str, Any]]:
        base = settings("https://api.appstoreconnect.apple.com")
        return [
            {**base, "apps": []},
            {**base, "apps": [{"app": "x"}]},
            {**base, "apps": [{"app": "a", "sku": "S"}, {"app": "b", "sku": "S"}]},
            {**base, "key_id": "short"},
            {**base, "private_key": "not a pem"},
            {**base, "vendor_number": "ACME"},
            {**base, "unknown": 1},
        ]

    @contextmanager
    def _case(self, fake: FakeAppStore, **over: Any) -> Iterator[tuple[Any, Window]]:
        with running(fake, **over) as (connector, _):
            yield connector, days(NOV_1, 2)

    def healthy_case(self) -> Any:
        return self._case(FakeAppStore(PUBLIC_KEY, reports={"2026-11-01": RECORDED}))

    def retryable_case(self) -> Any:
        return self._case(FakeAppStore(PUBLIC_KEY, script=[FakeResponse(500)] * 10))

    def fatal_case(self) -> Any:
        return self._case(FakeAppStore(PUBLIC_KEY), private_key=OTHER_PEM)
