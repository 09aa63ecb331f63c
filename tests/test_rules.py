"""Prometheus rules, their promtool unit tests, and the Prometheus and Alertmanager configs.

promtool and amtool come from the Debian packages prometheus and prometheus-alertmanager. Without
them these tests skip, except under CI=true, where a missing tool is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from test_dashboards import EXPORTED_METRICS, dashboard_uids, metric_names, recorded_names, tool

from dxkpi.collector.exporter import kpi_families

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = PROMETHEUS / "alertmanager.yml"
COMPOSE = ROOT / "docker-compose.yml"


def load_mixin() -> ModuleType:
    """prometheus/mixin.py, the one place thresholds and alerts are written."""
    spec = importlib.util.spec_from_file_location("dxkpi_mixin", PROMETHEUS / "mixin.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


MIXIN = load_mixin()

SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = {
    "summary",
    "summary_ja",
    "description",
    "description_ja",
    "dashboard_url",
    "runbook_url",
}
# Every KPI family the exporter serves, read from the exporter itself, beside the snapshot's time.
SERVED_METRICS = {family.name for family in kpi_families([])} | {"dxkpi_snapshot_timestamp_seconds"}
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
# Outside {{ }} templates an English annotation is plain ASCII; Japanese comes only from labels.
TEMPLATE = re.compile(r"\{\{.*?\}\}", re.DOTALL)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, check=False
    )


def alerting_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


ALERTS = alerting_rules()


def test_rule_files_exist() -> None:
    assert [p.name for p in RULE_FILES] == ["dxkpi-alerts.yml", "dxkpi-recording.yml"]
    assert len(ALERTS) >= 6


def test_committed_rules_runbooks_and_table_are_what_the_mixin_writes() -> None:
    written = MIXIN.outputs()
    for path, text in written.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"run prometheus/mixin.py ({path.relative_to(ROOT)} is stale)"
        )
    runbooks = {p for p in written if p.parent == MIXIN.RUNBOOK_DIR}
    assert set(MIXIN.RUNBOOK_DIR.glob("*.md")) == runbooks, "a runbook without an alert"


def test_the_readme_quotes_the_mixins_thresholds() -> None:
    # The main README describes the alerts in prose; its numbers come from the mixin too.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Alerts and dashboards", 1)[1].split("\n## ", 1)[0]
    assert f"more than {MIXIN.BEHIND_PATH_POINTS} points behind" in section
    assert f"for {MIXIN.in_words(MIXIN.TARGET_NOTICE_WINDOW)} after its figure arrived" in section


def test_runbook_url_names_the_alerts_own_page() -> None:
    for rule in ALERTS:
        path = ROOT / rule["annotations"]["runbook_url"]
        assert path == MIXIN.RUNBOOK_DIR / f"{rule['alert']}.md"
        text = path.read_text(encoding="utf-8")
        for heading in ("## What it means", "## What to check", "## What to do"):
            assert heading in text, f"{path.name}: {heading}"


def test_thresholds_reach_the_rules_from_the_mixin() -> None:
    # The generated YAML is compared above; here the numbers a reader would look for.
    by_name = {rule["alert"]: rule for rule in ALERTS}
    behind = by_name["DxKpiBehindPath"]
    assert f"> {MIXIN.BEHIND_PATH_POINTS}\n" in behind["expr"]
    assert behind["for"] == MIXIN.duration(MIXIN.BEHIND_PATH_FOR)
    assert f"> {MIXIN.SOURCE_STALE_INTERVALS}" in by_name["DxKpiSourceStale"]["expr"]
    notice = by_name["DxKpiTargetPeriodEnded"]["expr"]
    assert f"< {MIXIN.TARGET_NOTICE_WINDOW})" in notice
    assert f"> {MIXIN.SNAPSHOT_STALE_AFTER}" in by_name["DxKpiSnapshotStale"]["expr"]


def test_promtool_check_rules() -> None:
    result = run(tool("promtool"), "check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = run(tool("promtool"), "check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:
        assert f"Checking {path}" in result.stdout


def test_exporter_job_name_matches_the_exporter_down_rule() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    (exporter_down,) = [rule for rule in ALERTS if rule["alert"] == "DxKpiExporterDown"]
    (job,) = set(re.findall(r'job="([^"]+)"', exporter_down["expr"]))
    assert job in jobs


PAGING = [rule for rule in ALERTS if rule["alert"] != "Watchdog"]


@pytest.mark.parametrize("rule", PAGING, ids=[rule["alert"] for rule in PAGING])
def test_alert_follows_the_conventions(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"DxKpi(?:[A-Z][a-z0-9]+)+", rule["alert"])
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == ANNOTATIONS
    for key in ("summary_ja", "description_ja"):
        assert JAPANESE.search(TEMPLATE.sub("", annotations[key])), key
    for key in ("summary", "description"):
        text = TEMPLATE.sub("", annotations[key])
        assert text.isascii() and text.strip(), key
    assert "for" in rule, "every alert waits before it fires"
    # Numbers are printed whole for people ("611日", "12 points"), never as raw durations or
    # percentages with decimals.
    for text in annotations.values():
        assert "humanizeDuration" not in text and "humanizePercentage" not in text


def test_watchdog_always_fires_and_pages_nobody() -> None:
    (watchdog,) = [rule for rule in ALERTS if rule["alert"] == "Watchdog"]
    assert watchdog["expr"].strip() == "vector(1)"
    assert watchdog["labels"]["severity"] == "none"
    result = run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        "alertname=Watchdog",
        "severity=none",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["watchdog"]
    (receiver,) = [
        r
        for r in yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["receivers"]
        if r["name"] == "watchdog"
    ]
    assert not receiver.get("email_configs"), "the watchdog must not mail people"


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_dashboard_url_points_at_a_provisioned_dashboard(rule: dict[str, Any]) -> None:
    match = re.fullmatch(r"/d/([\w-]+)/[\w-]+(\?.*)?", rule["annotations"]["dashboard_url"])
    assert match, rule["annotations"]["dashboard_url"]
    assert match.group(1) in dashboard_uids()


def test_rules_read_only_exported_or_recorded_metrics() -> None:
    known = EXPORTED_METRICS | SERVED_METRICS | recorded_names() | {"up"}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                unknown = metric_names(rule["expr"]) - known
                assert not unknown, f"{path.name}: {rule.get('alert') or rule['record']}"


def rule_test_checks() -> list[dict[str, Any]]:
    return [
        check
        for path in RULE_TESTS
        for case in yaml.safe_load(path.read_text())["tests"]
        for check in case.get("alert_rule_test", [])
    ]


def test_every_alert_and_recording_rule_is_tested() -> None:
    firing = {check["alertname"] for check in rule_test_checks() if check.get("exp_alerts")}
    quiet = {check["alertname"] for check in rule_test_checks() if not check.get("exp_alerts")}
    names = {rule["alert"] for rule in ALERTS}
    assert names - firing == set(), "never tested firing"
    assert names - quiet == {"Watchdog"}, "never tested quiet"
    tested_exprs = " ".join(
        check["expr"]
        for path in RULE_TESTS
        for case in yaml.safe_load(path.read_text())["tests"]
        for check in case.get("promql_expr_test", [])
    )
    assert recorded_names() - metric_names(tested_exprs) == set(), "recording rule untested"


def test_direction_sensitive_alerts_are_tested_firing_for_the_down_kpi() -> None:
    # Copy paper is the KPI that must fall; its quiet cases sit beside these in the same tests.
    fired_for = {
        (check["alertname"], alert["exp_labels"].get("kpi"))
        for check in rule_test_checks()
        for alert in check.get("exp_alerts") or []
    }
    for alert in ("DxKpiStalled", "DxKpiBehindPath", "DxKpiPredictedToMissTarget"):
        assert (alert, "copy_paper_purchases_sheets") in fired_for, alert


def alertmanager_retention() -> timedelta:
    """Alertmanager's --data.retention in docker-compose.yml, else its default of 120h."""
    command = " ".join(yaml.safe_load(COMPOSE.read_text())["services"]["alertmanager"]["command"])
    match = re.search(r"--data\.retention=(\d+)h", command)
    return timedelta(hours=int(match.group(1)) if match else 120)


def routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route] + [r for child in route.get("routes", []) for r in routes(child)]


def parse_duration(text: str) -> timedelta:
    units = {"m": "minutes", "h": "hours", "d": "days", "s": "seconds"}
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def test_repeat_intervals_stay_within_the_notification_log_retention() -> None:
    # Past the retention the notification log forgets a notification and it is sent again.
    for route in routes(yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]):
        if "repeat_interval" in route:
            assert parse_duration(route["repeat_interval"]) <= alertmanager_retention(), route


def test_the_target_period_notice_is_sent_once() -> None:
    route = next(
        r
        for r in routes(yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"])
        if r.get("matchers") == ['alertname="DxKpiTargetPeriodEnded"']
    )
    # It fires for the window (after its `for`); a repeat would come only after it resolved.
    window = timedelta(seconds=MIXIN.TARGET_NOTICE_WINDOW + MIXIN.TARGET_NOTICE_FOR)
    assert parse_duration(route["repeat_interval"]) > window
    assert {"kpi", "target_fiscal_year"} <= set(route["group_by"]), "one notice per target"
    (receiver,) = [
        r
        for r in yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["receivers"]
        if r["name"] == route["receiver"]
    ]
    assert all(not c.get("send_resolved") for c in receiver.get("email_configs", []))
    assert not receiver.get("webhook_configs")
    result = run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        "alertname=DxKpiTargetPeriodEnded",
        "severity=info",
    )
    assert result.stdout.split() == [route["receiver"]]


