"""Writes the provisioned Grafana dashboards (grafana/dashboards/*.json) from this one file.

    .venv/bin/python grafana/generate.py

The JSON files are committed, so Grafana needs nothing but the files; tests/test_dashboards.py
fails when they differ from what this script writes. Edit here, not in the JSON.

Panels read one of the two provisioned data sources (uids below): Prometheus for the live
state (KPI gauges, source health, alerts), PostgreSQL for the plan's whole history (the
`dxkpi_*_v` views, grafana/README.md). Every dashboard uses the Asia/Tokyo timezone and fiscal
years that start in April. Titles are Japanese; panel descriptions carry the English.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DATASOURCE = {"type": "prometheus", "uid": "dxkpi-prometheus"}
PROMETHEUS_NAME = "dxkpi Prometheus"  # the alert list names its rule source by name
POSTGRES = {"type": "postgres", "uid": "dxkpi-postgres"}
OUT = Path(__file__).resolve().parent / "dashboards"
APRIL = 3  # Grafana numbers the fiscal year's first month from 0 = January.
HOURS = "suffix: h"  # Grafana's own "h" unit turns 962 hours into "40.1 day"; reports say hours.

# Every KPI query of the overview is limited to the selected KPIs and, inside a repeated area
# row, to that row's area; joining dxkpi_kpi_info also brings the Japanese name and the unit.
KPI_INFO = 'dxkpi_kpi_info{area=~"$area", kpi=~"$kpi", org=~"$org"}'


def query(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    """One Prometheus target; `table` is an instant query laid out as a table."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "instant": instant or table,
        "range": not (instant or table),
        "format": "table" if table else "time_series",
    }


def sql(raw: str, *, table: bool = False) -> Json:
    """One PostgreSQL target over the KPI history views. `time_series` wants a `time` column
    (and a `metric` column to name the series); `table` returns the rows as they are."""
    return {
        "datasource": POSTGRES,
        "rawSql": " ".join(raw.split()),
        "rawQuery": True,
        "editorMode": "code",
        "format": "table" if table else "time_series",
    }


def panel(
    kind: str,
    title: str,
    description: str,
    queries: list[Json],
    *,
    unit: str,
    defaults: Json | None = None,
    **extra: Any,
) -> Json:
    """A panel on its queries' datasource; queries get refIds A, B, C... in order."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": queries[0]["datasource"],
        "targets": [q | {"refId": chr(ord("A") + i)} for i, q in enumerate(queries)],
        "fieldConfig": {"defaults": {"unit": unit} | (defaults or {}), "overrides": []},
        **extra,
    }


def stat(title: str, description: str, queries: list[Json], *, unit: str, **extra: Any) -> Json:
    calc = extra.pop("calc", "lastNotNull")
    options = {
        "reduceOptions": {"calcs": [calc], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "textMode": "auto",
    }
    return panel("stat", title, description, queries, unit=unit, options=options, **extra)


def timeseries(
    title: str,
    description: str,
    queries: list[Json],
    *,
    unit: str,
    bars: bool = False,
    **extra: Any,
) -> Json:
    custom: Json = {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}
    if not bars:
        custom = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 0, "showPoints": "auto"}
    defaults = {"custom": custom} | extra.pop("defaults", {})
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    return panel(
        "timeseries",
        title,
        description,
        queries,
        unit=unit,
        defaults=defaults,
        options=options,
        **extra,
    )


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def variable(name: str, label: str, query_text: str, *, regex: str = "") -> Json:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "query": {"query": query_text, "refId": f"{name}-variable"},
        "definition": query_text,
        "regex": regex,
        "refresh": 2,  # on time range change: KPIs and sources come and go with the config
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def sql_variable(name: str, label: str, query_text: str) -> Json:
    """A variable read from the KPI history views: `__value` / `__text` columns."""
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": POSTGRES,
        "query": query_text,
        "definition": query_text,
        "regex": "",
        "refresh": 1,  # on load: the KPIs come with the config, refreshed into the store
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 0,  # as the query orders them
    }


class Grid:
    """Places panels left to right in Grafana's 24-column grid, wrapping to a new line."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self.x = self.y = self.line_height = 0

    def add(self, item: Json, width: int, height: int) -> None:
        if self.x + width > 24:
            self.newline()
        item["id"] = len(self.panels) + 1
        item["gridPos"] = {"x": self.x, "y": self.y, "w": width, "h": height}
        self.panels.append(item)
        self.x += width
        self.line_height = max(self.line_height, height)

    def row(self, title: str, *, repeat: str | None = None) -> None:
        self.newline()
        item: Json = {"type": "row", "title": title, "collapsed": False, "panels": []}
        if repeat:
            item["repeat"] = repeat
        self.add(item, 24, 1)
        self.newline()

    def newline(self) -> None:
        self.y += self.line_height
        self.x = self.line_height = 0


