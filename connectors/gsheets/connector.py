"""Google Sheets: KPI figures kept in a range of a spreadsheet, mapped like csvfile's tables.

`GET /v4/spreadsheets/{spreadsheetId}/values/{range}` (Sheets API v4 `spreadsheets.values.get`)
with a service account's token (RFC 7523 JWT-bearer grant, scope spreadsheets.readonly). The
spreadsheet must be shared with the service account's e-mail address, or Google answers 403.
Traps: trailing empty cells and rows are left out of `values` (and `values` itself when the
range is empty); a sheet name that is not found, like a malformed range, is 400 "Unable to parse
range"; by default numbers arrive formatted as text in the sheet's locale and dates as serial
numbers (days since 1899-12-30), so the connector asks for UNFORMATTED_VALUE (numbers as
numbers) and FORMATTED_STRING (dates as the sheet shows them, read like csvfile reads them).
The API has no paging: one range is one answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from typing import Any, Literal
from urllib.parse import quote

import requests
from pydantic import Field, model_validator

from dxkpi.collector.auth import JwtBearerToken
from dxkpi.collector.contract import (
    Checkpoint,
    Connector,
    MetricSpec,
    Observation,
    SourceContext,
    Window,
)
from dxkpi.collector.errors import FatalSourceError, SourceDataError
from dxkpi.collector.http import HttpClient
from dxkpi.connectors._google import ServiceAccountSettings, load_key
from dxkpi.connectors._tables.mapping import read_table, spooled_observations, table_metrics
from dxkpi.connectors._tables.problems import Problems
from dxkpi.connectors._tables.rows import Table, TableProblem, header_of, numbered
from dxkpi.connectors._tables.settings import TableColumns
from dxkpi.connectors._tables.spool import TableSpool

API_URL = "https://sheets.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/spreadsheets.readonly"
# Day 0 of spreadsheet serial dates (SERIAL_NUMBER), 1900 correctly not a leap year.
SERIAL_EPOCH = date(1899, 12, 30)
# The first row of the range Google says it read: `'Sheet one'!A5:D20` -> 5.
_FIRST_ROW = re.compile(r"!\$?[A-Za-z]*\$?(\d+)")


class GsheetsSettings(ServiceAccountSettings, TableColumns):
    spreadsheet_id: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The id in the sheet's URL: docs.google.com/spreadsheets/d/<id>/edit",
    )
    range: str = Field(
        min_length=1,
        description="A1 notation: `実績!A1:D` (header in its first row), or a sheet's name",
    )
    # UNFORMATTED_VALUE: numbers as numbers. FORMATTED_VALUE: as the sheet shows them
    # (1,234, 48.2%, △12), read as csvfile reads text.
    value_render_option: Literal["UNFORMATTED_VALUE", "FORMATTED_VALUE"] = "UNFORMATTED_VALUE"
    # FORMATTED_STRING: dates as the sheet shows them (2026/04/01, 令和3年度 as text);
    # SERIAL_NUMBER: days since 1899-12-30, read as dates in the period column.
    date_time_render_option: Literal["FORMATTED_STRING", "SERIAL_NUMBER"] = "FORMATTED_STRING"
    api_base_url: str = Field(default=API_URL, pattern=r"^https?://")

    @model_validator(mode="after")
    def _columns(self) -> GsheetsSettings:
        self.check_columns("gsheets needs")
        return self


class GsheetsConnector(Connector[GsheetsSettings]):
    name = "gsheets"
    settings_model = GsheetsSettings
    # The metrics depend on each source's settings: see declared_metrics().
    metrics = ()

    def __init__(self, settings: GsheetsSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        info = load_key(settings, context)
        self.client_email = str(info["client_email"])
        self.token = JwtBearerToken.from_service_account(
            context,
            info,
            [SCOPE],
            token_uri=settings.token_uri,
            hint="check the service account key is current (not deleted in Google Cloud IAM)",
        )
        self.client = HttpClient(
            context,
            settings.api_base_url,
            auth=self.token,
            auth_hint=f"share spreadsheet {settings.spreadsheet_id} with {self.client_email} "
            "(Share > add the address as a Viewer), and enable the Google Sheets API in the "
            "service account's Cloud project",
        )
        self.path = (
            f"/v4/spreadsheets/{settings.spreadsheet_id}/values/{quote(settings.range, safe='')}"
        )

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        where = f"range {self.settings.range} of spreadsheet {self.settings.spreadsheet_id}"
        return table_metrics(self.settings, where)

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        problems = Problems("range", "ranges")
        name = self.settings.range
        tz = self.context.timezone
        with TableSpool(tz) as spool:
            try:
                read_table(self._table(), name, self.settings, window, tz, problems, spool)
            except TableProblem as exc:
                problems.file(name, str(exc))
            if problems.count():
                problems.reject(name)
            else:
                spool.accept()
                yield from spooled_observations(spool, self.settings)
        error = problems.error(self.context.source_id)
        if error is not None:
            raise error

    def _table(self) -> Table:
        settings = self.settings
        response = self.client.request(
            "GET",
            self.path,
            params={
                "majorDimension": "ROWS",
                "valueRenderOption": settings.value_render_option,
                "dateTimeRenderOption": settings.date_time_render_option,
            },
            passthrough=(400, 404),
        )
        where = self.client.describe("GET", self.path)
        if response.status_code == 404:
            raise FatalSourceError(
                self.context.source_id,
                f"no spreadsheet {settings.spreadsheet_id}: " + self._vendor("not found", response),
                where=where,
                hint="copy the id from the sheet's URL (docs.google.com/spreadsheets/d/<id>/)",
            )
        if response.status_code == 400:
            raise FatalSourceError(
                self.context.source_id,
                f"range {settings.range!r} of spreadsheet {settings.spreadsheet_id} cannot "
                "be read: " + self._vendor("rejected", response),
                where=where,
                hint="check `range`: the sheet's name (tab) as spelled in the spreadsheet and "
                "A1 notation, e.g. 実績!A1:D",
            )
        answer = self.client.parse_json(response)
        if not isinstance(answer, dict) or not isinstance(answer.get("values", []), list):
            raise SourceDataError(
                self.context.source_id,
                "the answer is not a ValueRange (a JSON object with a 'values' list)",
                where=where,
                hint="the Sheets API may have changed; the connector needs updating",
            )
        values: list[Any] = answer.get("values", [])
        found = _FIRST_ROW.search(str(answer.get("range", "")))
        header_row = int(found[1]) if found else 1
        rows = iter(values)
        header = header_of(next(rows, None), empty=f"the range {settings.range} is empty")
        cells: Iterator[Sequence[object]] = rows
        if settings.date_time_render_option == "SERIAL_NUMBER":
            cells = self._serial_dates(rows, header)
        return Table(
            header=header,
            rows=numbered(cells, first=header_row + 1),
            header_row=header_row,
            what="the range",
        )

    def _vendor(self, detail: str, response: requests.Response) -> str:
        """Google's message, with the token we sent blanked (a message may echo the request)."""
        return self.client.with_vendor_message(detail, response, self.token.token())

    def _serial_dates(
        self, rows: Iterator[Sequence[object]], header: list[str]
    ) -> Iterator[Sequence[object]]:
        """Rows with the period column's serial numbers as dates."""
        assert self.settings.period_column is not None
        try:
            index = Table(header, iter(())).column_index([self.settings.period_column])
        except TableProblem:
            yield from rows  # read_table names the missing column
            return
        column = index[self.settings.period_column]
        for row in rows:
            cell = row[column] if column < len(row) else None
            if isinstance(cell, int | float) and not isinstance(cell, bool) and cell > 0:
                row = [*row]
                row[column] = SERIAL_EPOCH + timedelta(days=int(cell))
            yield row
