"""KPI semantics on reported periods: the figure of the latest complete period, its path,
progress, stall, data due, target outcomes, fiscal-year and as-of queries, units."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from dxkpi.collector.config import Config
from dxkpi.collector.contract import TOKYO, Granularity, Observation
from dxkpi.collector.kpi import KpiCalculator, KpiState
from dxkpi.collector.storage import Store


def config(**kpi: Any) -> Config:
    base: dict[str, Any] = {
        "id": "k",
        "name_ja": "指標",
        "name_en": "Indicator",
        "area": "a",
        "unit": "u",
        "baseline": {"value": 100, "fiscal_year": 2021},
        "target": {"value": 200, "fiscal_year": 2025},
        "feed": {"metric": "m"},
    }
    base.update(kpi)
    return Config.model_validate({"kpis": [base]})


def at(*args: int) -> float:
    return datetime(*args, tzinfo=TOKYO).timestamp()  # type: ignore[misc]


def compute(store: Store, cfg: Config, now: float, fiscal_year: int | None = None) -> KpiState:
    return KpiCalculator(store, cfg).compute_all(now, fiscal_year=fiscal_year)[0]


def fy(year: int) -> datetime:
    return datetime(year, 4, 1, tzinfo=TOKYO)


def annual(store: Store, figures: dict[int, float], metric: str = "m") -> None:
    store.write(
        "s", [Observation(metric, v, fy(y), Granularity.FISCAL_YEAR) for y, v in figures.items()]
    )


def months(
    start: datetime, values: list[float], metric: str = "m", **labels: str
) -> list[Observation]:
    out = []
    day = start
    for value in values:
        out.append(Observation(metric, value, day, Granularity.MONTH, labels))
        day = (day + timedelta(days=32)).replace(day=1)
    return out


# -- annual figures --------------------------------------------------------------------------


def test_annual_value_is_the_latest_reported_year_with_the_path_at_its_end(
    sqlite_store: Store,
) -> None:
    annual(sqlite_store, {2021: 100, 2022: 120, 2023: 140})
    state = compute(sqlite_store, config(), at(2024, 8, 1))
    assert state.cadence == "fiscal_year"
    assert (state.value, state.period_label) == (140, "FY2023")
    assert state.period_end == at(2024, 4, 1)
    # baseline at the end of FY2021, target at the end of FY2025: FY2023's end is halfway
    assert state.expected_value == pytest.approx(150, abs=0.2)
    assert state.progress == pytest.approx(0.4)
    assert state.expected_progress == pytest.approx(0.5, abs=0.01)
    assert state.last_change_ts == at(2024, 4, 1)
    assert not state.stalled
    # +20 a year reaches 180 at the end of FY2025, short of 200
    assert state.forecast == pytest.approx(180, abs=1)
    assert state.on_track is False
    assert state.status_word == "behind"


def test_a_figure_for_the_running_year_is_partial_not_the_value(sqlite_store: Store) -> None:
    annual(sqlite_store, {2021: 100, 2022: 120, 2024: 130})
    state = compute(sqlite_store, config(), at(2024, 8, 1))
    assert (state.value, state.period_label) == (120, "FY2022")
    assert state.running_value == 130
    assert state.running_period_end == at(2025, 4, 1)


def test_a_flat_year_is_a_stall_and_a_rising_one_is_not(sqlite_store: Store) -> None:
    # the seed's AI/IoT adoption: 2, 2, 3, 3, 3 against a target of 8
    cfg = config(
        baseline={"value": 2, "fiscal_year": 2021}, target={"value": 8, "fiscal_year": 2025}
    )
    annual(sqlite_store, {2021: 2, 2022: 2, 2023: 3, 2024: 3})
    state = compute(sqlite_store, cfg, at(2025, 7, 1))
    assert state.stalled and state.periods_without_improvement == 1
    assert state.last_change_ts == at(2024, 4, 1)  # FY2023's end: the year it rose
    assert state.status_word == "stalled"
    annual(sqlite_store, {2025: 4})
    risen = compute(sqlite_store, cfg, at(2026, 7, 1))
    assert not risen.stalled and risen.last_change_ts == at(2026, 4, 1)


def test_stall_periods_counts_reported_periods(sqlite_store: Store) -> None:
    annual(sqlite_store, {2021: 100, 2022: 110, 2023: 110})
    assert compute(sqlite_store, config(stall_periods=2), at(2024, 8, 1)).stalled is False
    annual(sqlite_store, {2024: 105})
    later = compute(sqlite_store, config(stall_periods=2), at(2025, 8, 1))
    assert later.stalled and later.periods_without_improvement == 2


def test_no_good_move_in_history_still_dates_the_last_change(sqlite_store: Store) -> None:
    annual(sqlite_store, {2021: 100, 2022: 100, 2023: 90})
    state = compute(sqlite_store, config(), at(2024, 8, 1))
    # never rose: the series exists (the first period's end) so the stall rule cannot go silent
    assert state.last_change_ts == at(2022, 4, 1)
    assert state.stalled and state.periods_without_improvement == 2


def test_annual_figure_due_by_the_end_of_june_then_overdue(sqlite_store: Store) -> None:
    annual(sqlite_store, {2021: 100, 2022: 120})
    due = at(2024, 4, 1) + 91 * 86400  # FY2023's end + 91 days = 2024-07-01
    on_time = compute(sqlite_store, config(), at(2024, 6, 30))
    assert on_time.next_data_due_ts == due and not on_time.overdue
    late = compute(sqlite_store, config(), at(2024, 7, 2))
    assert late.overdue and late.status_word == "overdue"
    assert compute(sqlite_store, config(publication_lag="120d"), at(2024, 7, 2)).overdue is False


# -- sums over months ------------------------------------------------------------------------


def copy_paper(**extra: Any) -> Config:
    fields: dict[str, Any] = {
        "unit": "sheets",
        "direction": "down",
        "baseline": {"value": 40_000_000, "fiscal_year": 2020},
        "target": {"value": 12_000_000, "fiscal_year": 2025},
        "feed": {"kind": "fiscal_year_sum", "metric": "paper"},
    }
    return config(**{**fields, **extra})


def test_fiscal_year_sum_reports_the_last_complete_year_and_the_year_to_date(
    sqlite_store: Store,
) -> None:
    sqlite_store.write("s", months(fy(2023), [2_000_000] * 12 + [1_500_000] * 4, metric="paper"))
    state = compute(sqlite_store, copy_paper(), at(2024, 8, 20))
    assert (state.value, state.period_label) == (24_000_000, "FY2023")
    assert state.running_value == 6_000_000
    assert state.progress == pytest.approx(16 / 28)
    # monthly rows: the next one (August) is due 45 days after August ends
    assert state.next_data_due_ts == at(2024, 9, 1) + 45 * 86400


def test_monthly_data_that_stops_is_overdue_and_never_a_complete_year(sqlite_store: Store) -> None:
    # rows stop after July 2024: FY2024 must not count as complete with 4 of 12 months
    sqlite_store.write("s", months(fy(2023), [2_000_000] * 16, metric="paper"))
    state = compute(sqlite_store, copy_paper(), at(2025, 5, 1))
    assert state.period_label == "FY2023" and state.value == 24_000_000
    assert state.overdue and state.next_data_due_ts == at(2024, 9, 1) + 45 * 86400
    assert not state.stalled  # stopped data is overdue, not a stall


def test_a_missing_month_keeps_the_year_incomplete(sqlite_store: Store) -> None:
    rows = months(fy(2023), [1_000_000] * 13, metric="paper")
    del rows[5]  # September 2023 never arrived
    sqlite_store.write("s", rows)
    state = compute(sqlite_store, copy_paper(), at(2024, 5, 20))
    assert state.value is None and state.period_label is None
    # the fiscal year was due 45 days after it ended: the gap is overdue even though April came
    assert state.next_data_due_ts == at(2024, 4, 1) + 45 * 86400
    assert compute(sqlite_store, copy_paper(), at(2024, 5, 17)).overdue


def test_trailing_twelve_months_when_declared(sqlite_store: Store) -> None:
    cfg = copy_paper(feed={"kind": "fiscal_year_sum", "metric": "paper", "window": "trailing_12m"})
    sqlite_store.write("s", months(fy(2023), [2_000_000] * 12 + [1_000_000] * 3, metric="paper"))
    state = compute(sqlite_store, cfg, at(2024, 7, 20))
    assert state.cadence == "month"
    assert (state.period_label, state.value) == ("2024-06", 21_000_000)
    assert state.progress == pytest.approx(19 / 28)


def test_ratio_is_the_sum_of_numerators_over_the_sum_of_denominators(sqlite_store: Store) -> None:
    cfg = config(
        unit="ratio",
        baseline={"value": 0.482, "fiscal_year": 2021},
        target={"value": 0.8, "fiscal_year": 2025},
        feed={"kind": "ratio", "numerator": {"metric": "online"}, "denominator": {"metric": "all"}},
    )
    sqlite_store.write(
        "s",
        months(fy(2022), [10] * 11 + [120], metric="online")
        + months(fy(2022), [100] * 11 + [200], metric="all")
        + months(fy(2023), [60], metric="online")
        + months(fy(2023), [100], metric="all"),
    )
    state = compute(sqlite_store, cfg, at(2023, 5, 20))
    assert state.value == pytest.approx(230 / 1300)  # not the mean of monthly ratios
    assert state.running_value == pytest.approx(0.6)


# -- continuous KPIs -------------------------------------------------------------------------


def installs(**extra: Any) -> Config:
    fields: dict[str, Any] = {
        "unit": "downloads",
        "baseline": {"value": 1000, "fiscal_year": 2020},
        "target": {"value": 5000, "fiscal_year": 2025},
        "feed": {
            "kind": "cumulative_sum",
            "metric": "installs",
            "labels": {"app": "a"},
            "since": "2021-04-01",
            "initial": 1000,
        },
    }
    return config(**{**fields, **extra})


def test_cumulative_sum_is_continuous_initial_plus_everything_since(sqlite_store: Store) -> None:
    days = [
        Observation("installs", 10, fy(2021) + timedelta(days=i), labels={"app": "a", "p": p})
        for i in range(100)
        for p in ("ios", "android")
    ]
    days.append(Observation("installs", 999, fy(2020), labels={"app": "a", "p": "ios"}))
    days.append(Observation("installs", 7, fy(2021), labels={"app": "b", "p": "ios"}))
    sqlite_store.write("s", days)
    state = compute(sqlite_store, installs(), at(2021, 7, 20))
    assert state.cadence == "continuous"
    assert state.value == 1000 + 100 * 2 * 10
    assert state.period_label == "2021-07-09"
    assert state.next_data_due_ts == at(2021, 7, 11) + 7 * 86400
    assert state.stall_after == timedelta(days=90) and not state.stalled


def test_a_continuous_stall_is_measured_up_to_the_newest_data_not_now(sqlite_store: Store) -> None:
    rows = [
        Observation(
            "installs", 10 if i < 30 else 0, fy(2021) + timedelta(days=i), labels={"app": "a"}
        )
        for i in range(150)
    ]
    sqlite_store.write("s", rows)
    state = compute(sqlite_store, installs(stall_after="60d"), at(2021, 8, 30))
    assert state.last_change_ts == at(2021, 5, 1)
    assert state.stalled
    assert not compute(sqlite_store, installs(stall_after="150d"), at(2022, 8, 30)).stalled


# -- targets ---------------------------------------------------------------------------------


def test_an_ended_target_period_has_an_outcome_and_the_next_target_takes_over(
    sqlite_store: Store,
) -> None:
    cfg = config(
        baseline={"value": 100, "fiscal_year": 2020},
        target=None,
        targets=[{"value": 150, "fiscal_year": 2022}, {"value": 300, "fiscal_year": 2025}],
    )
    annual(sqlite_store, {2020: 100, 2021: 130})
    during = compute(sqlite_store, cfg, at(2022, 10, 1))
    assert during.target.fiscal_year == 2022 and not during.target_period_ended
    annual(sqlite_store, {2022: 160})
    after = compute(sqlite_store, cfg, at(2023, 8, 1))
    assert after.target.value == 300 and not after.target_period_ended
    [outcome] = after.outcomes
    assert (outcome.fiscal_year, outcome.outcome, outcome.final_value) == (2022, "achieved", 160)
    assert outcome.final_progress == pytest.approx(60 / 50)
    # the second target's path starts at the first target (150 at the end of FY2022)
    assert after.baseline_value == 150 and after.expected_value == pytest.approx(150)


def test_after_the_last_target_year_the_outcome_replaces_warnings(sqlite_store: Store) -> None:
    annual(sqlite_store, {2021: 100, 2022: 120, 2023: 140, 2024: 160})
    pending = compute(sqlite_store, config(), at(2026, 5, 1))
    assert pending.target_period_ended
    assert [o.outcome for o in pending.outcomes] == ["pending"]
    annual(sqlite_store, {2025: 190})
    missed = compute(sqlite_store, config(), at(2026, 7, 1))
    assert [(o.outcome, o.final_value) for o in missed.outcomes] == [("missed", 190)]
    assert missed.forecast == 190 and missed.status_word == "missed"
    assert missed.outcomes[0].known_at is not None


def test_fiscal_year_pins_the_reported_period(sqlite_store: Store) -> None:
    annual(sqlite_store, {2020: 90, 2021: 100, 2022: 120, 2023: 140})
    state = compute(sqlite_store, config(), at(2026, 12, 3), fiscal_year=2021)
    assert (state.value, state.period_label, state.complete) == (100, "FY2021", True)
    assert state.progress == 0 and state.expected_value == pytest.approx(100)


def test_as_of_sees_only_periods_started_by_then(sqlite_store: Store) -> None:
    annual(sqlite_store, {2021: 100, 2022: 120, 2023: 140})
    state = compute(sqlite_store, config(), at(2023, 6, 1))
    assert (state.value, state.period_label) == (120, "FY2022")


def test_units_convert_seconds_to_hours(sqlite_store: Store) -> None:
    cfg = config(
        unit="hours",
        baseline={"value": 500, "fiscal_year": 2021},
        target={"value": 1000, "fiscal_year": 2025},
        feed={"kind": "fiscal_year_sum", "metric": "saved", "unit": "seconds"},
    )
    sqlite_store.write("s", months(fy(2022), [80 * 3600] * 12, metric="saved"))
    state = compute(sqlite_store, cfg, at(2023, 5, 1))
    assert state.value == pytest.approx(960)


def test_milestones_bend_the_path(sqlite_store: Store) -> None:
    annual(sqlite_store, {2021: 100, 2022: 180})
    state = compute(sqlite_store, config(milestones={"R4": 180}), at(2023, 5, 1))
    assert state.expected_value == pytest.approx(180)  # at the end of FY2022, the milestone


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cadence": "fiscal_year", "stall_after": "400d"}, "use stall_periods|set stall_periods"),
        ({"targets": [{"value": 300, "fiscal_year": 2025}]}, "exactly one of `target`"),
        (
            {
                "target": None,
                "targets": [
                    {"value": 300, "fiscal_year": 2025},
                    {"value": 250, "fiscal_year": 2023},
                ],
            },
            "fiscal-year order",
        ),
        ({"feed": {"metric": "m", "window": "trailing_12m"}}, "`window` only applies"),
    ],
)
def test_config_errors_say_what_to_write(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**change)
