"""Google Play installs: daily first-time downloads (and uninstalls) per app, from the monthly
installs reports Play Console writes into the developer's Cloud Storage bucket.

Per app and run: one listing of `stats/installs/installs_<package>_` (which months exist, at which
generation), then one download per month the window touches. The current month's file is
rewritten daily; past months rarely change. The Checkpoint remembers, per file, the generation
read and the days handled from it, so an unchanged file is not downloaded again for days it
already gave.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import groupby
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from dxkpi.collector.auth import JwtBearerToken
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
from dxkpi.collector.errors import RetryableSourceError, SourceDataError
from dxkpi.collector.http import HttpClient, looks_like_html, paginate_cursor
from dxkpi.connectors._google import service_account_info
from dxkpi.connectors.googleplay._report import InstallsReport, ReportFormatError, decode, parse

log = logging.getLogger("dxkpi.connectors.googleplay")

STORAGE_URL = "https://storage.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
REPORT_PREFIX = "stats/installs/installs_"


class PlayApp(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    app: str = Field(min_length=1, description="value of the `app` label, e.g. kurashi_navi")
    package: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$")


class GooglePlaySettings(ConnectorSettings):
    bucket: str = Field(description="pubsite_prod_rev_<id>: Play Console > Download reports")
    service_account_key: SecretStr = Field(description="the service account's JSON key file")
    apps: list[PlayApp] = Field(min_length=1)
    include_uninstalls: bool = True
    storage_url: str = Field(default=STORAGE_URL, pattern=r"^https?://")
    token_uri: str | None = Field(default=None, pattern=r"^https?://")

    @field_validator("bucket", mode="before")
    @classmethod
    def _bucket(cls, value: Any) -> Any:
        # Play Console's "Copy Cloud Storage URI" gives gs://pubsite_prod_rev_.../stats/installs/
        if isinstance(value, str):
            value = value.strip().removeprefix("gs://").split("/")[0]
            if not value.startswith("pubsite_prod_") or not value.replace("_", "").isalnum():
                raise ValueError(
                    "must be the reports bucket, e.g. pubsite_prod_rev_01234567890987654321 "
                    "(Play Console > Download reports > Copy Cloud Storage URI)"
                )
        return value

    @field_validator("service_account_key")
    @classmethod
    def _key_file(cls, value: SecretStr) -> SecretStr:
        key_file_info(value)
        return value

    @field_validator("apps")
    @classmethod
    def _unique(cls, apps: list[PlayApp]) -> list[PlayApp]:
        if len({a.package for a in apps}) != len(apps):
            raise ValueError("a package is listed twice")
        return apps


def key_file_info(key: SecretStr) -> dict[str, Any]:
    """The parsed key file; ValueError (never quoting the key) if it is not a service account's."""
    info = service_account_info(key.get_secret_value(), "the key file")
    if info.get("type") != "service_account":
        raise ValueError(
            'the key file is not a service account key ("type" is not "service_account")'
        )
    return info


@dataclass(frozen=True)
class _Handled:
    """Days [first, last] of one file generation already yielded (or known absent)."""

    generation: str
    first: date
    last: date

    def covers(self, generation: str, days: list[date]) -> bool:
        return generation == self.generation and self.first <= days[0] and days[-1] <= self.last


