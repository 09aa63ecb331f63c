"""HttpClient against a real loopback server: retries, Retry-After, auth refresh, budgets,
pagination, and that no secret reaches an error or a log line."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from dxkpi.collector.contract import SourceContext
from dxkpi.collector.errors import (
    FatalSourceError,
    RetryableSourceError,
    SourceAuthError,
    SourceDataError,
)
from dxkpi.collector.http import (
    HttpClient,
    RequestBudget,
    fetched_ahead,
    paginate_cursor,
    paginate_odata,
    paginate_offset,
    parse_retry_after,
)
from dxkpi.collector.testing import FakeRequest, FakeResponse, context_for, loopback_server

NOW = datetime(2025, 4, 1, 3, 0, 0, tzinfo=UTC)
SECRET = "s3cr3t-VALUE-never-print-me"


class Clock:
    """A clock tests move by hand; `sleep` advances it, as real time would."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)


def scripted(*responses: FakeResponse) -> Callable[[FakeRequest], FakeResponse]:
    """Answer with the given responses in order, then repeat the last one."""
    queue = list(responses)

    def handler(request: FakeRequest) -> FakeResponse:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler


class Switchboard:
    """One loopback server for the whole module (starting and stopping one per test costs
    half a second); each test plugs in its own handler."""

    def __init__(self, base_url: str, seen: list[FakeRequest]) -> None:
        self.base_url = base_url
        self.seen = seen
        self.handler: Callable[[FakeRequest], FakeResponse] = lambda r: FakeResponse(500)

    def __call__(
        self, handler: Callable[[FakeRequest], FakeResponse], **kwargs: Any
    ) -> tuple[HttpClient, list[FakeRequest], Clock]:
        self.handler = handler
        self.seen.clear()
        clock = Clock()
        context = SourceContext(source_id="web_main", sleep=clock.sleep, clock=clock)
        return HttpClient(context, self.base_url, **kwargs), self.seen, clock


@pytest.fixture(scope="module")
def board() -> Iterator[Switchboard]:
    holder: list[Switchboard] = []
    with loopback_server(lambda request: holder[0].handler(request)) as (base_url, seen):
        holder.append(Switchboard(base_url, seen))
        yield holder[0]


OK = FakeResponse(200, {"ok": True})


# -- Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        ("7", 7.0),
        (format_datetime(NOW + timedelta(seconds=42), usegmt=True), 42.0),
        ((NOW + timedelta(seconds=90)).isoformat().replace("+00:00", "Z"), 90.0),
    ],
    ids=["delta-seconds", "http-date", "iso-8601"],
)
def test_429_waits_exactly_what_retry_after_says(
    header: str, expected: float, board: Switchboard
) -> None:
    handler = scripted(FakeResponse(429, {}, {"Retry-After": header}), OK)
    client, seen, clock = board(handler)
    assert client.get_json("/v1/things") == {"ok": True}
    assert clock.sleeps == [expected]
    assert len(seen) == 2


def test_parse_retry_after_formats() -> None:
    assert parse_retry_after("0", NOW) == 0.0
    assert parse_retry_after("Tue, 01 Apr 2025 03:00:05 GMT", NOW) == 5.0
    assert parse_retry_after("2025-04-01T12:00:10+09:00", NOW) == 10.0
    assert parse_retry_after("2025-04-01T02:00:00Z", NOW) == 0.0  # in the past: no wait
    assert parse_retry_after("soon", NOW) is None


def test_429_without_retry_after_backs_off_exponentially_with_jitter(board: Switchboard) -> None:
    handler = scripted(*[FakeResponse(429, {})] * 3, OK)
    client, _, clock = board(handler, backoff_base=1.0)
    client.get_json("/v1/things")
    assert len(clock.sleeps) == 3
    for wait, base in zip(clock.sleeps, [1.0, 2.0, 4.0], strict=True):
        assert base <= wait < base + 1.0


def test_500_then_success(board: Switchboard) -> None:
    client, seen, clock = board(scripted(FakeResponse(500, "oops"), OK))
    assert client.get_json("/v1/things") == {"ok": True}
    assert len(seen) == 2 and len(clock.sleeps) == 1


