"""The KPI board: the exporter's `/` as one server-rendered HTML page for people.

Every KPI is a card (names, the reported period's figure in its unit, progress against the
path, status word, last good move) with a small inline-SVG chart of its reported periods
against the path to its target; source health follows. The page must work on a closed
government network and on a phone, so it is one self-contained document: inline CSS and SVG,
no script, no web font, no CDN. Japanese by default, English with `?lang=en`.

Nothing here computes a KPI: figures come from `KpiState` (collector/kpi.py) and are written by
collector/present.py, so the board, `dxkpi status` and the report say the same thing. Pages are
rendered when the exporter rebuilds its snapshot, never per request.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import jinja2

from dxkpi.collector.config import Config, SourceConfig
from dxkpi.collector.kpi import KpiState
from dxkpi.collector.present import (
    STATUS_WORDS,
    Lang,
    fiscal_year_label,
    format_moment,
    format_ratio,
    format_value,
    label_for_people,
    org_label,
    rollup_note,
    short_fiscal_year,
    split_value,
)
from dxkpi.collector.redact import redact
from dxkpi.collector.storage import SourceHealth

__all__ = ["LANGS", "Board", "Chart", "render_board"]

LANGS: tuple[Lang, ...] = ("ja", "en")

# The chart's drawing box (SVG user units; the SVG scales to the card's width).
WIDTH, HEIGHT = 320.0, 128.0
LEFT, RIGHT, TOP, BOTTOM = 64.0, 10.0, 10.0, 20.0
# Two labels closer than this (user units) would overlap: the less important one is dropped.
LABEL_GAP = 12.0

WORDS: dict[Lang, dict[str, str]] = {
    "ja": {
        "title": "DX推進 KPIボード",
        "as_of": "{} 時点",
        "period": "対象期間",
        "target": "目標",
        "progress": "進捗",
        "expected": "計画",
        "forecast": "見込み",
        "last_move": "最後の改善",
        "running": "進行中の期間",
        "so_far": "途中",
        "actual": "実績",
        "path": "計画経路",
        "sources": "データソースの状態",
        "source": "ソース",
        "connector": "コネクタ",
        "last_run": "最終実行",
        "last_success": "最終成功",
        "runs": "成功 / 失敗",
        "last_error": "最後のエラー",
        "never": "未実行",
        "success": "成功",
        "failed": "失敗",
        "no_kpis": "KPIが設定されていません。",
        "chart": "報告期間ごとの実績と目標への計画経路",
        "switch": "English",
    },
    "en": {
        "title": "DX KPI board",
        "as_of": "as of {}",
        "period": "Period",
        "target": "Target",
        "progress": "Progress",
        "expected": "path",
        "forecast": "Forecast",
        "last_move": "Last good move",
        "running": "Period under way",
        "so_far": "so far",
        "actual": "Reported",
        "path": "Path to target",
        "sources": "Source health",
        "source": "Source",
        "connector": "Connector",
        "last_run": "Last run",
        "last_success": "Last success",
        "runs": "Succeeded / failed",
        "last_error": "Last error",
        "never": "never run",
        "success": "succeeded",
        "failed": "failed",
        "no_kpis": "No KPI is configured.",
        "chart": "Reported figures per period against the path to the target",
        "switch": "日本語",
    },
}

# Colour family of each status word (CSS classes in the template).
TONE = {
    "achieved": "good",
    "on_track": "good",
    "behind": "warn",
    "stalled": "warn",
    "missed": "bad",
    "overdue": "bad",
    "no_data": "none",
}


@dataclass(frozen=True)
class Board:
    """What a board page shows, captured when the snapshot is built."""

    states: Sequence[KpiState]
    health: Sequence[SourceHealth]
    sources: Sequence[SourceConfig]
    built_at: float
    tz: ZoneInfo
    # With several organisations each card names whose figure it is.
    config: Config | None = None


@dataclass(frozen=True)
class Chart:
    """One card's SVG, in drawing coordinates."""

    actual: str  # polyline points "x,y x,y"
    dots: list[tuple[float, float]]
    reported: tuple[float, float] | None  # the card's figure
    path: str
    target: tuple[float, float]
    y_labels: list[tuple[float, str]]
    x_labels: list[tuple[float, str, str]]  # x, text, text-anchor


