"""A fake Zoom built from the public API reference: Server-to-Server OAuth token endpoint,
the daily usage report and the per-user meeting report, with their error bodies.

- `POST /oauth/token?grant_type=account_credentials&account_id=...`, Basic client_id:secret;
  answers `{"access_token", "token_type": "bearer", "expires_in": 3599, "scope", "api_url"}`.
  Bad credentials: 401 `{"reason": "Invalid client_id or client_secret",
  "error": "invalid_client"}`.
- Expired or unknown bearer: 401 `{"code": 124, "message": "Invalid access token."}`.
- `GET /v2/report/daily?year=&month=`: every day of the month, zero days included.
- `GET /v2/report/users/{userId}/meetings?from=&to=&page_size=&next_page_token=`: at most one
  month, page_size at most 300, `next_page_token` "" on the last page; an unknown user is 404
  `{"code": 1001, "message": "User does not exist: ..."}`.
"""

from __future__ import annotations

import base64
import calendar
import itertools
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from dxkpi.collector.testing import FakeRequest, FakeResponse

CLIENT_ID = "zoomClientId123"
CLIENT_SECRET = "zoom-Client-S3cret-value-XYZ"
ACCOUNT_ID = "acc-Tokyo-Pref"


@dataclass
class Meeting:
    start_time: str  # UTC, as Zoom gives it: "2025-03-03T01:00:00Z"
    duration: int  # minutes
    participants_count: int


@dataclass
class FakeZoom:
    usage: dict[date, dict[str, int]] = field(default_factory=dict)
    meetings: dict[str, list[Meeting]] = field(default_factory=dict)
    # Responses served before the real ones, in order: (path prefix, response).
    failures: list[tuple[str, FakeResponse]] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    tokens_issued: int = 0
    _counter: Any = field(default_factory=itertools.count)

    def fail(self, path_prefix: str, *responses: FakeResponse) -> None:
        self.failures.extend((path_prefix, r) for r in responses)

    def revoke_tokens(self) -> None:
        """What Zoom does when a token passes its hour (or the app is re-authorised)."""
        self.valid_tokens.clear()

    def __call__(self, request: FakeRequest) -> FakeResponse:
        for i, (prefix, response) in enumerate(self.failures):
            if request.path.startswith(prefix):
                del self.failures[i]
                return response
        if request.path == "/oauth/token":
            return self._token(request)
        if (
            request.headers.get("Authorization", "").removeprefix("Bearer ")
            not in self.valid_tokens
        ):
            return FakeResponse(401, {"code": 124, "message": "Invalid access token."})
        if request.path == "/v2/report/daily":
            return self._daily(request)
        prefix, suffix = "/v2/report/users/", "/meetings"
        if request.path.startswith(prefix) and request.path.endswith(suffix):
            return self._user_meetings(request, request.path[len(prefix) : -len(suffix)])
        return FakeResponse(404, {"code": 404, "message": "Not Found"})

    def _token(self, request: FakeRequest) -> FakeResponse:
        if request.method != "POST":
            return FakeResponse(405, {"error": "method_not_allowed"})
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return FakeResponse(
                401, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
            )
        if request.arg("grant_type") != "account_credentials":
            return FakeResponse(
                400, {"reason": "Unsupported grant type", "error": "unsupported_grant_type"}
            )
        if request.arg("account_id") != ACCOUNT_ID:
            return FakeResponse(400, {"reason": "Invalid account_id", "error": "invalid_request"})
        self.tokens_issued += 1
        token = f"eyJzm.fake.{next(self._counter)}"
        self.valid_tokens.add(token)
        return FakeResponse(
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": 3599,
                "scope": "report:read:admin",
                "api_url": "https://api.zoom.us",
            },
        )

    def _daily(self, request: FakeRequest) -> FakeResponse:
        year, month = int(request.arg("year") or 0), int(request.arg("month") or 0)
        days = calendar.monthrange(year, month)[1]
        dates = []
        for day in range(1, days + 1):
            values = self.usage.get(date(year, month, day), {})
            dates.append(
                {
                    "date": f"{year:04d}-{month:02d}-{day:02d}",
                    "new_users": values.get("new_users", 0),
                    "meetings": values.get("meetings", 0),
                    "participants": values.get("participants", 0),
                    "meeting_minutes": values.get("meeting_minutes", 0),
                }
            )
        return FakeResponse(200, {"year": year, "month": month, "dates": dates})

    def _user_meetings(self, request: FakeRequest, user: str) -> FakeResponse:
        if user not in self.meetings:
            return FakeResponse(404, {"code": 1001, "message": f"User does not exist: {user}."})
        start = date.fromisoformat(request.arg("from") or "")
        end = date.fromisoformat(request.arg("to") or "")
        if end - start > timedelta(days=31) or end < start:
            return FakeResponse(
                400, {"code": 300, "message": "The date range must not exceed one month."}
            )
        page_size = int(request.arg("page_size") or 30)
        if page_size > 300:
            return FakeResponse(400, {"code": 300, "message": "Invalid field: page_size."})
        chosen = [
            m for m in self.meetings[user] if start <= date.fromisoformat(m.start_time[:10]) <= end
        ]
        offset = 0
        token = request.arg("next_page_token") or ""
        if token:
            if not token.startswith("tok-"):
                return FakeResponse(
                    400, {"code": 300, "message": "The next page token is invalid or expired."}
                )
            offset = int(token.removeprefix("tok-"))
        page = chosen[offset : offset + page_size]
        more = offset + page_size < len(chosen)
        return FakeResponse(
            200,
            {
                "from": start.isoformat(),
                "to": end.isoformat(),
                "page_count": -(-len(chosen) // page_size),
                "page_size": page_size,
                "total_records": len(chosen),
                "next_page_token": f"tok-{offset + page_size}" if more else "",
                "meetings": [
                    {
                        "uuid": f"uuid-{user}-{i}",
                        "id": 80000000000 + i,
                        "host_id": f"host-{user}",
                        "type": 2,
                        "topic": "定例会議",
                        "user_name": user,
                        "user_email": user,
                        "start_time": m.start_time,
                        "end_time": m.start_time,
                        "duration": m.duration,
                        "total_minutes": m.duration * m.participants_count,
                        "participants_count": m.participants_count,
                        "source": "Zoom",
                    }
                    for i, m in enumerate(page, start=offset)
                ],
            },
        )
