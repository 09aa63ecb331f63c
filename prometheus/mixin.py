"""The dxkpi alerting mixin: every alert and recording rule, its thresholds, its runbook page and
the README's table of alerts, written from this one file.

    .venv/bin/python prometheus/mixin.py

writes `prometheus/rules/dxkpi-alerts.yml`, `prometheus/rules/dxkpi-recording.yml`,
`docs/runbooks/<Alert>.md` and the alert table of `prometheus/README.md` (between its markers).
The written files are committed, so Prometheus needs nothing but the files; tests/test_rules.py
fails when they differ from what this file writes, and the tests (promtool's and the replay
test) import the constants below instead of copying numbers. Edit here, not in the YAML.

Conventions (monitoring-mixins): alert names start with DxKpi (the Watchdog keeps its
conventional name); a `severity` label (critical: nothing is measured or data is lost, act
today; warning: a KPI or source needs attention this week; info: for the monthly progress
review; none: never notifies a person); `summary`/`description` in English and
`summary_ja`/`description_ja` in Japanese, `dashboard_url` relative to Grafana's root URL and
`runbook_url` relative to the repository's root. KPI alerts copy name_ja, name_en and area from
dxkpi_kpi_info into their labels so notifications name the indicator and group by area. Every
dxkpi_* series has an `org` label (the organisation, or a roll-up's label): KPI expressions
match on (kpi, org), so one organisation's figure is never compared with another's.

Numbers in the text are made for people: the expression computes the figure to show (whole
days, points of the baseline-to-target way) and the text prints it with `printf "%.0f"`, so
"611日" and "12 points behind", never "611d 15h 39m 36s" or "83.33 %". All KPI gauges follow
the reporting-period contract of collector/kpi.py: a figure refers to its reported period, whose
times are period ends, never "now".
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dxkpi.collector.kpi import BEHIND_PATH_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "prometheus" / "rules"
RUNBOOK_DIR = ROOT / "docs" / "runbooks"
README = ROOT / "prometheus" / "README.md"
TABLE_BEGIN = "<!-- alerts table: written by prometheus/mixin.py -->"
TABLE_END = "<!-- end of alerts table -->"

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# --- thresholds: the one place they are written ----------------------------------------------

# DxKpiBehindPath: the reported figure lags the planned path by more than this many points of
# the baseline-to-target way (35 % done where 45 % is planned = 10 points). Smaller gaps are the
# noise of yearly or monthly reporting. `dxkpi status` calls such a KPI "behind" by the same
# constant, so it is read from dxkpi.collector.kpi, not written twice.
BEHIND_PATH_POINTS = round(100 * BEHIND_PATH_THRESHOLD)
BEHIND_PATH_FOR = 3 * DAY
# DxKpiStalled: dxkpi_kpi_stalled already counts reported periods (stall_periods) or waits
# stall_after (continuous KPIs); the rule only waits out a rebuild of the snapshot.
STALLED_FOR = 1 * HOUR
PREDICTED_MISS_FOR = 1 * DAY
# DxKpiDataOverdue: the due date already includes the KPI's publication_lag.
DATA_OVERDUE_FOR = 1 * HOUR
DATA_MISSING_FOR = 1 * HOUR
# DxKpiTargetPeriodEnded: one notice, firing this long after the outcome became known.
# Alertmanager's route for it repeats less often than this (see alertmanager.yml), so it is
# sent once; after the window the outcome stays on the dashboards.
TARGET_NOTICE_WINDOW = 3 * DAY
TARGET_NOTICE_FOR = 1 * MINUTE
SOURCE_FAILING_FOR = 15 * MINUTE
# DxKpiSourceStale: no successful run for this many schedule intervals. Two missed runs in a row
# are tolerated (a vendor's maintenance window, a retry backing off); a third means it is broken.
SOURCE_STALE_INTERVALS = 3
SOURCE_STALE_FOR = 10 * MINUTE
EXPORTER_DOWN_FOR = 5 * MINUTE
EXPORTER_JOB = "dxkpi-exporter"
# DxKpiSnapshotStale: the exporter rebuilds at least every 5 minutes (it follows the calendar);
# six missed rebuilds mean it cannot read the store and serves old figures.
SNAPSHOT_STALE_AFTER = 30 * MINUTE
SNAPSHOT_STALE_FOR = 5 * MINUTE

KPI_LABELS = "name_ja, name_en, area"
KPI_DASHBOARD = (
    "/d/dxkpi-kpi-overview/dxkpi-kpi-overview?var-kpi={{ $labels.kpi }}&var-org={{ $labels.org }}"
)
# Stall and overdue state first, then the KPI's whole plan (grafana/generate.py).
HISTORY_DASHBOARD = (
    "/d/dxkpi-kpi-history/dxkpi-kpi-history?var-kpi={{ $labels.kpi }}&var-org={{ $labels.org }}"
)
SOURCE_DASHBOARD = (
    "/d/dxkpi-source-health/dxkpi-source-health"
    "?var-source={{ $labels.source }}&var-org={{ $labels.org }}"
)
HEALTH_DASHBOARD = "/d/dxkpi-source-health/dxkpi-source-health"

# The alert's value printed as a whole number, and English plurals of it.
N = '{{ $value | printf "%.0f" }}'


def n_units(unit: str) -> str:
    """'3 days' / '1 day': the value with an English unit."""
    return f'{N} {unit}{{{{ if ne ($value | printf "%.0f") "1" }}}}s{{{{ end }}}}'


def duration(seconds: int) -> str:
    """Prometheus's duration syntax: 3d, 1h, 15m."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def in_words(seconds: int) -> str:
    """A duration for the README and runbooks: '3 days', '15 minutes'."""
    for unit, size in (("day", DAY), ("hour", HOUR), ("minute", MINUTE)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


@dataclass(frozen=True)
class Runbook:
    title_ja: str  # the page's heading beside the alert's name
    means: str
    check: list[str]
    act: list[str]


@dataclass(frozen=True)
class Alert:
    name: str
    group: str
    severity: str
    expr: str
    wait: int  # seconds: the rule's `for`
    summary: str
    summary_ja: str
    description: str
    description_ja: str
    dashboard_url: str
    fires_when: str  # one line for the README table
    runbook: Runbook
    kpi: bool = True  # joins dxkpi_kpi_info for name_ja, name_en and area
    comment: str = ""

    def rule(self) -> dict[str, Any]:
        expr = self.expr.strip()
        if self.kpi:
            expr = f"(\n{indent(expr)}\n)\n* on (kpi, org) group_left ({KPI_LABELS}) dxkpi_kpi_info"
        rule: dict[str, Any] = {"alert": self.name, "expr": expr + "\n"}
        if self.wait:
            rule["for"] = duration(self.wait)
        rule["labels"] = {"severity": self.severity}
        rule["annotations"] = {
            "summary": self.summary,
            "summary_ja": self.summary_ja,
            "description": self.description,
            "description_ja": self.description_ja,
            "dashboard_url": self.dashboard_url,
            "runbook_url": f"docs/runbooks/{self.name}.md",
        }
        return rule


@dataclass(frozen=True)
class Recording:
    record: str
    expr: str
    comment: str = ""

    def rule(self) -> dict[str, Any]:
        return {"record": self.record, "expr": self.expr.strip() + "\n"}


def indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line if line else line for line in text.splitlines())