class GooglePlayConnector(Connector[GooglePlaySettings]):
    name = "googleplay"
    settings_model = GooglePlaySettings
    metrics = (
        MetricSpec(
            "app_first_time_downloads",
            "アプリ初回ダウンロード数 / App first-time downloads per day "
            "(Google Play: Daily User Installs, else Install events)",
            "downloads",
            ("app", "platform"),
        ),
        MetricSpec(
            "app_uninstalls",
            "アプリ削除数 / App uninstalls per day (Google Play: Daily User Uninstalls)",
            "uninstalls",
            ("app",),
        ),
    )
    max_window = timedelta(days=31)
    # Play publishes a day one to two days late and may restate the last days of a month.
    finality = timedelta(days=3)

    def __init__(self, settings: GooglePlaySettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        info = key_file_info(settings.service_account_key)
        token = JwtBearerToken.from_service_account(
            context,
            info,
            [SCOPE],
            token_uri=settings.token_uri,
            hint="check the key file, and that the service account is invited in Play Console "
            "with 'View app information and download bulk reports'",
        )
        self.client = HttpClient(
            context,
            settings.storage_url,
            auth=token,
            auth_hint="in Play Console > Users and permissions, give the service account "
            "'View app information and download bulk reports (read-only)'",
        )

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        if self.settings.include_uninstalls:
            return self.metrics
        return tuple(m for m in self.metrics if m.name != "app_uninstalls")

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        handled = self._load_cursor(window.cursor)
        days = [d.date() for d in window.days(self.context.timezone)]
        for app in self.settings.apps:
            yield from self._collect_app(app, days, handled)
        yield Checkpoint(self._dump_cursor(handled))

    def _collect_app(
        self, app: PlayApp, days: list[date], handled: dict[str, _Handled]
    ) -> Iterator[Observation]:
        generations = self._list_months(app.package)
        if not generations:
            raise SourceDataError(
                self.context.source_id,
                f"no installs reports for {app.package} in gs://{self.settings.bucket}/"
                f"{REPORT_PREFIX}{app.package}_*_overview.csv",
                hint="check the package name; Play adds a new app's reports a few days after "
                "its first install",
            )
        this_month = _month(self.context.clock().astimezone(self.context.timezone).date())
        for month, in_month in groupby(days, key=_month):
            month_days = list(in_month)
            if month < min(generations):
                continue  # before the app's first report: nothing on record to sum
            name = f"{REPORT_PREFIX}{app.package}_{month}_overview.csv"
            generation = generations.get(month)
            if generation is None:
                if month >= this_month:
                    continue  # Play writes a month's file a day or two into the month
                raise SourceDataError(
                    self.context.source_id,
                    f"gs://{self.settings.bucket}/{name} is missing, though reports of other "
                    "months exist",
                    hint="Play may still be writing it; if it stays missing, download the month "
                    "from Play Console to check",
                )
            seen = handled.get(name)
            if seen is not None and seen.covers(generation, month_days):
                log.debug("source %r: %s unchanged, skipped", self.context.source_id, name)
                continue
            report = self._read(name, generation, app.package)
            yield from self._observations(app, report, month_days)
            handled[name] = _merge(seen, generation, month_days)

    def _list_months(self, package: str) -> dict[str, str]:
        """{YYYYMM: generation} of the package's overview files."""
        path = f"/storage/v1/b/{self.settings.bucket}/o"
        prefix = f"{REPORT_PREFIX}{package}_"

        def page(token: str | None) -> Any:
            return self.client.get_json(path, params={"prefix": prefix, "pageToken": token})

        months: dict[str, str] = {}
        for listing in paginate_cursor(page, "nextPageToken", source_id=self.context.source_id):
            items = listing.get("items", []) if isinstance(listing, dict) else None
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise SourceDataError(
                    self.context.source_id,
                    "the object listing is not a storage#objects resource",
                    where=self.client.describe("GET", path),
                    hint="check storage_url points at the Cloud Storage JSON API",
                )
            for item in items:
                name = str(item.get("name", ""))
                month = name.removeprefix(prefix).removesuffix("_overview.csv")
                if name.endswith("_overview.csv") and month.isdigit() and len(month) == 6:
                    months[month] = str(item.get("generation", ""))
        return months

    def _read(self, name: str, generation: str, package: str) -> InstallsReport:
        path = f"/storage/v1/b/{self.settings.bucket}/o/{quote(name, safe='')}"
        # Pinning the generation listed keeps the read consistent with the checkpoint.
        response = self.client.request(
            "GET", path, params={"alt": "media", "generation": generation}, passthrough=(404,)
        )
        where = f"gs://{self.settings.bucket}/{name}"
        if response.status_code == 404:
            raise RetryableSourceError(
                self.context.source_id,
                "the file was replaced while being read",
                where=where,
                hint="Play rewrites the current month daily; the next attempt reads the new one",
            )
        if looks_like_html(response.content):  # a proxy's error page, not the report
            raise self.client.not_data(response, "the installs report CSV")
        try:
            report = parse(decode(response.content), package)
        except ReportFormatError as exc:
            at = f"{where}:{exc.line}" if exc.line else where
            raise SourceDataError(
                self.context.source_id,
                str(exc),
                where=at,
                hint="Google may have renamed the report's columns; the connector needs updating",
            ) from None
        log.info(
            "source %r: %s: %d days, downloads from %r, uninstalls from %r",
            self.context.source_id,
            name,
            len(report.rows),
            report.download_column,
            report.uninstall_column,
        )
        return report

    def _observations(
        self, app: PlayApp, report: InstallsReport, days: list[date]
    ) -> Iterator[Observation]:
        if not report.rows:
            return
        first, last = min(report.rows), max(report.rows)
        for day in days:
            row = report.rows.get(day)
            if row is None and not first < day < last:
                continue  # before the app's first day, or not yet published
            start = datetime(day.year, day.month, day.day, tzinfo=self.context.timezone)
            # A day missing between published days had no events: every day must be present.
            downloads = row.downloads if row else 0.0
            yield Observation(
                "app_first_time_downloads",
                downloads,
                start,
                Granularity.DAY,
                {"app": app.app, "platform": "android"},
            )
            if self.settings.include_uninstalls:
                uninstalls = row.uninstalls if row else 0.0
                yield Observation(
                    "app_uninstalls", uninstalls, start, Granularity.DAY, {"app": app.app}
                )

    def _load_cursor(self, cursor: str | None) -> dict[str, _Handled]:
        if not cursor:
            return {}
        try:
            raw = json.loads(cursor)["files"]
            return {
                name: _Handled(
                    str(v["generation"]),
                    date.fromisoformat(v["first"]),
                    date.fromisoformat(v["last"]),
                )
                for name, v in raw.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning(
                "source %r: ignoring an unreadable checkpoint; every file is read again",
                self.context.source_id,
            )
            return {}

    def _dump_cursor(self, handled: dict[str, _Handled]) -> str:
        files = {
            name: {"generation": h.generation, "first": str(h.first), "last": str(h.last)}
            for name, h in sorted(handled.items())
        }
        return json.dumps({"files": files}, separators=(",", ":"))


def _month(day: date) -> str:
    return f"{day.year:04d}{day.month:02d}"


def _merge(previous: _Handled | None, generation: str, days: list[date]) -> _Handled:
    """The days handled of `generation`: joined with earlier ones when contiguous."""
    first, last = days[0], days[-1]
    if (
        previous is not None
        and previous.generation == generation
        and previous.first - timedelta(days=1) <= last
        and first <= previous.last + timedelta(days=1)
    ):
        first, last = min(first, previous.first), max(last, previous.last)
    return _Handled(generation, first, last)
