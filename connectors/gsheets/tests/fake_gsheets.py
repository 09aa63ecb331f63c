"""A fake Google Sheets API v4 `spreadsheets.values.get`, built from the public reference, with
the service-account token endpoint of connectors/_google/fake_token.py.

- `GET /v4/spreadsheets/{spreadsheetId}/values/{range}`, range in A1 notation (`Sheet1!A1:D10`,
  `'Sheet one'!A:D`, `実績!A2:D`, `Sheet1`, or `A1:D10` for the first sheet), query
  `valueRenderOption` (FORMATTED_VALUE by default, UNFORMATTED_VALUE), `dateTimeRenderOption`
  (SERIAL_NUMBER by default, FORMATTED_STRING; ignored for FORMATTED_VALUE), `majorDimension`
  ROWS. Answers a ValueRange `{"range", "majorDimension", "values"}`: the range actually read
  (bounded by the sheet's data), rows with trailing empty cells dropped, trailing empty rows
  dropped, `values` absent when nothing is there. Dates render as the ja_JP locale writes them
  (`2026/04/01`) or as serial numbers (days since 1899-12-30).
- Errors, Google's JSON envelope: 400 INVALID_ARGUMENT `Unable to parse range: …` (bad A1 or an
  unknown sheet), 403 PERMISSION_DENIED (the sheet is not shared with the service account),
  404 NOT_FOUND (no such spreadsheet), 401 UNAUTHENTICATED (no or stale token), and any queued
  failure (429 RESOURCE_EXHAUSTED, 5xx).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric import rsa

from dxkpi.collector.testing import FakeRequest, FakeResponse
from dxkpi.connectors._google.fake_token import FakeTokenEndpoint, google_error

SPREADSHEET_ID = "1qA2zXkq7sJp9YdVb3RmT0nHc8LwEeFgUiOp4KsD5aBc"
SCOPE = "https://www.googleapis.com/auth/spreadsheets.readonly"
_EPOCH = date(1899, 12, 30)
_A1 = re.compile(r"^(?P<c1>[A-Z]{1,3})(?P<r1>\d+)?(?::(?P<c2>[A-Z]{1,3})(?P<r2>\d+)?)?$")


def column_number(letters: str) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - ord("A") + 1
    return number


def column_letters(number: int) -> str:
    letters = ""
    while number:
        number, rest = divmod(number - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


@dataclass
class FakeSheets:
    public_key: rsa.RSAPublicKey
    token_uri: str = ""
    # spreadsheet id -> sheet title -> rows of cells (str, int, float, date or None).
    spreadsheets: dict[str, dict[str, list[list[Any]]]] = field(default_factory=dict)
    # Spreadsheets shared with the service account (the others answer 403).
    shared: set[str] = field(default_factory=set)
    # Responses served before the real ones, in order.
    failures: list[FakeResponse] = field(default_factory=list)
    token: FakeTokenEndpoint = field(init=False)

    def __post_init__(self) -> None:
        self.token = FakeTokenEndpoint(self.public_key, SCOPE, self.token_uri)

    def sheet(self, title: str, rows: list[list[Any]], spreadsheet: str = SPREADSHEET_ID) -> None:
        self.spreadsheets.setdefault(spreadsheet, {})[title] = rows
        self.shared.add(spreadsheet)

    def fail(self, *responses: FakeResponse) -> None:
        self.failures.extend(responses)

    def __call__(self, request: FakeRequest) -> FakeResponse:
        if request.path == "/token":
            return self.token(request)
        if not self.token.authorized(request):
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            )
        if self.failures:
            return self.failures.pop(0)
        match = re.fullmatch(r"/v4/spreadsheets/([^/]+)/values/(.+)", request.path)
        if request.method != "GET" or match is None:
            return google_error(404, "NOT_FOUND", "Requested entity was not found.")
        spreadsheet_id, a1 = unquote(match[1]), unquote(match[2])
        if spreadsheet_id not in self.spreadsheets:
            return google_error(404, "NOT_FOUND", "Requested entity was not found.")
        if spreadsheet_id not in self.shared:
            return google_error(403, "PERMISSION_DENIED", "The caller does not have permission")
        query = {k: v[0] for k, v in request.query.items()}
        return self._values(self.spreadsheets[spreadsheet_id], a1, query)

    def _values(
        self, sheets: dict[str, list[list[Any]]], a1: str, query: dict[str, str]
    ) -> FakeResponse:
        bad = google_error(400, "INVALID_ARGUMENT", f"Unable to parse range: {a1}")
        title, _, cells = a1.rpartition("!")
        if not title:
            # `Sheet1` alone is a whole sheet; `A1:D4` alone is on the first sheet.
            title, cells = (cells, "") if cells in sheets else (next(iter(sheets)), cells)
        if title.startswith("'") and title.endswith("'"):
            title = title[1:-1].replace("''", "'")
        if title not in sheets:
            return bad
        rows = sheets[title]
        width = max((len(row) for row in rows), default=1)
        first_col, first_row, last_col, last_row = 1, 1, width, max(len(rows), 1)
        if cells:
            bounds = _A1.match(cells)
            if bounds is None:
                return bad
            first_col = column_number(bounds["c1"])
            first_row = int(bounds["r1"] or 1)
            last_col = column_number(bounds["c2"]) if bounds["c2"] else first_col
            last_row = int(bounds["r2"]) if bounds["r2"] else len(rows)
            if not bounds["c2"] and bounds["r1"]:
                last_row = first_row
        render = query.get("valueRenderOption", "FORMATTED_VALUE")
        dates = query.get("dateTimeRenderOption", "SERIAL_NUMBER")
        values = [
            [_render(cell, render, dates) for cell in row[first_col - 1 : last_col]]
            for row in rows[first_row - 1 : last_row]
        ]
        values = [_trimmed(row) for row in values]
        while values and not values[-1]:
            values.pop()
        end_row = first_row + max(len(values), 1) - 1
        quoted = title if re.fullmatch(r"\w+", title) else "'" + title.replace("'", "''") + "'"
        answer: dict[str, Any] = {
            "range": f"{quoted}!{column_letters(first_col)}{first_row}:"
            f"{column_letters(last_col)}{end_row}",
            "majorDimension": "ROWS",
        }
        if values:
            answer["values"] = values
        return FakeResponse(200, answer)


def _render(cell: Any, render: str, dates: str) -> Any:
    if cell is None:
        return ""
    if isinstance(cell, date):
        if render == "FORMATTED_VALUE" or dates == "FORMATTED_STRING":
            return f"{cell.year}/{cell.month:02}/{cell.day:02}"
        return (cell - _EPOCH).days
    if isinstance(cell, int | float) and render == "FORMATTED_VALUE":
        return f"{cell:,}"
    return cell


def _trimmed(row: list[Any]) -> list[Any]:
    while row and row[-1] == "":
        row = row[:-1]
    return row
