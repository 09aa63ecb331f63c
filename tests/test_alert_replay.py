"""Alerts, proven by replay: a year of simulated time over a fixture catalog with known truth.

Each simulated day, the figures that would have been published by then are written through the
real Store (whose clock is the simulated one, so a figure's arrival is that day), the real
exporter builds its snapshot with its clock set to the day, and its /metrics text is parsed with
prometheus-client. The year of expositions becomes promtool `input_series` (one sample a day),
and real `promtool test rules` evaluates the real rules (prometheus/rules, written by
prometheus/mixin.py) every simulated day, against the alerts the truth table below expects.

The truth table is written by hand from the scenario (what a person reading the figures would
say), not from the exporter: which alert should hold for which KPI from which day to which day.
The test checks every day of the year and every alert, so it proves both: no false alert and
every true stall, overdue figure, miss and target outcome detected on the right day.

Time: promtool's clock starts at 0, the simulation at T0. Every `*_timestamp_seconds` sample
is shifted by -T0. This is exact: the rules use timestamps only as `time() - x` or
`time() > x` (test_rules_compare_timestamps_only_with_time checks it), so shifting time() and
every timestamp by the same T0 leaves each difference, and so each result, unchanged; the
timestamps are whole seconds, so the float subtraction is exact too.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_dashboards import tool
from test_rules import ALERTS, MIXIN, RULE_FILES

from dxkpi.collector.config import Config, LoadedConfig, load_config
from dxkpi.collector.contract import TOKYO, Granularity, Observation, Window
from dxkpi.collector.exporter import Exporter
from dxkpi.collector.storage import Store

T0 = datetime(2025, 10, 1, tzinfo=TOKYO)
DAYS = 365
DAY = 86400

CATALOG = """
kpis:
  - id: annual_on_plan
    name_ja: 年次・計画どおり
    name_en: Annual on plan
    area: test
    unit: cases
    baseline: {value: 100, fiscal_year: 2020}
    target: {value: 240, fiscal_year: 2027}
    feed: {metric: on_plan}
  - id: annual_flat
    name_ja: 年次・横ばい
    name_en: Annual flat
    area: test
    unit: cases
    baseline: {value: 50, fiscal_year: 2020}
    target: {value: 120, fiscal_year: 2027}
    feed: {metric: flat}
  - id: down_on_plan
    name_ja: 削減・計画どおり
    name_en: Down on plan
    area: test
    unit: sheets
    direction: down
    baseline: {value: 1000, fiscal_year: 2020}
    target: {value: 300, fiscal_year: 2027}
    feed: {metric: down}
  - id: monthly_stops
    name_ja: 月次・途絶
    name_en: Monthly that stops
    area: test
    unit: visits
    baseline: {value: 100, fiscal_year: 2024}
    target: {value: 200, fiscal_year: 2026}
    feed: {metric: monthly}
  - id: target_achieved
    name_ja: 目標達成
    name_en: Target achieved
    area: test
    unit: cases
    baseline: {value: 10, fiscal_year: 2021}
    target: {value: 50, fiscal_year: 2025}
    feed: {metric: achieved}
  - id: target_missed
    name_ja: 目標未達
    name_en: Target missed
    area: test
    unit: cases
    baseline: {value: 10, fiscal_year: 2021}
    target: {value: 50, fiscal_year: 2025}
    feed: {metric: missed}
