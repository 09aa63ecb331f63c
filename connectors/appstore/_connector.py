"""App Store Connect Sales and Trends: first-time downloads (and updates) per app per day.

One `GET /v1/salesReports` per day returns the vendor's whole Summary Sales Report for that day;
every configured app is read from it. Apple answers a day without any sales with 404 NOT_FOUND
"There were no sales for the date specified." -- that is a real zero. A day Apple has not
processed yet is also a 404, with another message: it is skipped while recent (the lookback reads
it again later) and an error once it should long have been there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from dxkpi.collector.auth import StaticJwt
from dxkpi.collector.contract import (
    Checkpoint,
    Connector,
    ConnectorSettings,
    Granularity,
    MetricSpec,
    Observation,
    SourceContext,
    Window,
    next_midnight,
)
from dxkpi.collector.errors import FatalSourceError, SourceAuthError, SourceDataError
from dxkpi.collector.http import HttpClient, looks_like_html
from dxkpi.connectors.appstore._report import (
    AppUnits,
    ReportFormatError,
    app_keys,
    decompress,
    units_by_app,
)

log = logging.getLogger("dxkpi.connectors.appstore")

API_URL = "https://api.appstoreconnect.apple.com"
SALES_REPORTS = "/v1/salesReports"
AUDIENCE = "appstoreconnect-v1"
# Apple refuses tokens that expire more than 20 minutes ahead. 19 minutes leaves room for clock
# skew; a token is reused for 15 minutes at most, then minted anew.
TOKEN_LIFETIME_SECONDS = 19 * 60
TOKEN_REUSE_SECONDS = 15 * 60
NO_SALES = "no sales for the date"


class AppStoreApp(BaseModel):
    """One app to read from the vendor's report: by Apple Identifier (preferred) or SKU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: str = Field(min_length=1, description="value of the `app` label, e.g. kurashi_navi")
    apple_id: str | None = Field(default=None, pattern=r"^\d{6,12}$")
    sku: str | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _identified(self) -> AppStoreApp:
        if not (self.apple_id or self.sku):
            raise ValueError(f"app {self.app!r}: give its apple_id (App Information) or its sku")
        return self


class AppStoreSettings(ConnectorSettings):
    issuer_id: str = Field(min_length=1, description="Users and Access > Integrations: Issuer ID")
    key_id: str = Field(pattern=r"^[A-Z0-9]{10}$", description="the team API key's Key ID")
    private_key: SecretStr = Field(description="contents of the AuthKey_<KEYID>.p8 file (PEM)")
    vendor_number: str = Field(pattern=r"^\d{6,12}$", description="Payments and Financial Reports")
    apps: list[AppStoreApp] = Field(min_length=1)
    include_updates: bool = True
    base_url: str = Field(default=API_URL, pattern=r"^https?://")

    @field_validator("private_key")
    @classmethod
    def _pem(cls, value: SecretStr) -> SecretStr:
        if "-----BEGIN PRIVATE KEY-----" not in value.get_secret_value():
            raise ValueError(
                "must be the whole .p8 file, starting with -----BEGIN PRIVATE KEY-----"
            )
        return value

    @field_validator("apps")
    @classmethod
    def _unique(cls, apps: list[AppStoreApp]) -> list[AppStoreApp]:
        keys = [k for a in apps for k in (a.apple_id, a.sku) if k]
        if len(keys) != len(set(keys)):
            raise ValueError("an apple_id or sku is listed for more than one app")
        return apps


