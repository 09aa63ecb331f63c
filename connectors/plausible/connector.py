"""Plausible Analytics: page views and visitors per day through the Stats API v2.

One `POST /api/v2/query` per window with `dimensions: ["time:day"]`, authenticated by a Bearer
API key. Plausible leaves out days without any traffic; they are zeros, so the connector emits
a zero for every day of the window it did not get. API keys are limited to 600 requests per
hour: a client-side budget per key keeps every source sharing a key under it.
"""

from __future__ import annotations

import hashlib
import threading
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
from dxkpi.collector.errors import SourceDataError
from dxkpi.collector.http import HttpClient, RequestBudget

API_URL = "https://plausible.io"
QUERY = "/api/v2/query"
REQUESTS_PER_HOUR = 600
# The metrics asked for, in the order Plausible returns them, and the metric each feeds.
METRICS = (("pageviews", "plausible_page_views"), ("visitors", "plausible_visitors"))

# One budget per API key (by digest: the key itself is not kept here) for this process.
_budgets: dict[str, RequestBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(api_key: str, requests_per_hour: int) -> RequestBudget:
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    with _budgets_lock:
        budget = _budgets.get(digest)
        if budget is None or budget.max_requests != requests_per_hour:
            budget = _budgets[digest] = RequestBudget(requests_per_hour, per_seconds=3600)
        return budget


class PlausibleSettings(ConnectorSettings):
    site_id: str = Field(
        min_length=1, pattern=r"^[^\s/]+$", description="the site's domain in Plausible"
    )
    api_key: SecretStr = Field(description="a Stats API key")
    base_url: str = Field(default=API_URL, pattern=r"^https?://")
    # Plausible raises the default 600/h on request; self-hosted servers may set their own.
    requests_per_hour: int = Field(default=REQUESTS_PER_HOUR, ge=1)


class PlausibleConnector(Connector[PlausibleSettings]):
    name = "plausible"
    settings_model = PlausibleSettings
    metrics = (
        MetricSpec(
            "plausible_page_views", "ページビュー数 / Page views per day (Plausible)", "views"
        ),
        MetricSpec(
            "plausible_visitors",
            "訪問者数 / Unique visitors per day (Plausible); days do not add up",
            "visitors",
            aggregation="none",
        ),
    )
    # A year per query keeps every answer far below the API's 10,000-row page.
    max_window = timedelta(days=366)

    def __init__(self, settings: PlausibleSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        api_key = settings.api_key.get_secret_value()
        # The key is static: a 401 cannot be cured by asking again, so it is sent as a plain
        # header (no token provider to "refresh") and blanked from any quoted vendor message.
        self.client = HttpClient(
            context,
            settings.base_url,
            budget=budget_for(api_key, settings.requests_per_hour),
            default_headers={"Authorization": f"Bearer {api_key}"},
            redact=[api_key],
            auth_hint=f"check api_key, and that its owner can see {settings.site_id} "
            "(Site settings > People)",
        )

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        days = window.complete_days(self.context.timezone)
        if not days:
            return
        starts = {d.date().isoformat(): d for d in days}
        query = {
            "site_id": self.settings.site_id,
            "metrics": [name for name, _ in METRICS],
            "date_range": [days[0].date().isoformat(), days[-1].date().isoformat()],
            "dimensions": ["time:day"],
        }
        answer = self.client.post_json(QUERY, json=query)
        results = answer.get("results") if isinstance(answer, Mapping) else None
        if not isinstance(results, list):
            raise self._bad_data("the answer has no 'results' list")
        got: dict[str, list[float]] = {}
        for result in results:
            day, values = self._read(result)
            if day not in starts:
                raise self._bad_data(f"a result for {day!r}, outside the dates asked")
            got[day] = values
        # Plausible omits days without traffic: every day of the window gets a value.
        for day, start in starts.items():
            values = got.get(day, [0.0] * len(METRICS))
            for (_, metric), value in zip(METRICS, values, strict=True):
                yield Observation(metric, value, start, Granularity.DAY)

    def _read(self, result: Any) -> tuple[str, list[float]]:
        try:
            (day,) = result["dimensions"]
            values = [float(v) for v in result["metrics"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._bad_data(f"a result cannot be read ({type(exc).__name__})") from None
        if len(values) != len(METRICS):
            raise self._bad_data(f"a result has {len(values)} metrics, not {len(METRICS)}")
        return str(day), values

    def _bad_data(self, message: str) -> SourceDataError:
        return SourceDataError(
            self.context.source_id,
            message,
            where=f"POST {QUERY}",
            hint="the Stats API v2 may have changed; the connector needs updating",
        )
