"""httpjson: figures from any JSON endpoint (an e-application service's statistics, an open-data
API), with the records found and read by JMESPath expressions declared in the settings.

One run: the window is widened to whole periods and written into the query parameters through
templates (`{start:%Y-%m-%d}`), the pages are fetched in the declared style (a next link in the
body, an RFC 8288 `Link: <…>; rel="next"` header, or a page-number or offset parameter), each
page's records are found with `records`, and each record's period, labels and values are read
with their expressions and added up per period and labels (`connectors/_records`). Requests
stay on the endpoint's origin: a next link to another host is refused, so the credential is
never sent elsewhere. The credential (`auth_token`, from `${ENV}`) goes in one header; errors
name the request by method and path, never its query string or headers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import jmespath
import requests

from dxkpi.collector.contract import (
    Checkpoint,
    Connector,
    Granularity,
    MetricSpec,
    Observation,
    SourceContext,
    Window,
)
from dxkpi.collector.errors import SourceDataError, excerpt
from dxkpi.collector.fiscal import period_end
from dxkpi.collector.http import HttpClient
from dxkpi.connectors._records import (
    RecordProblems,
    RecordTable,
    metric_specs,
    period_of,
    window_periods,
)
from dxkpi.connectors._tables.cells import cell_text
from dxkpi.connectors.httpjson.settings import HttpJsonSettings

log = logging.getLogger("dxkpi.connectors.httpjson")


class _Day(datetime):
    """A window bound for templates: `{start}` is the date (2026-04-01); a format spec after a
    colon is strftime's (`{start:%Y%m%d}`, `{start:%Y-%m-%dT%H:%M:%S%z}`)."""

    def __format__(self, spec: str) -> str:
        return super().__format__(spec) if spec else self.date().isoformat()


def _day(day: date, tz: Any) -> _Day:
    return _Day(day.year, day.month, day.day, tzinfo=tz)