def days_since(series: str) -> str:
    return f"floor((time() - {series}) / {DAY})"


def kpi_query(metric: str, template: str, otherwise: str = "") -> str:
    """Prints another gauge of the same KPI inside an annotation (`.` is its value)."""
    text = (
        f"{{{{ with printf \"{metric}{{kpi='%s',org='%s'}}\" $labels.kpi $labels.org | query }}}}"
    )
    text += f"{{{{ with . | first | value }}}}{template}{{{{ end }}}}"
    if otherwise:
        text += f"{{{{ else }}}}{otherwise}"
    return text + "{{ end }}"


BEHIND_PATH_RATIO = "kpi:dxkpi_kpi_progress_behind_path:ratio"
FORECAST_PROGRESS_RATIO = "kpi:dxkpi_kpi_forecast_progress:ratio"
INTERVALS_SINCE_SUCCESS = "source:dxkpi_source_intervals_since_success:ratio"
NOT_ENDED = "unless on (kpi, org) dxkpi_kpi_target_period_ended == 1"

RECORDING = [
    Recording(
        BEHIND_PATH_RATIO,
        "dxkpi_kpi_expected_progress_ratio - dxkpi_kpi_progress_ratio",
        "How far the reported figure lags the path at its period's end, as a share of the whole "
        "baseline-to-target way: 0.15 = fifteen points behind; negative = ahead. Both ratios are "
        "direction-aware, so this works for down-KPIs.",
    ),
    Recording(
        INTERVALS_SINCE_SUCCESS,
        "(time() - dxkpi_source_last_success_timestamp_seconds)\n  / dxkpi_source_interval_seconds",
        "Time since a source last succeeded, in multiples of its schedule interval: 1 = on time, "
        "3 = two scheduled runs missed. Comparable across hourly and monthly sources.",
    ),
    Recording(
        FORECAST_PROGRESS_RATIO,
        "(dxkpi_kpi_forecast_value - dxkpi_kpi_baseline_value)\n"
        "  / (dxkpi_kpi_target_value - dxkpi_kpi_baseline_value)",
        "Where the forecast (the value projected at the target fiscal year's end) lands on the "
        "0-to-1 progress scale: 1 = exactly on target, 0.8 = 80 % of the way.",
    ),
]