def dashboard(uid: str, title: str, description: str, grid: Grid, **extra: Any) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["dxkpi"],
        "timezone": "Asia/Tokyo",
        "fiscalYearStartMonth": APRIL,
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "refresh": "5m",
        "links": [
            {
                "type": "dashboards",
                "tags": ["dxkpi"],
                "title": "dxkpi",
                "asDropdown": False,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": grid.panels,
        "annotations": {"list": []},
        **extra,
    }


# --- KPI overview ----------------------------------------------------------------------------


def kpi_overview() -> Json:
    grid = Grid()
    grid.row("アラート (alerts)")
    grid.add(alert_list(), 24, 7)
    grid.row("全体 (all selected KPIs)")
    grid.add(
        stat(
            "指標数",
            "Number of KPIs selected (from the KPI catalog).",
            [query(f"count({KPI_INFO})", instant=True)],
            unit="short",
        ),
        6,
        4,
    )
    grid.add(
        stat(
            "目標達成見込み",
            "KPIs whose robust trend (Theil-Sen) reaches the target by the target date.",
            [query(f"sum(dxkpi_kpi_on_track and on (kpi, org) {KPI_INFO})", instant=True)],
            unit="short",
            defaults={"color": {"mode": "fixed", "fixedColor": "green"}},
        ),
        6,
        4,
    )
    grid.add(
        stat(
            "未達見込み",
            "KPIs forecast to miss their target (alert DxKpiPredictedToMissTarget).",
            [
                query(
                    f"count((dxkpi_kpi_on_track == 0) and on (kpi, org) {KPI_INFO}) or vector(0)",
                    instant=True,
                )
            ],
            unit="short",
            defaults={"thresholds": thresholds((None, "green"), (1, "orange"))},
        ),
        6,
        4,
    )
    grid.add(
        stat(
            "データなし",
            "Catalogued KPIs without any value yet (alert DxKpiDataMissing).",
            [
                query(
                    f"count({KPI_INFO} unless on (kpi, org) dxkpi_kpi_value) or vector(0)",
                    instant=True,
                )
            ],
            unit="short",
            defaults={"thresholds": thresholds((None, "green"), (1, "red"))},
        ),
        6,
        4,
    )

    grid.row("分野: $area", repeat="area")
    progress = f"* on (kpi, org) group_left (name_ja) {KPI_INFO}"
    grid.add(
        panel(
            "bargauge",
            "進捗率（実績と計画）",
            "Progress from baseline (0 %) to target (100 %) per KPI: actual, and what the straight "
            "path from baseline to target expects today. Works for KPIs that must fall.",
            [
                query(f"dxkpi_kpi_progress_ratio {progress}", "{{name_ja}} 実績", instant=True),
                query(
                    f"dxkpi_kpi_expected_progress_ratio {progress}",
                    "{{name_ja}} 計画",
                    instant=True,
                ),
            ],
            unit="percentunit",
            defaults={
                "min": 0,
                "max": 1,
                "thresholds": thresholds((None, "red"), (0.5, "orange"), (1, "green")),
            },
            options={
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": True,
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
        ),
        10,
        10,
    )
    grid.add(kpi_table(), 14, 10)

    grid.row("指標別の推移 (per KPI: actual, planned and forecast progress)")
    grid.add(
        timeseries(
            "${kpi:text}",
            "Progress toward the target over time, 0 % = baseline, 100 % = target: actual, the "
            "planned straight path, and where the forecast (robust Theil-Sen trend) says the KPI "
            "will be at the end of the target fiscal year.",
            [
                query('dxkpi_kpi_progress_ratio{kpi=~"$kpi", org=~"$org"}', "実績 (actual)"),
                query(
                    'dxkpi_kpi_expected_progress_ratio{kpi=~"$kpi", org=~"$org"}',
                    "計画 (planned path)",
                ),
                query(
                    'kpi:dxkpi_kpi_forecast_progress:ratio{kpi=~"$kpi", org=~"$org"}',
                    "目標年度末の予測 (forecast at target date)",
                ),
            ],
            unit="percentunit",
            defaults={
                "thresholds": thresholds((None, "transparent"), (1, "green")),
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 2,
                    "fillOpacity": 0,
                    "showPoints": "auto",
                    "thresholdsStyle": {"mode": "line+area"},
                },
            },
            repeat="kpi",
            repeatDirection="h",
            maxPerRow=3,
        ),
        8,
        8,
    )
    return dashboard(
        "dxkpi-kpi-overview",
        "DX推進KPI 進捗一覧",
        "Every KPI of the catalog: value, baseline, target, progress against the planned path, "
        "and the forecast at the target date. Grouped by policy area.",
        grid,
        time={"from": "now-2y", "to": "now"},
        templating={
            "list": [
                # The organisation (or a roll-up's label, e.g. `all`): per-org and rolled up.
                variable("org", "団体 (organisation)", "label_values(dxkpi_kpi_info, org)"),
                variable("area", "分野 (area)", "label_values(dxkpi_kpi_info, area)"),
                variable(
                    "kpi",
                    "指標 (KPI)",
                    'query_result(dxkpi_kpi_info{area=~"$area", org=~"$org"})',
                    # Value = the KPI id, shown text = its Japanese name (labels in any order).
                    regex=r'/^(?=.*\bkpi="(?<value>[^"]+)")(?=.*\bname_ja="(?<text>[^"]+)")/',
                ),
            ]
        },
    )


KPI_TABLE_COLUMNS = (
    ("dxkpi_kpi_value", "実績 (value)"),
    ("dxkpi_kpi_baseline_value", "基準値 (baseline)"),
    ("dxkpi_kpi_target_value", "目標値 (target)"),
    ("dxkpi_kpi_expected_value", "計画値 (planned today)"),
    ("dxkpi_kpi_forecast_value", "予測値 (forecast at target date)"),
    ("dxkpi_kpi_progress_ratio", "進捗率 (progress)"),
    ("dxkpi_kpi_on_track", "見込み (on track)"),
)


def kpi_table() -> Json:
    join = f"* on (kpi, org) group_left (name_ja, unit) {KPI_INFO}"
    item = panel(
        "table",
        "実績・基準値・目標値",
        "Latest value, baseline, target, the planned value for today and the forecast at the "
        "target date, in each KPI's own unit (ratio = 0.482 for 48.2 %).",
        [query(f"{metric} {join}", table=True) for metric, _ in KPI_TABLE_COLUMNS],
        unit="locale",
        options={"showHeader": True, "cellHeight": "sm"},
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "job": True, "instance": True, "kpi": True},
                    "indexByName": {"name_ja": 0, "unit": 1},
                    "renameByName": {"name_ja": "指標 (KPI)", "unit": "単位 (unit)"}
                    | {
                        f"Value #{chr(ord('A') + i)}": title
                        for i, (_, title) in enumerate(KPI_TABLE_COLUMNS)
                    },
                },
            },
        ],
    )
    item["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byName", "options": "進捗率 (progress)"},
            "properties": [{"id": "unit", "value": "percentunit"}],
        },
        {
            "matcher": {"id": "byName", "options": "見込み (on track)"},
            "properties": [
                {
                    "id": "mappings",
                    "value": [
                        {
                            "type": "value",
                            "options": {
                                "1": {"text": "達成見込み", "color": "green", "index": 0},
                                "0": {"text": "未達見込み", "color": "red", "index": 1},
                            },
                        }
                    ],
                },
                {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            ],
        },
    ]
    return item


