"""Writes the provisioned Grafana dashboards (grafana/dashboards/*.json) from this one file.

    .venv/bin/python grafana/generate.py

The JSON files are committed, so Grafana needs nothing but the files; tests/test_dashboards.py
fails when they differ from what this script writes. Edit here, not in the JSON.

Every dashboard uses the provisioned Prometheus datasource (uid below), the Asia/Tokyo timezone
and fiscal years that start in April. Titles are Japanese; panel descriptions carry the English.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DATASOURCE = {"type": "prometheus", "uid": "dxkpi-prometheus"}
OUT = Path(__file__).resolve().parent / "dashboards"
APRIL = 3  # Grafana numbers the fiscal year's first month from 0 = January.
HOURS = "suffix: h"  # Grafana's own "h" unit turns 962 hours into "40.1 day"; reports say hours.

# Every KPI query of the overview is limited to the selected KPIs and, inside a repeated area
# row, to that row's area; joining dxkpi_kpi_info also brings the Japanese name and the unit.
KPI_INFO = 'dxkpi_kpi_info{area=~"$area", kpi=~"$kpi"}'


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
    """A panel on the dxkpi datasource; queries get refIds A, B, C... in order."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
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
            [query(f"sum(dxkpi_kpi_on_track and on (kpi) {KPI_INFO})", instant=True)],
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
                    f"count((dxkpi_kpi_on_track == 0) and on (kpi) {KPI_INFO}) or vector(0)",
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
                    f"count({KPI_INFO} unless on (kpi) dxkpi_kpi_value) or vector(0)", instant=True
                )
            ],
            unit="short",
            defaults={"thresholds": thresholds((None, "green"), (1, "red"))},
        ),
        6,
        4,
    )

    grid.row("分野: $area", repeat="area")
    progress = f"* on (kpi) group_left (name_ja) {KPI_INFO}"
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
                query('dxkpi_kpi_progress_ratio{kpi=~"$kpi"}', "実績 (actual)"),
                query('dxkpi_kpi_expected_progress_ratio{kpi=~"$kpi"}', "計画 (planned path)"),
                query(
                    'kpi:dxkpi_kpi_forecast_progress:ratio{kpi=~"$kpi"}',
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
                variable("area", "分野 (area)", "label_values(dxkpi_kpi_info, area)"),
                variable(
                    "kpi",
                    "指標 (KPI)",
                    'query_result(dxkpi_kpi_info{area=~"$area"})',
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
    join = f"* on (kpi) group_left (name_ja, unit) {KPI_INFO}"
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
    selected = 'source=~"$source"'
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
                variable("source", "データ元 (source)", "label_values(dxkpi_source_up, source)")
            ]
        },
    )


DASHBOARDS = {
    "kpi-overview.json": kpi_overview,
    "operations.json": operations,
    "source-health.json": source_health,
}


def render(build: Any) -> str:
    return json.dumps(build(), ensure_ascii=False, indent=2) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        (OUT / name).write_text(render(build), encoding="utf-8")


if __name__ == "__main__":
    main()
