"""What the council report says, built from the KPI computation and the store; no rendering.

The KPI rows are the `KpiState`s of `KpiCalculator.compute_all(as_of, fiscal_year=…)`, the same
call `dxkpi status --fiscal-year` makes, so the report and `status --json` give one set of
figures. The operational figures are the fiscal year's totals of the summable raw metrics
(connector `aggregation: sum`: meeting hours, hours saved, downloads, page views), read through
`Store.period_points` over the fiscal year up to the as-of moment, and converted from seconds
to hours for people.

Every table is described once, as `Column`s: the header in both languages, the kind of cell
(text, a number in the row's unit, a ratio) and its width. The xlsx writer and the Markdown/HTML
template read the same columns, so the three formats cannot disagree on what is shown.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from dxkpi.collector.config import Config, FeedConfig, LoadedConfig
from dxkpi.collector.kpi import KpiCalculator, KpiState, match_series
from dxkpi.collector.present import (
    STATUS_WORDS,
    Lang,
    area_label,
    fiscal_year_label,
    format_moment,
    org_label,
    period_label,
    rollup_note,
    unit_label,
)
from dxkpi.collector.storage import SeriesRow, Store
from dxkpi.collector.units import PERCENT_UNITS, RATIO_UNITS, conversion_factor

__all__ = [
    "KPI_COLUMNS",
    "OPERATION_COLUMNS",
    "Column",
    "Operation",
    "Report",
    "Table",
    "build_report",
    "decimals",
    "number_text",
]

# Durations are stored in seconds (base units for Prometheus); a council reads hours.
DISPLAY_UNITS = {"seconds": "hours", "minutes": "hours"}

# A metric of at most this many series also gets one row per series; more (Zoom's departments,
# RPA runs by process and result) would bury the totals.
MAX_BREAKDOWN = 6

CellKind = Literal["text", "number", "ratio"]


@dataclass(frozen=True)
class Column:
    key: str
    ja: str
    en: str
    kind: CellKind
    width: float  # xlsx column width (characters; a Japanese character takes two)

    def header(self, lang: Lang, fiscal_year: int) -> str:
        text = self.ja if lang == "ja" else self.en
        return text.format(year=fiscal_year_label(fiscal_year, lang))


KPI_COLUMNS = (
    Column("area", "分野", "Area", "text", 12),
    Column("name", "指標名", "Indicator", "text", 44),
    Column("unit", "単位", "Unit", "text", 9),
    Column("baseline", "基準値", "Baseline", "number", 13),
    Column("baseline_year", "基準年度", "Baseline year", "text", 12),
    Column("target", "目標値", "Target", "number", 13),
    Column("target_year", "目標年度", "Target year", "text", 12),
    Column("value", "{year}実績", "{year} result", "number", 15),
    Column("period", "実績の期間", "Period", "text", 14),
    Column("progress", "進捗率", "Progress", "ratio", 9),
    Column("expected", "計画上の見込み", "Planned path", "number", 15),
    Column("forecast", "目標年度の予測", "Forecast", "number", 15),
    Column("status", "状況", "Status", "text", 12),
)

OPERATION_COLUMNS = (
    Column("name", "項目", "Item", "text", 44),
    Column("breakdown", "内訳", "Breakdown", "text", 26),
    Column("source", "データ元", "Source", "text", 18),
    Column("unit", "単位", "Unit", "text", 9),
    Column("total", "{year}合計", "{year} total", "number", 15),
    Column("months", "データの期間", "Data covers", "text", 20),
)

TITLES: dict[str, dict[Lang, str]] = {
    "title": {
        "ja": "デジタル変革（ＤＸ）の指標の状況（{year}）",
        "en": "Digital transformation KPIs: {year}",
    },
    "kpis": {"ja": "指標の実績と進捗", "en": "Indicators: results and progress"},
    "operations": {"ja": "取組の実績（運用データ）", "en": "Operational figures behind them"},
    "as_of": {"ja": "データ基準日", "en": "Data as of"},
    "sources": {"ja": "出典", "en": "Sources"},
    "no_kpis": {"ja": "指標が設定されていません。", "en": "No KPIs are configured."},
    "no_operations": {
        "ja": "この年度の運用データはありません。",
        "en": "No operational data for this fiscal year.",
    },
}

NOTES: dict[Lang, tuple[str, ...]] = {
    "ja": (
        "実績は各指標の報告期間（年度、または累計指標は年度末の値）の数値です。"
        "期間が完了していない速報値には「（速報）」と記しています。",
        "進捗率＝（実績－基準値）÷（目標値－基準値）。計画上の見込みは、基準年度末から"
        "目標年度末まで直線で結んだ計画線上の、実績期間末の値です。",
        "目標年度の予測は、基準年度以降の実績の傾向（Theil-Sen推定）から求めた目標年度末の"
        "見込みで、目標年度の実績が出ている場合はその値です。",
        "状況：達成／未達成（目標年度の結果）、順調、遅れ（計画線を下回る、または予測が"
        "目標に届かない）、停滞（直近の期間に改善がない）、データ未着、データなし。",
    ),
    "en": (
        "Each result is the figure of the indicator's reported period (the fiscal year, or for "
        "cumulative indicators the level at its end). A figure whose period is not complete is "
        "marked (partial).",
        "Progress = (result - baseline) / (target - baseline). The planned path runs straight "
        "from the end of the baseline year to the end of the target year; its value is taken "
        "at the end of the result's period.",
        "The forecast is the robust (Theil-Sen) trend of the results since the baseline year at "
        "the end of the target year, or that year's result once it is known.",
        "Status: achieved / missed (the target year's outcome), on track, behind (below the "
        "path, or forecast short of the target), stalled (no improvement in the latest period), "
        "data overdue, no data.",
    ),
}


@dataclass(frozen=True)
class Operation:
    """One summable raw metric's fiscal-year total, in the unit shown."""

    source: str
    connector: str
    metric: str
    name_ja: str
    name_en: str
    unit: str
    total: float
    labels: str  # one series' labels (app=kenmin); empty for the metric's total
    first_month: str  # 2021-04
    last_month: str


