"""The kintone connector against a fake kintone REST API on loopback."""

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
    observations,
)
from dxkpi.connectors.kintone import KintoneConnector
from dxkpi.connectors.kintone.tests.fake_kintone import (
    APP,
    DOMAIN_TOKEN,
    LOGIN,
    PASSWORD,
    FakeKintone,
    kintone_error,
)

SERVER = SharedServer()
_serving = SERVER.module_fixture()
TYPES = {
    "受付日": "DATE",
    "市町村": "DROP_DOWN",
    "オンライン件数": "NUMBER",
    "総件数": "NUMBER",
    "担当": "CHECK_BOX",
    "登録日時": "DATETIME",
}
# April to June 2026 (FY2026 = 令和8年度), two municipalities.
APRIL = datetime(2026, 4, 1, tzinfo=TOKYO)
JULY = datetime(2026, 7, 1, tzinfo=TOKYO)
METRICS = [
    {"name": "online_applications", "field": "オンライン件数", "unit": "applications"},
    {"name": "applications_received", "field": "総件数", "unit": "applications"},
    {"name": "application_records", "unit": "records"},
]


def seeded() -> FakeKintone:
    fake = FakeKintone(types=dict(TYPES))
    rows = [
        ("2026-04-03", "盛岡市", "12", "20"),
        ("2026-04-20", "盛岡市", "8", "10"),
        ("2026-04-07", "花巻市", "1234", "2000"),
        ("2026-06-30", "盛岡市", "5", "5"),
        ("2026-07-01", "盛岡市", "99", "99"),  # outside the window
        ("2026-03-31", "花巻市", "99", "99"),  # outside the window
    ]
    for day, city, online, total in rows:
        fake.add(受付日=day, 市町村=city, オンライン件数=online, 総件数=total, 担当=["佐藤"])
    return fake


class Server:
    def __init__(self, fake: FakeKintone | None = None) -> None:
        self.fake = fake or seeded()
        self.seen = SERVER.plug(lambda request: self.fake(request))
        self.sleeps: list[float] = []

    def connector(self, **settings: Any) -> KintoneConnector:
        base: dict[str, Any] = {
            "base_url": SERVER.url,
            "app": APP,
            "api_token": DOMAIN_TOKEN,
            "date_field": "受付日",
            "granularity": "month",
            "labels": {"municipality": "市町村"},
            "metrics": METRICS,
        }
        base.update(settings)
        base = {k: v for k, v in base.items() if v is not None}
        context = context_for("kintone_apps", sleeps=self.sleeps)
        return build(KintoneConnector, base, context)


@pytest.fixture
def kintone() -> Server:
    return Server()


def values(got: list[Observation]) -> dict[tuple[str, str, date], float]:
    return {(o.metric, o.labels.get("municipality", ""), o.start.date()): o.value for o in got}


class TestKintoneContract(ConnectorContract):
    connector_name = "kintone"
    secrets = (DOMAIN_TOKEN, PASSWORD)

    def setup_method(self) -> None:
        self.server = Server()

    def invalid_settings(self) -> list[dict[str, Any]]:
        good = {
            "base_url": "https://pref.cybozu.com",
            "app": 1,
            "api_token": "t",
            "date_field": "受付日",
            "metrics": [{"name": "records", "unit": "records"}],
        }
        return [
            {k: v for k, v in good.items() if k != "api_token"},  # no credentials
            {**good, "username": "u", "password": "p"},  # both kinds
            {**good, "app": 0},
            {**good, "base_url": "https://pref.cybozu.com/k/42/"},
            {**good, "query": 'status in ("完了") order by $id desc'},
            {**good, "query": "limit 10"},
            {**good, "page_size": 501},
            {**good, "metrics": []},
            {**good, "metrics": [{"name": "wait_minutes", "field": "x", "unit": "minutes"}]},
            {**good, "metrics": [{"name": "n", "unit": "records", "aggregation": "last"}]},
            {**good, "labels": {"Municipality": "市町村"}},
            {**good, "granularity": "week"},
        ]

    @contextmanager
    def healthy_case(self) -> Iterator[tuple[KintoneConnector, Window]]:
        yield self.server.connector(), Window(APRIL, JULY)

    @contextmanager
    def retryable_case(self) -> Iterator[tuple[KintoneConnector, Window]]:
        self.server.fake.fail(*[FakeResponse(503, "Service Unavailable")] * 6)
        yield self.server.connector(), Window(APRIL, JULY)

    @contextmanager
    def fatal_case(self) -> Iterator[tuple[KintoneConnector, Window]]:
        yield self.server.connector(api_token="wrong-" + DOMAIN_TOKEN), Window(APRIL, JULY)