def render_board(board: Board, lang: Lang) -> bytes:
    """The whole page in `lang`, as UTF-8 bytes."""
    cards = [_card(state, board.tz, lang, board.config) for state in board.states]
    health = {h.source: h for h in board.health}
    rows = [_source_row(source, health.get(source.id), board.tz, lang) for source in board.sources]
    page = _template().render(
        lang=lang,
        other="en" if lang == "ja" else "ja",
        words=WORDS[lang],
        as_of=WORDS[lang]["as_of"].format(format_moment(board.built_at, board.tz)),
        cards=cards,
        sources=rows,
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=WIDTH - RIGHT,
        top=TOP,
        bottom=HEIGHT - BOTTOM,
    )
    return page.encode()


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("dxkpi.collector", "templates"),
        autoescape=True,  # names, units and errors come from config files and sources
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template("board.html.j2")


def _card(
    state: KpiState, tz: ZoneInfo, lang: Lang, config: Config | None = None
) -> dict[str, object]:
    kpi = state.kpi
    word = state.status_word
    org = None
    if config is not None and (config.multi_org or state.rollup is not None):
        org = org_label(state, config, lang)
        if state.rollup is not None and not state.rollup.complete:
            org += f" ({rollup_note(state, lang)})"
    return {
        # One card per KPI and organisation: `kpi-<id>` alone when there is one organisation.
        "id": kpi.id if org is None else f"{kpi.id}--{state.org}",
        "org": org,
        "name": kpi.name_ja if lang == "ja" else kpi.name_en,
        "other_name": kpi.name_en if lang == "ja" else kpi.name_ja,
        "area": kpi.area,
        "value": format_value(state.value, kpi.unit),
        "period": label_for_people(state.period_label, lang),
        "running": _running(state, lang),
        "target": format_value(state.target.value, kpi.unit),
        "target_year": fiscal_year_label(state.target.fiscal_year, lang),
        "forecast": format_value(state.forecast, kpi.unit) if state.forecast is not None else None,
        "progress": format_ratio(state.progress),
        "expected": format_ratio(state.expected_progress),
        "bar": _percent(state.progress),
        "mark": _percent(state.expected_progress),
        "status": STATUS_WORDS[word][lang],
        "tone": TONE[word],
        "last_move": _last_move(state, tz, lang),
        "chart": _chart(state, lang),
    }


def _running(state: KpiState, lang: Lang) -> str | None:
    """The period under way, e.g. `71 % (令和8年度・途中)`; a continuous KPI's value is already
    its newest level, so it has none."""
    if state.running_value is None or state.cadence == "continuous":
        return None
    label = next((p.label for p in state.periods if p.end == state.running_period_end), None)
    so_far = WORDS[lang]["so_far"]
    when = f"{label_for_people(label, lang)}・{so_far}" if lang == "ja" else f"{label}, {so_far}"
    return f"{format_value(state.running_value, state.kpi.unit)} ({when})"


def _percent(ratio: float | None) -> float:
    """A ratio as a bar width in percent, kept inside the bar."""
    return 0.0 if ratio is None else round(min(max(ratio, 0.0), 1.0) * 100, 1)


def _last_move(state: KpiState, tz: ZoneInfo, lang: Lang) -> str:
    """The period that made the last good move (FY2025 / 令和7年度), else its last day: the
    timestamp is the period's exclusive end, which people would read as one day late."""
    if state.last_change_ts is None:
        return "-"
    for period in state.periods:
        if period.end == state.last_change_ts:
            return label_for_people(period.label, lang)
    return format_moment(state.last_change_ts - 1, tz, with_time=False)


