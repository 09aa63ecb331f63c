"""Matomo (self-hosted): visits and page views per day through the Reporting API.

`POST {base_url}/index.php?module=API&method=VisitsSummary.get&idSite=&period=day
&date=YYYY-MM-DD,YYYY-MM-DD&format=JSON`, and the same with `Actions.get`. The token goes in the
POST body, never in the URL (URLs end up in web server logs). A date range answers an object
keyed by date; a day without visits is `[]`. Matomo reports errors as HTTP 200 with
`{"result": "error", "message": ...}` (recent versions may use 4xx): the message decides
whether it is an auth problem, a passing one, or a config error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

from pydantic import Field, SecretStr

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
from dxkpi.collector.errors import (
    FatalSourceError,
    RetryableSourceError,
    SourceAuthError,
    SourceDataError,
    SourceError,
)
from dxkpi.collector.http import HttpClient

ENDPOINT = "index.php"
# Which Matomo method and column feed each metric.
READS = (
    ("VisitsSummary.get", "nb_visits", "matomo_visits"),
    ("Actions.get", "nb_pageviews", "matomo_page_views"),
)
_AUTH_MESSAGE = re.compile(
    r"token_auth|authenticat|requires '\w+' access|can't access|logged in|login", re.I
)
_PASSING_MESSAGE = re.compile(
    r"try again|temporar|timeout|timed out|too many|lock wait|deadlock|maintenance|"
    r"archiving.*(running|progress)",
    re.I,
)


class MatomoSettings(ConnectorSettings):
    base_url: str = Field(
        pattern=r"^https?://", description="where Matomo is served, e.g. https://matomo.pref.jp/"
    )
    site_id: int = Field(ge=1, description="the website's idSite")
    token_auth: SecretStr = Field(description="a personal auth token with view access")


class MatomoConnector(Connector[MatomoSettings]):
    name = "matomo"
    settings_model = MatomoSettings
    metrics = (
        MetricSpec("matomo_visits", "訪問数 / Visits per day (Matomo nb_visits)", "visits"),
        MetricSpec(
            "matomo_page_views",
            "ページビュー数 / Page views per day (Matomo nb_pageviews)",
            "views",
        ),
    )
    # A month of days per request keeps browser-triggered archiving within the timeout.
    max_window = timedelta(days=31)
    # Matomo archives a day again after it ends (core:archive by cron), then it is stable.
    finality = timedelta(days=1)

    def __init__(self, settings: MatomoSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        self._token = settings.token_auth.get_secret_value()
        self.client = HttpClient(
            context,
            settings.base_url,
            # Archiving a month on the fly may take a while on a busy server.
            timeout=120.0,
            redact=[self._token],
            auth_hint="check token_auth, and that its user has at least view access to "
            f"site {settings.site_id}",
        )

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        days = window.complete_days(self.context.timezone)
        if not days:
            return
        starts = {d.date().isoformat(): d for d in days}
        date_range = f"{days[0].date().isoformat()},{days[-1].date().isoformat()}"
        for method, column, metric in READS:
            by_date = self._report(method, date_range)
            for day, start in starts.items():
                yield Observation(
                    metric, self._value(by_date, day, column, method), start, Granularity.DAY
                )

    def _report(self, method: str, date_range: str) -> Mapping[str, Any]:
        params = {
            "module": "API",
            "method": method,
            "idSite": self.settings.site_id,
            "period": "day",
            "date": date_range,
            "format": "JSON",
        }
        response = self.client.request(
            "POST",
            ENDPOINT,
            params=params,
            data={"token_auth": self._token},
            passthrough=(400, 401, 403),
        )
        try:
            body = self.client.parse_json(response)
        except RetryableSourceError:  # not JSON
            if response.status_code == 200:
                raise
            body = None  # a 4xx page from a proxy in front of Matomo: the status speaks
        where = f"{self.client.describe('POST', ENDPOINT)} ({method}) -> {response.status_code}"
        if isinstance(body, Mapping) and body.get("result") == "error":
            message = str(body.get("message") or "no message")
            raise self._error(message, where, refused=response.status_code in (401, 403))
        if response.status_code != 200:
            raise self._error("no message", where, refused=response.status_code in (401, 403))
        if not isinstance(body, Mapping):
            raise SourceDataError(
                self.context.source_id,
                "expected an object keyed by date",
                where=where,
                hint="check base_url points at Matomo itself and that period=day is allowed",
            )
        return body

    def _value(self, by_date: Mapping[str, Any], day: str, column: str, method: str) -> float:
        entry = by_date.get(day)
        if entry is None:
            raise SourceDataError(
                self.context.source_id,
                f"{method} has no entry for {day}",
                where=f"POST {ENDPOINT} ({method})",
                hint="Matomo lists every day of a range; check the site's time zone",
            )
        # A day without visits is an empty list (PHP's empty array): that is zero.
        if entry == []:
            return 0.0
        try:
            return float(entry.get(column, 0))
        except (AttributeError, TypeError, ValueError):
            raise SourceDataError(
                self.context.source_id,
                f"{method} for {day} has no numeric {column}",
                where=f"POST {ENDPOINT} ({method})",
                hint="the Matomo version may format metrics; the connector needs updating",
            ) from None

    def _error(self, message: str, where: str, *, refused: bool = False) -> SourceError:
        # Matomo's messages never carry the token, but scrub it anyway before quoting them.
        message = " ".join(message.replace(self._token, "***").split())[:300]
        if refused or _AUTH_MESSAGE.search(message):
            return SourceAuthError(
                self.context.source_id,
                f"Matomo refused the token: {message}",
                where=where,
                hint=self.client.auth_hint,
            )
        if _PASSING_MESSAGE.search(message):
            return RetryableSourceError(self.context.source_id, message, where=where)
        return FatalSourceError(
            self.context.source_id,
            message,
            where=where,
            hint="check site_id and base_url, and that the API is enabled",
        )
