"""How KPI figures are written for people: numbers, units, periods, times and status words.

One place for `dxkpi status` (table and `--json`) and any later view (report, board page), so
every view prints the same figure the same way: separators, no e-notation, ratios as percent,
fiscal years as FY2021 / 令和3年度, times with their zone.

Pure functions of a `KpiState`: no I/O, no clock.
"""

from __future__ import annotations

import math
import textwrap
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from rich.cells import cell_len

from dxkpi.collector.config import Config, SourceConfig
from dxkpi.collector.fiscal import REIWA_OFFSET, japanese_fiscal_year, reiwa_label
from dxkpi.collector.kpi import KpiState, StatusWord
from dxkpi.collector.storage import SourceHealth
from dxkpi.collector.units import PERCENT_UNITS, RATIO_UNITS

__all__ = [
    "AREA_NAMES",
    "STATUS_WORDS",
    "UNIT_NAMES",
    "Lang",
    "area_label",
    "clip",
    "fiscal_year_label",
    "format_moment",
    "format_number",
    "format_ratio",
    "format_value",
    "kpi_record",
    "label_for_people",
    "period_label",
    "short_fiscal_year",
    "split_value",
    "unit_label",
]

Lang = Literal["ja", "en"]

STATUS_WORDS: dict[StatusWord, dict[Lang, str]] = {
    "achieved": {"ja": "達成", "en": "achieved"},
    "missed": {"ja": "未達成", "en": "missed"},
    "on_track": {"ja": "順調", "en": "on track"},
    "behind": {"ja": "遅れ", "en": "behind"},
    "stalled": {"ja": "停滞", "en": "stalled"},
    "overdue": {"ja": "データ未着", "en": "data overdue"},
    "no_data": {"ja": "データなし", "en": "no data"},
}

# The policy areas of the plan (`kpi.area`) as a council document names them; an area not
# listed here is shown as written in the config.
AREA_NAMES: dict[str, dict[Lang, str]] = {
    "administration": {"ja": "行政", "en": "Administration"},
    "regional_revitalisation": {"ja": "地域創生", "en": "Regional revitalisation"},
    "reconstruction": {"ja": "復興", "en": "Reconstruction"},
    "education": {"ja": "教育", "en": "Education"},
    "industry": {"ja": "産業", "en": "Industry"},
    "health_welfare": {"ja": "保健・福祉", "en": "Health and welfare"},
    "safety_environment": {"ja": "安全・環境", "en": "Safety and environment"},
}

# Units as a Japanese document writes them (the config's unit names are English words); a
# unit not listed here is shown as written.
UNIT_NAMES: dict[str, str] = {
    "applications": "件",
    "companies": "件",
    "downloads": "件",
    "facilities": "施設",
    "farms": "経営体",
    "hours": "時間",
    "meetings": "回",
    "minutes": "分",
    "page_views": "PV",
    "participants": "人",
    "people": "人",
    "runs": "回",
    "seconds": "秒",
    "sheets": "枚",
    "users": "人",
    "views": "PV",
    "visitors": "人",
    "visits": "回",
}


def area_label(area: str, lang: Lang = "en") -> str:
    """行政 / Administration for a known area id, else the id as written."""
    names = AREA_NAMES.get(area)
    return names[lang] if names else area


def unit_label(unit: str, lang: Lang = "en") -> str:
    """A unit for people: `%` for ratios and percents, 枚 for sheets in Japanese."""
    if unit in RATIO_UNITS | PERCENT_UNITS:
        return "%"
    if lang == "ja":
        return UNIT_NAMES.get(unit, unit)
    return unit.replace("_", " ")


def format_number(value: float, *, decimals: int | None = None) -> str:
    """12,000,000 / 0.653 / 4,670.5: thousands separators, never e-notation.

    Without `decimals`: none at or above 1,000 (or for whole numbers), else up to three
    significant decimals with trailing zeros dropped.
    """
    if not math.isfinite(value):
        return str(value)
    if decimals is None:
        if value == int(value) or abs(value) >= 1000:
            decimals = 0
        elif abs(value) >= 1:
            decimals = 2
        else:
            decimals = 3
    text = f"{value:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_exact(value: float) -> str:
    """A stored value as it is, with separators: 1070123 -> "1,070,123", 0.1 -> "0.1" (never
    rounded, never e-notation): for `collect --dry-run`, which shows what would be stored."""
    if not math.isfinite(value):
        return str(value)
    return f"{Decimal(repr(value)).normalize():,f}"