def test_persistent_503_gives_up_after_max_attempts(board: Switchboard) -> None:
    client, seen, clock = board(scripted(FakeResponse(503, "down")), max_attempts=4)
    with pytest.raises(RetryableSourceError) as caught:
        client.get_json("/v1/things")
    assert len(seen) == 4 and len(clock.sleeps) == 3
    assert "GET /v1/things -> 503" in str(caught.value)
    assert caught.value.source_id == "web_main"
    assert caught.value.retry_after is None


def test_gives_up_when_retry_after_exceeds_the_time_allowed(board: Switchboard) -> None:
    handler = scripted(FakeResponse(429, {}, {"Retry-After": "3600"}))
    client, seen, clock = board(handler, max_retry_seconds=300)
    with pytest.raises(RetryableSourceError) as caught:
        client.get_json("/v1/things")
    assert len(seen) == 1 and clock.sleeps == []
    assert caught.value.retry_after == 3600.0


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clock = Clock()
    context = SourceContext(source_id="web_main", sleep=clock.sleep, clock=clock)
    client = HttpClient(context, f"http://127.0.0.1:{port}", max_attempts=2)
    with pytest.raises(RetryableSourceError) as caught:
        client.get_json("/v1/things", params={"key": SECRET})
    assert "GET /v1/things -> ConnectionError" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__context__ is None  # the URL-bearing requests error is not chained
    assert len(clock.sleeps) == 1


def test_timeout_is_retried(board: Switchboard) -> None:
    calls: list[int] = []

    def slow_first(request: FakeRequest) -> FakeResponse:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.2)
        return OK

    client, _, clock = board(slow_first, timeout=0.05)
    assert client.get_json("/v1/things") == {"ok": True}
    assert len(calls) == 2 and len(clock.sleeps) == 1


# -- auth ----------------------------------------------------------------------------------


class CountingTokens:
    def __init__(self) -> None:
        self.issued = 0

    def token(self, force_refresh: bool = False) -> str:
        if force_refresh or self.issued == 0:
            self.issued += 1
        return f"token-{self.issued}"


def test_401_refreshes_the_token_once_then_succeeds(board: Switchboard) -> None:
    def handler(request: FakeRequest) -> FakeResponse:
        if request.headers.get("Authorization") != "Bearer token-2":
            return FakeResponse(401, {"message": "expired"})
        return OK

    tokens = CountingTokens()
    client, seen, clock = board(handler, auth=tokens)
    assert client.get_json("/v1/things") == {"ok": True}
    assert [r.headers["Authorization"] for r in seen] == ["Bearer token-1", "Bearer token-2"]
    assert clock.sleeps == []


def test_401_twice_is_an_auth_error(board: Switchboard) -> None:
    tokens = CountingTokens()
    handler = scripted(FakeResponse(401, {"message": "Invalid access token."}))
    client, seen, _ = board(handler, auth=tokens, auth_hint="check the app")
    with pytest.raises(SourceAuthError) as caught:
        client.get_json("/v2/users")
    assert len(seen) == 2 and tokens.issued == 2
    text = str(caught.value)
    assert "GET /v2/users -> 401" in text and "Invalid access token." in text
    assert "check the app" in text


def test_403_is_an_auth_error_without_retry(board: Switchboard) -> None:
    client, seen, _ = board(scripted(FakeResponse(403, {})))
    with pytest.raises(SourceAuthError):
        client.get_json("/v2/users")
    assert len(seen) == 1


# -- statuses and bodies -------------------------------------------------------------------


def test_404_passthrough_returns_the_response(board: Switchboard) -> None:
    client, _, _ = board(scripted(FakeResponse(404, "none")))
    assert client.request("GET", "/reports/x", passthrough=(404,)).status_code == 404
    assert client.get_json("/reports/x", passthrough=(404,)) is None


def test_other_4xx_is_fatal(board: Switchboard) -> None:
    body = {"error": {"code": 400, "message": "Field pagePath is invalid", "status": "BAD"}}
    client, seen, _ = board(scripted(FakeResponse(400, body)))
    with pytest.raises(FatalSourceError) as caught:
        client.post_json("/v1beta/properties/1:runReport", json={})
    assert not isinstance(caught.value, SourceAuthError)
    assert "POST /v1beta/properties/1:runReport -> 400" in str(caught.value)
    assert "Field pagePath is invalid" in str(caught.value)
    assert len(seen) == 1


def test_unexpected_success_status_is_fatal(board: Switchboard) -> None:
    client, _, _ = board(scripted(FakeResponse(202, {})))
    with pytest.raises(FatalSourceError, match="unexpected status"):
        client.get_json("/v1/things")


