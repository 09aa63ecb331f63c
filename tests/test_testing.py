"""The helpers connector tests share: FakeClock, context_for, SharedServer, build, days."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pydantic
import pytest
import requests

from dxkpi.collector.contract import TOKYO, Connector, ConnectorSettings, Observation, Window
from dxkpi.collector.http import HttpClient
from dxkpi.collector.testing import FakeClock, FakeResponse, SharedServer, build, context_for, days

NOW = datetime(2025, 6, 20, 9, 0, tzinfo=TOKYO)
SERVER = SharedServer()
_serving = SERVER.module_fixture()


class PagedSettings(ConnectorSettings):
    site: str
    page_size: int = pydantic.Field(default=10, ge=1)


class Paged(Connector[PagedSettings]):
    name = "paged"
    settings_model = PagedSettings
    metrics = ()

    def collect(self, window: Window) -> Iterator[Observation]:
        return iter(())


def test_fake_clock_stands_still_until_it_is_moved_or_slept_on() -> None:
    clock = FakeClock(NOW)
    assert clock.now() == NOW and clock.timestamp() == NOW.timestamp()
    clock.sleep(90)
    clock.sleep(0.5)
    assert clock.now() == NOW + timedelta(seconds=90.5)
    assert clock.recorded == [90, 0.5]
    clock.advance(timedelta(hours=1))
    assert clock.now() == NOW + timedelta(hours=1, seconds=90.5)
    clock.move_to(NOW)
    assert clock.now() == NOW and clock.recorded == [90, 0.5]


def test_fake_clock_needs_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2025, 6, 20, 9, 0))


def test_context_for_reads_time_from_a_fake_clock_and_sleeps_on_it() -> None:
    clock = FakeClock(NOW)
    context = context_for("web_main", clock=clock)
    context.sleep(3)
    assert context.clock() == NOW + timedelta(seconds=3)
    assert clock.recorded == [3]
    with pytest.raises(TypeError):
        context_for("web_main", clock=clock, sleeps=[])


def test_context_for_without_a_fake_clock_records_waits_in_sleeps() -> None:
    sleeps: list[float] = []
    context = context_for("web_main", clock=lambda: NOW, sleeps=sleeps)
    context.sleep(7)
    assert sleeps == [7] and context.clock() == NOW


def test_shared_server_answers_with_the_handler_plugged_in_last() -> None:
    first = SERVER.plug(lambda request: FakeResponse(200, {"which": "first"}))
    requests.get(f"{SERVER.url}/a", timeout=5)
    assert [r.path for r in first] == ["/a"]
    second = SERVER.plug(lambda request: FakeResponse(200, {"which": request.path}))
    client = HttpClient(context_for("web_main"), SERVER.url)
    assert client.get_json("/b") == {"which": "/b"}
    assert second is SERVER.seen and [r.path for r in second] == ["/b"]


def test_build_validates_settings_with_overrides_on_top() -> None:
    connector = build(Paged, {"site": "a", "page_size": 5}, context_for("web"), page_size=7)
    assert isinstance(connector.settings, PagedSettings)
    assert (connector.settings.site, connector.settings.page_size) == ("a", 7)
    with pytest.raises(pydantic.ValidationError):
        build(Paged, {"site": "a"}, context_for("web"), page_size=0)


def test_days_is_a_window_of_whole_days() -> None:
    window = days(datetime(2025, 6, 2, tzinfo=TOKYO), 3)
    assert window.end - window.start == timedelta(days=3)
    assert window.complete_days() == [datetime(2025, 6, d, tzinfo=TOKYO) for d in (2, 3, 4)]