def format_value(value: float | None, unit: str) -> str:
    """A value with its unit: `48.2 %` for ratios, `758 farms`, `-` when absent."""
    if value is None:
        return "-"
    return " ".join(split_value(value, unit))


def split_value(value: float | None, unit: str) -> tuple[str, str]:
    """(number, unit) for narrow columns: ("48.2", "%"), ("758", "farms"), ("-", unit)."""
    if value is None:
        return "-", "%" if unit in RATIO_UNITS | PERCENT_UNITS else unit
    if unit in RATIO_UNITS:
        return format_number(value * 100, decimals=1), "%"
    if unit in PERCENT_UNITS:
        return format_number(value, decimals=1), "%"
    return format_number(value), unit


def format_ratio(value: float | None) -> str:
    """A progress ratio as whole percent: `93%` (never `-0%`)."""
    if value is None:
        return "-"
    percent = round(value * 100)
    return f"{percent + 0:d}%"


def clip(text: str, cells: int, *, lines: int = 1) -> str:
    """`text` cut to `lines` lines of `cells` terminal cells (Japanese characters take two),
    ending in … if cut. Text with spaces wraps at words, Japanese anywhere."""
    if " " in text and lines > 1:
        wrapped = textwrap.wrap(text, cells, break_on_hyphens=False)
        if len(wrapped) <= lines:
            return "\n".join(wrapped)
        return "\n".join([*wrapped[: lines - 1], clip(" ".join(wrapped[lines - 1 :]), cells)])
    # Line by line: a character two cells wide that does not fit a line's end starts the next.
    rows = [""]
    for char in text:
        if cell_len(rows[-1] + char) > cells:
            rows.append("")
        rows[-1] += char
    if len(rows) <= lines:
        return "".join(rows)
    last = ""
    for char in rows[lines - 1] + rows[lines]:
        if cell_len(last + char) > cells - 1:
            break
        last += char
    return "".join(rows[: lines - 1]) + last + "…"


def fiscal_year_label(fy: int, lang: Lang = "en") -> str:
    """FY2021 in English, 令和3年度 in Japanese (FY2018 and before: 2018年度)."""
    if lang == "ja":
        name = japanese_fiscal_year(fy) if fy > REIWA_OFFSET else None
        return name or f"{fy}年度"
    return f"FY{fy}"


def short_fiscal_year(fy: int) -> str:
    """R3 for Reiwa years, FY2018 before them."""
    return reiwa_label(fy) if fy > 2018 else f"FY{fy}"


def format_moment(ts: float | None, tz: ZoneInfo, *, with_time: bool = True) -> str:
    """`2026-12-03 09:00 JST`: local time with its zone; `-` when absent."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts, tz)
    return moment.strftime("%Y-%m-%d %H:%M %Z" if with_time else "%Y-%m-%d")


def period_label(state: KpiState, lang: Lang = "en", *, short: bool = False) -> str:
    """The reported period for people: FY2025 / 令和7年度 (short: R7) / 2026-10."""
    return label_for_people(state.period_label, lang, short=short)


def label_for_people(label: str | None, lang: Lang = "en", *, short: bool = False) -> str:
    """A period's label (`PeriodFigure.label`, `KpiState.period_label`) as `period_label` says."""
    if label is None:
        return "-"
    if label.startswith("FY"):
        fy = int(label[2:])
        if short:
            return short_fiscal_year(fy) if lang == "ja" else label
        return fiscal_year_label(fy, lang)
    return label


def _iso(ts: float | None, tz: ZoneInfo) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz).isoformat()


