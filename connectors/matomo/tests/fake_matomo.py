"""A fake self-hosted Matomo, served under a sub-path (`/matomo/index.php`) as many are,
built from the Reporting API reference.

- Parameters may come in the query string or the POST body (Matomo merges both); the token
  is accepted only from the body, as Matomo does for tokens marked "secure requests only".
- `period=day&date=A,B` answers an object keyed by every date from A to B; a day without
  visits is `[]`, as PHP encodes an empty array.
- Errors are HTTP 200 with `{"result": "error", "message": ...}`, Matomo's own wording:
  a wrong token, a token without view access, an unknown method, a bad date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from dxkpi.collector.testing import FakeRequest, FakeResponse

TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
SITE_ID = 3
PREFIX = "/matomo"


def matomo_error(message: str) -> FakeResponse:
    return FakeResponse(200, {"result": "error", "message": message})


@dataclass
class FakeMatomo:
    visits: dict[date, int] = field(default_factory=dict)
    # Responses served before the real ones, in order.
    failures: list[FakeResponse] = field(default_factory=list)

    @staticmethod
    def page_views(visits: int) -> int:
        return visits * 3 + 1

    def fail(self, *responses: FakeResponse) -> None:
        self.failures.extend(responses)

    def __call__(self, request: FakeRequest) -> FakeResponse:
        if self.failures:
            return self.failures.pop(0)
        if request.path != f"{PREFIX}/index.php":
            return FakeResponse(404, "<html>Not Found</html>", {"Content-Type": "text/html"})
        params = {k: v[0] for k, v in request.query.items()}
        body = request.form() if request.method == "POST" else {}
        params.update({k: v[0] for k, v in body.items()})
        if "token_auth" in request.query:
            return matomo_error("Token is only allowed for POST requests.")
        if params.get("token_auth") != TOKEN:
            return matomo_error(
                "Unable to authenticate with the provided token. It is either invalid or expired."
            )
        if params.get("module") != "API" or params.get("format") != "JSON":
            return matomo_error("Please specify a module and format=JSON.")
        if params.get("idSite") != str(SITE_ID):
            return matomo_error(
                f"You can't access this resource as it requires 'view' access for the "
                f"website id = {params.get('idSite')}."
            )
        if params.get("period") != "day":
            return matomo_error("The period is not supported.")
        try:
            first_text, last_text = (params.get("date") or "").split(",")
            first, last = date.fromisoformat(first_text), date.fromisoformat(last_text)
        except ValueError:
            return matomo_error(
                f"Date format must be: YYYY-MM-DD, or 'today' or 'yesterday' "
                f"or any keyword supported by the strtotime function. "
                f"Date was: {params.get('date')}"
            )
        method = params.get("method")
        if method == "VisitsSummary.get":
            return FakeResponse(200, self._by_date(first, last, self._summary))
        if method == "Actions.get":
            return FakeResponse(200, self._by_date(first, last, self._actions))
        return matomo_error(f"The method '{method}' does not exist or is not available.")

    def _by_date(self, first: date, last: date, entry: Any) -> dict[str, Any]:
        days = (last - first).days + 1
        out: dict[str, Any] = {}
        for n in range(days):
            day = first + timedelta(days=n)
            visits = self.visits.get(day, 0)
            out[day.isoformat()] = entry(visits) if visits else []
        return out

    @staticmethod
    def _summary(visits: int) -> dict[str, Any]:
        return {
            "nb_uniq_visitors": visits - 1,
            "nb_users": 0,
            "nb_visits": visits,
            "nb_actions": visits * 4,
            "nb_visits_converted": 0,
            "bounce_count": visits // 2,
            "sum_visit_length": visits * 95,
            "max_actions": 12,
            "bounce_rate": "50%",
            "nb_actions_per_visit": 4,
            "avg_time_on_site": 95,
        }

    def _actions(self, visits: int) -> dict[str, Any]:
        views = self.page_views(visits)
        return {
            "nb_pageviews": views,
            "nb_uniq_pageviews": views - 1,
            "nb_downloads": 2,
            "nb_uniq_downloads": 2,
            "nb_outlinks": 5,
            "nb_uniq_outlinks": 4,
            "nb_searches": 1,
            "nb_keywords": 1,
            "avg_time_generation": 0.31,
        }
