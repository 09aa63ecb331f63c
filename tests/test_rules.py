"""Prometheus rules, their promtool unit tests, and the Prometheus and Alertmanager configs.

promtool and amtool come from the Debian packages prometheus and prometheus-alertmanager. Without
them these tests skip, except under CI=true, where a missing tool is a failure.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_dashboards import EXPORTED_METRICS, dashboard_uids, metric_names, recorded_names, tool

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = PROMETHEUS / "alertmanager.yml"

SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = {"summary", "summary_ja", "description", "description_ja", "dashboard_url"}
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


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
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


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_dashboard_url_points_at_a_provisioned_dashboard(rule: dict[str, Any]) -> None:
    match = re.fullmatch(r"/d/([\w-]+)/[\w-]+(\?.*)?", rule["annotations"]["dashboard_url"])
    assert match, rule["annotations"]["dashboard_url"]
    assert match.group(1) in dashboard_uids()


def test_rules_read_only_exported_or_recorded_metrics() -> None:
    known = EXPORTED_METRICS | recorded_names() | {"up"}
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


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing = {check["alertname"] for check in rule_test_checks() if check.get("exp_alerts")}
    quiet = {check["alertname"] for check in rule_test_checks() if not check.get("exp_alerts")}
    names = {rule["alert"] for rule in ALERTS}
    assert names - firing == set(), "never tested firing"
    assert names - quiet == set(), "never tested quiet"


def test_direction_sensitive_alerts_are_tested_firing_for_the_down_kpi() -> None:
    # Copy paper is the KPI that must fall; its quiet cases sit beside these in the same tests.
    fired_for = {
        (check["alertname"], alert["exp_labels"].get("kpi"))
        for check in rule_test_checks()
        for alert in check.get("exp_alerts") or []
    }
    for alert in ("DxKpiStalled", "DxKpiBehindPath", "DxKpiPredictedToMissTarget"):
        assert (alert, "copy_paper_purchases_sheets") in fired_for, alert


def test_alertmanager_config_is_valid() -> None:
    result = run(tool("amtool"), "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout


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


def test_email_template_renders_both_languages_and_a_full_dashboard_link(tmp_path: Path) -> None:
    (stalled,) = [rule for rule in ALERTS if rule["alert"] == "DxKpiStalled"]
    annotations = {
        "summary": "KPI Farm businesses has not improved for 8d 0h 0m 0s",
        "summary_ja": "指標「スマート農業等技術を導入した経営体数」が 8d 0h 0m 0s 改善していません",
        "description": "English description.",
        "description_ja": "日本語の説明。",
        "dashboard_url": stalled["annotations"]["dashboard_url"].replace(
            "{{ $labels.kpi }}", "smart_agriculture_farms"
        ),
    }
    alert = {
        "status": "firing",
        "labels": {"alertname": "DxKpiStalled", "severity": "warning"},
        "annotations": annotations,
        "startsAt": "2024-05-01T00:00:00Z",
    }
    data = {
        "status": "firing",
        "alerts": [alert],
        "commonLabels": alert["labels"],
        "commonAnnotations": annotations,
    }
    (tmp_path / "data.json").write_text(json.dumps(data, ensure_ascii=False))
    result = run(
        tool("amtool"),
        "template",
        "render",
        f"--template.glob={PROMETHEUS / 'alertmanager-templates' / '*.tmpl'}",
        f"--template.data={tmp_path / 'data.json'}",
        "--template.text="
        '{{ template "dxkpi.email.subject" . }}\n{{ template "dxkpi.email.text" . }}',
    )
    assert result.returncode == 0, result.stdout + result.stderr
    subject, body = result.stdout.split("\n", 1)
    assert subject == f"[FIRING:1] DxKpiStalled {annotations['summary_ja']}"
    for text in annotations.values():
        assert text in body
    assert "https://grafana.example.jp/d/dxkpi-kpi-overview/" in body
