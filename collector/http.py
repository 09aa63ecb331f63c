"""The HTTP client every API connector uses: timeouts, retries, token refresh, rate budgets,
pagination, and error messages that name the request but never a secret.

How a response status is handled:

    in `passthrough`        returned to the caller unraised (e.g. a 404 that means "no data")
    in `ok`                 returned
    401                     one fresh token from the TokenProvider and retry; again: SourceAuthError
    403                     SourceAuthError
    429, 5xx, conn. errors  wait (Retry-After exactly, else exponential backoff with jitter) and
                            retry; out of attempts or time -> RetryableSourceError
    other 4xx               FatalSourceError
    2xx not JSON            (get_json/post_json) asked again with the same backoff and bounds; then
                            RetryableSourceError stating type, size and an HTML page's title
    anything else           FatalSourceError (an unexpected status, e.g. 202 where 200 was due)

Errors and log lines carry `METHOD path -> status` with the path WITHOUT its query string (query
strings may carry keys), and never headers or request bodies. A short vendor message from an
error body is included, with every known secret (the bearer token, `redact=`) blanked out.
"""

from __future__ import annotations

import email.utils
import gc
import logging
import random
import re
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import requests

from dxkpi.collector.contract import SourceContext
from dxkpi.collector.errors import (
    FatalSourceError,
    RetryableSourceError,
    SourceAuthError,
    SourceDataError,
    SourceError,
    excerpt,
)

__all__ = [
    "HttpClient",
    "RequestBudget",
    "TokenProvider",
    "describe_body",
    "fetched_ahead",
    "looks_like_html",
    "paginate_cursor",
    "paginate_odata",
    "paginate_offset",
    "parse_retry_after",
]

log = logging.getLogger("dxkpi.http")


class _NoQueryStrings(logging.Filter):
    """urllib3 logs every request line with its query string at DEBUG; keys travel there."""

    _QUERY = re.compile(r"\?[^\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._QUERY.sub("?…", record.getMessage())
        record.args = ()
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_NoQueryStrings())

_DELTA_SECONDS = re.compile(r"^\s*\d+(\.\d+)?\s*$")
_VENDOR_MESSAGE_LIMIT = 200
_LARGE_BODY_BYTES = 1_000_000
# How much of an unexpected body an error quotes (escaped, see dxkpi.collector.errors.excerpt).
_BODY_EXCERPT_BYTES = 32
_HTML_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TITLE_SEARCH_BYTES = 4096
# Longest single backoff wait without Retry-After; the total is bounded by max_retry_seconds.
_BACKOFF_CAP_SECONDS = 60.0


def parse_retry_after(value: str, now: datetime) -> float | None:
    """Seconds to wait per a Retry-After header: delta-seconds, an HTTP-date, or an ISO-8601
    timestamp (some vendors send one). Times in the past mean 0. Unparseable -> None."""
    value = value.strip()
    if _DELTA_SECONDS.match(value):
        return float(value)
    when: datetime | None = None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
    if when.tzinfo is None:  # both formats mean UTC when they carry no offset
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class RequestBudget:
    """A client-side rate limit: at most `max_requests` per sliding `per_seconds` window.

    When exhausted, `acquire` waits through the given sleep until the oldest request leaves the
    window. Time is the later of the clock and the end of our own last wait, so an injected
    sleep that only records (tests) still moves time forward. Share one per source.
    """

    def __init__(self, max_requests: int, per_seconds: float) -> None:
        if max_requests < 1 or per_seconds <= 0:
            raise ValueError("a RequestBudget needs max_requests >= 1 and per_seconds > 0")
        self.max_requests = max_requests
        self.per_seconds = per_seconds
        self._sent: deque[float] = deque()
        self._not_before = float("-inf")
        self._lock = threading.Lock()

    def acquire(self, clock: Callable[[], datetime], sleep: Callable[[float], None]) -> float:
        """Take one request from the budget, waiting if needed; return the seconds waited."""
        with self._lock:
            now = max(clock().timestamp(), self._not_before)
            while self._sent and self._sent[0] <= now - self.per_seconds:
                self._sent.popleft()
            waited = 0.0
            if len(self._sent) >= self.max_requests:
                waited = self._sent[0] + self.per_seconds - now
                sleep(waited)
                now += waited
                self._sent.popleft()
            self._sent.append(now)
            self._not_before = now
            return waited