PROXY_502 = FakeResponse(
    200,  # proxies serve their error pages with 200 too: the body, not the status, tells
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>nginx</body></html>",
    {"Content-Type": "text/html"},
)


def test_an_error_page_instead_of_json_is_asked_for_again(board: Switchboard) -> None:
    client, seen, clock = board(scripted(PROXY_502, OK))
    assert client.get_json("/v1/things") == {"ok": True}
    assert len(seen) == 2 and len(clock.sleeps) == 1


def test_an_error_page_that_stays_is_retryable_and_says_what_came(board: Switchboard) -> None:
    client, seen, _ = board(scripted(PROXY_502), max_attempts=3)
    with pytest.raises(RetryableSourceError) as caught:
        client.get_json("/v1/things")
    assert len(seen) == 3
    assert str(caught.value) == (
        "source 'web_main': GET /v1/things -> 200: expected JSON, received text/html, 78 bytes, "
        "an HTML page titled '502 Bad Gateway' (a truncated answer or an error page in place "
        "of data; the run is retried)"
    )


def test_truncated_json_is_retryable_and_not_quoted(board: Switchboard) -> None:
    cut = FakeResponse(
        200, '{"rows": [{"token": "' + SECRET[:10], {"Content-Type": "application/json"}
    )
    client, _, _ = board(scripted(cut), max_attempts=2)
    with pytest.raises(RetryableSourceError) as caught:
        client.post_json("/v1/report", json={})
    message = str(caught.value)
    assert "POST /v1/report -> 200: expected JSON, received application/json, 31 bytes, " in message
    assert "not valid JSON from byte 20" in message
    assert SECRET[:10] not in message and "base URL" not in message


def test_links_to_another_host_are_refused(board: Switchboard) -> None:
    client, seen, _ = board(scripted(OK))
    with pytest.raises(FatalSourceError, match="another host"):
        client.get_json("https://evil.example/v1/things")
    assert client.get_json(f"{client.base_url}/v1/things") == {"ok": True}
    assert len(seen) == 1


def test_no_secret_in_errors_or_logs(caplog: pytest.LogCaptureFixture, board: Switchboard) -> None:
    caplog.set_level(logging.DEBUG)

    class SecretToken:
        def token(self, force_refresh: bool = False) -> str:
            return SECRET

    echo = {"message": f"bad key {SECRET} for query token_auth={SECRET}"}
    handler = scripted(FakeResponse(503, echo), FakeResponse(400, echo))
    client, seen, _ = board(handler, auth=SecretToken(), redact=[SECRET])
    with pytest.raises(FatalSourceError) as caught:
        client.post_json("/api", params={"api_key": SECRET}, data={"token_auth": SECRET})
    assert seen[0].headers["Authorization"] == f"Bearer {SECRET}"  # it was really sent
    text = str(caught.value)
    assert "POST /api -> 400" in text and "bad key ***" in text
    assert SECRET not in text
    assert SECRET not in caplog.text
    assert "POST /api -> 503" in caplog.text


# -- budget ----------------------------------------------------------------------------------


def test_budget_waits_when_exhausted_with_a_frozen_clock() -> None:
    budget = RequestBudget(2, per_seconds=10)
    sleeps: list[float] = []
    waits = [budget.acquire(lambda: NOW, sleeps.append) for _ in range(5)]
    assert waits == [0, 0, 10, 0, 10]
    assert sleeps == [10, 10]


def test_budget_frees_slots_as_real_time_passes() -> None:
    budget = RequestBudget(2, per_seconds=10)
    clock = Clock()
    budget.acquire(clock, clock.sleep)
    clock.now += timedelta(seconds=4)
    budget.acquire(clock, clock.sleep)
    clock.now += timedelta(seconds=7)  # the first request left the window
    assert budget.acquire(clock, clock.sleep) == 0
    assert budget.acquire(clock, clock.sleep) == pytest.approx(3.0)  # second one leaves at 14


def test_budget_applies_to_every_request_of_a_client(board: Switchboard) -> None:
    client, seen, clock = board(scripted(OK), budget=RequestBudget(3, per_seconds=60))
    for _ in range(4):
        client.get_json("/v1/things")
    assert clock.sleeps == [60.0]
    assert len(seen) == 4


