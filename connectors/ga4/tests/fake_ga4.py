"""A fake Google: the OAuth token endpoint for service accounts and the GA4 Data API's
`runReport`, built from the public references.

- `POST /token`: the service-account token endpoint of connectors/_google/fake_token.py (scope
  analytics.readonly).
- `POST /v1beta/properties/{id}:runReport`: `dateRanges`, `dimensions` (date, pagePath),
  `metrics` (screenPageViews, activeUsers), `orderBys`, `limit`/`offset` (int64 as strings or
  numbers). Values are strings, dates `YYYYMMDD`, days without data have no row, `rows` and
  `rowCount` are absent when nothing matched. Errors are Google's JSON error envelope:
  `{"error": {"code", "message", "status"}}` (403 PERMISSION_DENIED, 400 INVALID_ARGUMENT,
  429 RESOURCE_EXHAUSTED, 401 UNAUTHENTICATED).

Rows are computed, not stored, so a report of a million rows costs no memory here.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from dxkpi.collector.testing import FakeRequest, FakeResponse
from dxkpi.connectors._google.fake_token import (
    CLIENT_EMAIL,
    FakeTokenEndpoint,
    google_error,
    key_file,
    new_key,
)

__all__ = ["CLIENT_EMAIL", "PROPERTY_ID", "FakeGa4", "google_error", "key_file", "new_key"]

PROPERTY_ID = "351234567"
SCOPE = "https://www.googleapis.com/auth/analytics.readonly"
DIMENSIONS = {"date", "pagePath"}
METRICS = {"screenPageViews", "activeUsers"}


@dataclass
class FakeGa4:
    public_key: rsa.RSAPublicKey
    token_uri: str = ""
    paths: list[str] = field(default_factory=lambda: ["/", "/kurashi/", "/bousai/"])
    empty_days: set[date] = field(default_factory=set)
    # Responses served before the real ones, in order: (path prefix, response).
    failures: list[tuple[str, FakeResponse]] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    tokens_issued: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    _counter: Any = field(default_factory=itertools.count)

    @staticmethod
    def views(day: date, path_index: int) -> int:
        return (day.toordinal() % 50) + 10 * (path_index + 1)

    @staticmethod
    def users(day: date) -> int:
        return (day.toordinal() % 40) + 7

    def fail(self, path_prefix: str, *responses: FakeResponse) -> None:
        self.failures.extend((path_prefix, r) for r in responses)

    def __call__(self, request: FakeRequest) -> FakeResponse:
        for i, (prefix, response) in enumerate(self.failures):
            if request.path.startswith(prefix):
                del self.failures[i]
                return response
        if request.path == "/token":
            return self._token(request)
        if (
            request.headers.get("Authorization", "").removeprefix("Bearer ")
            not in self.valid_tokens
        ):
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            )
        prefix, suffix = "/v1beta/properties/", ":runReport"
        if request.method == "POST" and request.path.startswith(prefix):
            property_id = request.path[len(prefix) :].removesuffix(suffix)
            if property_id != PROPERTY_ID:
                return google_error(
                    403,
                    "PERMISSION_DENIED",
                    "User does not have sufficient permissions for this property.",
                )
            return self._run_report(request.json())
        return google_error(404, "NOT_FOUND", "Requested entity was not found.")

    def _token(self, request: FakeRequest) -> FakeResponse:
        endpoint = FakeTokenEndpoint(
            self.public_key, SCOPE, self.token_uri, self.valid_tokens, _counter=self._counter
        )
        response = endpoint(request)
        self.tokens_issued += endpoint.tokens_issued
        return response

    def _run_report(self, body: dict[str, Any]) -> FakeResponse:
        self.reports.append(body)
        dims = [d["name"] for d in body.get("dimensions", [])]
        metrics = [m["name"] for m in body.get("metrics", [])]
        unknown = [n for n in dims if n not in DIMENSIONS] + [
            n for n in metrics if n not in METRICS
        ]
        if unknown:
            return google_error(
                400, "INVALID_ARGUMENT", f"Field {unknown[0]} is not a valid dimension or metric."
            )
        limit = int(body.get("limit", 10000))
        offset = int(body.get("offset", 0))
        if limit <= 0 or offset < 0:
            return google_error(400, "INVALID_ARGUMENT", "limit must be positive.")
        limit = min(limit, 250_000)
        (date_range,) = body["dateRanges"]
        first = date.fromisoformat(date_range["startDate"])
        last = date.fromisoformat(date_range["endDate"])
        days = [
            first + timedelta(days=n)
            for n in range((last - first).days + 1)
            if first + timedelta(days=n) not in self.empty_days
        ]
        per_day = len(self.paths) if "pagePath" in dims else 1
        total = len(days) * per_day
        report: dict[str, Any] = {
            "dimensionHeaders": [{"name": d} for d in dims],
            "metricHeaders": [{"name": m, "type": "TYPE_INTEGER"} for m in metrics],
            "metadata": {"currencyCode": "JPY", "timeZone": "Asia/Tokyo"},
            "kind": "analyticsData#runReport",
        }
        if total:
            report["rows"] = _ROWS
            report["rowCount"] = total
        rows = self._rows_json(days, offset, min(total, offset + limit), dims, metrics)
        # The rows are written as text straight into the report's JSON (the same bytes
        # `json.dumps` makes of them as dicts, in a fraction of the time).
        body = json.dumps(report).replace(json.dumps(_ROWS), rows, 1).encode()
        return FakeResponse(200, body, {"Content-Type": "application/json"})

    def _rows_json(
        self, days: list[date], first: int, end: int, dims: list[str], metrics: list[str]
    ) -> str:
        """Rows `first` to `end` (exclusive) of the report, day by day, pages in order, as
        the JSON text of their list.

        Written as text, not built as dicts for `json.dumps`: the bench serves 1.46M rows from
        this process, on the cores the backfill it measures needs. A cell that repeats (a day's
        date, a page's path) is encoded once.
        """
        by_page = "pagePath" in dims
        n_paths = len(self.paths)
        per_day = n_paths if by_page else 1
        path_cells = [json.dumps({"value": path}) for path in self.paths]
        rows: list[str] = []
        for day_index in range(first // per_day, (end + per_day - 1) // per_day):
            day = days[day_index]
            # `views` grows by 10 per page in order: the site's total has a closed form.
            first_views = self.views(day, 0)
            total_views = n_paths * first_views + 5 * n_paths * (n_paths - 1)
            # The day's row, with the page's cell as {0} and its views as {1}.
            cells = {
                "date": _literal(json.dumps({"value": day.strftime("%Y%m%d")})),
                "pagePath": "{0}",
            }
            values = {"screenPageViews": "{1}", "activeUsers": str(self.users(day))}
            row = (
                '{{"dimensionValues": ['
                + ", ".join([cells[d] for d in dims])
                + '], "metricValues": ['
                + ", ".join([f'{{{{"value": "{values[m]}"}}}}' for m in metrics])
                + "]}}"
            )
            day_start = day_index * per_day
            for path_index in range(
                max(first, day_start) - day_start, min(end - day_start, per_day)
            ):
                views = first_views + 10 * path_index if by_page else total_views
                rows.append(row.format(path_cells[path_index] if by_page else "", views))
        return "[" + ", ".join(rows) + "]"


def _literal(text: str) -> str:
    """`text` as it reads in a `str.format` template."""
    return text.replace("{", "{{").replace("}", "}}")


# Where the rows go in a report's JSON, until they are written in.
_ROWS = "\x00rows\x00"