def test_alertmanager_config_is_valid() -> None:
    result = run(tool("amtool"), "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 templates" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ("severity=critical", "operators-page"),
        ("severity=warning", "dx-office-chat"),
        ("severity=info", "dx-office-digest"),
    ],
)
def test_alertmanager_routes_by_severity(labels: str, receiver: str) -> None:
    result = run(
        tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", labels
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_every_severity_reaches_a_receiver_with_email_or_webhook() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    kinds = {
        kind
        for receiver in config["receivers"]
        for kind in ("webhook_configs", "email_configs")
        if receiver.get(kind)
    }
    assert kinds == {"webhook_configs", "email_configs"}


def test_alertmanager_config_holds_no_secret() -> None:
    config = ALERTMANAGER_CONFIG.read_text()
    assert (
        re.search(r"^\s*(smtp_auth_password|auth_password|credentials|password):", config, re.M)
        is None
    )
    assert "smtp_auth_password_file" in config and "credentials_file" in config


def write_url_templates(folder: Path, grafana_url: str, runbook_base_url: str) -> None:
    """Runs docker-compose's own command that writes the URL templates, into `folder`."""
    script = yaml.safe_load(COMPOSE.read_text())["services"]["alertmanager"]["command"][0]
    (command,) = re.findall(r"printf '\{\{ define.*?urls\.tmpl", script, re.DOTALL)
    command = command.replace("$$", "$").replace("/run/alertmanager-generated", str(folder))
    env = os.environ | {"GRAFANA_ROOT_URL": grafana_url, "DXKPI_RUNBOOK_BASE_URL": runbook_base_url}
    subprocess.run(["sh", "-c", command], check=True, env=env, timeout=10)


def test_alertmanager_reads_the_url_templates_compose_writes() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert "/run/alertmanager-generated/*.tmpl" in config["templates"]
    service = yaml.safe_load(COMPOSE.read_text())["services"]["alertmanager"]
    assert any(t.startswith("/run/alertmanager-generated:") for t in service["tmpfs"])
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    # The same variable and default as the URL Grafana is served at.
    assert (
        service["environment"]["GRAFANA_ROOT_URL"] == grafana["environment"]["GF_SERVER_ROOT_URL"]
    )


def test_email_template_renders_both_languages_jst_and_full_links(tmp_path: Path) -> None:
    (stalled,) = [rule for rule in ALERTS if rule["alert"] == "DxKpiStalled"]
    annotations = {
        "summary": "KPI Farm businesses has not improved for 611 days",
        "summary_ja": "指標「スマート農業等技術を導入した経営体数」が611日間改善していません",
        "description": "English description.",
        "description_ja": "日本語の説明。",
        "dashboard_url": stalled["annotations"]["dashboard_url"].replace(
            "{{ $labels.kpi }}", "smart_agriculture_farms"
        ),
        "runbook_url": stalled["annotations"]["runbook_url"],
    }
    alert = {
        "status": "firing",
        "labels": {"alertname": "DxKpiStalled", "severity": "warning"},
        "annotations": annotations,
        # 23:30 UTC on 30 April is 08:30 on 1 May in Japan.
        "startsAt": "2024-04-30T23:30:00Z",
    }
    data = {
        "status": "firing",
        "alerts": [alert],
        "commonLabels": alert["labels"],
        "commonAnnotations": annotations,
    }
    (tmp_path / "data.json").write_text(json.dumps(data, ensure_ascii=False))
    generated = tmp_path / "generated"
    generated.mkdir()
    write_url_templates(
        generated, "https://grafana.pref.example.jp/", "https://git.example.jp/dxkpi/"
    )
    result = run(
        tool("amtool"),
        "template",
        "render",
        f"--template.glob={PROMETHEUS / 'alertmanager-templates' / '*.tmpl'}",
        f"--template.glob={generated / '*.tmpl'}",
        f"--template.data={tmp_path / 'data.json'}",
        "--template.text="
        '{{ template "dxkpi.email.subject" . }}\n{{ template "dxkpi.email.text" . }}',
    )
    assert result.returncode == 0, result.stdout + result.stderr
    subject, body = result.stdout.split("\n", 1)
    assert subject == f"[FIRING:1] DxKpiStalled {annotations['summary_ja']}"
    for text in annotations.values():
        assert text in body
    assert "https://grafana.pref.example.jp/d/dxkpi-kpi-history/" in body
    assert "https://git.example.jp/dxkpi/docs/runbooks/DxKpiStalled.md" in body
    assert "開始 / since: 2024-05-01 08:30 JST" in body
