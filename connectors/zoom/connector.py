"""Zoom meeting usage: account-wide per day, and optionally per department.

Account-wide figures come from the daily usage report, `GET /v2/report/daily?year=&month=`,
one request per calendar month. Per-department figures are summed from each configured user's
meeting report, `GET /v2/report/users/{userId}/meetings?from=&to=` (cursor-paged with
`next_page_token`, at most one month per request). Authentication is a Server-to-Server OAuth
app: `POST https://zoom.us/oauth/token?grant_type=account_credentials&account_id=...` with the
client id and secret as Basic auth; tokens last an hour and there is no refresh token, so a new
one is fetched on expiry or on a 401.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote

from pydantic import Field, SecretStr, field_validator

from dxkpi.collector.auth import ClientCredentialsToken
from dxkpi.collector.contract import (
    Checkpoint,
    Connector,
    ConnectorSettings,
    Granularity,
    MetricSpec,
    Observation,
    SourceContext,
    Window,
)
from dxkpi.collector.errors import FatalSourceError, SourceDataError
from dxkpi.collector.http import HttpClient, paginate_cursor

API_URL = "https://api.zoom.us"
OAUTH_URL = "https://zoom.us"
DAILY_REPORT = "/v2/report/daily"
# Zoom's page_size maximum for the meeting report.
MAX_PAGE_SIZE = 300
_HH_MM = re.compile(r"^(\d+):([0-5]\d)(?::([0-5]\d))?$")


class ZoomSettings(ConnectorSettings):
    account_id: str = Field(min_length=1, description="the Server-to-Server OAuth app's Account ID")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    # User id or email -> department label. Empty: only account-wide metrics are collected.
    departments: dict[str, str] = Field(default_factory=dict)
    api_base_url: str = Field(default=API_URL, pattern=r"^https?://")
    oauth_base_url: str = Field(default=OAUTH_URL, pattern=r"^https?://")
    page_size: int = Field(default=MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)

    @field_validator("departments")
    @classmethod
    def _labels_present(cls, departments: dict[str, str]) -> dict[str, str]:
        blank = [user for user, label in departments.items() if not user or not label.strip()]
        if blank:
            raise ValueError(f"every user needs a non-empty department label: {blank}")
        return departments


def duration_seconds(value: Any) -> float:
    """Seconds of a Zoom duration: report APIs give whole minutes (int); the dashboard APIs give
    "HH:MM" (or "H:MM:SS" for long meetings)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value) * 60
    if isinstance(value, str):
        match = _HH_MM.match(value.strip())
        if match:
            hours, minutes, seconds = match.groups()
            return int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)
    raise ValueError(f"not a duration: {value!r}")