CHECK_DATA = (
    "`dxkpi status` (or the KPI overview dashboard): the KPI's reported period, its figure, "
    "and when the next figure is due."
)

ALERTS = [
    Alert(
        name="DxKpiStalled",
        group="dxkpi-kpis",
        severity="warning",
        expr=f"""
{days_since("dxkpi_kpi_last_change_timestamp_seconds")}
and on (kpi, org) dxkpi_kpi_stalled == 1
and on (kpi, org) dxkpi_kpi_progress_ratio < 1
""",
        wait=STALLED_FOR,
        summary=f"KPI {{{{ $labels.name_en }}}} has not improved for {n_units('day')}",
        summary_ja=f"指標「{{{{ $labels.name_ja }}}}」が{N}日間改善していません",
        description=(
            "{{ $labels.name_en }} ({{ $labels.kpi }}) has not moved towards its target since the "
            f"reported period that ended {n_units('day')} ago"
            + kpi_query(
                "dxkpi_kpi_periods_without_improvement",
                ' ({{ printf "%.0f" . }} reported periods without improvement)',
            )
            + " and has not reached it. Check that its latest figures are complete and correct,"
            " then ask the responsible department whether the initiative is on hold."
        ),
        description_ja=(
            "指標「{{ $labels.name_ja }}」（{{ $labels.kpi }}）は目標未達のまま、"
            f"{N}日前に終わった報告期間から改善方向に動いていません"
            + kpi_query(
                "dxkpi_kpi_periods_without_improvement",
                '（改善のない報告期間 {{ printf "%.0f" . }}期連続）',
            )
            + "。最新の数値が揃っていて正しいか確認し、担当課に取組の状況を確認してください。"
        ),
        dashboard_url=HISTORY_DASHBOARD,
        fires_when="`dxkpi_kpi_stalled == 1` (no good move in its last `stall_periods` "
        "reported periods, or for `stall_after` when continuous) and progress < 1",
        runbook=Runbook(
            title_ja="指標の改善が止まっている",
            means="The KPI's last reported figures did not move towards its target: for a yearly "
            "or monthly KPI, its last `stall_periods` reported periods showed no improvement on "
            "the period before; for a continuous KPI, no improvement for `stall_after`. The "
            "target is not reached yet. The days shown count from the end of the period of the "
            "last improvement.",
            check=[
                CHECK_DATA,
                "That the latest period is complete and its figure is right (a missing month, a "
                "unit mistake or a late revision can look like a stall).",
            ],
            act=[
                "Ask the responsible department whether the initiative is on hold, and bring it "
                "to the next progress meeting.",
                "If the figure is wrong, correct the data at its source; the alert resolves on "
                "the next snapshot.",
            ],
        ),
    ),
    Alert(
        name="DxKpiBehindPath",
        group="dxkpi-kpis",
        severity="info",
        expr=f"""
100 * {BEHIND_PATH_RATIO} > {BEHIND_PATH_POINTS}
{NOT_ENDED}
""",
        wait=BEHIND_PATH_FOR,
        summary=f"KPI {{{{ $labels.name_en }}}} is {n_units('point')} behind its planned path",
        summary_ja=f"指標「{{{{ $labels.name_ja }}}}」が計画より{N}ポイント遅れています",
        description=(
            "The latest reported figure of {{ $labels.name_en }} ({{ $labels.kpi }}) lags the "
            f"straight path from baseline to target at its period's end by {n_units('point')} "
            "of the way. Review its action plan at the next progress meeting."
        ),
        description_ja=(
            "指標「{{ $labels.name_ja }}」（{{ $labels.kpi }}）の最新の報告値は、その期間末時点の"
            f"基準値から目標値への計画線より{N}ポイント遅れています。次回の進捗会議で取組を"
            "見直してください。"
        ),
        dashboard_url=KPI_DASHBOARD,
        fires_when=f"the reported figure lags the path at its period's end by more than "
        f"**{BEHIND_PATH_POINTS} points** of the baseline-to-target way; quiet once the target "
        "period has ended",
        runbook=Runbook(
            title_ja="指標が計画線より遅れている",
            means="The latest reported figure is more than "
            f"{BEHIND_PATH_POINTS} points of the baseline-to-target way behind where the plan's "
            "straight path (through milestones) is at the end of that figure's period. It is an "
            "early signal for the monthly review, not an emergency.",
            check=[CHECK_DATA, "The path: baseline, milestones and target in the KPI catalog."],
            act=[
                "Put the KPI on the agenda of the next progress meeting.",
                "If the plan was revised, add the new target to the KPI's `targets`.",
            ],
        ),
    ),
    Alert(
        name="DxKpiPredictedToMissTarget",
        group="dxkpi-kpis",
        severity="warning",
        expr=f"""
100 * (1 - {FORECAST_PROGRESS_RATIO})
and on (kpi, org) (dxkpi_kpi_target_value - dxkpi_kpi_forecast_value) * dxkpi_kpi_direction > 0
{NOT_ENDED}
""",
        wait=PREDICTED_MISS_FOR,
        summary=f"KPI {{{{ $labels.name_en }}}} is forecast to miss its target by "
        f"{n_units('point')}",
        summary_ja=f"指標「{{{{ $labels.name_ja }}}}」は目標に{N}ポイント届かない見込みです",
        description=(
            "At the trend of its reported figures (a Theil-Sen fit, robust to single bad years) "
            "{{ $labels.name_en }} ({{ $labels.kpi }}) ends its target fiscal year "
            f"{n_units('point')} of the baseline-to-target way short of the target. Strengthen "
            "the measures, or record a revised target in the KPI catalog."
        ),
        description_ja=(
            "報告値の傾向（外れ値に強いTheil-Sen法）のままでは、指標「{{ $labels.name_ja }}」"
            f"（{{{{ $labels.kpi }}}}）は目標年度末に目標まで{N}ポイント届かない見込みです。"
            "取組を強化するか、目標を見直した場合はKPIカタログを更新してください。"
        ),
        dashboard_url=KPI_DASHBOARD,
        fires_when="the forecast at the target fiscal year's end falls short of the target "
        "in the KPI's direction; quiet once the target period has ended",
        runbook=Runbook(
            title_ja="目標未達の見込み",
            means="The Theil-Sen trend of the KPI's complete period figures, evaluated at the end "
            "of the current target's fiscal year, falls short of the target. The number is the "
            "shortfall in points of the baseline-to-target way.",
            check=[
                CHECK_DATA,
                "The forecast against the figures on the KPI overview dashboard: one odd year can "
                "bend a short history.",
            ],
            act=[
                "Strengthen the measures, or record the revised target in the KPI catalog "
                "(`targets`).",
            ],
        ),
    ),
    Alert(
        name="DxKpiDataOverdue",
        group="dxkpi-kpis",
        severity="warning",
        expr="""
ceil((time() - dxkpi_kpi_next_data_due_timestamp_seconds) / 86400)
and on (kpi, org) (time() - dxkpi_kpi_next_data_due_timestamp_seconds > 0)
""",
        wait=DATA_OVERDUE_FOR,
        summary=f"The next figure of KPI {{{{ $labels.name_en }}}} is {n_units('day')} overdue",
        summary_ja=f"指標「{{{{ $labels.name_ja }}}}」の次の数値が{N}日遅れています",
        description=(
            "The next period's figure of {{ $labels.name_en }} ({{ $labels.kpi }}) was due "
            f"{n_units('day')} ago (its period's end plus the KPI's publication_lag) and has not "
            "arrived, so the KPI still shows an older period. Check that its source still "
            "delivers, or ask the department that publishes it."
        ),
        description_ja=(
            "指標「{{ $labels.name_ja }}」（{{ $labels.kpi }}）の次の期間の数値は"
            f"{N}日前が期限（期間末＋publication_lag）でしたが、まだ届いていません。"
            "データ元が届けているか確認し、公表元の担当課に問い合わせてください。"
        ),
        dashboard_url=HISTORY_DASHBOARD,
        fires_when="`time() > dxkpi_kpi_next_data_due_timestamp_seconds`: the next period's "
        "figure is later than its end plus `publication_lag`",
        runbook=Runbook(
            title_ja="次の数値が期限を過ぎても届かない",
            means="The figure of the period after the newest stored one was due (that period's "
            "end plus the KPI's `publication_lag`) and has not arrived. The KPI keeps showing "
            "the older period meanwhile.",
            check=[
                CHECK_DATA,
                "The source's health (source health dashboard, `dxkpi status`): is it failing, "
                "or succeeding without new rows (a file not updated, a renamed sheet)?",
            ],
            act=[
                "Ask the department that publishes the figure when it comes; load it "
                "(`dxkpi collect <source>` or `dxkpi backfill`).",
                "If the figure is published later every year, raise the KPI's `publication_lag`.",
            ],
        ),
    ),
    Alert(
        name="DxKpiTargetPeriodEnded",
        group="dxkpi-kpis",
        severity="info",
        expr=f"""
100 * dxkpi_kpi_target_final_progress_ratio
  * on (kpi, org, target_fiscal_year) group_left (outcome)
    dxkpi_kpi_target_outcome{{outcome!="pending"}}
and on (kpi, org, target_fiscal_year)
  (time() - dxkpi_kpi_target_outcome_timestamp_seconds < {TARGET_NOTICE_WINDOW})
""",
        wait=TARGET_NOTICE_FOR,
        summary=(
            "KPI {{ $labels.name_en }}: target period {{ $labels.target_fiscal_year }} is over, "
            "target {{ $labels.outcome }} "
            f"({N} % of the way)"
        ),
        summary_ja=(
            "指標「{{ $labels.name_ja }}」: 目標年度 {{ $labels.target_fiscal_year }} が終わり、"
            '目標を{{ if eq $labels.outcome "achieved" }}達成しました{{ else }}達成できません'
            f"でした{{{{ end }}}}（進捗 {N}%）"
        ),
        description=(
            "The figure of {{ $labels.name_en }} ({{ $labels.kpi }}) for its target fiscal year "
            "{{ $labels.target_fiscal_year }} has arrived: the target was {{ $labels.outcome }}, "
            f"with {N} % of the baseline-to-target way. Behind-path and forecast warnings for "
            "this target have stopped. Report the outcome and set the next target in the KPI "
            "catalog if the plan has one."
        ),
        description_ja=(
            "指標「{{ $labels.name_ja }}」（{{ $labels.kpi }}）の目標年度 "
            "{{ $labels.target_fiscal_year }} の数値が届きました。"
            '目標は{{ if eq $labels.outcome "achieved" }}達成{{ else }}未達成{{ end }}で、'
            f"基準値から目標値までの{N}%でした。この目標に対する計画遅れ・未達見込みの通知は"
            "止まります。結果を報告し、次の計画の目標があればKPIカタログに追加してください。"
        ),
        dashboard_url=HISTORY_DASHBOARD,
        fires_when="once per ended target period, for "
        f"**{in_words(TARGET_NOTICE_WINDOW)}** after its outcome (achieved / missed) became "
        "known",
        runbook=Runbook(
            title_ja="目標年度の終了（達成・未達の通知）",
            means="A notice, not a problem: the figure for a target's fiscal year has arrived "
            "and decided the outcome, achieved or missed, with the final progress. It fires "
            f"for {in_words(TARGET_NOTICE_WINDOW)} after the figure's arrival and Alertmanager "
            "sends it once.",
            check=[CHECK_DATA],
            act=[
                "Report the outcome to the progress meeting.",
                "If a new plan sets the next target, add it to the KPI's `targets` so that "
                "progress, path and forecast follow it.",
            ],
        ),
    ),
    Alert(
        name="DxKpiDataMissing",
        group="dxkpi-kpis",
        severity="warning",
        expr="""
dxkpi_kpi_info
unless on (kpi, org) (dxkpi_kpi_value or dxkpi_kpi_running_period_value)
""",
        wait=DATA_MISSING_FOR,
        kpi=False,  # the expression is dxkpi_kpi_info itself: its labels are there already
        summary="KPI {{ $labels.name_en }} has no data",
        summary_ja="指標「{{ $labels.name_ja }}」のデータがありません",
        description=(
            "{{ $labels.name_en }} ({{ $labels.kpi }}) is in the KPI catalog but has no figure, "
            "complete or running: no source has delivered its metric yet, or the catalog maps it "
            "to a metric no source collects. Run `dxkpi check-config` and `dxkpi status`, then "
            "`dxkpi backfill`."
        ),
        description_ja=(
            "指標「{{ $labels.name_ja }}」（{{ $labels.kpi }}）はKPIカタログにありますが、"
            "数値がありません。データ元がまだ値を届けていないか、カタログが収集されていない"
            "メトリクスを指しています。`dxkpi check-config` と `dxkpi status` で確認し、"
            "`dxkpi backfill` を実行してください。"
        ),
        dashboard_url=KPI_DASHBOARD,
        fires_when="a KPI in `dxkpi_kpi_info` has neither a reported nor a running figure",
        runbook=Runbook(
            title_ja="指標のデータがない",
            means="The KPI is in the catalog but no data reaches it at all.",
            check=[
                "`dxkpi check-config`: does the KPI's feed name a metric a source declares?",
                "`dxkpi status`: has that source ever succeeded?",
            ],
            act=["Fix the feed or the source, then `dxkpi backfill` the source's history."],
        ),
    ),
    Alert(
        name="DxKpiSourceFailing",
        group="dxkpi-sources",
        severity="warning",
        expr="dxkpi_source_up == 0",
        wait=SOURCE_FAILING_FOR,
        kpi=False,
        summary="Source {{ $labels.source }} is failing",
        summary_ja="データ元 {{ $labels.source }} の収集が失敗しています",
        description=(
            "The last run of source {{ $labels.source }} failed and nothing has succeeded since "
            f"for {in_words(SOURCE_FAILING_FOR)}. Read the error with `dxkpi status` or in the "
            "worker log; fix the credentials or settings it names, then rerun with "
            "`dxkpi collect`."
        ),
        description_ja=(
            "データ元 {{ $labels.source }} の直近の収集が失敗し、"
            f"{SOURCE_FAILING_FOR // MINUTE}分以上成功していません。`dxkpi status` またはワーカー"
            "のログでエラーを確認し、示された認証情報や設定を直してから `dxkpi collect` で"
            "再実行してください。"
        ),
        dashboard_url=SOURCE_DASHBOARD,
        fires_when="`dxkpi_source_up == 0`",
        runbook=Runbook(
            title_ja="データ元の収集が失敗している",
            means="The source's last run failed.",
            check=["`dxkpi status` or the worker log: the error names the request and the cause."],
            act=["Fix the credentials or settings it names, then `dxkpi collect <source>`."],
        ),
    ),
    Alert(
        name="DxKpiSourceStale",
        group="dxkpi-sources",
        severity="critical",
        expr=f"{INTERVALS_SINCE_SUCCESS} > {SOURCE_STALE_INTERVALS}",
        wait=SOURCE_STALE_FOR,
        kpi=False,
        summary=(
            "Source {{ $labels.source }} has not succeeded for "
            '{{ $value | printf "%.1f" }} schedule intervals'
        ),
        summary_ja=(
            "データ元 {{ $labels.source }} が収集間隔の "
            '{{ $value | printf "%.1f" }} 倍の間、成功していません'
        ),
        description=(
            "Source {{ $labels.source }} has had no successful run for more than "
            f"{SOURCE_STALE_INTERVALS} times its schedule interval, so its KPIs are going stale. "
            "Once it works again, run `dxkpi backfill` over the gap if the gap is longer than "
            "the source's lookback."
        ),
        description_ja=(
            f"データ元 {{{{ $labels.source }}}} は収集間隔の{SOURCE_STALE_INTERVALS}倍を超えて"
            "成功しておらず、関連する指標が古くなっています。復旧後、停止期間がlookbackより長い"
            "場合は `dxkpi backfill` でその期間を取り直してください。"
        ),
        dashboard_url=SOURCE_DASHBOARD,
        fires_when=f"no successful run for **{SOURCE_STALE_INTERVALS}** schedule intervals",
        runbook=Runbook(
            title_ja="データ元が長く成功していない",
            means=f"The source has not succeeded for {SOURCE_STALE_INTERVALS} of its schedule "
            "intervals: its KPIs are going stale and data may be lost once the vendor's "
            "retention passes.",
            check=[
                "`dxkpi status`: the last error, and whether runs happen at all (beat and "
                "workers running?).",
            ],
            act=[
                "Fix the cause, then `dxkpi backfill <source>` over the gap if it is longer than "
                "the source's lookback.",
            ],
        ),
    ),
    Alert(
        name="DxKpiExporterDown",
        group="dxkpi-sources",
        severity="critical",
        expr=f'up{{job="{EXPORTER_JOB}"}} == 0 or absent(up{{job="{EXPORTER_JOB}"}})',
        wait=EXPORTER_DOWN_FOR,
        kpi=False,
        comment="Without the exporter every other DxKpi alert goes silent, so its absence pages.",
        summary="The dxkpi exporter is down: KPI and source alerts cannot fire",
        summary_ja="dxkpi エクスポーターが停止しており、KPIとデータ元のアラートが機能しません",
        description=(
            f"Prometheus cannot scrape `dxkpi exporter` (job {EXPORTER_JOB}). Check the exporter "
            "container's log and its database connection; `dxkpi status` shows whether the "
            "storage is reachable."
        ),
        description_ja=(
            f"Prometheus が `dxkpi exporter`（job {EXPORTER_JOB}）を取得できません。"
            "エクスポーターのコンテナのログとデータベース接続を確認してください。"
            "`dxkpi status` でストレージに接続できるか確認できます。"
        ),
        dashboard_url=HEALTH_DASHBOARD,
        fires_when=f"the `{EXPORTER_JOB}` scrape fails or is missing",
        runbook=Runbook(
            title_ja="エクスポーターが停止している",
            means="Prometheus cannot scrape the exporter, so no other dxkpi alert can fire.",
            check=["The exporter container's log and `/healthz`; its database connection."],
            act=["Restart the exporter once the cause is fixed (`docker-compose up -d exporter`)."],
        ),
    ),
    Alert(
        name="DxKpiSnapshotStale",
        group="dxkpi-sources",
        severity="critical",
        expr=f"""
floor((time() - dxkpi_snapshot_timestamp_seconds) / {MINUTE})
and (time() - dxkpi_snapshot_timestamp_seconds > {SNAPSHOT_STALE_AFTER})
""",
        wait=SNAPSHOT_STALE_FOR,
        kpi=False,
        summary=f"The dxkpi exporter serves figures {n_units('minute')} old",
        summary_ja=f"dxkpi エクスポーターの数値が{N}分前のまま更新されていません",
        description=(
            f"The exporter's snapshot was built {n_units('minute')} ago; it rebuilds at least "
            "every 5 minutes, so it cannot read the store and every KPI alert sees old figures. "
            "Check `/healthz` and the exporter's log for the store error."
        ),
        description_ja=(
            f"エクスポーターのスナップショットは{N}分前に作られたままです（通常は5分以内に"
            "作り直されます）。ストレージを読めず、KPIのアラートは古い数値を見ています。"
            "`/healthz` とエクスポーターのログでストレージのエラーを確認してください。"
        ),
        dashboard_url=HEALTH_DASHBOARD,
        fires_when=f"`dxkpi_snapshot_timestamp_seconds` is older than "
        f"**{in_words(SNAPSHOT_STALE_AFTER)}**",
        runbook=Runbook(
            title_ja="エクスポーターの数値が古いまま",
            means="The exporter answers scrapes but its snapshot has not been rebuilt for "
            f"{in_words(SNAPSHOT_STALE_AFTER)}: it serves its last figures because it cannot "
            "read the store.",
            check=[
                "`/healthz` and the exporter's log (`store unreachable, serving the last "
                "snapshot: ...`)."
            ],
            act=["Restore the database connection; the next rebuild clears the alert."],
        ),
    ),
    Alert(
        name="Watchdog",
        group="dxkpi-meta",
        severity="none",
        expr="vector(1)",
        wait=0,
        kpi=False,
        comment="Always firing: proves the whole alerting pipeline works. Alertmanager routes it "
        "to the watchdog receiver (a dead man's switch), never to people.",
        summary="Always firing: the alerting pipeline works",
        summary_ja="常に発報: アラートの経路は動作しています",
        description=(
            "This alert always fires so that its absence means Prometheus or Alertmanager is "
            "broken. Point Alertmanager's watchdog receiver at a dead man's switch service."
        ),
        description_ja=(
            "このアラートは常に発報しており、届かなくなったことで Prometheus または "
            "Alertmanager の故障がわかります。Alertmanager の watchdog 受信先を外部の"
            "死活監視サービスに向けてください。"
        ),
        dashboard_url=HEALTH_DASHBOARD,
        fires_when="always (`vector(1)`); routed to the `watchdog` receiver, never to people",
        runbook=Runbook(
            title_ja="常時発報（アラート経路の死活監視）",
            means="Nothing is wrong: it always fires. Its *absence* at a dead man's switch means "
            "Prometheus, its rules or Alertmanager stopped working.",
            check=["Prometheus's `/alerts` page and Alertmanager's UI when the switch complains."],
            act=[
                "Nothing while it fires. If the switch reports it missing, restore Prometheus "
                "and Alertmanager."
            ],
        ),
    ),
]