Cells = dict[str, str | float | None]


@dataclass(frozen=True)
class Table:
    """One of the report's tables, in one language: every format renders these."""

    key: str  # kpis | operations
    heading: str
    columns: tuple[Column, ...]
    rows: list[Cells]
    units: list[str]  # each row's unit, for its number cells
    empty: str  # what to say instead of an empty table


@dataclass(frozen=True)
class Report:
    fiscal_year: int
    as_of: float
    tz: ZoneInfo
    states: list[KpiState]
    operations: list[Operation]
    sources: list[tuple[str, str]]  # (source id, connector) of the figures shown
    # The organisations: with several, each row names whose figure it is.
    config: Config | None = None

    def title(self, lang: Lang) -> str:
        return TITLES["title"][lang].format(year=fiscal_year_label(self.fiscal_year, lang))

    def tables(self, lang: Lang) -> list[Table]:
        """The indicators, then the operational figures."""
        return [
            Table(
                "kpis",
                TITLES["kpis"][lang],
                KPI_COLUMNS,
                [self.kpi_cells(state, lang) for state in self.states],
                [state.kpi.unit for state in self.states],
                TITLES["no_kpis"][lang],
            ),
            Table(
                "operations",
                TITLES["operations"][lang],
                OPERATION_COLUMNS,
                [self.operation_cells(op, lang) for op in self.operations],
                [op.unit for op in self.operations],
                TITLES["no_operations"][lang],
            ),
        ]

    def kpi_cells(self, state: KpiState, lang: Lang) -> Cells:
        """One KPI's row: text cells as shown, number cells in the KPI's unit (ratios as
        ratios), exactly the numbers `status --json` gives."""
        kpi = state.kpi
        period = period_label(state, lang)
        if state.value is not None and not state.complete:
            period += "（速報）" if lang == "ja" else " (partial)"
        name = kpi.name_ja if lang == "ja" else kpi.name_en
        if self.config is not None and (self.config.multi_org or state.rollup is not None):
            mark = "：" if lang == "ja" else ": "
            name = f"{org_label(state, self.config, lang)}{mark}{name}"
        if state.rollup is not None and not state.rollup.complete:
            period += f" ({rollup_note(state, lang)})"
        plan = state.plan_applies  # a member's part of a summed roll-up has no plan of its own
        return {
            "area": area_label(kpi.area, lang),
            "name": name,
            "unit": unit_label(kpi.unit, lang),
            "baseline": state.baseline_value if plan else None,
            "baseline_year": fiscal_year_label(state.baseline_fiscal_year, lang) if plan else "",
            "target": state.target.value if plan else None,
            "target_year": fiscal_year_label(state.target.fiscal_year, lang) if plan else "",
            "value": state.value,
            "period": period,
            "progress": state.progress if plan else None,
            "expected": state.expected_value if plan else None,
            "forecast": state.forecast if plan else None,
            "status": STATUS_WORDS[state.status_word][lang]
            if plan
            else ("内訳" if lang == "ja" else "part"),
        }

    def operation_cells(self, op: Operation, lang: Lang) -> Cells:
        return {
            "name": op.name_ja if lang == "ja" else op.name_en,
            "breakdown": op.labels or ("計" if lang == "ja" else "all"),
            "source": op.source,
            "unit": unit_label(op.unit, lang),
            "total": op.total,
            "months": f"{op.first_month} – {op.last_month}",
        }

    def footnotes(self, lang: Lang) -> list[str]:
        sources = ", ".join(f"{source} ({connector})" for source, connector in self.sources)
        return [
            f"{TITLES['as_of'][lang]}: {format_moment(self.as_of, self.tz)}",
            f"{TITLES['sources'][lang]}: {sources or '-'}",
            *NOTES[lang],
        ]


