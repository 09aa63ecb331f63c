"""The days of a window: every day it touches, and the days it has seen end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from dxkpi.collector.contract import TOKYO, Window, next_midnight

BERLIN = ZoneInfo("Europe/Berlin")
JUNE_2 = datetime(2025, 6, 2, tzinfo=TOKYO)


def tokyo_days(*days: int) -> list[datetime]:
    return [datetime(2025, 6, day, tzinfo=TOKYO) for day in days]


def test_whole_days_are_complete() -> None:
    window = Window(JUNE_2, JUNE_2 + timedelta(days=3))
    assert window.complete_days(TOKYO) == tokyo_days(2, 3, 4)
    assert window.complete_days(TOKYO) == window.days(TOKYO)


def test_a_day_still_running_at_the_end_is_left_out() -> None:
    window = Window(JUNE_2, JUNE_2 + timedelta(days=1, hours=15))
    assert window.days(TOKYO) == tokyo_days(2, 3)
    assert window.complete_days(TOKYO) == tokyo_days(2)


def test_a_window_shorter_than_a_day_has_no_complete_day() -> None:
    assert Window(JUNE_2, JUNE_2 + timedelta(hours=9)).complete_days(TOKYO) == []
    assert Window(JUNE_2, JUNE_2).complete_days(TOKYO) == []


def test_the_first_day_counts_whole_though_the_window_starts_later() -> None:
    window = Window(JUNE_2 + timedelta(hours=10), JUNE_2 + timedelta(days=2))
    assert window.complete_days(TOKYO) == tokyo_days(2, 3)


def test_days_are_midnights_in_the_timezone_given() -> None:
    # 15:00 UTC on June 1 is midnight of June 2 in Tokyo, and mid-afternoon of June 1 in UTC.
    window = Window(datetime(2025, 6, 1, 15, tzinfo=UTC), datetime(2025, 6, 3, 15, tzinfo=UTC))
    assert window.complete_days(TOKYO) == tokyo_days(2, 3)
    utc = ZoneInfo("UTC")
    assert window.complete_days(utc) == [datetime(2025, 6, d, tzinfo=utc) for d in (1, 2)]
    assert window.complete_days() == window.complete_days(TOKYO)


@pytest.mark.parametrize(
    ("day", "hours"),
    [(datetime(2025, 3, 30, tzinfo=BERLIN), 23), (datetime(2025, 10, 26, tzinfo=BERLIN), 25)],
    ids=["spring-forward", "fall-back"],
)
def test_days_that_dst_makes_shorter_or_longer_end_at_the_next_midnight(
    day: datetime, hours: int
) -> None:
    end = next_midnight(day)
    assert (end.day, end.hour) == (day.day + 1, 0)
    assert end.timestamp() - day.timestamp() == hours * 3600
    assert Window(day, end).complete_days(BERLIN) == [day]
    assert Window(day, end - timedelta(seconds=1)).complete_days(BERLIN) == []


def test_every_builtin_connector_runs_the_shared_contract_suite() -> None:
    """A connector folder is registered by its folder name; its tests must subclass
    `dxkpi.collector.testing.ConnectorContract` for it, or the contract is never checked."""
    import ast
    from pathlib import Path

    from dxkpi.collector.registry import _builtin_names

    root = Path(__file__).parents[1] / "connectors"
    contracted = set()
    for test_file in root.glob("*/tests/test_*.py"):
        for node in ast.walk(ast.parse(test_file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id == "ConnectorContract" for base in node.bases
            ):
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and isinstance(item.value, ast.Constant)
                        and any(getattr(t, "id", "") == "connector_name" for t in item.targets)
                    ):
                        contracted.add(item.value.value)
    assert "sql" in contracted
    assert set(_builtin_names()) <= contracted, set(_builtin_names()) - contracted