class AppStoreConnector(Connector[AppStoreSettings]):
    name = "appstore"
    settings_model = AppStoreSettings
    metrics = (
        MetricSpec(
            "app_first_time_downloads",
            "アプリ初回ダウンロード数 / App first-time downloads per day "
            "(App Store: product types 1, 1F, 1T, F1, bundles and custom apps; "
            "re-downloads and updates excluded)",
            "downloads",
            ("app", "platform"),
        ),
        MetricSpec(
            "app_updates",
            "アプリ更新数 / App updates per day (App Store product types 7, 7F, 7T, F7)",
            "updates",
            ("app",),
        ),
    )
    # One request per day; a month per call keeps a backfill chunk short.
    max_window = timedelta(days=31)
    # Apple publishes a day's report the next morning and may still correct it a day later.
    finality = timedelta(days=2)

    def __init__(self, settings: AppStoreSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        token = StaticJwt(
            context,
            settings.private_key,
            claims={"iss": settings.issuer_id, "aud": AUDIENCE},
            headers={"kid": settings.key_id, "typ": "JWT"},
            algorithm="ES256",
            lifetime_seconds=TOKEN_LIFETIME_SECONDS,
            margin_seconds=TOKEN_LIFETIME_SECONDS - TOKEN_REUSE_SECONDS,
            hint="check private_key, key_id and issuer_id belong to the same team API key",
        )
        self.client = HttpClient(
            context,
            settings.base_url,
            auth=token,
            # Only a 401 reaches this hint: 403 is answered in _read_day with Apple's reason.
            auth_hint="check private_key, key_id and issuer_id are one Team API key, not revoked",
        )
        self._keys = app_keys((a.app, a.apple_id, a.sku) for a in settings.apps)

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        for day in window.complete_days(self.context.timezone):
            units = self._read_day(day)
            if units is None:
                continue
            for label, counted in sorted(units.items()):
                yield Observation(
                    "app_first_time_downloads",
                    counted.first_time_downloads,
                    day,
                    Granularity.DAY,
                    {"app": label, "platform": "ios"},
                )
                if self.settings.include_updates:
                    yield Observation(
                        "app_updates", counted.updates, day, Granularity.DAY, {"app": label}
                    )

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        if self.settings.include_updates:
            return self.metrics
        return tuple(m for m in self.metrics if m.name != "app_updates")

    def _read_day(self, day: datetime) -> dict[str, AppUnits] | None:
        """Units per app for the day; None when Apple has not published the day yet."""
        report_date = day.date()
        params = {
            "filter[frequency]": "DAILY",
            "filter[reportType]": "SALES",
            "filter[reportSubType]": "SUMMARY",
            "filter[vendorNumber]": self.settings.vendor_number,
            "filter[reportDate]": report_date.isoformat(),
            "filter[version]": "1_0",
        }
        response = self.client.request(
            "GET", SALES_REPORTS, params=params, passthrough=(400, 403, 404, 410)
        )
        where = f"{self.client.describe('GET', SALES_REPORTS)} -> {response.status_code}"
        if response.status_code == 200:
            if looks_like_html(response.content):  # a proxy's error page, not the report
                raise self.client.not_data(response, f"the gzip sales report for {report_date}")
            try:
                text = decompress(response.content)
                return units_by_app(text, report_date, self._keys)
            except ReportFormatError as exc:
                raise SourceDataError(
                    self.context.source_id,
                    f"the sales report for {report_date} cannot be read: {exc}",
                    where=where,
                    hint="Apple may have changed the report format; the connector needs updating",
                ) from None
        detail = _apple_detail(response)
        if response.status_code == 404 and NO_SALES in detail.lower():
            return {label: AppUnits() for label in set(self._keys.values())}
        if response.status_code == 404 and self._recent(day):
            log.info(
                "source %r: the sales report for %s is not published yet (%s); "
                "it is read again on a later run",
                self.context.source_id,
                report_date,
                detail or "404",
            )
            return None
        if response.status_code == 403:
            raise SourceAuthError(
                self.context.source_id,
                f"access refused: {detail}" if detail else "access refused",
                where=where,
                hint="use a Team key whose role is Admin, Finance or Sales, and your vendor_number",
            )
        if response.status_code == 410:
            hint = "Apple keeps daily reports for 365 days: backfill no further back"
        elif response.status_code == 404:
            hint = "Apple never published this day; check vendor_number or ask Apple support"
        else:
            hint = "check vendor_number and the connector's report filters"
        raise FatalSourceError(
            self.context.source_id,
            f"no sales report for {report_date}: {detail or 'no detail given'}",
            where=where,
            hint=hint,
        )

    def _recent(self, day: datetime) -> bool:
        return next_midnight(day) + self.finality > self.context.clock()


def _apple_detail(response: requests.Response) -> str:
    """Apple's `errors[0].detail` (else title, else code), whitespace-collapsed and short."""
    try:
        errors = response.json().get("errors")
        first = errors[0] if isinstance(errors, list) and errors else {}
        text = first.get("detail") or first.get("title") or first.get("code") or ""
    except (ValueError, AttributeError):
        return ""
    return " ".join(str(text).split())[:200]