GROUP_ORDER = ["dxkpi-kpis", "dxkpi-sources", "dxkpi-meta"]

ALERTS_HEADER = """\
# Written by prometheus/mixin.py from its constants: edit there and run it, not here.
# Thresholds, conventions and each alert's runbook (docs/runbooks/) come from that one file.
# `for:` of days relies on Prometheus keeping alert state across restarts; docker-compose.yml
# raises --rules.alert.for-outage-tolerance accordingly.
"""
RECORDING_HEADER = """\
# Written by prometheus/mixin.py: edit there and run it, not here.
# Recording rules shared by the alerts (dxkpi-alerts.yml) and the Grafana dashboards.
# Names follow level:metric:operation (https://prometheus.io/docs/practices/rules/).
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=10_000)


def groups_yaml(groups: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> str:
    """`groups:` with each rule preceded by its comment (PyYAML writes no comments itself)."""
    lines = ["groups:"]
    for name, rules in groups:
        lines += [f"  - name: {name}", "    rules:"]
        for comment, rule in rules:
            lines += [f"      # {line}" for line in textwrap.wrap(comment, 92)]
            lines += [indent(dump([rule]).rstrip("\n"), "      "), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def alerts_yaml() -> str:
    return ALERTS_HEADER + groups_yaml(
        [(name, [(a.comment, a.rule()) for a in ALERTS if a.group == name]) for name in GROUP_ORDER]
    )


def recording_yaml() -> str:
    rules = [(r.comment, r.rule()) for r in RECORDING]
    return RECORDING_HEADER + groups_yaml([("dxkpi-recording", rules)])


def runbook(alert: Alert) -> str:
    lines = [
        f"# {alert.name} — {alert.runbook.title_ja}",
        "",
        f"Severity **{alert.severity}**. Fires when {alert.fires_when}"
        + (f" (after holding for {in_words(alert.wait)})." if alert.wait else "."),
        "",
        "## What it means",
        "",
        alert.runbook.means,
        "",
        "## What to check",
        "",
        *[f"- {item}" for item in alert.runbook.check],
        "",
        "## What to do",
        "",
        *[f"- {item}" for item in alert.runbook.act],
        "",
        "(Written by `prometheus/mixin.py`; the rule is in `prometheus/rules/dxkpi-alerts.yml`.)",
        "",
    ]
    return "\n".join(lines)


def alerts_table() -> str:
    rows = [
        "| alert | severity | fires when | `for` |",
        "| --- | --- | --- | --- |",
        *[
            f"| [`{a.name}`](../docs/runbooks/{a.name}.md) | {a.severity} | {a.fires_when} | "
            f"{duration(a.wait) if a.wait else '—'} |"
            for a in ALERTS
        ],
    ]
    return "\n".join(rows)


def readme(current: str) -> str:
    """prometheus/README.md with its alert table replaced by the one written from ALERTS."""
    pattern = re.compile(re.escape(TABLE_BEGIN) + r".*?" + re.escape(TABLE_END), re.DOTALL)
    if not pattern.search(current):
        raise SystemExit(f"{README}: markers {TABLE_BEGIN!r} ... {TABLE_END!r} not found")
    return pattern.sub(lambda _: f"{TABLE_BEGIN}\n{alerts_table()}\n{TABLE_END}", current)


def outputs() -> dict[Path, str]:
    """Every file this mixin writes, with its content."""
    files = {
        RULES_DIR / "dxkpi-alerts.yml": alerts_yaml(),
        RULES_DIR / "dxkpi-recording.yml": recording_yaml(),
        README: readme(README.read_text(encoding="utf-8")),
    }
    files.update({RUNBOOK_DIR / f"{a.name}.md": runbook(a) for a in ALERTS})
    return files


def main() -> None:
    RUNBOOK_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in outputs().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