# -- pagination ------------------------------------------------------------------------------


def test_paginate_cursor_follows_tokens_until_empty() -> None:
    pages = {
        None: {"items": [1, 2], "next_page_token": "a"},
        "a": {"items": [3], "next_page_token": ""},
    }
    asked: list[str | None] = []

    def fetch(token: str | None) -> Any:
        asked.append(token)
        return pages[token]

    items = [i for page in paginate_cursor(fetch) for i in page["items"]]
    assert items == [1, 2, 3] and asked == [None, "a"]


def test_paginate_cursor_nested_field_and_loop_detection() -> None:
    def fetch(token: str | None) -> Any:
        return {"links": {"next": "same"}}

    with pytest.raises(SourceDataError, match=r"same links\.next twice"):
        list(paginate_cursor(fetch, "links.next", source_id="asc"))


def test_paginate_offset_stops_at_total() -> None:
    data = list(range(7))
    asked: list[tuple[int, int]] = []

    def fetch(offset: int, limit: int) -> Any:
        asked.append((offset, limit))
        return {"rows": data[offset : offset + limit], "rowCount": len(data)}

    rows = [r for page in paginate_offset(fetch, 3, "rowCount") for r in page["rows"]]
    assert rows == data and asked == [(0, 3), (3, 3), (6, 3)]


def test_fetched_ahead_keeps_order_stays_one_page_ahead_and_raises_in_place() -> None:
    produced: list[int] = []

    def pages() -> Iterator[int]:
        for page in range(4):
            produced.append(page)
            yield page
        raise SourceDataError("asc", "page 4 is malformed")

    seen = []
    with pytest.raises(SourceDataError, match="page 4 is malformed"):
        for page in fetched_ahead(pages()):
            # While the caller works on this page, the next one is fetched, and no further.
            deadline = time.monotonic() + 5
            while produced[-1] == page and page < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert produced[-1] == min(page + 1, 3)
            time.sleep(0.02)
            assert produced[-1] == min(page + 1, 3)
            seen.append(page)
    assert seen == [0, 1, 2, 3]


def test_paginate_offset_stops_on_empty_page_without_total() -> None:
    asked: list[int] = []

    def fetch(offset: int, limit: int) -> Any:
        asked.append(offset)
        return {}  # GA4 omits both rows and rowCount when nothing matched

    assert list(paginate_offset(fetch, 100, "rowCount", items_field="rows")) == [{}]
    assert asked == [0]


def test_paginate_odata_reads_every_record(board: Switchboard) -> None:
    records = [{"Id": i} for i in range(5)]

    def handler(request: FakeRequest) -> FakeResponse:
        assert request.arg("$count") == "true" and request.arg("$filter") == "State eq 'Done'"
        top, skip = int(request.arg("$top") or 0), int(request.arg("$skip") or 0)
        return FakeResponse(200, {"@odata.count": 5, "value": records[skip : skip + top]})

    client, seen, _ = board(handler)
    got = list(paginate_odata(client, "/odata/Jobs", {"$filter": "State eq 'Done'"}, 2))
    assert got == records
    assert [(r.arg("$top"), r.arg("$skip")) for r in seen] == [("2", "0"), ("2", "2"), ("2", "4")]


def test_paginate_odata_rejects_a_page_without_value(board: Switchboard) -> None:
    client, _, _ = board(scripted(FakeResponse(200, {"error": "x"})))
    with pytest.raises(SourceDataError, match="GET /odata/Jobs"):
        list(paginate_odata(client, "/odata/Jobs"))


def test_context_for_records_sleeps(board: Switchboard) -> None:
    # The shared helper connectors use: HttpClient waits land in the list, not in real time.
    sleeps: list[float] = []
    board.handler = scripted(FakeResponse(429, {}, {"Retry-After": "2"}), OK)
    HttpClient(context_for("web_main", sleeps=sleeps), board.base_url).get_json("/x")
    assert sleeps == [2.0]


def test_a_large_body_parses_and_leaves_the_garbage_collector_on(board: Switchboard) -> None:
    import gc

    rows = [{"dimensionValues": [{"value": "20250401"}], "metricValues": [{"value": "1"}]}] * 30_000
    client, _, _ = board(scripted(FakeResponse(200, {"rows": rows})))
    assert len(client.get_json("/big")["rows"]) == 30_000
    assert gc.isenabled()