def decimals(value: float, unit: str) -> int:
    """Decimals a number is shown with, in every format: ratios as percent with one; whole
    numbers and anything from 1,000 up with none; hours and other fractions with one."""
    if unit in RATIO_UNITS | PERCENT_UNITS:
        return 1
    if value == int(value) or abs(value) >= 1000:
        return 0
    return 1


def number_text(value: float | None, unit: str, kind: CellKind = "number") -> str:
    """A number cell as text, as the xlsx number formats show it: `12,000,000`, `48.2%` and
    `80.0%` for ratios, `93%` for progress, `-` when absent."""
    if value is None:
        return "-"
    if kind == "ratio":
        return f"{value * 100:,.0f}%"
    if unit in RATIO_UNITS:
        return f"{value * 100:,.1f}%"
    if unit in PERCENT_UNITS:
        return f"{value:,.1f}%"
    return f"{value:,.{decimals(value, unit)}f}"


def build_report(
    store: Store,
    loaded: LoadedConfig,
    fiscal_year: int,
    as_of: float,
    orgs: Collection[str] | None = None,
) -> Report:
    """The report of `fiscal_year` as the stored data stood at `as_of` (unix seconds); with
    `orgs`, only the figures (and sources) whose `org` label is one of them."""
    config = loaded.config
    calculator = KpiCalculator(store, config)
    rows = store.series_rows()
    states = calculator.compute_all(as_of, rows, fiscal_year=fiscal_year)
    if orgs is not None:
        states = [state for state in states if state.org in orgs]
        owner = config.source_orgs()
        rows = [row for row in rows if owner.get(row.source) in orgs]
    start = calculator.fy_start(fiscal_year)
    end = min(calculator.fy_end(fiscal_year), as_of)
    operations = _operations(store, loaded, rows, int(start), int(end), config.tz)
    feeding = {row.source for kpi in config.kpis for row in _fed_by(kpi.feed, rows)}
    feeding |= {op.source for op in operations}
    sources = [(s.id, s.connector) for s in config.sources if s.id in feeding]
    return Report(fiscal_year, as_of, config.tz, states, operations, sources, config)


def _fed_by(feed: FeedConfig, rows: Sequence[SeriesRow]) -> list[SeriesRow]:
    refs = [feed.numerator, feed.denominator] if feed.kind == "ratio" else [feed]
    ids = {i for ref in refs if ref is not None for i in match_series(rows, ref)}
    return [row for row in rows if row.id in ids]


def _operations(
    store: Store,
    loaded: LoadedConfig,
    rows: Sequence[SeriesRow],
    start: int,
    end: int,
    tz: ZoneInfo,
) -> list[Operation]:
    """Each summable metric's total over [start, end), all its series together, in the order of
    the config's sources and each connector's declared metrics; then, for a metric of a few
    series (two apps, three RPA processes), each series' own total."""
    out = []
    for source in loaded.config.sources:
        for spec in loaded.metric_specs.get(source.id, {}).values():
            if spec.aggregation != "sum":
                continue
            series = [row for row in rows if row.source == source.id and row.metric == spec.name]
            unit = DISPLAY_UNITS.get(spec.unit, spec.unit)
            factor = conversion_factor(spec.unit, unit) or 1.0
            name_ja, name_en = _names(spec.help, spec.name)
            parts = [("", [row.id for row in series])]
            if 1 < len(series) <= MAX_BREAKDOWN:
                parts += [(_labels_text(row), [row.id]) for row in series]
            for labels, ids in parts:
                points = store.period_points(ids, start=start, end=end)
                if not points:
                    continue
                out.append(
                    Operation(
                        source=source.id,
                        connector=source.connector,
                        metric=spec.name,
                        name_ja=name_ja,
                        name_en=name_en,
                        labels=labels,
                        unit=unit,
                        total=sum(p.value for p in points) * factor,
                        first_month=_month(points[0].start, tz),
                        last_month=_month(points[-1].start, tz),
                    )
                )
    return out


def _labels_text(row: SeriesRow) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(row.labels.items()))


def _names(help_text: str, metric: str) -> tuple[str, str]:
    """(ja, en) names from a metric's HELP, written `日本語 / English, per day (details)` by
    convention: the English part up to its first detail, without `per day`."""
    ja, sep, en = help_text.partition(" / ")
    if not sep:
        ja, en = "", help_text
    for stop in (" (", ";", ":", ","):
        en = en.split(stop)[0]
    for tail in (" per day", " that day"):
        en = en.removesuffix(tail)
    en = en.strip() or metric
    return (ja.strip() or en), en


def _month(ts: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m")
