"""The gsheets connector against a fake Google Sheets API on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest

from dxkpi.collector.contract import TOKYO, Granularity, Observation, Window
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
    observations,
)
from dxkpi.connectors._google.fake_token import CLIENT_EMAIL, google_error, key_file, new_key
from dxkpi.connectors.gsheets import GsheetsConnector, GsheetsSettings
from dxkpi.connectors.gsheets.tests.fake_gsheets import SPREADSHEET_ID, FakeSheets

NOW = datetime(2026, 5, 20, 9, 0, tzinfo=TOKYO)
ALL_TIME = Window(datetime(2000, 1, 1, tzinfo=TOKYO), datetime(2100, 1, 1, tzinfo=TOKYO))
KEY = new_key()
KEY_JSON = key_file(KEY, "https://oauth2.googleapis.com/token")
# A line of the private key's body: it must never appear in an error or a log line.
KEY_LINE = json.loads(KEY_JSON)["private_key"].splitlines()[3]
SERVER = SharedServer()
_serving = SERVER.module_fixture()

# A municipality's monthly sheet as staff keep it: 令和 months, sections, counts.
ROWS: list[list[Any]] = [
    ["年月", "課名", "申請件数", "オンライン率"],
    ["令和8年4月", "市民課", 1234, 0.482],
    ["令和8年4月", "税務課", 56, 0.3],
    ["令和8年5月", "市民課", 1301, None],
]
MAPPING: dict[str, Any] = {
    "range": "実績!A1:D",
    "period_column": "年月",
    "granularity": "month",
    "labels": {"section": "課名"},
    "metrics": [
        {"name": "applications", "column": "申請件数", "unit": "applications"},
        {"name": "online_ratio", "column": "オンライン率", "unit": "ratio", "aggregation": "none"},
    ],
}


class Server:
    """A fresh fake Google behind the module's loopback server."""

    def __init__(self) -> None:
        self.url = SERVER.url
        self.fake = FakeSheets(KEY.public_key(), token_uri=f"{self.url}/token")
        self.fake.sheet("実績", [list(row) for row in ROWS])
        self.seen = SERVER.plug(lambda request: self.fake(request))

    def connector(self, clock: FakeClock | None = None, **settings: Any) -> GsheetsConnector:
        base = {
            "spreadsheet_id": SPREADSHEET_ID,
            "service_account_json": KEY_JSON,
            "api_base_url": self.url,
            "token_uri": f"{self.url}/token",
            **MAPPING,
        }
        context = context_for("gsheets_city", clock=clock or FakeClock(NOW))
        return build(GsheetsConnector, base, context, **settings)


@pytest.fixture
def sheets() -> Server:
    return Server()


def by_key(got: list[Observation]) -> dict[tuple[str, str, date], float]:
    return {(o.metric, o.labels.get("section", ""), o.start.date()): o.value for o in got}


def collect(connector: GsheetsConnector, window: Window = ALL_TIME) -> list[Observation]:
    return observations(connector.collect(window))


# -- contract --------------------------------------------------------------------------------


class TestGsheetsContract(ConnectorContract):
    connector_name = "gsheets"
    secrets = (KEY_LINE,)

    def setup_method(self) -> None:
        self.server = Server()

    def invalid_settings(self) -> list[dict[str, Any]]:
        good = {**MAPPING, "spreadsheet_id": SPREADSHEET_ID, "service_account_file": "k.json"}
        without_metrics = {k: v for k, v in good.items() if k != "metrics"}
        return [
            {**good, "spreadsheet_id": "https://docs.google.com/spreadsheets/d/x/edit"},
            {**good, "range": ""},
            without_metrics,
            {**good, "service_account_json": "{}"},
            {k: v for k, v in good.items() if k != "service_account_file"},
            {**good, "value_render_option": "FORMULA"},
            {**good, "extra": True},
        ]

    @contextmanager
    def healthy_case(self) -> Iterator[tuple[GsheetsConnector, Window]]:
        yield self.server.connector(), ALL_TIME

    @contextmanager
    def retryable_case(self) -> Iterator[tuple[GsheetsConnector, Window]]:
        quota = google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per "
            "minute per user'",
        )
        self.server.fake.fail(*[quota] * 10)
        yield self.server.connector(), ALL_TIME

    @contextmanager
    def fatal_case(self) -> Iterator[tuple[GsheetsConnector, Window]]:
        self.server.fake.shared.clear()
        yield self.server.connector(), ALL_TIME


# -- values ----------------------------------------------------------------------------------