def test_records_are_added_up_per_month_and_label(kintone: Server) -> None:
    got = observations(kintone.connector().collect(Window(APRIL, JULY)))
    v = values(got)
    assert v[("online_applications", "盛岡市", date(2026, 4, 1))] == 20
    assert v[("applications_received", "盛岡市", date(2026, 4, 1))] == 30
    assert v[("application_records", "盛岡市", date(2026, 4, 1))] == 2
    assert v[("online_applications", "花巻市", date(2026, 4, 1))] == 1234
    # May had no records: zeros, so a deleted record's old figure is overwritten.
    assert v[("online_applications", "盛岡市", date(2026, 5, 1))] == 0
    assert v[("application_records", "花巻市", date(2026, 6, 1))] == 0
    assert v[("online_applications", "盛岡市", date(2026, 6, 1))] == 5
    assert len(got) == 3 * 2 * 3  # metrics x municipalities x months
    assert {o.granularity for o in got} == {Granularity.MONTH}
    assert all(o.start.tzinfo is TOKYO and o.start.day == 1 for o in got)
    # The window is bound into the query on the date field, paged by $id.
    (query,) = kintone.fake.queries
    assert query == (
        '受付日 >= "2026-04-01" and 受付日 < "2026-07-01" order by $id asc limit 500 offset 0'
    )
    request = kintone.seen[0]
    assert request.headers["X-Cybozu-API-Token"] == DOMAIN_TOKEN
    assert request.query["fields[0]"] == ["$id"]
    assert request.query["totalCount"] == ["true"]


def test_a_window_inside_a_month_reads_the_whole_month(kintone: Server) -> None:
    got = observations(
        kintone.connector().collect(
            Window(datetime(2026, 4, 18, tzinfo=TOKYO), datetime(2026, 4, 25, tzinfo=TOKYO))
        )
    )
    v = values(got)
    assert v[("online_applications", "盛岡市", date(2026, 4, 1))] == 20  # not 8: never a part
    assert kintone.fake.queries[0].startswith('受付日 >= "2026-04-01" and 受付日 < "2026-05-01"')


def test_the_settings_query_narrows_the_records(kintone: Server) -> None:
    got = observations(kintone.connector(query='市町村 in ("盛岡市")').collect(Window(APRIL, JULY)))
    assert {o.labels["municipality"] for o in got} == {"盛岡市"}
    assert kintone.fake.queries[0].startswith('(市町村 in ("盛岡市")) and 受付日 >= ')


def test_daily_and_fiscal_year_granularity(kintone: Server) -> None:
    daily = values(observations(kintone.connector(granularity="day").collect(Window(APRIL, JULY))))
    assert daily[("online_applications", "盛岡市", date(2026, 4, 3))] == 12
    assert daily[("online_applications", "盛岡市", date(2026, 4, 4))] == 0
    yearly = observations(kintone.connector(granularity="fiscal_year").collect(Window(APRIL, JULY)))
    # The fiscal year is read whole: every record of FY2026 (April 2026 to March 2027).
    assert values(yearly)[("online_applications", "盛岡市", date(2026, 4, 1))] == 20 + 5 + 99
    assert kintone.fake.queries[-1].startswith('受付日 >= "2026-04-01" and 受付日 < "2027-04-01"')


