"""A fake Plausible Stats API v2, built from its public reference.

- `POST /api/v2/query` with `Authorization: Bearer KEY` and a JSON query: `site_id`, `metrics`,
  `date_range` (`["2025-06-01", "2025-06-30"]`), `dimensions` (`["time:day"]`).
- Answers `{"results": [{"metrics": [...], "dimensions": ["2025-06-01"]}], "meta": {},
  "query": {...}}`, metrics in the order asked, and NO result for a day without traffic.
- Errors are `{"error": "..."}`: 401 for a bad key or a site the key cannot see, 400 for a bad
  query, 429 past the key's hourly limit (600 requests by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dxkpi.collector.testing import FakeRequest, FakeResponse

API_KEY = "pl-Stats-Key-0123456789abcdefXYZ"
SITE_ID = "www.pref.example.jp"
METRICS = {"visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration"}


def plausible_error(status: int, message: str) -> FakeResponse:
    return FakeResponse(status, {"error": message})


@dataclass
class FakePlausible:
    keys: set[str] = field(default_factory=lambda: {API_KEY})
    traffic: dict[date, tuple[int, int]] = field(default_factory=dict)  # (pageviews, visitors)
    hourly_limit: int = 600
    # The fake's notion of now (the tests' clock), for its sliding hour of requests.
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    accepted: list[datetime] = field(default_factory=list)
    failures: list[FakeResponse] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, *responses: FakeResponse) -> None:
        self.failures.extend(responses)

    def __call__(self, request: FakeRequest) -> FakeResponse:
        if self.failures:
            return self.failures.pop(0)
        if request.method != "POST" or request.path != "/api/v2/query":
            return FakeResponse(404, {"errors": {"detail": "Not Found"}})
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.keys:
            return self._unauthorized()
        now = self.clock()
        self.accepted = [t for t in self.accepted if t > now - timedelta(hours=1)]
        if len(self.accepted) >= self.hourly_limit:
            return plausible_error(
                429,
                f"Too many API requests. Your API key is limited to {self.hourly_limit} "
                "requests per hour. Please contact us to request more capacity.",
            )
        self.accepted.append(now)
        try:
            query = request.json()
        except ValueError:
            return plausible_error(400, "Invalid JSON in the request body.")
        self.queries.append(query)
        if query.get("site_id") != SITE_ID:
            return self._unauthorized()
        unknown = [m for m in query.get("metrics", []) if m not in METRICS]
        if unknown or not query.get("metrics"):
            return plausible_error(400, f"#/metrics/0: Invalid metric {unknown[:1]}")
        if query.get("dimensions") != ["time:day"]:
            return plausible_error(400, "#/dimensions: only time:day is faked")
        try:
            first, last = (date.fromisoformat(d) for d in query["date_range"])
        except (KeyError, TypeError, ValueError):
            return plausible_error(400, "#/date_range: Invalid date range")
        results = []
        day = first
        while day <= last:
            pageviews, visitors = self.traffic.get(day, (0, 0))
            if pageviews or visitors:
                values = {"pageviews": pageviews, "visitors": visitors, "visits": visitors}
                results.append(
                    {"metrics": [values[m] for m in query["metrics"]], "dimensions": [str(day)]}
                )
            day += timedelta(days=1)
        return FakeResponse(200, {"results": results, "meta": {}, "query": query})

    @staticmethod
    def _unauthorized() -> FakeResponse:
        return plausible_error(
            401,
            "Invalid API key or site ID. Please make sure you're using a valid API key "
            "with access to the site you've requested.",
        )