class ZoomConnector(Connector[ZoomSettings]):
    name = "zoom"
    settings_model = ZoomSettings
    metrics = (
        MetricSpec("zoom_meetings", "Zoom会議数 / Zoom meetings held per day", "meetings"),
        MetricSpec(
            "zoom_participants",
            "Zoom参加者数 / Zoom meeting participants per day (joins, not unique people)",
            "participants",
        ),
        MetricSpec(
            "zoom_meeting_duration_seconds",
            "Zoom会議時間 / Zoom meeting time per day, summed over participants' minutes",
            "seconds",
        ),
        MetricSpec("zoom_new_users", "Zoom新規ユーザー数 / Zoom users added per day", "users"),
        MetricSpec(
            "zoom_department_meetings",
            "部署別Zoom会議数 / Zoom meetings hosted per department per day",
            "meetings",
            ("department",),
        ),
        MetricSpec(
            "zoom_department_participants",
            "部署別Zoom参加者数 / Participants in meetings a department hosted, per day",
            "participants",
            ("department",),
        ),
        MetricSpec(
            "zoom_department_meeting_duration_seconds",
            "部署別Zoom会議時間 / Length of the meetings a department hosted, per day",
            "seconds",
            ("department",),
        ),
    )
    # The meeting report covers one month per request; backfill in month-sized pieces.
    max_window = timedelta(days=31)
    # A day's report is complete some hours after the day ends (Zoom's own processing).
    finality = timedelta(days=1)

    def __init__(self, settings: ZoomSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        token = ClientCredentialsToken(
            context,
            f"{settings.oauth_base_url.rstrip('/')}/oauth/token",
            settings.client_id,
            settings.client_secret,
            grant_type="account_credentials",
            extra_params={"account_id": settings.account_id},
            params_in="query",
            hint="check account_id, client_id and client_secret of the Server-to-Server OAuth "
            "app, and that the app is activated",
        )
        self.client = HttpClient(
            context,
            settings.api_base_url,
            auth=token,
            auth_hint="the app needs the report:read:admin scope (granular: "
            "report:read:daily_usage:admin, report:read:list_user_meeting_report:admin) "
            "and a Pro or higher plan",
        )

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        if self.settings.departments:
            return self.metrics
        return tuple(m for m in self.metrics if not m.labels)

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        days = window.complete_days(self.context.timezone)
        if not days:
            return
        for first, last in months(days[0].date(), days[-1].date()):
            wanted = {d.date(): d for d in days if first <= d.date() <= last}
            yield from self._daily_report(first.year, first.month, wanted)
            if self.settings.departments:
                yield from self._departments(first, last, wanted)

    # -- account-wide ----------------------------------------------------------------------

    def _daily_report(
        self, year: int, month: int, wanted: Mapping[date, datetime]
    ) -> Iterator[Observation]:
        report = self.client.get_json(DAILY_REPORT, params={"year": year, "month": month})
        entries = report.get("dates") if isinstance(report, Mapping) else None
        if not isinstance(entries, list):
            raise self._bad_data(DAILY_REPORT, "the daily report has no 'dates' list")
        seen: set[date] = set()
        for entry in entries:
            try:
                day = date.fromisoformat(entry["date"])
                values = {
                    "zoom_meetings": float(entry.get("meetings", 0)),
                    "zoom_participants": float(entry.get("participants", 0)),
                    "zoom_meeting_duration_seconds": duration_seconds(
                        entry.get("meeting_minutes", 0)
                    ),
                    "zoom_new_users": float(entry.get("new_users", 0)),
                }
            except (KeyError, TypeError, ValueError) as exc:
                raise self._bad_data(DAILY_REPORT, f"a day entry cannot be read ({exc})") from None
            if day not in wanted:
                continue
            seen.add(day)
            for metric, value in values.items():
                yield Observation(metric, value, wanted[day], Granularity.DAY)
        missing = sorted(set(wanted) - seen)
        if missing:
            # Zoom lists every day of the month; a gap means the report is not what we think.
            raise self._bad_data(DAILY_REPORT, f"the daily report lacks {missing[0]}")

    # -- per department --------------------------------------------------------------------

    def _departments(
        self, first: date, last: date, wanted: Mapping[date, datetime]
    ) -> Iterator[Observation]:
        meetings: dict[tuple[str, date], float] = defaultdict(float)
        participants: dict[tuple[str, date], float] = defaultdict(float)
        seconds: dict[tuple[str, date], float] = defaultdict(float)
        for user, department in sorted(self.settings.departments.items()):
            for meeting in self._user_meetings(user, first, last):
                day = self._local_day(meeting, user)
                if day not in wanted:
                    continue
                key = (department, day)
                meetings[key] += 1
                participants[key] += float(meeting.get("participants_count") or 0)
                seconds[key] += duration_seconds(meeting.get("duration") or 0)
        # Every department gets every day, zeros included, so a re-read overwrites stale values.
        for department in sorted(set(self.settings.departments.values())):
            labels = {"department": department}
            for day, start in sorted(wanted.items()):
                key = (department, day)
                yield Observation("zoom_department_meetings", meetings[key], start, labels=labels)
                yield Observation(
                    "zoom_department_participants", participants[key], start, labels=labels
                )
                yield Observation(
                    "zoom_department_meeting_duration_seconds", seconds[key], start, labels=labels
                )

    def _user_meetings(self, user: str, first: date, last: date) -> Iterator[Mapping[str, Any]]:
        path = f"/v2/report/users/{quote(user, safe='@')}/meetings"
        # Zoom reads from/to as days of the account's time zone (Tokyo for a Japanese account),
        # and allows at most one month: `months` never asks for more.
        params = {
            "from": first.isoformat(),
            "to": last.isoformat(),
            "page_size": self.settings.page_size,
            "type": "past",
        }

        def fetch(token: str | None) -> Any:
            page_params = {**params, "next_page_token": token} if token else params
            response = self.client.request("GET", path, params=page_params, passthrough=(404,))
            if response.status_code == 404:
                raise FatalSourceError(
                    self.context.source_id,
                    f"user {user!r} from settings.departments is not on the Zoom account",
                    where=f"{self.client.describe('GET', path)} -> 404",
                    hint="fix the user id or email in settings.departments",
                )
            return self.client.parse_json(response)

        for page in paginate_cursor(fetch, "next_page_token", source_id=self.context.source_id):
            found = page.get("meetings") if isinstance(page, Mapping) else None
            if not isinstance(found, list):
                raise self._bad_data(path, "a meeting report page has no 'meetings' list")
            yield from found

    def _local_day(self, meeting: Mapping[str, Any], user: str) -> date:
        try:
            started = datetime.fromisoformat(str(meeting["start_time"]))
        except (KeyError, ValueError):
            raise self._bad_data(
                "/v2/report/users/{userId}/meetings",
                f"a meeting of {user!r} has no readable start_time",
            ) from None
        return started.astimezone(self.context.timezone).date()

    def _bad_data(self, path: str, message: str) -> SourceDataError:
        return SourceDataError(
            self.context.source_id,
            message,
            where=f"GET {path}",
            hint="Zoom may have changed the report; the connector needs updating",
        )


def months(first: date, last: date) -> Iterator[tuple[date, date]]:
    """(first day, last day) of each calendar month from `first` to `last`, clipped to them."""
    start = first
    while start <= last:
        next_month = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
        end = min(last, next_month - timedelta(days=1))
        yield start, end
        start = next_month