def alert_list() -> Json:
    """Grafana's alert list over the Prometheus rules (prometheus/rules/): firing and pending."""
    return {
        "type": "alertlist",
        "title": "発生中のアラート",
        "description": "Alerts of the dxkpi Prometheus rules that are firing or pending, most "
        "important first. Each alert's runbook and dashboard links are in its annotations.",
        "options": {
            "viewMode": "list",
            "groupMode": "default",
            "groupBy": [],
            "maxItems": 50,
            "sortOrder": 3,  # importance
            "dashboardAlerts": False,
            "alertName": "",
            "alertInstanceLabelFilter": "",
            "datasource": PROMETHEUS_NAME,
            "folder": None,
            "showInstances": True,
            "stateFilter": {
                "firing": True,
                "pending": True,
                "noData": False,
                "normal": False,
                "error": True,
            },
        },
    }


# --- KPI history (PostgreSQL) ----------------------------------------------------------------

# The selected KPIs, in SQL: Grafana writes a multi-value variable as 'a','b'.
SELECTED = "kpi IN ($kpi) AND org IN ($org)"
# Days until (negative) or past (positive) the next figure's due date.
DAYS_OVERDUE = (
    '(time() - dxkpi_kpi_next_data_due_timestamp_seconds{kpi=~"$kpi", org=~"$org"}) / 86400'
)
STALL_COLUMNS = (
    # (PromQL over the selected KPIs, column title)
    ('dxkpi_kpi_stalled{kpi=~"$kpi", org=~"$org"}', "停滞 (stalled)"),
    (
        'dxkpi_kpi_periods_without_improvement{kpi=~"$kpi", org=~"$org"}',
        "改善なしの期間数 (periods)",
    ),
    (
        'dxkpi_kpi_last_change_timestamp_seconds{kpi=~"$kpi", org=~"$org"} * 1000',
        "最後の改善 (last good move)",
    ),
    (
        'dxkpi_kpi_next_data_due_timestamp_seconds{kpi=~"$kpi", org=~"$org"} * 1000',
        "次の数値の期限 (next figure due)",
    ),
    (DAYS_OVERDUE, "期限超過日数 (days overdue)"),
)
OUTCOME_WORDS = {
    "achieved": ("達成 (achieved)", "green"),
    "missed": ("未達 (missed)", "red"),
    "pending": ("確定待ち (pending)", "blue"),
}


