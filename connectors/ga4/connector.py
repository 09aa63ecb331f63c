"""Google Analytics 4: page views and active users per day, through the Data API v1beta.

`POST /v1beta/properties/{property}:runReport` with a service account's token (RFC 7523
JWT-bearer grant, scope analytics.readonly). Every value in a report is a string, dates are
`YYYYMMDD`, `rows` is absent when nothing matched, and `limit`/`offset` page through `rowCount`
rows. Pages stream: the next one is fetched while this one is stored, never further ahead, so a
two-year per-page report (over a million rows) goes through in bounded memory.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import Field

from dxkpi.collector.auth import JwtBearerToken
from dxkpi.collector.contract import (
    Checkpoint,
    Connector,
    Granularity,
    MetricSpec,
    Observation,
    SourceContext,
    Window,
)
from dxkpi.collector.errors import SourceDataError
from dxkpi.collector.http import HttpClient, fetched_ahead, paginate_offset
from dxkpi.connectors._google import ServiceAccountSettings, load_key

log = logging.getLogger("dxkpi.connectors.ga4")
T = TypeVar("T")

API_URL = "https://analyticsdata.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/analytics.readonly"
# The Data API returns at most 250,000 rows per request whatever `limit` asks for.
MAX_PAGE_SIZE = 250_000


class Ga4Settings(ServiceAccountSettings):
    property_id: str = Field(pattern=r"^\d+$", description="GA4 property ID (numbers only)")
    by_page_path: bool = False
    # The API's own default. The next page is fetched while this one is stored, so larger pages
    # save requests, not time: they only make each store write wait longer for its rows.
    page_size: int = Field(default=10_000, ge=1, le=MAX_PAGE_SIZE)
    api_base_url: str = Field(default=API_URL, pattern=r"^https?://")


class Ga4Connector(Connector[Ga4Settings]):
    name = "ga4"
    settings_model = Ga4Settings
    metrics = (
        MetricSpec(
            "ga4_page_views",
            "ページビュー数 / Page views per day (GA4 screenPageViews); by page with by_page_path",
            "views",
            ("page_path",),
            "sum",
        ),
        MetricSpec(
            "ga4_active_users",
            "アクティブユーザー数 / Distinct active users per day (GA4 activeUsers); "
            "days do not add up",
            "users",
            aggregation="none",
        ),
    )
    # GA4 keeps processing a day for 24-48 hours after it ends.
    finality = timedelta(days=2)

    def __init__(self, settings: Ga4Settings, context: SourceContext) -> None:
        super().__init__(settings, context)
        info = load_key(settings, context)
        token = JwtBearerToken.from_service_account(
            context,
            info,
            [SCOPE],
            token_uri=settings.token_uri,
            hint="check the service account key is current (not deleted in Google Cloud IAM)",
        )
        self.client = HttpClient(
            context,
            settings.api_base_url,
            auth=token,
            auth_hint=f"add {info['client_email']} as a Viewer of GA4 property "
            f"{settings.property_id} (Admin > Property access management), and enable the "
            "Google Analytics Data API in its Cloud project",
        )
        self.path = f"/v1beta/properties/{settings.property_id}:runReport"

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        days = window.complete_days(self.context.timezone)
        if not days:
            return
        date_range = {
            "startDate": days[0].date().isoformat(),
            "endDate": days[-1].date().isoformat(),
        }
        starts = {d.strftime("%Y%m%d"): d for d in days}
        by_page = self.settings.by_page_path
        totals = ["activeUsers"] if by_page else ["activeUsers", "screenPageViews"]
        seen: set[str] = set()
        try:
            for row in self._report(date_range, ["date"], totals, _as_is):
                ymd = row["dimensionValues"][0]["value"]
                values = row["metricValues"]
                seen.add(ymd)
                start = starts[ymd]
                users = float(values[0]["value"])
                yield Observation("ga4_active_users", users, start, Granularity.DAY)
                if not by_page:
                    views = float(values[1]["value"])
                    yield Observation("ga4_page_views", views, start, Granularity.DAY)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._bad_row(exc) from None
        # GA4 leaves out days without any data: they are zeros, recorded so re-reads agree.
        for ymd, start in starts.items():
            if ymd not in seen:
                yield Observation("ga4_active_users", 0.0, start, Granularity.DAY)
                if not by_page:
                    yield Observation("ga4_page_views", 0.0, start, Granularity.DAY)
        if not by_page:
            return
        day = Granularity.DAY

        def page_views(rows: list[Any]) -> list[Observation]:
            # The hot loop of a per-page backfill (a million rows and more): kept flat on purpose.
            return [
                Observation(
                    "ga4_page_views",
                    float(row["metricValues"][0]["value"]),
                    starts[row["dimensionValues"][0]["value"]],
                    day,
                    {"page_path": row["dimensionValues"][1]["value"]},
                )
                for row in rows
            ]

        try:
            yield from self._report(
                date_range, ["date", "pagePath"], ["screenPageViews"], page_views
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._bad_row(exc) from None

    def _report(
        self,
        date_range: Mapping[str, str],
        dimensions: list[str],
        metrics: list[str],
        read: Callable[[list[Any]], list[T]],
    ) -> Iterator[T]:
        """What `read` makes of every page of a report, in order.

        The next page is requested and parsed in a thread while `read` makes this one's items
        and the caller uses them: waiting on Google overlaps with the work here. `read` runs
        here, not in that thread, so the next request goes out as soon as a page is parsed:
        Google prepares page N+1 while page N is read. Never more than one page ahead, so at
        most two pages are in memory.
        """
        body: dict[str, Any] = {
            "dateRanges": [date_range],
            "dimensions": [{"name": d} for d in dimensions],
            "metrics": [{"name": m} for m in metrics],
            # A fixed order keeps offset paging stable across requests.
            "orderBys": [{"dimension": {"dimensionName": d}} for d in dimensions],
            "keepEmptyRows": False,
        }

        def fetch(offset: int, limit: int) -> Any:
            page = self.client.post_json(
                self.path, json={**body, "offset": str(offset), "limit": str(limit)}
            )
            if not isinstance(page, Mapping) or not isinstance(page.get("rows", []), list):
                raise self._bad_data("the report is not a JSON object with a 'rows' list")
            if (page.get("metadata") or {}).get("dataLossFromOtherRow"):
                log.warning(
                    "source %r: GA4 folded rare rows into '(other)' for %s; figures per "
                    "page are incomplete",
                    self.context.source_id,
                    "+".join(dimensions),
                )
            return page

        pages = paginate_offset(fetch, self.settings.page_size, "rowCount", items_field="rows")
        for page in fetched_ahead(pages):
            items = read(page.get("rows", []))
            del page
            yield from items
            del items

    def _bad_row(self, exc: Exception) -> SourceDataError:
        if isinstance(exc, KeyError) and re.fullmatch(r"'\d{8}'", str(exc)):
            return self._bad_data(f"the report has a row for {exc}, outside the dates asked")
        return self._bad_data(f"a report row cannot be read ({type(exc).__name__}: {exc})")

    def _bad_data(self, message: str) -> SourceDataError:
        return SourceDataError(
            self.context.source_id,
            message,
            where=f"POST {self.path}",
            hint="the Data API may have changed; the connector needs updating",
        )


def _as_is(rows: list[Any]) -> list[Any]:
    return rows