def test_a_japanese_monthly_sheet_is_read_as_csvfile_reads_a_file(sheets: Server) -> None:
    got = collect(sheets.connector())
    april, may = date(2026, 4, 1), date(2026, 5, 1)
    assert by_key(got) == {
        ("applications", "市民課", april): 1234,
        ("applications", "税務課", april): 56,
        ("applications", "市民課", may): 1301,
        ("online_ratio", "市民課", april): 0.482,
        ("online_ratio", "税務課", april): 0.3,
    }
    assert {o.granularity for o in got} == {Granularity.MONTH}
    assert all(o.start.tzinfo is TOKYO for o in got)
    (request,) = [r for r in sheets.seen if r.path.startswith("/v4/")]
    assert request.path == f"/v4/spreadsheets/{SPREADSHEET_ID}/values/%E5%AE%9F%E7%B8%BE%21A1%3AD"
    assert request.query == {
        "majorDimension": ["ROWS"],
        "valueRenderOption": ["UNFORMATTED_VALUE"],
        "dateTimeRenderOption": ["FORMATTED_STRING"],
    }


def test_formatted_values_are_read_as_japanese_offices_write_them(sheets: Server) -> None:
    sheets.fake.sheet(
        "実績",
        [
            ["日付", "件数"],
            [date(2026, 4, 1), "1,234"],
            ["2026年4月2日", "△12"],
            ["R8.4.3", "―"],
            [date(2026, 4, 4), 56789],  # the fake formats it as 56,789
        ],
    )
    connector = sheets.connector(
        value_render_option="FORMATTED_VALUE",
        period_column="日付",
        granularity="day",
        labels={},
        metrics=[{"name": "applications", "column": "件数", "unit": "applications"}],
    )
    values = {o.start.date(): o.value for o in collect(connector)}
    assert values == {date(2026, 4, 1): 1234, date(2026, 4, 2): -12, date(2026, 4, 4): 56789}


def test_serial_number_dates_in_the_period_column(sheets: Server) -> None:
    sheets.fake.sheet("実績", [["日付", "件数"], [date(2026, 4, 1), 3], [date(2026, 4, 2), 4]])
    connector = sheets.connector(
        date_time_render_option="SERIAL_NUMBER",
        period_column="日付",
        granularity="day",
        labels={},
        metrics=[{"name": "applications", "column": "件数", "unit": "applications"}],
    )
    assert {o.start.date(): o.value for o in collect(connector)} == {
        date(2026, 4, 1): 3,
        date(2026, 4, 2): 4,
    }


def test_only_the_window_is_yielded(sheets: Server) -> None:
    may = Window(datetime(2026, 5, 1, tzinfo=TOKYO), datetime(2026, 6, 1, tzinfo=TOKYO))
    assert by_key(collect(sheets.connector(), may)) == {
        ("applications", "市民課", date(2026, 5, 1)): 1301
    }


# -- the sheet changed -----------------------------------------------------------------------


def test_a_renamed_header_names_the_range_and_the_column(sheets: Server) -> None:
    renamed = [list(row) for row in ROWS]
    renamed[0][2] = "申請数"
    sheets.fake.sheet("実績", renamed)
    with pytest.raises(SourceDataError) as caught:
        collect(sheets.connector())
    text = str(caught.value)
    assert text.startswith("source 'gsheets_city': rejected range 実績!A1:D whole")
    assert (
        "実績!A1:D: column '申請件数' not found in the header (row 1); the range has 4 "
        "columns: '年月', '課名', '申請数', 'オンライン率'" in text
    )
    assert "update the column names in this source's settings" in text


def test_rows_are_numbered_as_the_sheet_shows_them(sheets: Server) -> None:
    title_rows: list[list[Any]] = [["令和8年度 申請実績"], []]
    sheets.fake.sheet("実績", [*title_rows, *ROWS, ["令和8年5月", "税務課", "多数", None]])
    with pytest.raises(SourceDataError) as caught:
        collect(sheets.connector(range="実績!A3:D"))
    assert "実績!A3:D:7: column '申請件数': '多数' is not a number" in str(caught.value)


def test_a_bad_row_rejects_the_whole_range(sheets: Server) -> None:
    sheets.fake.sheet("実績", [*ROWS, ["令和8年13月", "市民課", 1, None]])
    got: list[Observation] = []
    with pytest.raises(SourceDataError, match=r"実績!A1:D:5: column '年月'"):
        for item in sheets.connector().collect(ALL_TIME):
            got.append(item)  # type: ignore[arg-type]
    assert got == [], "nothing from a bad range is yielded"


def test_an_empty_range_says_so(sheets: Server) -> None:
    sheets.fake.sheet("実績", [])
    with pytest.raises(SourceDataError, match="the range 実績!A1:D is empty"):
        collect(sheets.connector())