def stall_table() -> Json:
    """Stall and overdue state of the selected KPIs: where DxKpiStalled and DxKpiDataOverdue
    link to (grafana/README.md)."""
    join = 'on (kpi, org) group_left (name_ja) dxkpi_kpi_info{kpi=~"$kpi", org=~"$org"}'
    item = panel(
        "table",
        "停滞・データ遅延",
        "Per KPI: stalled (no move in the good direction in its last stall_periods reported "
        "periods, alert DxKpiStalled), how many reported periods in a row made no good move, "
        "the end of the period of the last good move, when the next figure is due and how "
        "many days past that date it is (negative: days left; positive: alert DxKpiDataOverdue).",
        [query(f"({expr}) * {join}", table=True) for expr, _ in STALL_COLUMNS],
        unit="short",
        options={
            "showHeader": True,
            "cellHeight": "sm",
            "sortBy": [{"displayName": "停滞 (stalled)", "desc": True}],
        },
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "job": True, "instance": True},
                    "indexByName": {"name_ja": 0, "kpi": 1},
                    "renameByName": {"name_ja": "指標 (KPI)", "kpi": "id"}
                    | {
                        f"Value #{chr(ord('A') + i)}": title
                        for i, (_, title) in enumerate(STALL_COLUMNS)
                    },
                },
            },
        ],
    )
    dates = [title for expr, title in STALL_COLUMNS if "* 1000" in expr]
    item["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byName", "options": title},
            "properties": [{"id": "unit", "value": "dateTimeAsIsoNoDateIfToday"}],
        }
        for title in dates
    ] + [
        {
            "matcher": {"id": "byName", "options": "停滞 (stalled)"},
            "properties": [
                {
                    "id": "mappings",
                    "value": [
                        {
                            "type": "value",
                            "options": {
                                "1": {"text": "停滞", "color": "orange", "index": 0},
                                "0": {"text": "-", "color": "green", "index": 1},
                            },
                        }
                    ],
                },
                {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            ],
        },
        {
            "matcher": {"id": "byName", "options": "期限超過日数 (days overdue)"},
            "properties": [
                {"id": "decimals", "value": 0},
                {"id": "thresholds", "value": thresholds((None, "green"), (0, "red"))},
                {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            ],
        },
    ]
    return item


def outcome_table() -> Json:
    item = panel(
        "table",
        "目標期間の結果",
        "Every ended target period of the selected KPIs: the target, the target fiscal year's "
        "figure and its progress from baseline (0 %) to target (100 %), achieved or missed, "
        "or pending until that figure arrives, and when it arrived.",
        [
            sql(
                f"""
                SELECT name_ja AS "指標 (KPI)", target_fiscal_year_short AS "目標年度 (FY)",
                       target_value AS "目標値 (target)", final_value AS "実績 (figure)",
                       unit AS "単位 (unit)", final_progress AS "進捗率 (progress)",
                       outcome AS "結果 (outcome)", known_at AS "確定 (known)"
                FROM dxkpi_kpi_outcomes_v WHERE {SELECTED}
                ORDER BY target_fiscal_year DESC, area, kpi
                """,
                table=True,
            )
        ],
        unit="locale",
        options={"showHeader": True, "cellHeight": "sm"},
    )
    item["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byName", "options": "進捗率 (progress)"},
            "properties": [{"id": "unit", "value": "percentunit"}],
        },
        {
            "matcher": {"id": "byName", "options": "確定 (known)"},
            "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
        },
        {
            "matcher": {"id": "byName", "options": "結果 (outcome)"},
            "properties": [
                {
                    "id": "mappings",
                    "value": [
                        {
                            "type": "value",
                            "options": {
                                word: {"text": text, "color": color, "index": i}
                                for i, (word, (text, color)) in enumerate(OUTCOME_WORDS.items())
                            },
                        }
                    ],
                },
                {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            ],
        },
    ]
    return item


def figure_and_path() -> Json:
    """One KPI's figures over the plan, in its own unit, against each target's path."""
    return timeseries(
        "実績と計画経路（計画期間全体）",
        "The KPI's figure of every reported period (plotted at the period's end, in the KPI's "
        "own unit), the partial figure of the period under way, the straight path from "
        "baseline to each target (through milestones; a revised plan adds a line), and the "
        "forecast for the current target year (Theil-Sen trend of the reported figures).",
        [
            sql(
                f"""
                SELECT period_end AS time, org || ': 実績 (' || unit || ')' AS metric, value
                FROM dxkpi_kpi_periods_v WHERE {SELECTED} AND complete AND value IS NOT NULL
                ORDER BY 1
                """
            ),
            sql(
                f"""
                SELECT period_end AS time, org || ': 途中経過 (partial)' AS metric, value
                FROM dxkpi_kpi_periods_v
                WHERE {SELECTED} AND NOT complete AND value IS NOT NULL
                ORDER BY 1
                """
            ),
            sql(
                f"""
                SELECT DISTINCT at AS time, '計画経路 (path to ' || target_fiscal_year_short || ')'
                       AS metric, value
                FROM dxkpi_kpi_path_v WHERE {SELECTED} ORDER BY 1
                """
            ),
            sql(
                f"""
                SELECT target_end AS time, org || ': 予測 (forecast)' AS metric, forecast AS value
                FROM dxkpi_kpis_v WHERE {SELECTED} AND forecast IS NOT NULL ORDER BY 1
                """
            ),
        ],
        unit="locale",
        defaults={
            "custom": {
                "drawStyle": "line",
                "lineWidth": 2,
                "fillOpacity": 0,
                "showPoints": "always",
                "pointSize": 7,
                "spanNulls": True,
            }
        },
    )


def year_on_year() -> Json:
    """Bars per fiscal year: the figure (the period ending the year), and the path's value."""
    return panel(
        "barchart",
        "年度別（前年度比較）",
        "One group of bars per fiscal year: the figure of the year's last reported period (a "
        "fiscal year's total; for monthly and continuous KPIs the figure at the year's end), "
        "the partial figure while the year runs, and the value the path expected then.",
        [
            sql(
                f"""
                SELECT org AS "団体 (org)", "年度 (FY)", "実績 (figure)", "途中経過 (partial)",
                       "計画 (path)"
                FROM (
                  SELECT DISTINCT ON (org, fiscal_year) org, fiscal_year,
                         fiscal_year_short AS "年度 (FY)",
                         CASE WHEN complete THEN value END AS "実績 (figure)",
                         CASE WHEN NOT complete THEN value END AS "途中経過 (partial)",
                         expected AS "計画 (path)"
                  FROM dxkpi_kpi_periods_v
                  WHERE {SELECTED} AND value IS NOT NULL
                  ORDER BY org, fiscal_year, period_end DESC
                ) AS years
                ORDER BY fiscal_year, org
                """,
                table=True,
            )
        ],
        unit="locale",
        options={
            "xField": "年度 (FY)",
            "orientation": "vertical",
            "groupWidth": 0.7,
            "barWidth": 0.9,
            "showValue": "never",
            "stacking": "none",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        },
    )


def kpi_history() -> Json:
    grid = Grid()
    grid.row("停滞・データ遅延 (stalls and overdue data: live, from Prometheus)")
    grid.add(stall_table(), 24, 8)
    grid.row("目標期間の結果 (outcomes of ended target periods)")
    grid.add(outcome_table(), 24, 7)
    grid.row("${kpi:text}", repeat="kpi")
    grid.add(figure_and_path(), 16, 9)
    grid.add(year_on_year(), 8, 9)
    return dashboard(
        "dxkpi-kpi-history",
        "DX推進KPI 計画期間の推移",
        "The plan's whole history from the store (PostgreSQL views of the KPI figures, "
        "refreshed every 15 minutes and after each collection): each KPI against its target "
        "path, year on year, and the outcome of ended target periods; at the top, the live "
        "stall and overdue state from Prometheus.",
        grid,
        # The whole plan: from the fiscal year of the usual R2 baselines to two years ahead.
        time={"from": "now-6y/fy", "to": "now+2y/fy"},
        refresh="15m",
        templating={
            "list": [
                sql_variable(
                    "org",
                    "団体 (organisation)",
                    "SELECT DISTINCT org AS __value, org AS __text FROM dxkpi_kpis_v ORDER BY 1",
                ),
                sql_variable(
                    "area",
                    "分野 (area)",
                    "SELECT DISTINCT area AS __value, area AS __text FROM dxkpi_kpis_v ORDER BY 1",
                ),
                sql_variable(
                    "kpi",
                    "指標 (KPI)",
                    "SELECT kpi AS __value, min(name_ja) AS __text FROM dxkpi_kpis_v "
                    "WHERE area IN ($area) AND org IN ($org) GROUP BY area, kpi "
                    "ORDER BY area, kpi",
                ),
            ]
        },
    )


# --- Operations ------------------------------------------------------------------------------


# The exporter serves each stored metric as a gauge holding its latest period's value. For
# daily metrics the gauge's average over a step, times the days in the step, is the total of
# the days in that step: exact when the gauge holds complete days, as a daily run does.
def daily_total(selector: str, by: str = "", scale: str = "") -> str:
    grouping = f"sum by ({by})" if by else "sum"
    return f"{grouping} (avg_over_time({selector}[$__interval])) * $__interval_ms / 86400000{scale}"


OPERATIONS = (
    # (row title, description, selector, breakdown label, unit, scale)
    (
        "RPA（業務自動化）による削減時間",
        "Staff hours saved by RPA robots (dxkpi_rpa_time_saved_seconds), per process.",
        "dxkpi_rpa_time_saved_seconds",
        "process",
        HOURS,
        " / 3600",
    ),
    (
        "Web会議（Zoom）の開催時間",
        "Hours of Zoom meetings held (dxkpi_zoom_meeting_duration_seconds).",
        "dxkpi_zoom_meeting_duration_seconds",
        "source",
        HOURS,
        " / 3600",
    ),
    (
        "アプリのダウンロード数",
        "First-time downloads of the prefecture's apps (dxkpi_app_first_time_downloads), per app.",
        "dxkpi_app_first_time_downloads",
        "app",
        "short",
        "",
    ),
    (
        "移住ポータルサイトのページビュー数",
        "Page views of the migration portal site (dxkpi_portal_page_views).",
        "dxkpi_portal_page_views",
        "source",
        "short",
        "",
    ),
)

PERIODS = (
    # (title, English, expression over the exporter's period sums, relative time, time shift)
    ("今年度累計", "this fiscal year so far (from 1 April)", "{m}_fiscal_year_to_date", None, None),
    ("今月", "this month so far", "{m}_month_to_date", None, None),
    # The month-to-date sum peaks on the month's last day: its maximum over last month is the
    # month's total.
    ("先月", "last month", "max_over_time({m}_month_to_date[$__range])", "now/M", "1M/M"),
)


def operations() -> Json:
    grid = Grid()
    for title, description, selector, by, unit, scale in OPERATIONS:
        grid.row(title)
        for period, english, expression, relative, shift in PERIODS:
            extra: Json = {}
            if relative:
                extra = {"timeFrom": relative, "timeShift": shift, "hideTimeOverride": False}
            grid.add(
                stat(
                    period,
                    f"{description} Total for {english}: the exporter's exact sum of the stored "
                    "periods, not rebuilt from daily samples.",
                    [query(f"sum({expression.format(m=selector)}){scale}", instant=True)],
                    unit=unit,
                    **extra,
                ),
                4,
                5,
            )
        grid.add(
            timeseries(
                "日別",
                f"{description} Per day over the dashboard's time range.",
                [query(daily_total(selector, by, scale), f"{{{{{by}}}}}")],
                unit=unit,
                bars=True,
                interval="1d",
            ),
            12,
            5,
        )
    grid.row("RPAの実行回数")
    grid.add(
        timeseries(
            "RPA実行回数（結果別）",
            "RPA robot runs per day by result (dxkpi_rpa_runs).",
            [query(daily_total("dxkpi_rpa_runs", "result"), "{{result}}")],
            unit="short",
            bars=True,
            interval="1d",
        ),
        24,
        6,
    )
    return dashboard(
        "dxkpi-operations",
        "DX業務効果（運用実績）",
        "Operational results behind the KPIs: RPA hours saved, Zoom meeting hours, app "
        "downloads, portal page views; this fiscal year, this and last month, and per day.",
        grid,
        time={"from": "now/fy", "to": "now"},
        templating={"list": []},
    )


# --- Source health ---------------------------------------------------------------------------


def source_health() -> Json:
    grid = Grid()
    selected = 'org=~"$org", source=~"$source"'
    grid.row("収集の状態 (collection status)")
    grid.add(
        panel(
            "state-timeline",
            "収集の成否",
            "Whether each source's last run succeeded (dxkpi_source_up). Alert DxKpiSourceFailing "
            "fires after 15 minutes of failure.",
            [query(f"dxkpi_source_up{{{selected}}}", "{{source}}")],
            unit="none",
            defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "1": {"text": "成功 (ok)", "color": "green", "index": 0},
                            "0": {"text": "失敗 (failed)", "color": "red", "index": 1},
                        },
                    }
                ]
            },
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
        ),
        24,
        7,
    )
    grid.add(
        panel(
            "bargauge",
            "最終成功からの経過（収集間隔の倍数）",
            "Time since the last successful run, in multiples of the source's schedule "
            "interval. Alert DxKpiSourceStale fires above 3.",
            [
                query(
                    f"source:dxkpi_source_intervals_since_success:ratio{{{selected}}}",
                    "{{source}}",
                    instant=True,
                )
            ],
            unit="suffix: ×",
            defaults={
                "min": 0,
                "thresholds": thresholds((None, "green"), (1.5, "orange"), (3, "red")),
            },
            options={
                "orientation": "horizontal",
                "displayMode": "basic",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
        ),
        12,
        8,
    )
    grid.add(
        stat(
            "最終成功",
            "When each source last succeeded (dxkpi_source_last_success_timestamp_seconds).",
            [
                query(
                    f"dxkpi_source_last_success_timestamp_seconds{{{selected}}} * 1000",
                    "{{source}}",
                    instant=True,
                )
            ],
            unit="dateTimeFromNow",
        ),
        12,
        8,
    )
    grid.row("実行 (runs)")
    grid.add(
        timeseries(
            "実行結果（状態別）",
            "Runs per step by status: success, failed, retrying (dxkpi_source_runs_total).",
            [
                query(
                    "sum by (source, status) "
                    f"(increase(dxkpi_source_runs_total{{{selected}}}[$__interval]))",
                    "{{source}} {{status}}",
                )
            ],
            unit="short",
            bars=True,
            interval="1h",
        ),
        12,
        8,
    )
    grid.add(
        timeseries(
            "実行時間",
            "Duration of each source's last run (dxkpi_source_last_run_duration_seconds).",
            [query(f"dxkpi_source_last_run_duration_seconds{{{selected}}}", "{{source}}")],
            unit="s",
        ),
        12,
        8,
    )
    grid.add(
        stat(
            "期間中の失敗回数",
            "Failed runs per source over the dashboard's time range.",
            [
                query(
                    "sum by (source) "
                    f'(increase(dxkpi_source_runs_total{{{selected}, status="failed"}}[$__range]))',
                    "{{source}}",
                    instant=True,
                )
            ],
            unit="short",
            defaults={"thresholds": thresholds((None, "green"), (1, "red"))},
        ),
        24,
        5,
    )
    return dashboard(
        "dxkpi-source-health",
        "データ収集の状態",
        "Health of every source: last run ok or failed, time since the last success, run "
        "outcomes and durations.",
        grid,
        time={"from": "now-7d", "to": "now"},
        templating={
            "list": [
                variable("org", "団体 (organisation)", "label_values(dxkpi_source_up, org)"),
                variable(
                    "source",
                    "データ元 (source)",
                    'label_values(dxkpi_source_up{org=~"$org"}, source)',
                ),
            ]
        },
    )


DASHBOARDS: dict[str, Callable[[], Json]] = {
    "kpi-overview.json": kpi_overview,
    "kpi-history.json": kpi_history,
    "operations.json": operations,
    "source-health.json": source_health,
}


def render(build: Callable[[], Json]) -> str:
    return json.dumps(build(), ensure_ascii=False, indent=2) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        (OUT / name).write_text(render(build), encoding="utf-8")


if __name__ == "__main__":
    main()