"""

# Annual figures by fiscal year. FY2020-FY2024 were published before the simulation starts;
# FY2025's arrive on ANNUAL_ARRIVAL (mid-June, before the end-of-June due date).
ANNUAL = {
    # +21 a year where the plan asks +20: slightly ahead, forecast beyond the target.
    "on_plan": {2020: 100, 2021: 121, 2022: 142, 2023: 163, 2024: 184, 2025: 205},
    # rose to 70 in FY2022 and stayed there.
    "flat": {2020: 50, 2021: 60, 2022: 70, 2023: 70, 2024: 70, 2025: 70},
    # -105 a year where the plan asks -100.
    "down": {2020: 1000, 2021: 895, 2022: 790, 2023: 685, 2024: 580, 2025: 475},
    # +11 a year where the plan asks +10; FY2025 ends at 55 >= 50.
    "achieved": {2021: 10, 2022: 21, 2023: 32, 2024: 43, 2025: 55},
    # +8 a year where the plan asks +10; FY2025 ends at 40 < 50 (75 % of the way).
    "missed": {2021: 10, 2022: 18, 2023: 26, 2024: 34, 2025: 40},
}
ANNUAL_ARRIVAL = datetime(2026, 6, 15, tzinfo=TOKYO)
# Monthly figures from April 2025, +5 a month (the plan asks +50 a year), each published on the
# 15th of the next month, up to January 2026's (published 15 February); then nothing more.
MONTHLY_FIRST = date(2025, 4, 1)
MONTHLY_LAST = date(2026, 1, 1)
MONTHLY_PUBLISHED_DAY = 15


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=TOKYO)


FY2025_END = at(2026, 4, 1)
# February 2026 ends on 1 March; its figure is due 45 days later (the monthly default lag),
# at 00:00 on 15 April. time() > due holds from the next daily evaluation.
FEBRUARY_DUE = at(2026, 3, 1) + timedelta(days=45)


@dataclass(frozen=True)
class Truth:
    """`alert` holds for `kpi` on the days in [start, end) (end None: to the end of the year)."""

    alert: str
    kpi: str
    start: datetime
    end: datetime | None = None
    labels: tuple[tuple[str, str], ...] = ()


TRUTH = [
    # The flat KPI: no rise in FY2023, FY2024 (and FY2025): stalled all year, 29 points
    # behind its path (70 where FY2024's end expects 90), and on course to miss 120.
    Truth("DxKpiStalled", "annual_flat", T0),
    Truth("DxKpiBehindPath", "annual_flat", T0),
    Truth("DxKpiPredictedToMissTarget", "annual_flat", T0),
    # The missed KPI is 15 points behind (34 where 40 is planned) and heading for 42 < 50,
    # until its target year ends on 1 April 2026: from then on only the outcome speaks.
    Truth("DxKpiBehindPath", "target_missed", T0, FY2025_END),
    Truth("DxKpiPredictedToMissTarget", "target_missed", T0, FY2025_END),
    # The monthly KPI: February 2026's figure never comes.
    Truth("DxKpiDataOverdue", "monthly_stops", FEBRUARY_DUE + timedelta(days=1)),
    # FY2025's figures arrive on 15 June: one notice each, for the notice window.
    Truth(
        "DxKpiTargetPeriodEnded",
        "target_achieved",
        ANNUAL_ARRIVAL,
        ANNUAL_ARRIVAL + timedelta(seconds=MIXIN.TARGET_NOTICE_WINDOW),
        (("outcome", "achieved"), ("target_fiscal_year", "FY2025")),
    ),
    Truth(
        "DxKpiTargetPeriodEnded",
        "target_missed",
        ANNUAL_ARRIVAL,
        ANNUAL_ARRIVAL + timedelta(seconds=MIXIN.TARGET_NOTICE_WINDOW),
        (("outcome", "missed"), ("target_fiscal_year", "FY2025")),
    ),
]
# Everything else must stay quiet all year: the on-plan KPIs (up and down), the stopping
# monthly KPI before its figure is late, the achieved KPI, and every source/exporter alert.
CHECKED_ALERTS = [rule["alert"] for rule in ALERTS if rule["alert"] != "Watchdog"]


def day(index: int) -> datetime:
    return T0 + timedelta(days=index)


def first_firing_day(truth: Truth, wait: int) -> datetime:
    """Prometheus fires an alert at the first evaluation at which its condition has held, at
    every evaluation, for `for` (evaluations are daily here; pending starts at `start`)."""
    return truth.start + timedelta(days=-(-wait // DAY))


def expected_alerts(
    truth: list[Truth], when: datetime, alert: str, waits: dict[str, int]
) -> list[Truth]:
    return [
        t
        for t in truth
        if t.alert == alert
        and first_firing_day(t, waits[alert]) <= when
        and (t.end is None or when < t.end)
    ]


# --- the simulated year -------------------------------------------------------------------


def published(on: datetime) -> Iterator[Observation]:
    """The observations published on day `on` (at its 00:00, before that day's snapshot)."""
    for metric, figures in ANNUAL.items():
        for year, value in figures.items():
            arrival = T0 if year < 2025 else ANNUAL_ARRIVAL
            if arrival == on:
                yield Observation(metric, value, at(year, 4, 1), Granularity.FISCAL_YEAR)
    month, index = MONTHLY_FIRST, 0
    while month <= MONTHLY_LAST:
        following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
        arrival = max(
            T0, at(following.year, following.month, MONTHLY_PUBLISHED_DAY)
        )  # months published before the simulation started arrive with it
        if arrival == on:
            start = at(month.year, month.month, 1)
            yield Observation("monthly", 105 + 5 * index, start, Granularity.MONTH)
        month, index = following, index + 1


Series = dict[tuple[str, tuple[tuple[str, str], ...]], list[float | None]]


def expositions(
    store: Store, loaded: LoadedConfig, start: datetime, days: int, feed: Callable[[datetime], None]
) -> Series:
    """Every KPI and snapshot sample of the exporter's /metrics, one per simulated day, with
    timestamps shifted by -start. `store` and the exporter read the clock `feed` is given."""
    exporter = Exporter(store, loaded, clock=lambda: now)
    series: Series = {}
    for index in range(days + 1):
        now = (start + timedelta(days=index)).timestamp()
        feed(start + timedelta(days=index))
        text = exporter.rebuild().text.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.startswith(("dxkpi_kpi_", "dxkpi_snapshot_")):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                values = series.setdefault(key, [None] * (days + 1))
                shift = start.timestamp() if sample.name.endswith("_timestamp_seconds") else 0
                values[index] = sample.value - shift
    # The exporter is scraped successfully all along.
    up = ("up", (("instance", "exporter:9810"), ("job", MIXIN.EXPORTER_JOB)))
    series[up] = [1.0] * (days + 1)
    return series


class SimulatedClock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now


def replay(tmp_path: Path) -> Series:
    clock = SimulatedClock(T0)
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}", clock=clock)
    store.migrate()
    config = Config.model_validate(yaml.safe_load(CATALOG))

    def feed(when: datetime) -> None:
        clock.now = when.timestamp()
        store.write("fixture", list(published(when)))

    try:
        return expositions(store, LoadedConfig(config, tmp_path / "dxkpi.yaml"), T0, DAYS, feed)
    finally:
        store.close()