class TokenProvider(Protocol):
    """Where a client's bearer tokens come from (implementations: collector/auth.py). Defined
    here, where it is used, so that auth.py depends on http.py and not the other way round."""

    def token(self, force_refresh: bool = False) -> str:
        """A bearer token; `force_refresh` asks for a new one (the API refused the last)."""
        ...


class HttpClient:
    """One source's HTTP client. `path`s are relative to `base_url`; an absolute URL is accepted
    only on the same origin (so a vendor's `next` link cannot send our token elsewhere).

    `auth` supplies a bearer token; `redact` lists further secrets (e.g. an API key sent in a
    body) to blank out of any vendor message quoted in an error.
    """

    def __init__(
        self,
        context: SourceContext,
        base_url: str,
        *,
        auth: TokenProvider | None = None,
        budget: RequestBudget | None = None,
        timeout: float = 30.0,
        max_retry_seconds: float = 300.0,
        max_attempts: int = 6,
        session: requests.Session | None = None,
        default_headers: Mapping[str, str] | None = None,
        backoff_base: float = 1.0,
        redact: Iterable[str] = (),
        auth_hint: str = "check the source's credentials and their permissions",
    ) -> None:
        self.context = context
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.budget = budget
        self.timeout = timeout
        self.max_retry_seconds = max_retry_seconds
        self.max_attempts = max_attempts
        self.session = session or requests.Session()
        self.default_headers = dict(default_headers or {})
        self.backoff_base = backoff_base
        self.auth_hint = auth_hint
        self._redact = [s for s in redact if s]
        self._origin = _origin(self.base_url)

    # -- public API ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        ok: Collection[int] = (200,),
        passthrough: Collection[int] = (),
    ) -> requests.Response:
        """Send one logical request, retrying as the module docstring says; return the response
        whose status is in `ok` or `passthrough`, or raise a SourceError."""
        method = method.upper()
        url = self._url(path)
        where = self.describe(method, url)
        attempt = 0
        waited = 0.0
        refreshed = False
        token: str | None = None
        while True:
            attempt += 1
            if self.auth is not None and token is None:
                token = self.auth.token(force_refresh=refreshed)
            send_headers = {**self.default_headers, **(headers or {})}
            if token is not None:
                send_headers["Authorization"] = f"Bearer {token}"
            if self.budget is not None:
                self.budget.acquire(self.context.clock, self.context.sleep)
            failure = ""
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    headers=send_headers,
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                # str(exc) carries the full URL with its query string: keep only the kind, and
                # raise outside this block so the exception is not chained into tracebacks.
                failure = type(exc).__name__
            if failure:
                wait = self._backoff(attempt)
                self._retry_or_raise(f"{where} -> {failure}", attempt, waited, wait, None, token)
                waited += wait
                continue
            status = response.status_code
            log.debug("source %r: %s -> %s", self.context.source_id, where, status)
            if status in passthrough or status in ok:
                return response
            if status == 401 and self.auth is not None and not refreshed:
                # Tokens expire or get revoked early; one fresh token is worth one more try.
                refreshed = True
                token = None
                attempt -= 1
                log.info("source %r: %s -> 401; refreshing token", self.context.source_id, where)
                continue
            if status in (401, 403):
                self._fail(
                    SourceAuthError,
                    f"{where} -> {status}",
                    "credentials refused",
                    response,
                    token,
                    self.auth_hint,
                )
            if status == 429 or status >= 500:
                header = response.headers.get("Retry-After")
                retry_after = (
                    parse_retry_after(header, self.context.clock()) if header is not None else None
                )
                wait = retry_after if retry_after is not None else self._backoff(attempt)
                self._retry_or_raise(
                    f"{where} -> {status}", attempt, waited, wait, retry_after, token, response
                )
                waited += wait
                continue
            if 400 <= status < 500:
                self._fail(
                    FatalSourceError,
                    f"{where} -> {status}",
                    "request rejected",
                    response,
                    token,
                    "check the source's settings (ids, dates, permissions)",
                )
            self._fail(
                FatalSourceError,
                f"{where} -> {status}",
                f"unexpected status (expected {', '.join(map(str, sorted(ok)))})",
                response,
                token,
                "the API may have changed; the connector needs updating",
            )

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET and parse JSON. A status in `passthrough` returns None instead of a body."""
        return self._request_json("GET", path, kwargs)

    def post_json(self, path: str, **kwargs: Any) -> Any:
        """POST and parse JSON. A status in `passthrough` returns None instead of a body."""
        return self._request_json("POST", path, kwargs)

    def describe(self, method: str, path: str) -> str:
        """`METHOD /path` for errors and logs: the URL path only, never its query string."""
        return f"{method.upper()} {urlsplit(self._url(path)).path}"

    def parse_json(self, response: requests.Response) -> Any:
        """The response body as JSON, or RetryableSourceError saying what came instead: a
        truncated body or a proxy's error page is transient, and the run is tried again."""
        try:
            with _gc_paused(len(response.content) > _LARGE_BODY_BYTES):
                return response.json()
        except ValueError as exc:
            # JSON that breaks off is described by where it breaks, never quoted: it is data,
            # and may be a token endpoint's answer.
            position = getattr(exc, "pos", None)
            broken = ""
            if position is not None and not looks_like_html(response.content):
                broken = f", not valid JSON from byte {position}"
            raise self.not_data(response, "JSON", broken) from None

    def not_data(
        self, response: requests.Response, expected: str, detail: str = ""
    ) -> RetryableSourceError:
        """The error for an answer that is not the data asked for (a truncated body, an HTML
        error page from a proxy): what was received, never a guess at why."""
        where = f"{response.request.method} {urlsplit(response.url).path}"
        return RetryableSourceError(
            self.context.source_id,
            f"expected {expected}, received {describe_body(response, self._redact)}{detail}",
            where=f"{where} -> {response.status_code}",
            hint="a truncated answer or an error page in place of data; the run is retried",
        )

    # -- internals -----------------------------------------------------------------------

    def _request_json(self, method: str, path: str, kwargs: dict[str, Any]) -> Any:
        """`request` and `parse_json`; an answer that is not JSON is asked for again, with the
        same bounds and backoff as a 5xx, before its RetryableSourceError leaves the client."""
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            response = self.request(method, path, **kwargs)
            if response.status_code in kwargs.get("passthrough", ()):
                return None
            try:
                return self.parse_json(response)
            except RetryableSourceError as exc:
                wait = self._backoff(attempt)
                if attempt >= self.max_attempts or waited + wait > self.max_retry_seconds:
                    raise
                log.warning(
                    "source %r: %s; retrying in %.1f s (attempt %d of %d)",
                    self.context.source_id,
                    f"{exc.where}: {exc.message}",
                    wait,
                    attempt + 1,
                    self.max_attempts,
                )
                self.context.sleep(wait)
                waited += wait

    def _url(self, path: str) -> str:
        if "://" not in path:
            return f"{self.base_url}/{path.lstrip('/')}"
        if _origin(path) != self._origin:
            raise FatalSourceError(
                self.context.source_id,
                f"refusing to follow a link to another host ({urlsplit(path).hostname})",
                hint=f"this source's requests must stay on {self._origin}",
            )
        return path

    def _backoff(self, attempt: int) -> float:
        # Jitter spreads retries of many workers; it is never added to a server-given wait.
        wait = min(_BACKOFF_CAP_SECONDS, self.backoff_base * 2.0 ** (attempt - 1))
        return wait + random.uniform(0, self.backoff_base)

    def _retry_or_raise(
        self,
        where: str,
        attempt: int,
        waited: float,
        wait: float,
        retry_after: float | None,
        token: str | None,
        response: requests.Response | None = None,
    ) -> None:
        if attempt >= self.max_attempts or waited + wait > self.max_retry_seconds:
            detail = f"gave up after {attempt} attempt(s) over {waited:.1f} s"
            message = self.with_vendor_message(detail, response, token)
            raise RetryableSourceError(
                self.context.source_id,
                message,
                where=where,
                hint="the source is overloaded or down; the task will be retried later",
                retry_after=retry_after,
            )
        log.warning(
            "source %r: %s; retrying in %.1f s (attempt %d of %d)",
            self.context.source_id,
            where,
            wait,
            attempt + 1,
            self.max_attempts,
        )
        self.context.sleep(wait)

    def _fail(
        self,
        kind: type[SourceError],
        where: str,
        detail: str,
        response: requests.Response,
        token: str | None,
        hint: str,
    ) -> NoReturn:
        message = self.with_vendor_message(detail, response, token)
        raise kind(self.context.source_id, message, where=where, hint=hint)

    def with_vendor_message(
        self, detail: str, response: requests.Response | None, token: str | None = None
    ) -> str:
        """`detail`, plus the vendor's own short error message with known secrets blanked."""
        said = vendor_message(response) if response is not None else ""
        for secret in [*self._redact, *([token] if token else [])]:
            said = said.replace(secret, "***")
        return f"{detail}: {said}" if said else detail