# -- errors ----------------------------------------------------------------------------------


def test_an_unknown_sheet_is_a_bad_range_naming_it(sheets: Server) -> None:
    with pytest.raises(FatalSourceError) as caught:
        collect(sheets.connector(range="実績2026!A1:D"))
    text = str(caught.value)
    assert f"range '実績2026!A1:D' of spreadsheet {SPREADSHEET_ID} cannot be read" in text
    assert "Unable to parse range" in text and "the sheet's name (tab)" in text


def test_a_sheet_not_shared_names_the_service_account(sheets: Server) -> None:
    sheets.fake.shared.clear()
    with pytest.raises(SourceAuthError) as caught:
        collect(sheets.connector())
    text = str(caught.value)
    assert "-> 403" in text and "does not have permission" in text
    assert f"share spreadsheet {SPREADSHEET_ID} with {CLIENT_EMAIL}" in text


def test_an_unknown_spreadsheet_is_fatal(sheets: Server) -> None:
    with pytest.raises(FatalSourceError, match="no spreadsheet 1nosuchsheet: not found"):
        collect(sheets.connector(spreadsheet_id="1nosuchsheet"))


def test_quota_and_server_errors_are_retried(sheets: Server) -> None:
    clock = FakeClock(NOW)
    sheets.fake.fail(
        google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Read requests'"),
        google_error(503, "UNAVAILABLE", "The service is currently unavailable."),
        FakeResponse(500, {"error": {"code": 500, "status": "INTERNAL"}}),
    )
    assert collect(sheets.connector(clock=clock))
    assert len(clock.recorded) == 3


def test_quota_exhausted_for_good_is_retryable_later(sheets: Server) -> None:
    quota = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric")
    sheets.fake.fail(*[quota] * 6)
    with pytest.raises(RetryableSourceError, match=r"-> 429.*Quota exceeded"):
        collect(sheets.connector())


def test_an_expired_token_is_renewed(sheets: Server) -> None:
    clock = FakeClock(NOW)
    connector = sheets.connector(clock=clock)
    collect(connector)
    clock.advance(timedelta(hours=1))
    collect(connector)
    assert sheets.fake.token.tokens_issued == 2
    # Revoked early (Google answers 401): one fresh token, and the read goes through.
    sheets.fake.token.valid_tokens.clear()
    assert collect(connector)
    assert sheets.fake.token.tokens_issued == 3


def test_secrets_never_reach_errors_or_logs(sheets: Server, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    connector = sheets.connector()
    collect(connector)
    token = next(iter(sheets.fake.token.valid_tokens))
    texts = [caplog.text]
    sheets.fake.fail(google_error(400, "INVALID_ARGUMENT", f"Unable to parse range: {token}"))
    with pytest.raises(FatalSourceError) as bad_range:
        collect(connector)
    sheets.fake.fail(google_error(403, "PERMISSION_DENIED", f"denied for {token}"))
    with pytest.raises(SourceAuthError) as denied:
        collect(connector)
    texts += [str(bad_range.value), str(denied.value), caplog.text]
    for text in texts:
        assert KEY_LINE not in text
        assert token not in text
    with pytest.raises(pydantic.ValidationError) as invalid:
        GsheetsSettings.model_validate(
            {
                **MAPPING,
                "spreadsheet_id": SPREADSHEET_ID,
                "service_account_json": KEY_JSON.replace('"client_email"', '"email"'),
            }
        )
    assert KEY_LINE not in str(invalid.value)


def test_declared_metrics_follow_the_settings(sheets: Server) -> None:
    specs = {m.name: m for m in sheets.connector().declared_metrics()}
    assert set(specs) == {"applications", "online_ratio"}
    assert specs["online_ratio"].aggregation == "none"
    assert specs["applications"].labels == ("section",)
    assert "実績!A1:D" in specs["applications"].help


def test_the_example_config_is_valid_and_reads_the_fake_sheet(sheets: Server) -> None:
    import yaml

    from dxkpi.connectors.gsheets.tests.fake_gsheets import SPREADSHEET_ID as EXAMPLE_ID

    (entry,) = yaml.safe_load(
        (Path(__file__).parents[1] / "example.yaml").read_text(encoding="utf-8")
    )["sources"]
    settings = {**entry["settings"], "service_account_json": KEY_JSON}
    assert settings["spreadsheet_id"] == EXAMPLE_ID
    connector = sheets.connector(**settings)
    got = by_key(collect(connector))
    assert got[("procedure_applications", "市民課", date(2026, 4, 1))] == 1234
    assert got[("procedure_online_ratio", "税務課", date(2026, 4, 1))] == 0.3
