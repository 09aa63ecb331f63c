"""UiPath Orchestrator: robot runs per process per day, and the manual work time they saved.

Per folder and run: `GET /odata/Jobs` filtered on EndTime (the window, widened to whole days)
and on the final states Successful, Faulted and Stopped, paged with `$top`/`$skip` ordered by
Id. Runs are counted on the day (in the source's timezone) their job ended. A successful run
saves the process's declared manual minutes; faulted and stopped runs save nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlsplit

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
from dxkpi.collector.errors import RetryableSourceError, SourceDataError, SourceError
from dxkpi.collector.http import HttpClient, RequestBudget, paginate_odata

log = logging.getLogger("dxkpi.connectors.uipath")

JOBS = "/odata/Jobs"
FOLDER_HEADER = "X-UIPATH-OrganizationUnitId"
# Orchestrator's job states that end a run, and the `result` label each one gets.
RESULTS = {"Successful": "successful", "Faulted": "faulted", "Stopped": "stopped"}
# Orchestrator allows 100 GET /odata/Jobs per minute per tenant for non-robot callers.
JOBS_REQUESTS_PER_MINUTE = 100


class UiPathSettings(ConnectorSettings):
    orchestrator_url: str = Field(
        pattern=r"^https?://[^/]+/.+",
        description="https://cloud.uipath.com/<organization>/<tenant>/orchestrator_",
    )
    token_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="default: <scheme>://<host>/<organization>/identity_/connect/token",
    )
    client_id: str = Field(min_length=1, description="the external application's App ID")
    client_secret: SecretStr = Field(description="the external application's App Secret")
    scope: str = Field(default="OR.Jobs.Read", min_length=1)
    folder_ids: list[int] = Field(min_length=1, description="OrganizationUnitId of each folder")
    manual_minutes_per_run: dict[str, float] = Field(default_factory=dict)
    page_size: int = Field(default=1000, ge=1, le=1000)
    requests_per_minute: int = Field(default=JOBS_REQUESTS_PER_MINUTE, ge=1, le=1000)

    @field_validator("manual_minutes_per_run")
    @classmethod
    def _positive(cls, minutes: dict[str, float]) -> dict[str, float]:
        bad = [name for name, value in minutes.items() if value < 0 or not name.strip()]
        if bad:
            raise ValueError(f"minutes must be >= 0 for a named process: {', '.join(bad)}")
        return minutes

    @field_validator("folder_ids")
    @classmethod
    def _unique(cls, folders: list[int]) -> list[int]:
        if len(set(folders)) != len(folders):
            raise ValueError("a folder id is listed twice")
        return folders

    def identity_url(self) -> str:
        if self.token_url:
            return self.token_url
        parts = urlsplit(self.orchestrator_url)
        organization = parts.path.strip("/").split("/")[0]
        return f"{parts.scheme}://{parts.netloc}/{organization}/identity_/connect/token"


class UiPathConnector(Connector[UiPathSettings]):
    name = "uipath"
    settings_model = UiPathSettings
    metrics = (
        MetricSpec(
            "rpa_runs",
            "RPA実行回数 / RPA robot runs per day by process and result "
            "(successful, faulted, stopped)",
            "runs",
            ("process", "result"),
        ),
        MetricSpec(
            "rpa_time_saved_seconds",
            "RPA削減時間 / Manual work time saved by successful robot runs per day "
            "(runs x declared manual minutes)",
            "seconds",
            ("process",),
        ),
    )
    max_window = timedelta(days=31)
    # A robot that lost its connection reports a job's end when it reconnects, possibly hours
    # later, with the EndTime it really finished at: re-read the last day.
    finality = timedelta(days=1)

    def __init__(self, settings: UiPathSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        token = ClientCredentialsToken(
            context,
            settings.identity_url(),
            settings.client_id,
            settings.client_secret,
            scope=settings.scope,
            credentials_in="body",
            hint="check client_id/client_secret of the external application (Admin > "
            "External Applications) and that it has the application scope " + settings.scope,
        )
        # One budget for all folders: the limit is per tenant.
        budget = RequestBudget(settings.requests_per_minute, 60.0)
        self.clients = {
            folder: HttpClient(
                context,
                settings.orchestrator_url,
                auth=token,
                budget=budget,
                default_headers={FOLDER_HEADER: str(folder), "Accept": "application/json"},
                auth_hint=f"give the external application {settings.scope} and access to "
                f"folder {folder}",
            )
            for folder in settings.folder_ids
        }
        self._warned: set[str] = set()

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        tz = self.context.timezone
        days = [d.date() for d in window.days(tz)]
        if not days:
            return
        # Whole days: a run counted for a day must be counted against the whole day.
        since = datetime.combine(days[0], time(), tz)
        runs: Counter[tuple[date, str, str]] = Counter()
        for folder, client in self.clients.items():
            try:
                for job in self._jobs(client, since, window.end):
                    day, process, result = self._run_of(job, folder)
                    if day in days:
                        runs[day, process, result] += 1
            except SourceError as exc:
                raise _in_folder(exc, folder) from exc
        processes = sorted({p for _, p, _ in runs} | set(self.settings.manual_minutes_per_run))
        for process in processes:
            self._warn_if_undeclared(process)
        for day in days:
            start = datetime.combine(day, time(), tz)
            for process in processes:
                for result in RESULTS.values():
                    count = runs[day, process, result]
                    labels = {"process": process, "result": result}
                    yield Observation("rpa_runs", count, start, Granularity.DAY, labels)
                minutes = self.settings.manual_minutes_per_run.get(process, 0.0)
                saved = runs[day, process, "successful"] * minutes * 60
                labels = {"process": process}
                yield Observation("rpa_time_saved_seconds", saved, start, Granularity.DAY, labels)

    def _jobs(self, client: HttpClient, since: datetime, until: datetime) -> Iterator[Any]:
        states = " or ".join(f"State eq '{state}'" for state in RESULTS)
        params = {
            "$filter": f"EndTime ge {_odata_time(since)} and EndTime lt {_odata_time(until)} "
            f"and ({states})",
            "$select": "Id,ReleaseName,State,EndTime",
            # A stable order, so $skip pages neither repeat nor miss jobs.
            "$orderby": "Id asc",
        }
        seen: set[Any] = set()
        for job in paginate_odata(client, JOBS, params, self.settings.page_size):
            job_id = job.get("Id") if isinstance(job, Mapping) else None
            # A job inserted before our $skip offset while paging shifts the next page.
            if job_id is not None and job_id in seen:
                continue
            seen.add(job_id)
            yield job

    def _run_of(self, job: Any, folder: int) -> tuple[date, str, str]:
        where = f"GET {JOBS} in folder {folder}"
        if not isinstance(job, Mapping):
            raise SourceDataError(self.context.source_id, "a job is not an object", where=where)
        process = job.get("ReleaseName")
        result = RESULTS.get(str(job.get("State")))
        try:
            ended = datetime.fromisoformat(str(job.get("EndTime")))
        except ValueError:
            ended = None
        if not isinstance(process, str) or not process or result is None or ended is None:
            raise SourceDataError(
                self.context.source_id,
                f"job {job.get('Id')!r} lacks a ReleaseName, a final State or an EndTime "
                f"(got {job.get('ReleaseName')!r}, {job.get('State')!r}, {job.get('EndTime')!r})",
                where=where,
                hint="the Orchestrator version may name job fields differently",
            )
        if ended.tzinfo is None:
            ended = ended.replace(tzinfo=UTC)  # Orchestrator times are UTC
        return ended.astimezone(self.context.timezone).date(), process, result

    def _warn_if_undeclared(self, process: str) -> None:
        if process in self.settings.manual_minutes_per_run or process in self._warned:
            return
        self._warned.add(process)
        log.warning(
            "source %r: process %r has no manual_minutes_per_run; its runs are counted but "
            "save 0 seconds. Add it to the settings to count its time saved",
            self.context.source_id,
            process,
        )


def _in_folder(exc: SourceError, folder: int) -> SourceError:
    """The same error, its request naming the folder (the header is not in the path)."""
    where = f"{exc.where} in folder {folder}" if "folder" not in exc.where else exc.where
    if isinstance(exc, RetryableSourceError):
        return RetryableSourceError(
            exc.source_id, exc.message, where=where, hint=exc.hint, retry_after=exc.retry_after
        )
    return type(exc)(exc.source_id, exc.message, where=where, hint=exc.hint)


def _odata_time(moment: datetime) -> str:
    """An OData v4 DateTimeOffset literal in UTC, e.g. 2026-11-01T15:00:00.000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