def values_text(values: list[float | None]) -> str:
    """promtool's expanding notation: runs of one value as `vxN`, missing samples as `_xN`."""
    runs: list[tuple[float | None, int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    parts = []
    for value, count in runs:
        if value is None:
            parts.append(f"_x{count}")
        else:
            parts.append(repr(value) if count == 1 else f"{value!r}x{count - 1}")
    return " ".join(parts)


def selector(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels)  # fixture labels need no escaping
    return f"{name}{{{inner}}}"


def kpi_labels(config: Config) -> dict[str, dict[str, str]]:
    return {
        k.id: {
            "kpi": k.id,
            "org": k.org,
            "name_ja": k.name_ja,
            "name_en": k.name_en,
            "area": k.area,
        }
        for k in config.kpis
    }


def rule_tests(
    series: Series,
    rule_files: list[Path],
    *,
    config: Config,
    truth: list[Truth],
    start: datetime,
    days: int,
    alerts: list[str],
) -> dict[str, Any]:
    """A promtool test: `alerts` checked at every simulated day against `truth`."""
    waits: dict[str, int] = {alert.name: alert.wait for alert in MIXIN.ALERTS}
    labels = kpi_labels(config)
    checks = []
    for index in range(days + 1):
        when = start + timedelta(days=index)
        for alert in alerts:
            severity = next(r["labels"]["severity"] for r in ALERTS if r["alert"] == alert)
            checks.append(
                {
                    "eval_time": f"{index}d",
                    "alertname": alert,
                    "exp_alerts": [
                        {"exp_labels": {"severity": severity, **labels[t.kpi], **dict(t.labels)}}
                        for t in expected_alerts(truth, when, alert, waits)
                    ],
                }
            )
    return {
        "rule_files": [str(p) for p in rule_files],
        "evaluation_interval": "1d",
        "group_eval_order": ["dxkpi-recording", "dxkpi-kpis", "dxkpi-sources", "dxkpi-meta"],
        "tests": [
            {
                "name": f"{days} simulated days through the real exporter",
                "interval": "1d",
                "input_series": [
                    {"series": selector(name, lab), "values": values_text(values)}
                    for (name, lab), values in sorted(series.items())
                ],
                "alert_rule_test": checks,
            }
        ],
    }


def without_annotations(path: Path, folder: Path) -> Path:
    """The rule file with expressions, `for` and labels kept and annotations dropped: the replay
    checks when alerts fire; their texts are checked by prometheus/tests/."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    out = folder / path.name
    out.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> Series:
    return replay(tmp_path_factory.mktemp("replay"))


def test_rules_compare_timestamps_only_with_time() -> None:
    # What makes the -T0 shift exact (module docstring).
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                for match in re.finditer(r"\w*_timestamp_seconds\b", rule["expr"]):
                    before = rule["expr"][: match.start()].rstrip()
                    assert before.endswith(("time() -", "time() >")), (
                        rule.get("alert") or rule.get("record"),
                        match.group(),
                    )


def test_the_fixture_year_looks_as_the_scenario_says(year: Series) -> None:
    # Guards the truth table's premises, read from the exporter's own output.
    def last(name: str, kpi: str) -> float | None:
        return year[(name, (("kpi", kpi), ("org", "default")))][-1]

    assert last("dxkpi_kpi_stalled", "annual_flat") == 1
    assert last("dxkpi_kpi_stalled", "annual_on_plan") == 0
    assert last("dxkpi_kpi_target_period_ended", "target_achieved") == 1
    due = last("dxkpi_kpi_next_data_due_timestamp_seconds", "monthly_stops")
    assert due == FEBRUARY_DUE.timestamp() - T0.timestamp()


def promtool_test(tmp_path: Path, **cases: Any) -> None:
    rule_files = [without_annotations(p, tmp_path) for p in RULE_FILES]
    spec = tmp_path / "replay.test.yml"
    spec.write_text(yaml.safe_dump(rule_tests(rule_files=rule_files, **cases), allow_unicode=True))
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[:8000] + result.stderr[-2000:]


def test_a_year_of_alerts_matches_the_truth_table(year: Series, tmp_path: Path) -> None:
    promtool_test(
        tmp_path,
        series=year,
        config=Config.model_validate(yaml.safe_load(CATALOG)),
        truth=TRUTH,
        start=T0,
        days=DAYS,
        alerts=CHECKED_ALERTS,
    )


# --- the shipped example ------------------------------------------------------------------

# The shipped example collected on 3 December 2026, then a snapshot a day. Its targets are all
# R7 (FY2025), over since 1 April 2026, and the FY2025 figures are in its files: a fresh install
# learns the outcomes of its nine fiscal-year KPIs on its first day and sends each notice once
# (all nine missed their targets). Its two app-download KPIs are continuous: the exporter dates
# their outcome at the end of FY2025 (the level then), long before this install, so no notice.
# The one stalled KPI is AI/IoT adoption: 3, 3, 3 companies in R5-R7, 17 % of the way to 8;
# every other KPI rose in its latest reported year.
EXAMPLE_START = at(2026, 12, 3) + timedelta(hours=9)
# Three days: the notices' whole window. Its daily app and page-view files end on 28 November and
# nothing is collected after the first day, so from 7 December their figures would be overdue.
EXAMPLE_DAYS = 3
EXAMPLE_FISCAL_YEAR_KPIS = [
    "online_procedure_usage_rate",
    "copy_paper_purchases_sheets",
    "problem_solving_project_participants",
    "migration_portal_page_views",
    "teacher_ict_instruction_ability",
    "companies_adopting_ai_iot",
    "smart_agriculture_farms",
    "care_facilities_with_robots_ict",
    "disaster_prevention_outreach_people",
]
EXAMPLE_CONTINUOUS_KPIS = ["kenmin_app_downloads", "environment_app_downloads"]
EXAMPLE_TRUTH = [
    Truth("DxKpiStalled", "companies_adopting_ai_iot", EXAMPLE_START),
    *[
        Truth(
            "DxKpiTargetPeriodEnded",
            kpi,
            EXAMPLE_START,
            EXAMPLE_START + timedelta(seconds=MIXIN.TARGET_NOTICE_WINDOW),
            (("outcome", outcome), ("target_fiscal_year", "FY2025")),
        )
        for kpi, outcome in [
            *((kpi, "missed") for kpi in EXAMPLE_FISCAL_YEAR_KPIS),
            ("kenmin_app_downloads", "achieved"),  # 99,908 at the end of FY2025 >= 98,441
            ("environment_app_downloads", "missed"),  # 81,774 < 100,000
        ]
    ],
]
# Source alerts need live runs (the e2e test and prometheus/tests/ cover them); here the
# KPI alerts, which depend on the data alone.
KPI_ALERTS = [a.name for a in MIXIN.ALERTS if a.group == "dxkpi-kpis"]


def test_the_shipped_example_fires_only_what_the_readme_lists(tmp_path: Path) -> None:
    from dxkpi.collector.runner import collect_source
    from dxkpi.collector.runtime import EXAMPLE_CONFIG

    loaded = load_config(EXAMPLE_CONFIG)
    kpis = EXAMPLE_FISCAL_YEAR_KPIS + EXAMPLE_CONTINUOUS_KPIS
    assert sorted(k.id for k in loaded.config.kpis) == sorted(kpis)
    clock = SimulatedClock(EXAMPLE_START)
    store = Store(f"sqlite:///{tmp_path / 'example.sqlite'}", clock=clock)
    store.migrate()
    window = Window(at(2020, 4, 1), at(2026, 11, 29))

    def feed(when: datetime) -> None:
        clock.now = when.timestamp()
        if when == EXAMPLE_START:
            for source in loaded.config.sources:
                collect_source(loaded, store, source.id, window=window, now=when)

    try:
        series = expositions(store, loaded, EXAMPLE_START, EXAMPLE_DAYS, feed)
    finally:
        store.close()
    promtool_test(
        tmp_path,
        series=series,
        config=loaded.config,
        truth=EXAMPLE_TRUTH,
        start=EXAMPLE_START,
        days=EXAMPLE_DAYS,
        alerts=KPI_ALERTS,
    )


def test_the_readme_shows_both_truth_tables() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Alerts, proven by replay", 1)[1].split("\n## ", 1)[0]
    config = Config.model_validate(yaml.safe_load(CATALOG))
    for kpi in config.kpis:
        assert f"| `{kpi.id}` |" in section, kpi.id
    for truth in TRUTH + EXAMPLE_TRUTH[:1]:
        assert truth.alert in section, truth
    assert "`companies_adopting_ai_iot`" in section
    assert f"{(DAYS + 1) * len(CHECKED_ALERTS):,} checks" in section
