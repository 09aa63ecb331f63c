"""A real Prometheus scrapes the real exporter of `dxkpi run` (a Celery worker and beat on the
embedded SQLite store and broker) collecting the shipped example: the dxkpi alert rules fire on
live data, and every dashboard query returns data.

The rules are loaded with `for:` shortened to one second; everything else is as shipped.
Waits poll Prometheus's HTTP API with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from test_dashboards import panel_queries, tool

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "collector" / "example"
RULES = ROOT / "prometheus" / "rules"
TOKYO = ZoneInfo("Asia/Tokyo")
# A KPI whose feed matches no stored series: DxKpiDataMissing must fire for it.
UNFED_KPI = "e2e_unreleased_app_downloads"
# The shipped example's one truly flat KPI: 3, 3, 3 companies in its last three reported years.
STALLING_KPI = "companies_adopting_ai_iot"
# A source that succeeds once and then loses its file.
BREAKING_SOURCE = "zoom_usage"
BREAKING_INTERVAL = 10  # seconds, the shortest schedule dxkpi accepts


def with_short_for(rules: str, duration: str = "1s") -> str:
    """The rule file with every `for:` replaced by `duration`, for tests that cannot wait days."""
    return re.sub(r"^(\s+for:\s*)\S+", rf"\g<1>{duration}", rules, flags=re.M)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path) -> Path:
    """The shipped example, plus a Zoom-usage CSV source on a 10 s schedule and an unfed KPI."""
    shutil.copytree(EXAMPLE, folder)
    today = datetime.now(TOKYO).date()
    rows = [f"{today - timedelta(days=d)},{3600 * (d + 2)}" for d in range(7, 0, -1)]
    zoom_csv = folder / "data" / "zoom_usage.csv"
    zoom_csv.write_text("date,meeting_seconds\n" + "\n".join(rows) + "\n", encoding="utf-8")
    os.utime(zoom_csv, (time.time() - 3600,) * 2)  # settled: older than min_file_age
    config = yaml.safe_load((folder / "dxkpi.yaml").read_text(encoding="utf-8"))
    config["exporter"]["refresh_interval"] = "1s"
    config["sources"].append(
        {
            "id": BREAKING_SOURCE,
            "connector": "csvfile",
            "schedule": {"every": f"{BREAKING_INTERVAL}s"},
            "lookback": "14d",
            "start": str(today - timedelta(days=10)),
            "settings": {
                "path": "data/zoom_usage.csv",
                "period_column": "date",
                "granularity": "day",
                "metrics": [
                    {
                        "name": "zoom_meeting_duration_seconds",
                        "column": "meeting_seconds",
                        "unit": "seconds",
                    }
                ],
            },
        }
    )
    config["kpis"].append(
        {
            "id": UNFED_KPI,
            "name_ja": "未公開アプリのダウンロード数",
            "name_en": "Downloads of an app not yet released",
            "area": "health_welfare",
            "unit": "downloads",
            "baseline": {"value": 0, "fiscal_year": "R6"},
            "target": {"value": 1000, "fiscal_year": "R8"},
            "feed": {"metric": "app_first_time_downloads", "labels": {"app": "unreleased"}},
        }
    )
    path = folder / "dxkpi.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Stack:
    prometheus: str
    config_dir: Path
    run: subprocess.Popen[bytes]

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def values(self, expr: str, label: str = "kpi") -> dict[str, float]:
        return {r["metric"][label]: float(r["value"][1]) for r in self.query(expr)}

    def alerts(self, name: str, state: str = "firing") -> dict[str, dict[str, str]]:
        """Alerts of one name in one state, keyed by their kpi (or source) label."""
        return {
            a["labels"].get("kpi") or a["labels"].get("source") or "": a["labels"]
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == state
        }


def start(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXKPI_")}
    with log.open("wb") as output:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = tool("prometheus")
    tmp = tmp_path_factory.mktemp("e2e")
    config = write_config(tmp / "config")
    exporter_port, prometheus_port = free_port(), free_port()

    (tmp / "rules").mkdir()
    for rule_file in RULES.glob("*.yml"):
        (tmp / "rules" / rule_file.name).write_text(with_short_for(rule_file.read_text()))
    shipped = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (exporter_job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "dxkpi-exporter"]
    prometheus_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules" / "*.yml")],
        "scrape_configs": [
            exporter_job | {"static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))

    dxkpi = [sys.executable, "-m", "dxkpi.collector", "--config", str(config)]
    listen = f"127.0.0.1:{exporter_port}"
    run = start(
        [*dxkpi, "--data-dir", str(tmp / "data"), "run", "--listen", listen],
        tmp / "dxkpi-run.log",
        tmp,
    )
    prometheus = start(
        [
            prometheus_bin,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ],
        tmp / "prometheus.log",
        tmp,
    )
    stack = Stack(f"http://127.0.0.1:{prometheus_port}", config.parent, run)
    try:
        # Every source, the Zoom CSV included, has reported its first run to Prometheus.
        sources = {s["id"] for s in yaml.safe_load(config.read_text())["sources"]}

        def all_sources_up() -> bool:
            try:
                return set(stack.values("dxkpi_source_up == 1", "source")) == sources
            except OSError:
                return False

        wait_for(all_sources_up, "every source's first successful run, scraped")
        assert stack.alerts("DxKpiSourceFailing", "pending") == {}
        # Break the Zoom source; beat runs it every 10 s, and its next run finds no file.
        (stack.config_dir / "data" / "zoom_usage.csv").unlink()
        yield stack
    finally:
        stop(prometheus)
        stop(run)
        for log in ("dxkpi-run.log", "prometheus.log"):
            sys.stderr.write(f"--- {log}\n{(tmp / log).read_text(errors='replace')[-3000:]}\n")


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    queries = panel_queries()
    # The recording rules used by panels need an evaluation after the first scrape.
    wait_for(lambda: stack.query("kpi:dxkpi_kpi_forecast_progress:ratio"), "recording rules")
    # increase() over the 1m step needs two scrapes of the counters.
    wait_for(lambda: stack.query("increase(dxkpi_source_runs_total[1m])"), "two scrapes")
    empty = [q for q in queries if not stack.query(q.expr)]
    assert not empty, "\n".join(f"{q.dashboard} / {q.panel} ({q.ref}): {q.expr}" for q in empty)


def test_no_will_miss_or_behind_path_warning_once_the_target_period_is_over(
    stack: Stack,
) -> None:
    # The example's targets are all R7 (FY2025), over since 2026-04-01: each KPI has an
    # outcome instead, and the forward-looking warnings stay quiet.
    ended = stack.values("dxkpi_kpi_target_period_ended")
    # Its target is R8 (FY2026, to 2027-03-31): under way now, over from April 2027.
    r8_over = datetime.now(TOKYO) >= datetime(2027, 4, 1, tzinfo=TOKYO)
    assert ended.pop(UNFED_KPI) == (1 if r8_over else 0)
    assert ended and set(ended.values()) == {1.0}
    outcomes = stack.query("dxkpi_kpi_target_outcome")
    assert {r["metric"]["kpi"] for r in outcomes} == set(ended) | (
        {UNFED_KPI} if r8_over else set()
    )
    wait_for(lambda: stack.query("ALERTS"), "the first rule evaluations")
    for name in ("DxKpiPredictedToMissTarget", "DxKpiBehindPath"):
        assert stack.alerts(name, "pending") == stack.alerts(name) == {}, name


def test_stalled_fires_for_the_flat_kpi_only(stack: Stack) -> None:
    stalled = stack.values("dxkpi_kpi_stalled == 1")
    progress = stack.values("dxkpi_kpi_progress_ratio")
    # 2 (R3), 2, 3 (R5), 3, 3 (R7): no rise in its latest reported year; every other annual KPI
    # rose in R7 (e.g. farms 712 -> 758) and is not stalled whatever the calendar says.
    assert set(stalled) == {STALLING_KPI} and progress[STALLING_KPI] < 1
    wait_for(
        lambda: set(stack.alerts("DxKpiStalled")) == {STALLING_KPI},
        f"DxKpiStalled for exactly {STALLING_KPI}",
        timeout=30,
    )


def test_data_missing_fires_for_the_kpi_without_data(stack: Stack) -> None:
    # Until the first KPI refresh after the sources' first runs, every KPI is (rightly) missing
    # data for a moment: wait for the set to settle on the one KPI that has no feed.
    wait_for(
        lambda: set(stack.alerts("DxKpiDataMissing")) == {UNFED_KPI},
        f"DxKpiDataMissing for exactly {UNFED_KPI}",
        timeout=30,
    )
    firing = stack.alerts("DxKpiDataMissing")
    assert set(firing) == {UNFED_KPI}
    assert firing[UNFED_KPI]["name_ja"] == "未公開アプリのダウンロード数"


def test_a_source_that_breaks_fails_while_the_others_stay_fresh(stack: Stack) -> None:
    # The stack fixture removed the source's file after its first success.
    firing = wait_for(
        lambda: stack.alerts("DxKpiSourceFailing"),
        "DxKpiSourceFailing for the broken source",
        timeout=BREAKING_INTERVAL * 3,
    )
    assert set(firing) == {BREAKING_SOURCE}
    assert firing[BREAKING_SOURCE]["severity"] == "warning"
    # DxKpiSourceStale needs three intervals (30 s here) and is covered by the promtool tests;
    # here the live inputs of its recording rule are checked for units: seconds over seconds.
    staleness = stack.values("source:dxkpi_source_intervals_since_success:ratio", "source")
    assert set(staleness) == set(stack.values("dxkpi_source_interval_seconds", "source"))
    fresh = {source: ratio for source, ratio in staleness.items() if source != BREAKING_SOURCE}
    assert all(0 <= ratio < 1 for ratio in fresh.values()), fresh  # 15-minute sources, just run
    assert staleness[BREAKING_SOURCE] > 0


def test_exporter_down_fires_when_the_exporter_stops(stack: Stack) -> None:
    assert stack.alerts("DxKpiExporterDown") == {}
    stop(stack.run)
    firing = wait_for(lambda: stack.alerts("DxKpiExporterDown"), "DxKpiExporterDown", timeout=30)
    assert {labels["severity"] for labels in firing.values()} == {"critical"}
