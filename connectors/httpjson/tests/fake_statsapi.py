"""A fake JSON statistics endpoint of an e-application service, speaking the paging styles
public APIs use, each as documented where it is defined:

- `link_header`: RFC 8288 `Link: <https://…?page=2>; rel="next"` (as GitHub's REST API pages).
- `next_link`: a next URL in the body, JSON:API style `{"data": [...], "links": {"next": …}}`
  (absent or null on the last page), opaque cursor in the URL.
- `page`: `?page=N&per_page=M`, 1-based; a page past the end is empty.
- `offset`: `?offset=N&limit=M` with `"total"` in the body.

Every style filters by `from` and `to` (inclusive ISO dates) and answers
`{"data": [{"id", "date", "municipality": {"name"}, "counts": {"online", "total"}}], ...}`.
Auth: `Authorization: Bearer <token>`; a bad or expired token is RFC 6750's 401 with
`WWW-Authenticate: Bearer error="invalid_token"` and `{"error": "invalid_token",
"error_description": …}`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from dxkpi.collector.fiscal import parse_period
from dxkpi.collector.testing import FakeRequest, FakeResponse

TOKEN = "eapp-Token-9f8e7d6c5b4a39281706XYZ"
PATH = "/api/v1/stats/applications"
Style = Literal["link_header", "next_link", "page", "offset"]


def _day(value: Any) -> str | None:
    """The ISO day of a record's date as the service stores it (it may write 令和 dates);
    None for a date it cannot read (such records are always served: garbage in, garbage out)."""
    text = str(value or "")
    try:
        return datetime.fromisoformat(text).date().isoformat()
    except ValueError:
        pass
    try:
        return parse_period(text)[0].isoformat()
    except ValueError:
        return None


def _in_range(day: str | None, first: str, last: str) -> bool:
    return day is None or first <= day <= last


def invalid_token(description: str = "The access token expired") -> FakeResponse:
    return FakeResponse(
        401,
        {"error": "invalid_token", "error_description": description},
        {"WWW-Authenticate": 'Bearer realm="stats", error="invalid_token"'},
    )


@dataclass
class FakeStatsApi:
    records: list[dict[str, Any]] = field(default_factory=list)
    style: Style = "page"
    max_page_size: int = 100
    default_page_size: int = 20
    tokens: set[str] = field(default_factory=lambda: {TOKEN})
    failures: list[FakeResponse] = field(default_factory=list)
    base_url: str = ""  # for absolute links; set once the server runs
    served: list[str] = field(default_factory=list)  # ids of the records served, in order

    def add(self, day: str, city: str, online: Any, total: Any, **extra: Any) -> dict[str, Any]:
        record = {
            "id": f"r{len(self.records) + 1:05d}",
            "date": day,
            "municipality": {"code": "03201", "name": city},
            "counts": {"online": online, "total": total},
            **extra,
        }
        self.records.append(record)
        return record

    def fail(self, *responses: FakeResponse) -> None:
        self.failures.extend(responses)

    def __call__(self, request: FakeRequest) -> FakeResponse:
        if self.failures:
            return self.failures.pop(0)
        if request.method != "GET" or request.path != PATH:
            return FakeResponse(404, {"error": "not_found"})
        token = request.headers.get("Authorization", "")
        if not token.startswith("Bearer ") or token.removeprefix("Bearer ") not in self.tokens:
            return invalid_token()
        first, last = request.arg("from", ""), request.arg("to", "")
        if not first or not last:
            return FakeResponse(
                400, {"error": "invalid_request", "message": "from and to are required"}
            )
        found = [r for r in self.records if _in_range(_day(r.get("date")), first, last)]
        if self.style == "offset":
            offset = int(request.arg("offset", "0") or 0)
            limit = min(
                int(request.arg("limit", str(self.default_page_size)) or 0), self.max_page_size
            )
            return self._page(found[offset : offset + limit], {"total": len(found)})
        if self.style == "next_link":
            start = 0
            cursor = request.arg("cursor")
            if cursor:
                start = int(base64.urlsafe_b64decode(cursor).decode())
            size = self.default_page_size
            rest = found[start + size :]
            links: dict[str, Any] = {"next": None}
            if rest:
                opaque = base64.urlsafe_b64encode(str(start + size).encode()).decode()
                links["next"] = f"{PATH}?from={first}&to={last}&cursor={opaque}"
            return self._page(found[start : start + size], {"links": links})
        page = int(request.arg("page", "1") or 1)
        size = min(
            int(request.arg("per_page", str(self.default_page_size)) or 0), self.max_page_size
        )
        chunk = found[(page - 1) * size : page * size]
        headers: dict[str, str] = {}
        if self.style == "link_header" and page * size < len(found):
            following = (
                f"{self.base_url}{PATH}?from={first}&to={last}&page={page + 1}&per_page={size}"
            )
            last_page = (len(found) + size - 1) // size
            final = f"{self.base_url}{PATH}?from={first}&to={last}&page={last_page}&per_page={size}"
            headers["Link"] = f'<{following}>; rel="next", <{final}>; rel="last"'
        response = self._page(chunk, {})
        response.headers.update(headers)
        return response

    def _page(self, chunk: list[dict[str, Any]], extra: dict[str, Any]) -> FakeResponse:
        self.served.extend(str(r["id"]) for r in chunk)
        body = json.dumps({"data": chunk, **extra}, ensure_ascii=False).encode()
        return FakeResponse(200, body, {"Content-Type": "application/json; charset=utf-8"})
