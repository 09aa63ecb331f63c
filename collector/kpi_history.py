"""Stores the KPI figures of every reported period so that SQL can chart the plan's history.

Prometheus only sees the present; the store holds the plan's whole history (R2 to R7 and
beyond). `refresh_kpi_periods` computes every KPI (collector/kpi.py, the same figures as the
gauges and `status`) and replaces the rows of the KPI history tables with them
(collector/storage/kpi_periods.py); Grafana reads them through the views of migration 0003.

It runs after a collection that changed data and every 15 minutes (tasks/kpis.py: the path and
the completeness of periods follow the calendar), and as `dxkpi refresh-kpis`. The exporter
never writes: it computes its own snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dxkpi.collector.config import Config
from dxkpi.collector.kpi import KpiCalculator, KpiState
from dxkpi.collector.storage import Store
from dxkpi.collector.storage.kpi_periods import KpiHistory, Row, replace_kpi_history

__all__ = ["history_of", "refresh_kpi_periods"]


def refresh_kpi_periods(
    store: Store, config: Config, as_of: float, *, clock: Callable[[], float] = time.time
) -> KpiHistory:
    """Compute every KPI as of `as_of` and store its periods, outcomes and path; returns them."""
    calculator = KpiCalculator(store, config)
    history = history_of(calculator, calculator.compute_all(as_of), as_of, clock())
    replace_kpi_history(store, history)
    return history


def history_of(
    calculator: KpiCalculator, states: list[KpiState], as_of: float, computed_at: float
) -> KpiHistory:
    """The table rows for `states`."""
    history = KpiHistory()
    for state in states:
        history.kpis.append(_kpi_row(state, as_of, computed_at))
        kpi = state.kpi.id
        org = state.org
        history.periods.extend(
            {
                "kpi": kpi,
                "org": org,
                "period_start": p.start,
                "period_end": p.end,
                "fiscal_year": p.fiscal_year,
                "label": p.label,
                "value": p.value,
                "complete": p.complete,
                "missing": ",".join(p.missing) or None,
                "expected": p.expected,
                "baseline_value": p.baseline_value,
                "target_value": p.target_value,
                "target_fiscal_year": p.target_fiscal_year,
                "progress": p.progress,
                "arrived_at": p.arrived_at,
            }
            for p in state.periods
        )
        history.outcomes.extend(
            {
                "kpi": kpi,
                "org": org,
                "target_fiscal_year": o.fiscal_year,
                "target_value": o.target_value,
                "outcome": o.outcome,
                "final_value": o.final_value,
                "final_progress": o.final_progress,
                "known_at": o.known_at,
            }
            for o in state.outcomes
        )
        # Every target's path, not only the current one's: a revised plan shows both lines.
        history.path.extend(
            {
                "kpi": kpi,
                "org": org,
                "target_fiscal_year": target.fiscal_year,
                "at": at,
                "value": value,
            }
            for target in state.kpi.plan
            for at, value in calculator.path_points(state.kpi, target)
        )
    return history


def _kpi_row(state: KpiState, as_of: float, computed_at: float) -> Row:
    kpi = state.kpi
    return {
        "kpi": kpi.id,
        "org": state.org,
        "rollup": state.rollup is not None,
        "name_ja": kpi.name_ja,
        "name_en": kpi.name_en,
        "area": kpi.area,
        "unit": kpi.unit,
        "cadence": state.cadence,
        "direction": state.direction,
        "value": state.value,
        "period_label": state.period_label,
        "period_end": state.period_end,
        "baseline_value": state.baseline_value,
        "baseline_fiscal_year": state.baseline_fiscal_year,
        "target_value": state.target.value,
        "target_fiscal_year": state.target.fiscal_year,
        "target_end": state.target_ts,
        "target_period_ended": state.target_period_ended,
        "expected_value": state.expected_value,
        "progress": state.progress,
        "expected_progress": state.expected_progress,
        "forecast": state.forecast,
        "on_track": state.on_track,
        "stalled": state.stalled,
        "last_change_at": state.last_change_ts,
        "next_data_due_at": state.next_data_due_ts,
        "status": state.status_word,
        "as_of": as_of,
        "computed_at": computed_at,
    }