class HttpJsonConnector(Connector[HttpJsonSettings]):
    name = "httpjson"
    settings_model = HttpJsonSettings
    # The metrics depend on each source's settings: see declared_metrics().
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, settings: HttpJsonSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        headers = {"Accept": "application/json", **settings.headers}
        secrets: list[str] = []
        if settings.auth_token is not None:
            token = settings.auth_token.get_secret_value()
            scheme = settings.auth_scheme.strip()
            headers[settings.auth_header] = f"{scheme} {token}" if scheme else token
            secrets = [token]
        parts = urlsplit(settings.url)
        self._url = settings.url
        self._path = parts.path or "/"
        self.client = HttpClient(
            context,
            f"{parts.scheme}://{parts.netloc}",
            default_headers=headers,
            redact=secrets,
            timeout=settings.timeout,
            auth_hint=f"check auth_token (and auth_header {settings.auth_header!r}, auth_scheme "
            f"{settings.auth_scheme!r}): the endpoint refused it, or it has expired",
        )
        self._records = jmespath.compile(settings.records)
        self._record_id = jmespath.compile(settings.record_id) if settings.record_id else None
        self._period = jmespath.compile(settings.period)
        self._labels = {name: jmespath.compile(e) for name, e in settings.labels.items()}
        self._fields = {m.field: jmespath.compile(m.field) for m in settings.metrics if m.field}
        next_link = settings.pagination.next
        self._next = jmespath.compile(next_link) if next_link else None

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        s = self.settings
        return metric_specs(s.metrics, s.labels, s.static_labels, f"GET {self._path}")

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        s = self.settings
        tz = self.context.timezone
        periods = window_periods(window, s.granularity, tz)
        if not periods:
            return
        end = period_end(periods[-1], Granularity(s.granularity))
        bounds = {
            "start": _day(periods[0], tz),
            "end": _day(end, tz),
            "last_day": _day(end - timedelta(days=1), tz),
        }
        params = {name: value.format_map(bounds) for name, value in s.params.items()}
        problems = RecordProblems()
        table = RecordTable(
            s.metrics, tuple(s.labels), s.static_labels, s.granularity, tz, problems
        )
        wanted = set(periods)
        outside = 0
        for page_number, records in self._pages(params):
            for index, record in enumerate(records, start=1):
                if not self._add(table, record, wanted, self._where(record, page_number, index)):
                    outside += 1
        if outside:
            log.debug(
                "source %r: %d record(s) outside the window's periods were left out",
                self.context.source_id,
                outside,
            )
        error = problems.error(
            self.context.source_id,
            f"GET {self._path}",
            "the endpoint's records do not match the settings' expressions (a changed schema?); "
            "fix the settings or the data, and the next run reads them again",
        )
        if error is not None:
            raise error
        yield from table.observations(periods)

    # -- records ---------------------------------------------------------------------------

    def _where(self, record: Any, page: int, index: int) -> str:
        if self._record_id is not None and isinstance(record, Mapping):
            found = self._record_id.search(record)
            if isinstance(found, str | int) and not isinstance(found, bool):
                return f"record {excerpt(found)}"
        return f"page {page} record {index}"

    def _add(self, table: RecordTable, record: Any, wanted: set[date], where: str) -> bool:
        """Add one record; False when its period is outside the window (not an error)."""
        s = self.settings
        if not isinstance(record, Mapping):
            table.problems.add(where, f"is {type(record).__name__}, not an object")
            return True
        whys: list[str] = []
        period: date | None = None
        stamp = self._period.search(record)
        if stamp is None:
            whys.append(f"period field {s.period!r} is missing or null")
        else:
            try:
                period = period_of(stamp, s.granularity, self.context.timezone)
            except ValueError as exc:
                whys.append(f"period field {s.period!r}: {exc}")
        labels: list[tuple[str, str]] = []
        for name, expression in self._labels.items():
            value = expression.search(record)
            if value is None:
                whys.append(f"label {name}: field {s.labels[name]!r} is missing or null")
            elif isinstance(value, Mapping | list):
                whys.append(f"label {name}: field {s.labels[name]!r} is not a single value")
            else:
                labels.append((name, cell_text(value)))
        values: dict[str, Any] = {}
        for field, expression in self._fields.items():
            value = expression.search(record)
            if value is None and s.missing == "error":
                whys.append(f"field {field!r} is missing or null")
            values[field] = value
        if whys:
            table.problems.add(where, "; ".join(whys))
            return True
        assert period is not None
        if period not in wanted:
            return False
        table.add(where, period, tuple(labels), values)
        return True

    # -- pages -----------------------------------------------------------------------------

    def _pages(self, params: dict[str, str]) -> Iterator[tuple[int, list[Any]]]:
        """(page number, its records) for every page, in the declared style."""
        p = self.settings.pagination
        url: str | None = self._url
        send: dict[str, Any] | None = dict(params)
        seen: set[str] = set()
        number = 0
        while url is not None:
            number += 1
            if number > p.max_pages:
                raise SourceDataError(
                    self.context.source_id,
                    f"more than {p.max_pages} pages; stopping",
                    where=f"GET {self._path}",
                    hint="raise pagination.max_pages if the endpoint really has that many, or "
                    "check that it honours the paging parameter",
                )
            if p.style in ("page", "offset"):
                assert p.param is not None and send is not None
                at = p.first + number - 1 if p.style == "page" else (number - 1) * p.size
                send[p.param] = at
                if p.size_param:
                    send[p.size_param] = p.size
            response = self.client.request("GET", url, params=send)
            page = self.client.parse_json(response)
            records = self._page_records(page, number, response)
            yield number, records
            following = self._following(page, response, url, records)
            if following is not None and p.style in ("next_link", "link_header"):
                if following in seen:
                    raise SourceDataError(
                        self.context.source_id,
                        f"page {number} links to a page already read; stopping to avoid a loop",
                        where=f"GET {self._path}",
                        hint="the endpoint's paging is broken; report it to its maintainers",
                    )
                seen.add(following)
                send = None  # a next link carries its own query
            url = following

    def _following(
        self, page: Any, response: requests.Response, url: str, records: list[Any]
    ) -> str | None:
        p = self.settings.pagination
        if p.style == "next_link":
            assert self._next is not None
            link = self._next.search(page)
            return urljoin(response.url, link) if isinstance(link, str) and link else None
        if p.style == "link_header":
            link = response.links.get("next", {}).get("url")
            return urljoin(response.url, link) if link else None
        if p.style in ("page", "offset"):
            short = len(records) < p.size if p.size_param else not records
            return None if short else url
        return None

    def _page_records(self, page: Any, number: int, response: requests.Response) -> list[Any]:
        found = self._records.search(page)
        if isinstance(found, list):
            return found
        keys = ", ".join(sorted(page)[:12]) if isinstance(page, Mapping) else type(page).__name__
        what = "nothing (missing or null)" if found is None else type(found).__name__
        raise SourceDataError(
            self.context.source_id,
            f"page {number}: records {self.settings.records!r} found {what}, not a list "
            f"(the page has: {keys or 'no keys'})",
            where=f"GET {urlsplit(response.url).path} -> {response.status_code}",
            hint="the endpoint's answer changed shape, or `records` is wrong; fix `records`",
        )
