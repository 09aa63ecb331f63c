"""Test helpers shared by every connector's tests: a real loopback HTTP server for vendor fakes
(`loopback_server`, and `SharedServer` to keep one running for a whole test module), a clock
that moves only when something sleeps on it (`FakeClock`), contexts that never really sleep
(`context_for`), and the contract suite each connector's folder runs (`ConnectorContract`).

Imported only by tests; it needs pytest at call time, not at import time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from dxkpi.collector.contract import (
    AnyConnector,
    Checkpoint,
    Connector,
    Observation,
    SourceContext,
    Window,
)
from dxkpi.collector.errors import FatalSourceError, RetryableSourceError, SourceError


@dataclass
class FakeRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class FakeResponse:
    status: int = 200
    body: bytes | str | Any = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        self.headers.setdefault("Content-Type", "application/json")
        return json.dumps(self.body).encode()


Handler = Callable[[FakeRequest], FakeResponse]


@contextmanager
def loopback_server(handler: Handler) -> Iterator[tuple[str, list[FakeRequest]]]:
    """Serve `handler` on 127.0.0.1 on a free port; yield (base_url, requests seen)."""
    seen: list[FakeRequest] = []

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Without this, small keep-alive responses wait ~40 ms for delayed ACKs.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = FakeRequest(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k: v for k, v in self.headers.items()},
                body=body,
            )
            seen.append(request)
            response = handler(request)
            payload = response.encoded()
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    # A short poll interval makes shutdown take milliseconds instead of half a second.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _unplugged(request: FakeRequest) -> FakeResponse:
    return FakeResponse(500, "no handler plugged into the shared test server")


class SharedServer:
    """One loopback server for a whole test module (starting and stopping one costs about half
    a second), answering with the handler the running test plugged in.

    At a test module's top level: `SERVER = SharedServer()` and `_serving =
    SERVER.module_fixture()`; then each test (or its fixture) calls `SERVER.plug(fake)`.
    """

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[FakeRequest] = []
        self._handler: Handler = _unplugged

    def plug(self, handler: Handler) -> list[FakeRequest]:
        """Answer with `handler` from now on and forget the requests seen so far; return the
        list the next ones are appended to."""
        self._handler = handler
        self.seen.clear()
        return self.seen

    @contextmanager
    def running(self) -> Iterator[SharedServer]:
        with loopback_server(lambda request: self._handler(request)) as (url, seen):
            self.url, self.seen = url, seen
            try:
                yield self
            finally:
                self.url, self.seen, self._handler = "", [], _unplugged

    def module_fixture(self) -> Any:
        """A module-scoped autouse pytest fixture that keeps this server running while the
        module's tests run. Assign it to a module-level name: pytest finds it there."""
        import pytest

        @pytest.fixture(scope="module", autouse=True)
        def serving() -> Iterator[SharedServer]:
            with self.running():
                yield self

        return serving


class FakeClock:
    """The tests' time: it stands still until a test moves it or something sleeps on it.

    Hand `now` and `sleep` to the code under test (`context_for(..., clock=fake_clock)` does),
    and `timestamp` to a fake that checks token lifetimes. Every sleep is appended to `recorded`
    (in seconds) and moves the clock on by as much, as real time would, so waits cost no time.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a FakeClock needs a timezone-aware start")
        self._now = start
        self.recorded: list[float] = []

    def now(self) -> datetime:
        return self._now

    def timestamp(self) -> float:
        return self._now.timestamp()

    def sleep(self, seconds: float) -> None:
        self.recorded.append(seconds)
        self._now += timedelta(seconds=seconds)

    def advance(self, by: timedelta) -> None:
        """Move on without sleeping (time passing between two runs)."""
        self._now += by

    def move_to(self, moment: datetime) -> None:
        self._now = moment


def observations(items: Iterator[Observation | Checkpoint] | Any) -> list[Observation]:
    return [item for item in items if isinstance(item, Observation)]


class ConnectorContract:
    """The standard suite every connector runs. Subclass it in `connectors/<name>/tests/`.

    A subclass sets `connector_name` and implements the fixtures-as-methods below; pytest then
    collects the `test_contract_*` methods for it. `make_case` returns a context manager giving
    (connector, window) against a running fake; `secrets` lists every secret value in settings.
    """

    connector_name: str = ""
    secrets: tuple[str, ...] = ()

    def invalid_settings(self) -> list[dict[str, Any]]:
        """Settings dicts that must be rejected by the settings model."""
        raise NotImplementedError

    def healthy_case(self) -> Any:
        """Context manager yielding (connector, window) where collection succeeds."""
        raise NotImplementedError

    def retryable_case(self) -> Any:
        """Context manager yielding (connector, window) where the source keeps failing (5xx/429)."""
        raise NotImplementedError

    def fatal_case(self) -> Any:
        """Context manager yielding (connector, window) where auth is refused or data is bad."""
        raise NotImplementedError

    # -- the suite -------------------------------------------------------------------------

    def _cls(self) -> type[Connector]:  # type: ignore[type-arg]
        from dxkpi.collector.registry import load_connector

        return load_connector(self.connector_name)

    def test_contract_registered_with_metrics(self) -> None:
        cls = self._cls()
        assert cls.name == self.connector_name
        assert cls.settings_model is not None

    def test_contract_invalid_settings_rejected(self) -> None:
        import pydantic
        import pytest

        cls = self._cls()
        for settings in self.invalid_settings():
            with pytest.raises(pydantic.ValidationError):
                cls.settings_model.model_validate(settings)

    def test_contract_yields_declared_metrics(self) -> None:
        cls = self._cls()
        with self.healthy_case() as (connector, window):
            declared = {m.name: m for m in connector.declared_metrics()}
            got = observations(connector.collect(window))
        assert got, "the healthy case yields observations"
        for obs in got:
            assert obs.metric in declared, f"{obs.metric} is not declared in {cls.__name__}.metrics"
            assert set(obs.labels) <= set(declared[obs.metric].labels), obs
            assert obs.start.tzinfo is not None

    def test_contract_retryable_errors_classified(self, caplog: Any) -> None:
        caplog.set_level(logging.DEBUG)
        with self.retryable_case() as (connector, window):
            try:
                list(connector.collect(window))
            except RetryableSourceError as exc:
                self._assert_no_secret(str(exc), caplog.text)
                assert exc.source_id == connector.context.source_id
            else:
                raise AssertionError("expected RetryableSourceError")

    def test_contract_fatal_errors_classified(self, caplog: Any) -> None:
        caplog.set_level(logging.DEBUG)
        with self.fatal_case() as (connector, window):
            try:
                list(connector.collect(window))
            except FatalSourceError as exc:
                self._assert_no_secret(str(exc), caplog.text)
                assert exc.source_id == connector.context.source_id
            except SourceError as exc:  # pragma: no cover - wrong class is the failure
                raise AssertionError(f"expected FatalSourceError, got {exc!r}") from exc
            else:
                raise AssertionError("expected FatalSourceError")

    def _assert_no_secret(self, *texts: str) -> None:
        for secret in self.secrets:
            for text in texts:
                assert secret not in text, "a secret leaked into an error or log line"


def context_for(
    source_id: str,
    *,
    clock: FakeClock | Callable[[], datetime] | None = None,
    sleeps: list[float] | None = None,
    **kwargs: Any,
) -> SourceContext:
    """A SourceContext that never really sleeps (tests stay fast).

    With a FakeClock, time is read from it and sleeping moves it on (waits land in its
    `recorded`). Otherwise waits are appended to `sleeps`, and `clock` (if given) is used as is.
    """
    if isinstance(clock, FakeClock):
        if sleeps is not None:
            raise TypeError("a FakeClock records the sleeps itself: pass clock or sleeps")
        return SourceContext(source_id=source_id, clock=clock.now, sleep=clock.sleep, **kwargs)
    if clock is not None:
        kwargs["clock"] = clock
    waits = sleeps if sleeps is not None else []
    return SourceContext(source_id=source_id, sleep=waits.append, **kwargs)


C = TypeVar("C", bound=AnyConnector)


def build(cls: type[C], settings: Mapping[str, Any], context: SourceContext, **overrides: Any) -> C:
    """`cls` built as the core builds it: `settings` (with `overrides` on top) validated by its
    settings model first, so a test's settings go through the same checks as a config's."""
    return cls(cls.settings_model.model_validate({**settings, **overrides}), context)


def window(start: datetime, end: datetime, cursor: str | None = None) -> Window:
    return Window(start=start, end=end, cursor=cursor)


def days(first: datetime, count: int) -> Window:
    """The window of `count` whole days from `first` (a midnight)."""
    return Window(first, first + timedelta(days=count))


@contextmanager
def running_receiver(store: Any, loaded: Any) -> Iterator[str]:
    """The real receiver (waitress) on a free loopback port for `store` and `loaded`; yields
    its base URL and stops it afterwards."""
    from dxkpi.collector.receiver.serve import ReceiverServer

    server = ReceiverServer(store, loaded, "127.0.0.1", 0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
