"""The six csvfile sources of the shipped example config read the shipped data files cleanly, and
the data tells the story of the KPI catalog (baselines, directions, a stalled indicator)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from dxkpi.collector.config import SourceConfig
from dxkpi.collector.contract import TOKYO, Granularity, Observation, SourceContext
from dxkpi.collector.fiscal import fiscal_year_of
from dxkpi.collector.registry import load_connector
from dxkpi.collector.testing import observations
from dxkpi.connectors.csvfile.tests.fake_csvfile import later_than_any_file, window

EXAMPLE_YAML = Path(__file__).parents[1] / "example.yaml"
CONFIG_FOLDER = Path(__file__).parents[3] / "collector" / "example"
EVERYTHING = window("2020-01-01", "2026-11-29")  # today is 2026-11-29; data ends the day before


def sources() -> dict[str, dict[str, Any]]:
    entries = yaml.safe_load(EXAMPLE_YAML.read_text(encoding="utf-8"))["sources"]
    return {entry["id"]: entry for entry in entries}


@cache
def collected(source_id: str) -> list[Observation]:
    entry = sources()[source_id]
    cls = load_connector(entry["connector"])
    settings = cls.settings_model.model_validate(entry["settings"])
    context = SourceContext(source_id, base_dir=CONFIG_FOLDER, clock=later_than_any_file)
    connector = cls(settings, context)
    got = observations(connector.collect(EVERYTHING))
    declared = {m.name: m for m in connector.declared_metrics()}
    for obs in got:
        assert set(obs.labels) == set(declared[obs.metric].labels), obs
    return got


def fiscal_totals(got: list[Observation], metric: str, **labels: str) -> dict[int, float]:
    totals: dict[int, float] = defaultdict(float)
    for obs in got:
        if obs.metric == metric and all(obs.labels.get(k) == v for k, v in labels.items()):
            totals[fiscal_year_of(obs.start)] += obs.value
    return dict(totals)


def test_example_lists_exactly_the_six_sources() -> None:
    assert list(sources()) == [
        "annual_indicators",
        "online_procedures",
        "copy_paper",
        "portal_page_views",
        "app_installs",
        "rpa_run_log",
    ]
    for entry in sources().values():
        source = SourceConfig.model_validate(entry)  # the core's schema for a source entry
        assert source.schedule.every is not None and source.schedule.every.total_seconds() == 900
        assert entry["settings"]["path"].startswith("data/")
        assert (CONFIG_FOLDER / entry["settings"]["path"]).is_file()


def test_data_files_are_small() -> None:
    for path in (CONFIG_FOLDER / "data").iterdir():
        assert path.stat().st_size < 300_000, path


def test_annual_indicators() -> None:
    got = collected("annual_indicators")
    assert {o.metric for o in got} == {"annual_indicator_value"}
    assert {o.granularity for o in got} == {Granularity.FISCAL_YEAR}
    value = {(o.labels["indicator"], fiscal_year_of(o.start)): o.value for o in got}
    assert len(value) == len(got) == 6 * 6
    assert {fy for _, fy in value} == set(range(2020, 2026))
    # Baselines of the KPI catalog, at their baseline fiscal year.
    assert value[("problem_solving_project_participants", 2021)] == 121
    assert value[("teacher_ict_instruction_ability", 2020)] == 0.653
    assert value[("companies_adopting_ai_iot", 2021)] == 2
    assert value[("smart_agriculture_farms", 2020)] == 525
    assert value[("care_facilities_with_robots_ict", 2020)] == 172
    assert value[("disaster_prevention_outreach_people", 2021)] == 5000
    # The stalled indicator: companies stuck at 3 for the last two years.
    assert (
        value[("companies_adopting_ai_iot", 2024)]
        == value[("companies_adopting_ai_iot", 2025)]
        == 3
    )
    assert 0 < value[("teacher_ict_instruction_ability", 2025)] < 1


def test_online_procedures() -> None:
    got = collected("online_procedures")
    assert Counter(o.metric for o in got) == {
        "procedure_applications_online": 67,
        "procedure_applications_all": 67,
    }
    assert {o.granularity for o in got} == {Granularity.MONTH}
    starts = sorted({o.start.date() for o in got})
    assert (starts[0], starts[-1]) == (date(2021, 4, 1), date(2026, 10, 1))
    online = fiscal_totals(got, "procedure_applications_online")
    total = fiscal_totals(got, "procedure_applications_all")
    assert online[2021] / total[2021] == pytest.approx(0.482, abs=0.003)
    assert online[2026] / total[2026] == pytest.approx(0.71, abs=0.02)
    assert all(o.start.tzinfo == TOKYO for o in got)


def test_copy_paper() -> None:
    got = collected("copy_paper")
    assert Counter(o.metric for o in got) == {"copy_paper_purchased_sheets": 79}
    assert {o.granularity for o in got} == {Granularity.MONTH}
    totals = fiscal_totals(got, "copy_paper_purchased_sheets")
    assert totals[2020] == pytest.approx(40_000_000, rel=0.02)
    assert totals[2025] == pytest.approx(14_000_000, rel=0.03)
    assert [totals[fy] for fy in range(2020, 2026)] == sorted(
        totals[fy] for fy in range(2020, 2026)
    )[::-1]


def test_portal_page_views() -> None:
    got = collected("portal_page_views")
    assert Counter(o.metric for o in got) == {
        "portal_page_views": (date(2026, 11, 28) - date(2021, 4, 1)).days + 1
    }
    assert {o.granularity for o in got} == {Granularity.DAY}
    totals = fiscal_totals(got, "portal_page_views")
    assert totals[2021] == pytest.approx(1_000_000, rel=0.03)
    for fy in range(2022, 2026):
        assert totals[fy] / totals[fy - 1] == pytest.approx(1.08, abs=0.03)
    by_weekday: dict[int, list[float]] = defaultdict(list)
    for obs in got:
        by_weekday[obs.start.weekday()].append(obs.value)
    mean = {day: sum(v) / len(v) for day, v in by_weekday.items()}
    assert mean[0] > 1.1 * mean[6], "weekly seasonality: Mondays busier than Sundays"


def test_app_installs() -> None:
    got = collected("app_installs")
    assert {o.metric for o in got} == {"app_first_time_downloads"}
    assert {(o.labels["app"], o.labels["platform"]) for o in got} == {
        ("kenmin", "ios"),
        ("kenmin", "android"),
        ("environment", "ios"),
        ("environment", "android"),
    }
    assert max(o.start.date() for o in got) == date(2026, 11, 28)
    kenmin = fiscal_totals(got, "app_first_time_downloads", app="kenmin")
    environment = fiscal_totals(got, "app_first_time_downloads", app="environment")
    assert all(kenmin[fy] == pytest.approx(10_000, rel=0.1) for fy in range(2021, 2026))
    assert environment[2021] == pytest.approx(10_000, rel=0.1)
    assert all(15_000 <= environment[fy] <= 21_000 for fy in range(2022, 2026))


def test_rpa_run_log() -> None:
    got = collected("rpa_run_log")
    runs = [o for o in got if o.metric == "rpa_runs"]
    processes = {o.labels["process"] for o in runs}
    assert processes == {"支出命令入力", "旅費精算チェック", "会議録整形"}
    covered = sorted({o.start.date() for o in runs})
    assert (covered[0], covered[-1]) == (date(2026, 4, 1), date(2026, 11, 27))  # 28th: Saturday
    assert len(covered) == (covered[-1] - covered[0]).days + 1, "zeros on days without runs"
    days = sorted({o.start.date() for o in runs if o.value})
    assert all(day.weekday() < 5 for day in days), "robots run on working days"
    assert date(2026, 5, 4) not in days, "nor on Golden Week holidays"
    by_result = Counter[str]()
    for obs in runs:
        by_result[obs.labels["result"]] += int(obs.value)
    assert by_result["faulted"] / sum(by_result.values()) == pytest.approx(0.05, abs=0.02)
    assert 0 < by_result["stopped"] < 10
    saved = sum(o.value for o in got if o.metric == "rpa_time_saved_seconds")
    minutes = sources()["rpa_run_log"]["settings"]["manual_minutes_per_run"]
    expected = sum(
        o.value * minutes[o.labels["process"]] * 60
        for o in runs
        if o.labels["result"] == "successful"
    )
    assert saved == expected > 0