def test_password_auth_sends_the_login_in_cybozus_header(kintone: Server) -> None:
    connector = kintone.connector(api_token=None, username=LOGIN, password=PASSWORD)
    assert observations(connector.collect(Window(APRIL, JULY)))
    headers = kintone.seen[0].headers
    assert "X-Cybozu-API-Token" not in headers
    assert headers["X-Cybozu-Authorization"] == "ZHgtb2ZmaWNlOnB3LUtpbnRvbmUtczNjcmV0LSF4eXo="


def test_a_datetime_field_is_bound_in_utc(kintone: Server) -> None:
    for record in kintone.fake.records:
        record["登録日時"] = f"{record['受付日']}T00:30:00Z"  # 09:30 in Tokyo
    got = observations(
        kintone.connector(date_field="登録日時", date_field_type="datetime").collect(
            Window(APRIL, JULY)
        )
    )
    assert values(got)[("online_applications", "盛岡市", date(2026, 4, 1))] == 20
    assert kintone.fake.queries[0].startswith(
        '登録日時 >= "2026-03-31T15:00:00Z" and 登録日時 < "2026-06-30T15:00:00Z"'
    )


def test_pages_by_offset_read_every_record_exactly_once() -> None:
    fake = FakeKintone(types=dict(TYPES))
    for i in range(1234):
        fake.add(
            受付日=f"2026-05-{i % 28 + 1:02d}", 市町村="盛岡市", オンライン件数=str(i), 総件数="1"
        )
    server = Server(fake)
    got = values(observations(server.connector().collect(Window(APRIL, JULY))))
    assert got[("application_records", "盛岡市", date(2026, 5, 1))] == 1234
    assert got[("online_applications", "盛岡市", date(2026, 5, 1))] == sum(range(1234))
    assert [q.rsplit("offset ", 1)[1] for q in fake.queries] == ["0", "500", "1000"]
    assert "totalCount" not in server.seen[1].query


def test_a_large_app_is_read_by_cursor_and_nothing_is_left_open() -> None:
    fake = FakeKintone(types=dict(TYPES))
    count = 10_000 + 500 + 137  # one more page than offsets can reach
    for i in range(count):
        fake.add(
            受付日=f"2026-06-{i % 30 + 1:02d}", 市町村="花巻市", オンライン件数="2", 総件数="3"
        )
    server = Server(fake)
    got = values(observations(server.connector().collect(Window(APRIL, JULY))))
    assert got[("application_records", "花巻市", date(2026, 6, 1))] == count
    assert got[("online_applications", "花巻市", date(2026, 6, 1))] == 2 * count
    created = [r for r in server.seen if r.method == "POST"]
    assert len(created) == 1 and created[0].json()["size"] == 500
    assert "limit" not in created[0].json()["query"]
    assert fake.cursors == {}  # read to its end: kintone removed it
    assert fake.deleted_cursors == []


def test_a_cursor_is_deleted_when_reading_fails() -> None:
    fake = FakeKintone(types=dict(TYPES))
    for _ in range(11_000):
        fake.add(受付日="2026-06-01", 市町村="花巻市", オンライン件数="2", 総件数="3")
    fake.cursor_failure = (3, kintone_error(520, "CB_IJ01", "不正なJSON文字列です。"))
    server = Server(fake)
    with pytest.raises(FatalSourceError, match="CB_IJ01"):
        list(server.connector().collect(Window(APRIL, JULY)))
    assert fake.cursors == {}
    assert len(fake.deleted_cursors) == 1
    assert [r.method for r in server.seen][-1] == "DELETE"


def test_a_cursor_is_deleted_when_the_run_stops_early() -> None:
    fake = FakeKintone(types=dict(TYPES))
    for _ in range(11_000):
        fake.add(受付日="2026-06-01", 市町村="花巻市", オンライン件数="x", 総件数="3")
    fake.records[5]["受付日"] = "2026-06-02"
    del fake.records[7]["総件数"]  # the form lost a field: the run stops at this record
    server = Server(fake)
    with pytest.raises(SourceDataError):
        list(server.connector().collect(Window(APRIL, JULY)))
    assert fake.cursors == {} and len(fake.deleted_cursors) == 1