def looks_like_html(body: bytes) -> bool:
    """An HTML page (a proxy's 502, a login page) where a report or JSON was due."""
    return body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"


def describe_body(response: requests.Response, secrets: Iterable[str] = ()) -> str:
    """What an answer held, for an error: its type, size and first bytes, short and escaped."""
    kind = response.headers.get("Content-Type") or "no Content-Type"
    body = response.content
    described = f"{kind}, {len(body)} bytes"
    if not looks_like_html(body):
        return described  # data, perhaps cut off: not quoted
    title = _HTML_TITLE.search(body[:_TITLE_SEARCH_BYTES])
    if title is not None:
        what, text = "titled", title.group(1)
    else:
        what, text = "starting", body.lstrip()[:_BODY_EXCERPT_BYTES]
    shown = " ".join(text.decode("utf-8", "replace").split())
    for secret in secrets:
        shown = shown.replace(secret, "***")
    return f"{described}, an HTML page {what} {excerpt(shown)}"


def vendor_message(response: requests.Response) -> str:
    """A short human message from a JSON error body (`message`, `error.message`,
    `error_description`, `error`, `detail`), or "" if there is none. Never the raw body."""
    try:
        body = response.json()
    except ValueError:
        return ""
    found: Any = None
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            found = error.get("message") or error.get("status")
        found = (
            found
            or body.get("error_description")
            or body.get("message")
            or (error if isinstance(error, str) else None)
            or body.get("detail")
        )
    if not isinstance(found, str):
        return ""
    text = " ".join(found.split())
    return text[:_VENDOR_MESSAGE_LIMIT] + ("…" if len(text) > _VENDOR_MESSAGE_LIMIT else "")


