"""Grafana provisioning and dashboards: valid, generated, on the provisioned data sources, with
queries that are valid PromQL over metrics the exporter really serves.

`panel_queries()` lists every Prometheus panel query with its Grafana variables filled in; the
end-to-end test runs them against a live Prometheus. `sql_queries()` lists the PostgreSQL ones;
test_dashboard_sql.py runs them against the KPI history views. test_rules.py shares the other
helpers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
RULE_DIR = ROOT / "prometheus" / "rules"

# What the exporter serves (the names are fixed by the exporter's contract).
KPI_METRICS = {
    f"dxkpi_kpi_{name}"
    for name in (
        "value",
        "baseline_value",
        "target_value",
        "baseline_timestamp_seconds",
        "target_timestamp_seconds",
        "direction",
        "progress_ratio",
        "expected_value",
        "expected_progress_ratio",
        "last_change_timestamp_seconds",
        "stall_after_seconds",
        "stalled",
        "periods_without_improvement",
        "next_data_due_timestamp_seconds",
        "forecast_value",
        "on_track",
        "info",
    )
}
SOURCE_METRICS = {
    "dxkpi_source_up",
    "dxkpi_source_last_success_timestamp_seconds",
    "dxkpi_source_last_run_duration_seconds",
    "dxkpi_source_runs_total",
    "dxkpi_source_interval_seconds",
}
# Stored metrics are served as dxkpi_<metric>; these are the ones the dashboards chart.
RAW_METRICS = {
    "dxkpi_portal_page_views",
    "dxkpi_rpa_time_saved_seconds",
    "dxkpi_rpa_runs",
    "dxkpi_app_first_time_downloads",
    "dxkpi_zoom_meeting_duration_seconds",
    "dxkpi_copy_paper_purchased_sheets",
}
# Summable stored metrics also come as exact period sums.
PERIOD_SUMS = {f"{m}_{p}" for m in RAW_METRICS for p in ("fiscal_year_to_date", "month_to_date")}
EXPORTED_METRICS = frozenset(KPI_METRICS | SOURCE_METRICS | RAW_METRICS | PERIOD_SUMS)

# Values for Grafana's built-in and dashboard variables when a query runs outside Grafana.
DEFAULT_VARIABLES = {
    "__interval": "1m",
    "__interval_ms": "60000",
    "__rate_interval": "2m",
    "__range": "1h",
    "__range_s": "3600",
    "area": ".+",
    "kpi": ".+",
    "org": ".+",
    "source": ".+",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "offset", "bool"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan", "atan2"}


def tool(name: str) -> str:
    """Path of a CLI from the Prometheus packages; skips without it, fails under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (function names and label names excluded)."""
    text = _VARIABLE.sub(" ", _STRING.sub('""', expr))
    text = _LABEL_LIST.sub(" ", _RANGE.sub(" ", _SELECTOR.sub(" ", text)))
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in sorted(RULE_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


@cache
def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def dashboard_uids() -> set[str]:
    return {board["uid"] for board in dashboards().values()}


def all_panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for item in board["panels"]:
        yield item
        yield from item.get("panels", [])  # a collapsed row keeps its panels inside


class PanelQuery(NamedTuple):
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool


class SqlQuery(NamedTuple):
    dashboard: str
    panel: str  # the panel's title, or "variable <name>"
    ref: str
    sql: str  # with Grafana's variables and macros left in
    repeated: bool  # in a row repeated per KPI: Grafana runs it once per selected KPI


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: variables[m.group(1) or m.group(2)], expr)


def panel_queries(variables: Mapping[str, str] | None = None) -> list[PanelQuery]:
    """Every Prometheus query of every panel, Grafana variables replaced (DEFAULT_VARIABLES,
    then yours)."""
    values = DEFAULT_VARIABLES | dict(variables or {})
    return [
        PanelQuery(
            board["uid"],
            item["title"],
            target["refId"],
            substitute(target["expr"], values),
            bool(target.get("instant")),
        )
        for board in dashboards().values()
        for item in all_panels(board)
        for target in item.get("targets", [])
        if "expr" in target
    ]


def repeated_panels(board: Mapping[str, Any]) -> set[int]:
    """Ids of the panels inside rows that Grafana repeats (until the next row)."""
    ids: set[int] = set()
    repeating = False
    for item in all_panels(board):
        if item["type"] == "row":
            repeating = bool(item.get("repeat"))
        elif repeating:
            ids.add(item["id"])
    return ids


def sql_queries() -> list[SqlQuery]:
    """Every PostgreSQL query of every panel and variable, as Grafana would send it before
    filling in variables."""
    queries = []
    for board in dashboards().values():
        repeated = repeated_panels(board)
        for item in all_panels(board):
            for target in item.get("targets", []):
                if "rawSql" in target:
                    queries.append(
                        SqlQuery(
                            board["uid"],
                            item["title"],
                            target["refId"],
                            target["rawSql"],
                            item["id"] in repeated,
                        )
                    )
        for variable in board.get("templating", {}).get("list", []):
            if variable["datasource"]["uid"] == POSTGRES_UID:
                queries.append(
                    SqlQuery(
                        board["uid"], f"variable {variable['name']}", "", variable["query"], False
                    )
                )
    return queries


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PROMETHEUS_UID = "dxkpi-prometheus"
POSTGRES_UID = "dxkpi-postgres"


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    """The provisioned data sources by uid."""
    (path,) = (GRAFANA / "provisioning" / "datasources").glob("*.yml")
    return {d["uid"]: dict(d) for d in yaml.safe_load(path.read_text())["datasources"]}


# --- tests ------------------------------------------------------------------------------------


def test_four_dashboards_with_fixed_unique_uids() -> None:
    uids = [board["uid"] for board in dashboards().values()]
    assert sorted(uids) == [
        "dxkpi-kpi-history",
        "dxkpi-kpi-overview",
        "dxkpi-operations",
        "dxkpi-source-health",
    ]


def test_committed_json_is_what_the_generator_writes() -> None:
    generator = load_generator()
    assert set(generator.DASHBOARDS) == set(dashboards())
    for name, build in generator.DASHBOARDS.items():
        committed = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
        assert committed == generator.render(build), f"run grafana/generate.py ({name} is stale)"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_settings(name: str) -> None:
    board = dashboards()[name]
    assert board["timezone"] == "Asia/Tokyo"
    assert board["fiscalYearStartMonth"] == 3  # April, counted from 0 = January
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", board["title"]), "Japanese title"
    ids = [item["id"] for item in all_panels(board)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_panels_fit_the_grid_without_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for item in dashboards()[name]["panels"]:
        pos = item["gridPos"]
        assert pos["x"] + pos["w"] <= 24, item["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, item["title"]
        taken |= cells


def test_every_panel_target_and_variable_uses_a_provisioned_datasource() -> None:
    datasources = provisioned_datasources()
    kinds = {uid: d["type"] for uid, d in datasources.items()}
    used = set()
    for board in dashboards().values():
        for item in all_panels(board):
            if item["type"] == "row":
                continue
            assert item["description"].isascii(), f"{item['title']}: English description"
            if item["type"] == "alertlist":
                # It names its rule source by the data source's name, not its uid.
                assert item["options"]["datasource"] == datasources[PROMETHEUS_UID]["name"]
                continue
            source = item["datasource"]
            assert kinds[source["uid"]] == source["type"], item["title"]
            used.add(source["uid"])
            for target in item["targets"]:
                assert target["datasource"] == source, item["title"]
                assert ("expr" in target) == (source["uid"] == PROMETHEUS_UID), item["title"]
                assert ("rawSql" in target) == (source["uid"] == POSTGRES_UID), item["title"]
        for variable in board.get("templating", {}).get("list", []):
            assert variable["datasource"]["uid"] in datasources
    assert used == set(datasources)


def test_datasource_provisioning_points_at_the_compose_services() -> None:
    datasources = provisioned_datasources()
    assert set(datasources) == {PROMETHEUS_UID, POSTGRES_UID}
    prometheus, postgres = datasources[PROMETHEUS_UID], datasources[POSTGRES_UID]
    assert prometheus["type"] == "prometheus" and prometheus["isDefault"] is True
    assert prometheus["url"] == "http://prometheus:9090"
    # Grafana's built-in PostgreSQL data source, on the compose database, as the read-only login
    # whose name and password come from the environment (docker-compose passes them from .env).
    assert postgres["type"] in ("postgres", "grafana-postgresql-datasource")
    assert postgres["url"] == "postgres:5432" and postgres["jsonData"]["database"] == "dxkpi"
    assert postgres["user"] == "$GRAFANA_DB_USER"
    assert postgres["secureJsonData"] == {"password": "$GRAFANA_DB_PASSWORD"}


def test_queries_read_only_exported_or_recorded_metrics() -> None:
    known = EXPORTED_METRICS | recorded_names()
    queries = panel_queries()
    assert len(queries) > 20
    for query in queries:
        names = metric_names(query.expr)
        assert names, query
        assert names <= known, (query, names - known)


def test_metric_names_parser() -> None:
    expr = (
        'sum by (source, status) (increase(dxkpi_source_runs_total{source=~"a|b", x="by (y)"}'
        "[$__interval])) * on (kpi) group_left (name_ja) dxkpi_kpi_info offset 1d / 3600 "
        "or vector(0) and kpi:dxkpi_kpi_forecast_progress:ratio > 1e3"
    )
    assert metric_names(expr) == {
        "dxkpi_source_runs_total",
        "dxkpi_kpi_info",
        "kpi:dxkpi_kpi_forecast_progress:ratio",
    }


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule: syntax, functions and types are checked.
    rules = [
        {"record": f"dashboard_query_{i}", "expr": query.expr}
        for i, query in enumerate(panel_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_units_suit_what_each_panel_shows() -> None:
    checked = 0
    for board in dashboards().values():
        for item in all_panels(board):
            if item["type"] in ("row", "table", "alertlist"):
                continue
            unit = item["fieldConfig"]["defaults"]["unit"]
            if item["datasource"]["uid"] == POSTGRES_UID:
                # The KPI history is in each KPI's own unit (sheets, %, hours): a plain number.
                assert unit == "locale", item["title"]
                checked += 1
                continue
            exprs = [target["expr"] for target in item["targets"]]
            names = set().union(*(metric_names(e) for e in exprs))
            if any("progress" in name for name in names):
                assert unit == "percentunit", item["title"]
            elif any(re.search(r"(duration|time_saved)_seconds(_\w+_to_date)?$", n) for n in names):
                hours = unit == "suffix: h" and all("/ 3600" in e for e in exprs)
                assert unit == "s" or hours, item["title"]
            elif any(name.endswith("_timestamp_seconds") for name in names):
                assert unit.startswith("dateTime") and all("* 1000" in e for e in exprs)
            elif "intervals_since_success" in " ".join(names):
                assert unit == "suffix: ×", item["title"]
            else:
                assert unit in ("short", "none"), item["title"]
            checked += 1
    assert checked > 20


def test_kpi_table_shows_progress_as_percent() -> None:
    (table,) = [p for p in all_panels(dashboards()["kpi-overview.json"]) if p["type"] == "table"]
    assert table["title"] == "実績・基準値・目標値"
    overrides = {
        o["matcher"]["options"]: o["properties"] for o in table["fieldConfig"]["overrides"]
    }
    assert {"id": "unit", "value": "percentunit"} in overrides["進捗率 (progress)"]


def test_kpi_variable_regex_reads_id_and_japanese_name() -> None:
    board = dashboards()["kpi-overview.json"]
    (kpi,) = [v for v in board["templating"]["list"] if v["name"] == "kpi"]
    body = kpi["regex"].strip("/").replace("(?<", "(?P<")
    # What Grafana's query_result() gives for one series (labels sorted, as Prometheus sends them).
    line = (
        'dxkpi_kpi_info{area="administration", instance="exporter:9810", job="dxkpi-exporter", '
        'kpi="copy_paper_purchases_sheets", name_en="Copy paper", '
        'name_ja="コピー用紙購入量（本庁（知事部局））", unit="sheets"} 1 1714521600000'
    )
    match = re.search(body, line)
    assert match
    assert match.group("value") == "copy_paper_purchases_sheets"
    assert match.group("text") == "コピー用紙購入量（本庁（知事部局））"


def test_panel_queries_fill_in_every_variable() -> None:
    queries = panel_queries({"kpi": "kenmin_app_downloads"})
    assert not [q for q in queries if "$" in q.expr]
    assert any('kpi=~"kenmin_app_downloads"' in q.expr for q in queries)
    with pytest.raises(KeyError):
        substitute("x[$unknown]", DEFAULT_VARIABLES)


def test_kpi_history_opens_on_the_stall_and_overdue_table() -> None:
    """DxKpiStalled and DxKpiDataOverdue link to /d/dxkpi-kpi-history?var-kpi=...: the first
    thing there is each selected KPI's stall state and how far past its due date its data is."""
    board = dashboards()["kpi-history.json"]
    first = next(p for p in all_panels(board) if p["type"] != "row")
    assert first["type"] == "table" and first["gridPos"]["y"] <= 1
    names = set().union(*(metric_names(t["expr"]) for t in first["targets"]))
    assert {"dxkpi_kpi_stalled", "dxkpi_kpi_next_data_due_timestamp_seconds"} <= names
    assert any("time() - dxkpi_kpi_next_data_due" in t["expr"] for t in first["targets"])
    assert all('kpi=~"$kpi"' in t["expr"] for t in first["targets"])
    (kpi,) = [v for v in board["templating"]["list"] if v["name"] == "kpi"]
    assert kpi["datasource"]["uid"] == POSTGRES_UID


def test_overview_lists_the_prometheus_alerts() -> None:
    (alerts,) = [
        p for p in all_panels(dashboards()["kpi-overview.json"]) if p["type"] == "alertlist"
    ]
    state = alerts["options"]["stateFilter"]
    assert state["firing"] and state["pending"] and not state["normal"]
    assert alerts["options"]["datasource"] == provisioned_datasources()[PROMETHEUS_UID]["name"]