def test_too_many_cursors_on_the_domain_is_retried_later() -> None:
    fake = FakeKintone(types=dict(TYPES))
    for _ in range(11_000):
        fake.add(受付日="2026-06-01", 市町村="花巻市", オンライン件数="2", 総件数="3")
    fake.cursors = {f"other-{i}": [] for i in range(10)}
    server = Server(fake)
    with pytest.raises(RetryableSourceError, match="GAIA_TM12") as caught:
        list(server.connector().collect(Window(APRIL, JULY)))
    assert caught.value.retry_after == 600


def test_429_honours_retry_after_and_a_5xx_burst_is_retried(kintone: Server) -> None:
    kintone.fake.fail(
        FakeResponse(429, {"code": "GAIA_TO04", "message": "too many"}, {"Retry-After": "30"}),
        FakeResponse(503, "Service Unavailable"),
        FakeResponse(500, "oops"),
        FakeResponse(502, "<html><title>502 Bad Gateway</title></html>"),
    )
    assert observations(kintone.connector().collect(Window(APRIL, JULY)))
    assert kintone.sleeps[0] == 30.0
    assert len(kintone.sleeps) == 4


def test_a_5xx_that_does_not_end_is_retryable(kintone: Server) -> None:
    kintone.fake.fail(*[FakeResponse(500, "oops")] * 6)
    with pytest.raises(RetryableSourceError, match=r"GET /k/v1/records.json -> 500"):
        list(kintone.connector().collect(Window(APRIL, JULY)))