@contextmanager
def _gc_paused(pause: bool) -> Iterator[None]:
    """Pause the cyclic garbage collector while a large body is parsed: parsing allocates
    millions of containers without making a single cycle, and the collector would otherwise
    rescan them over and over (a 10 MB GA4 page parses 3-5 times faster without it)."""
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _field(page: Any, dotted: str) -> Any:
    """`page["a"]["b"]` for "a.b" (unless "a.b" itself is a key, as "@odata.count" is);
    None where any step is missing."""
    if isinstance(page, Mapping) and dotted in page:
        return page[dotted]
    value = page
    for key in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


# -- pagination ------------------------------------------------------------------------------


def paginate_cursor(
    fetch_page: Callable[[str | None], Any],
    token_field: str = "next_page_token",
    *,
    source_id: str = "",
) -> Iterator[Any]:
    """Yield pages of a cursor-paginated API, one request at a time.

    `fetch_page(None)` fetches the first page, `fetch_page(token)` the next; `token_field` is
    where the next token sits in a page (dotted for nesting, e.g. "links.next"). Stops when it
    is missing or empty. A token seen before is a vendor bug that would loop forever: it raises
    SourceDataError for `source_id`.
    """
    seen: set[str] = set()
    token: str | None = None
    while True:
        page = fetch_page(token)
        yield page
        next_token = _field(page, token_field)
        if not next_token:
            return
        token = str(next_token)
        if token in seen:
            raise SourceDataError(
                source_id,
                f"the API returned the same {token_field} twice; stopping to avoid a loop",
                hint="report this to the vendor; re-running may succeed",
            )
        seen.add(token)