def kpi_record(state: KpiState, tz: ZoneInfo) -> dict[str, Any]:
    """Everything `status --json` says about one KPI: raw numbers, ISO times with offsets."""
    kpi = state.kpi
    rollup = state.rollup
    return {
        "id": kpi.id,
        "org": state.org,
        "rollup": None
        if rollup is None
        else {
            "members": list(rollup.members),
            "complete": rollup.complete,
            "missing": list(rollup.missing),
            "incomplete_period": None
            if rollup.incomplete is None
            else {
                "label": rollup.incomplete.label,
                "start": _iso(rollup.incomplete.start, tz),
                "end": _iso(rollup.incomplete.end, tz),
            },
        },
        "name_ja": kpi.name_ja,
        "name_en": kpi.name_en,
        "area": kpi.area,
        "unit": kpi.unit,
        "direction": kpi.direction,
        "cadence": state.cadence,
        "period": {
            "label": state.period_label,
            "start": _iso(state.period_start, tz),
            "end": _iso(state.period_end, tz),
            "complete": state.complete,
        },
        "value": state.value,
        "running_period": {
            "value": state.running_value,
            "end": _iso(state.running_period_end, tz),
        },
        "baseline": {"value": state.baseline_value, "fiscal_year": state.baseline_fiscal_year},
        "target": {
            "value": state.target.value,
            "fiscal_year": state.target.fiscal_year,
            "period_ended": state.target_period_ended,
        },
        "progress": state.progress,
        "expected_value": state.expected_value,
        "expected_progress": state.expected_progress,
        "forecast": state.forecast,
        "on_track": state.on_track,
        "stalled": state.stalled,
        "periods_without_improvement": state.periods_without_improvement,
        "last_good_move": _iso(state.last_change_ts, tz),
        "next_data_due": _iso(state.next_data_due_ts, tz),
        "overdue": state.overdue,
        "status": state.status_word,
        "outcomes": [
            {
                "fiscal_year": o.fiscal_year,
                "target": o.target_value,
                "outcome": o.outcome,
                "final_value": o.final_value,
                "final_progress": o.final_progress,
            }
            for o in state.outcomes
        ],
    }


# A run still going after its source's schedule interval (and at least this long) is shown as
# running too long: the next scheduled run is already due and will be skipped behind its lease.
RUN_TOO_LONG_MIN_SECONDS = 900.0


def running_too_long(health: SourceHealth | None, interval: float, now: float) -> float | None:
    """How long the source's current run has been going, when that is too long; else None."""
    if health is None or health.running_since is None:
        return None
    running = now - health.running_since
    return running if running > max(interval, RUN_TOO_LONG_MIN_SECONDS) else None


def source_record(
    source: SourceConfig, health: SourceHealth | None, tz: ZoneInfo, now: float
) -> dict[str, Any]:
    """Everything `status --json` and `sources --json` say about one source."""
    interval = source.schedule.interval().total_seconds()
    failed = health is not None and health.last_status not in (None, "success")
    too_long = running_too_long(health, interval, now)
    return {
        "id": source.id,
        "connector": source.connector,
        "schedule": source.schedule.describe(),
        "interval_seconds": interval,
        "last_status": health.last_status if health else None,
        "last_success": _iso(health.last_success_at if health else None, tz),
        "last_error": (health.last_error if failed and health else None) or None,
        "running_too_long_seconds": too_long,
        "gaps": health.gaps if health else 0,
    }


def source_note(record: dict[str, Any]) -> str:
    """One line about what needs a look: a run going too long, backfill gaps, the last error."""
    notes = []
    if record["running_too_long_seconds"] is not None:
        minutes = record["running_too_long_seconds"] / 60
        notes.append(f"running for {format_number(minutes, decimals=0)} min (too long)")
    if record["gaps"]:
        notes.append(f"{record['gaps']} backfill gap(s): `dxkpi backfill` again")
    if record["last_error"]:
        notes.append(" ".join(str(record["last_error"]).split()))
    return "; ".join(notes)


def org_label(state: KpiState, config: Config, lang: Lang) -> str:
    """Whose figure a KPI state is, for people: the organisation's name, or the roll-up's
    `合計（4団体）` / `total of 4`."""
    if state.rollup is not None:
        count = len(state.rollup.members)
        return f"合計（{count}団体）" if lang == "ja" else f"total of {count}"
    org = config.organisation(state.org)
    if org is None:
        return state.org
    return str(org.name_ja if lang == "ja" else org.name_en)


def rollup_note(state: KpiState, lang: Lang) -> str:
    """`R7: momo 未着` / `FY2025: momo missing` for a roll-up waiting for members; else ''."""
    rollup = state.rollup
    if rollup is None or rollup.incomplete is None:
        return ""
    period = rollup.incomplete
    label = short_fiscal_year(period.fiscal_year) if period.label.startswith("FY") else period.label
    names = ",".join(rollup.missing)
    return f"{label}未着:{names}" if lang == "ja" else f"{label} lacks {names}"