def _chart(state: KpiState, lang: Lang) -> Chart:
    """Complete periods' figures (at each period's end) and the path from the baseline to the
    target; a period under way is left out, its partial figure is not comparable."""
    actual = [(p.end, p.value) for p in state.periods if p.complete and p.value is not None]
    reported = None
    if state.value is not None and state.period_end is not None:
        reported = (state.period_end, state.value)
        if not actual or actual[-1][0] < state.period_end:
            actual.append(reported)  # a continuous KPI's newest level
    path = [(state.baseline_ts, state.baseline_value)]
    path += [(p.end, p.expected) for p in state.periods if p.end > state.baseline_ts]
    if path[-1][0] < state.target_ts:
        path.append((state.target_ts, state.target.value))
    xs = [x for x, _ in actual + path]
    ys = [y for _, y in actual + path]
    x0, x1 = min(xs), max(xs)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad

    def x(ts: float) -> float:
        return round(LEFT + (ts - x0) / ((x1 - x0) or 1.0) * (WIDTH - LEFT - RIGHT), 1)

    def y(value: float) -> float:
        return round(TOP + (hi - value) / (hi - lo) * (HEIGHT - TOP - BOTTOM), 1)

    def points(series: list[tuple[float, float]]) -> str:
        return " ".join(f"{x(t)},{y(v)}" for t, v in series)

    unit = state.kpi.unit
    target_y = y(state.target.value)
    y_labels = [(target_y, split_value(state.target.value, unit)[0])]
    baseline_y = y(state.baseline_value)
    if abs(baseline_y - target_y) >= LABEL_GAP:
        y_labels.append((baseline_y, split_value(state.baseline_value, unit)[0]))

    def year(ts: float) -> str:
        # a period's end is the next one's start: the year that ends there is the one before
        fy = _fiscal_year_ending(state, ts)
        return short_fiscal_year(fy) if lang == "ja" else f"FY{fy}"

    # first year at the left, the target's year under the target, the last year at the right;
    # a label that would overlap its left neighbour is left out
    x_labels = [(x(x0), year(x0), "start")]
    target_x, last_x = x(state.target_ts), x(x1)
    first_end = x(x0) + _text_width(year(x0))
    if target_x - _text_width(year(state.target_ts)) / 2 - first_end >= LABEL_GAP / 2:
        x_labels.append((target_x, year(state.target_ts), "middle"))
    left_end = x_labels[-1][0] + _text_width(x_labels[-1][1]) / (2 if len(x_labels) > 1 else 1)
    if last_x - _text_width(year(x1)) - left_end >= LABEL_GAP / 2:
        x_labels.append((last_x, year(x1), "end"))
    elif len(x_labels) > 1 and last_x - target_x < _text_width(year(state.target_ts)) / 2:
        x_labels[-1] = (last_x, x_labels[-1][1], "end")  # the target is at the right edge
    return Chart(
        actual=points(actual),
        dots=[(x(t), y(v)) for t, v in actual],
        reported=(x(reported[0]), y(reported[1])) if reported else None,
        path=points(path),
        target=(target_x, target_y),
        y_labels=y_labels,
        x_labels=x_labels,
    )


def _text_width(text: str) -> float:
    """About how wide `text` is at the chart's 10-unit font (digits and Latin letters)."""
    return 6.0 * len(text)


def _fiscal_year_ending(state: KpiState, ts: float) -> int:
    """The fiscal year a chart point at `ts` (a period's exclusive end) belongs to."""
    for period in state.periods:
        if period.start < ts <= period.end:
            return period.fiscal_year
    if ts <= state.baseline_ts:
        return state.baseline_fiscal_year
    return state.target.fiscal_year


def _source_row(
    source: SourceConfig, health: SourceHealth | None, tz: ZoneInfo, lang: Lang
) -> dict[str, object]:
    words = WORDS[lang]
    status = health.last_status if health else None
    counts = health.runs_by_status if health else {}
    return {
        "id": source.id,
        "connector": source.connector,
        "status": words.get(status or "never", status),
        "tone": {"success": "good", "failed": "bad", None: "none"}.get(status, "none"),
        "last_success": format_moment(health.last_success_at if health else None, tz),
        "runs": f"{counts.get('success', 0):,} / {counts.get('failed', 0):,}",
        # stored errors are already secret-free; redacted again since this page may be shared
        "error": redact(health.last_error) if health and health.last_error else "",
    }