def test_a_wrong_token_names_the_app_and_what_to_do(
    kintone: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "expired-" + DOMAIN_TOKEN
    with pytest.raises(SourceAuthError) as caught:
        list(kintone.connector(api_token=wrong).collect(Window(APRIL, JULY)))
    text = str(caught.value)
    assert "kintone app 42" in text and "GAIA_IA02" in text
    assert "'Update App'" in text and "View records" in text
    assert "-> 520" in text
    assert wrong not in text and wrong not in caplog.text
    assert len(kintone.seen) == 1  # an API token cannot be refreshed: no second try


def test_a_wrong_password_is_an_auth_error(
    kintone: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = kintone.connector(api_token=None, username=LOGIN, password="nope-nope-nope")
    with pytest.raises(SourceAuthError, match="CB_WA01") as caught:
        list(connector.collect(Window(APRIL, JULY)))
    encoded = kintone.seen[0].headers["X-Cybozu-Authorization"]
    for text in (str(caught.value), caplog.text):
        assert "nope-nope-nope" not in text and encoded not in text


def test_no_permission_is_an_auth_error(kintone: Server) -> None:
    kintone.fake.fail(kintone_error(403, "CB_NO02", "権限がありません。"))
    with pytest.raises(SourceAuthError, match="no permission to view"):
        list(kintone.connector().collect(Window(APRIL, JULY)))


def test_an_unknown_app_or_space_says_which_setting(kintone: Server) -> None:
    with pytest.raises(FatalSourceError, match=r"kintone app 7 was not found.*GAIA_AP01") as caught:
        list(kintone.connector(app=7).collect(Window(APRIL, JULY)))
    assert "guest_space_id" in str(caught.value)
    with pytest.raises(FatalSourceError, match="GAIA_SP01"):
        list(kintone.connector(guest_space_id=3).collect(Window(APRIL, JULY)))


def test_an_app_in_a_guest_space(kintone: Server) -> None:
    kintone.fake.guest_space = 3
    assert observations(kintone.connector(guest_space_id=3).collect(Window(APRIL, JULY)))
    assert kintone.seen[0].path == "/k/guest/3/v1/records.json"


def test_a_renamed_date_field_is_a_fatal_error_naming_it(kintone: Server) -> None:
    with pytest.raises(FatalSourceError, match=r"GAIA_IQ11.*受付年月日") as caught:
        list(kintone.connector(date_field="受付年月日").collect(Window(APRIL, JULY)))
    assert "date_field (受付年月日)" in str(caught.value)


def test_a_field_missing_from_a_record_names_field_and_record(kintone: Server) -> None:
    del kintone.fake.records[1]["総件数"]
    with pytest.raises(SourceDataError) as caught:
        list(kintone.connector().collect(Window(APRIL, JULY)))
    text = str(caught.value)
    assert "record 2 has no field '総件数'" in text
    assert "form settings" in text


def test_bad_values_are_listed_per_record_and_nothing_is_yielded(kintone: Server) -> None:
    kintone.fake.records[0]["オンライン件数"] = "十二"
    kintone.fake.records[1]["市町村"] = ""
    got: list[Any] = []
    with pytest.raises(SourceDataError) as caught:
        for item in kintone.connector().collect(Window(APRIL, JULY)):
            got.append(item)
    assert got == []
    text = str(caught.value)
    assert "2 record(s) of kintone app 42" in text
    assert "record 1: field 'オンライン件数': '十二' is not a number" in text
    assert "record 2: label municipality is empty" in text


def test_an_empty_number_is_not_reported_not_zero(kintone: Server) -> None:
    kintone.fake.records[3]["総件数"] = None
    got = values(observations(kintone.connector().collect(Window(APRIL, JULY))))
    assert got[("applications_received", "盛岡市", date(2026, 6, 1))] == 0
    assert got[("online_applications", "盛岡市", date(2026, 6, 1))] == 5


def test_a_multi_value_field_cannot_be_a_label(kintone: Server) -> None:
    kintone.fake.records[0]["担当"] = ["佐藤", "鈴木"]
    with pytest.raises(SourceDataError, match="record 1: field '担当' holds 2 values"):
        list(kintone.connector(labels={"staff": "担当"}).collect(Window(APRIL, JULY)))


def test_last_value_metrics_refuse_two_records_for_one_period(kintone: Server) -> None:
    metrics = [
        {
            "name": "online_ratio",
            "field": "オンライン件数",
            "unit": "applications",
            "aggregation": "last",
        }
    ]
    with pytest.raises(SourceDataError, match=r"record 2: online_ratio .* already in record 1"):
        list(kintone.connector(metrics=metrics).collect(Window(APRIL, JULY)))


def test_an_html_page_in_place_of_json_is_retryable(kintone: Server) -> None:
    kintone.fake.fail(FakeResponse(200, "<html><title>メンテナンス中</title></html>"))
    with pytest.raises(RetryableSourceError, match=r"expected JSON.*メンテナンス中"):
        list(kintone.connector().collect(Window(APRIL, JULY)))
    kintone.fake.fail(FakeResponse(200, '{"records": [', {"Content-Type": "application/json"}))
    with pytest.raises(RetryableSourceError, match="not valid JSON from byte"):
        list(kintone.connector().collect(Window(APRIL, JULY)))


def test_a_rerun_yields_the_same_observations(kintone: Server) -> None:
    connector = kintone.connector()
    first = observations(connector.collect(Window(APRIL, JULY)))
    second = observations(connector.collect(Window(APRIL, JULY)))
    assert first == second


def test_the_example_passes_check_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[1] / "example.yaml"
    monkeypatch.setenv("KINTONE_E_APPLICATIONS_TOKEN", DOMAIN_TOKEN)
    loaded = load_config(example)
    specs = loaded.metric_specs["kintone_e_applications"]
    assert specs["online_applications"].labels == ("municipality",)
    inline = tmp_path / "dxkpi.yaml"
    inline.write_text(
        example.read_text(encoding="utf-8").replace(
            "${KINTONE_E_APPLICATIONS_TOKEN}", "plain-token-value"
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="secrets are never written inline"):
        load_config(inline)