def paginate_offset(
    fetch_page: Callable[[int, int], Any],
    limit: int,
    total_field: str,
    *,
    items_field: str | None = None,
    start: int = 0,
) -> Iterator[Any]:
    """Yield pages of an offset/limit-paginated API, one request at a time.

    `fetch_page(offset, limit)` fetches a page; `total_field` (dotted) is the total number of
    items the query has. Stops once `offset + limit` reaches the total, or, when `items_field`
    names the page's item list, at a short or empty page (a total may be absent on empty
    results, as GA4's `rowCount` is).
    """
    offset = start
    while True:
        page = fetch_page(offset, limit)
        total = _field(page, total_field)
        short = items_field is not None and len(_field(page, items_field) or ()) < limit
        yield page
        # Drop our reference before the next request: only one page is alive at a time.
        del page
        offset += limit
        if short or not isinstance(total, int) or offset >= total:
            return


T = TypeVar("T")
_END = object()


def fetched_ahead(pages: Iterator[T]) -> Iterator[T]:
    """Yield `pages`, fetching the next one in a thread while the caller works on this one.

    Waiting on the API then overlaps with parsing and storing. Never more than one page ahead,
    so at most two are in memory; an error from `pages` is raised unchanged, in its place.
    Left early (an error downstream), it does not wait for the request in flight: the page is
    dropped when it arrives and nothing more is asked for.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dxkpi-fetch-ahead")
    try:
        pending = pool.submit(next, pages, _END)
        while (page := pending.result()) is not _END:
            pending = pool.submit(next, pages, _END)
            yield cast(T, page)  # not _END: checked above
            del page  # only the page in flight stays alive while the caller waits
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def paginate_odata(
    client: HttpClient,
    path: str,
    params: Mapping[str, Any] | None = None,
    page_size: int = 1000,
) -> Iterator[Any]:
    """Yield every record of an OData collection (`value`), paged with `$top`/`$skip` and
    `$count=true`; stops at `@odata.count` or at a short page. Yields records, not pages."""
    base = dict(params or {})
    base["$count"] = "true"

    def fetch(offset: int, limit: int) -> Any:
        page = client.get_json(path, params={**base, "$top": limit, "$skip": offset})
        if not isinstance(page, Mapping) or not isinstance(page.get("value"), list):
            raise SourceDataError(
                client.context.source_id,
                "an OData page has no 'value' list",
                where=client.describe("GET", path),
                hint="check the path names an OData collection",
            )
        return page

    for page in paginate_offset(fetch, page_size, "@odata.count", items_field="value"):
        yield from page["value"]
