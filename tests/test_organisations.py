"""Organisations: sources and KPIs owned by one, source templates expanded per organisation,
per-organisation `${ENV}` names, roll-ups (sum over sum, never a mean of ratios; incomplete
while a member has not reported), and the `org` label on every stored series and gauge."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text
from sqlalchemy import select

from dxkpi.collector.clock import parse_moment
from dxkpi.collector.config import Config, load_config
from dxkpi.collector.contract import TOKYO, Granularity, Observation, Window
from dxkpi.collector.errors import ConfigError, SourceError
from dxkpi.collector.exporter import Exporter
from dxkpi.collector.fiscal import fiscal_year_of
from dxkpi.collector.kpi import KpiCalculator, KpiState
from dxkpi.collector.runner import collect_source
from dxkpi.collector.storage import Store
from dxkpi.collector.storage.schema import series

EXAMPLE = Path(__file__).parent.parent / "collector" / "example" / "prefecture"

ORGS = [
    {"id": "pref", "name_ja": "県", "name_en": "Prefecture", "kind": "prefecture"},
    {"id": "city", "name_ja": "市", "name_en": "City", "kind": "municipality", "parent": "pref"},
    {
        "id": "village",
        "name_ja": "村",
        "name_en": "Village",
        "kind": "municipality",
        "parent": "pref",
    },
]


def rollup_config(**rollup: Any) -> Config:
    return Config.model_validate(
        {
            "organisations": ORGS,
            "sources": [
                {"id": f"{org['id']}.apps", "org": org["id"], "connector": "csvfile"}
                for org in ORGS
            ],
            "kpis": [
                {
                    "id": "rate",
                    "name_ja": "オンライン利用率",
                    "name_en": "Online rate",
                    "area": "administration",
                    "unit": "ratio",
                    "baseline": {"value": 0.2, "fiscal_year": 2021},
                    "target": {"value": 0.8, "fiscal_year": 2026},
                    "feed": {
                        "kind": "ratio",
                        "numerator": {"metric": "online"},
                        "denominator": {"metric": "all"},
                    },
                    "rollup": rollup or {"orgs": "all"},
                }
            ],
        }
    )


def month_starts(fy: int, count: int = 12) -> list[datetime]:
    out = []
    for m in range(count):
        year, month = (fy, 4 + m) if m < 9 else (fy + 1, m - 8)
        out.append(datetime(year, month, 1, tzinfo=TOKYO))
    return out


def write_months(
    store: Store, org: str, starts: list[datetime], online: float, total: float
) -> None:
    store.write(
        f"{org}.apps",
        [Observation("online", online, s, Granularity.MONTH) for s in starts]
        + [Observation("all", total, s, Granularity.MONTH) for s in starts],
    )


def by_org(states: list[KpiState]) -> dict[str, KpiState]:
    return {state.org: state for state in states}


def test_a_rolled_up_ratio_is_the_sum_of_numerators_over_the_sum_of_denominators(
    sqlite_store: Store,
) -> None:
    cfg = rollup_config()
    # A large prefecture at 60 %, two small municipalities at 10 %: the mean of the three
    # rates (26.7 %) is not the share of all applications made online (55.0 %).
    write_months(sqlite_store, "pref", month_starts(2023), 600, 1000)
    write_months(sqlite_store, "city", month_starts(2023), 10, 100)
    write_months(sqlite_store, "village", month_starts(2023), 1, 10)
    states = by_org(KpiCalculator(sqlite_store, cfg).compute_all(parse_moment("2024-07-01", TOKYO)))
    assert set(states) == {"pref", "city", "village", "all"}
    assert states["pref"].value == pytest.approx(0.6)
    assert states["city"].value == pytest.approx(0.1)
    assert states["village"].value == pytest.approx(0.1)
    rolled = states["all"]
    assert rolled.value == pytest.approx((600 + 10 + 1) / (1000 + 100 + 10))
    assert rolled.value != pytest.approx((0.6 + 0.1 + 0.1) / 3)
    assert rolled.period_label == "FY2023"
    assert rolled.rollup is not None and rolled.rollup.complete
    assert rolled.rollup.members == ("pref", "city", "village")


def test_a_municipality_that_has_not_reported_leaves_the_others_intact_and_the_rollup_incomplete(
    sqlite_store: Store,
) -> None:
    cfg = rollup_config()
    for org, online, total in (("pref", 600, 1000), ("city", 10, 100), ("village", 1, 10)):
        write_months(sqlite_store, org, month_starts(2023), online, total)
    # FY2024: the prefecture and the city report every month; the village's source failed
    # from March 2025 on, so its FY2024 lacks March.
    write_months(sqlite_store, "pref", month_starts(2024), 700, 1000)
    write_months(sqlite_store, "city", month_starts(2024), 20, 100)
    write_months(sqlite_store, "village", month_starts(2024, 11), 2, 10)
    states = by_org(KpiCalculator(sqlite_store, cfg).compute_all(parse_moment("2025-07-01", TOKYO)))
    # The others' FY2024 figures are theirs, whole.
    assert states["pref"].period_label == "FY2024" and states["pref"].value == pytest.approx(0.7)
    assert states["city"].period_label == "FY2024" and states["city"].value == pytest.approx(0.2)
    assert states["village"].period_label == "FY2023"
    rolled = states["all"]
    # No silently smaller FY2024: the roll-up stays at FY2023, every member's, and says why.
    assert rolled.period_label == "FY2023"
    assert rolled.value == pytest.approx(611 / 1110)
    assert rolled.running_value is None
    assert rolled.rollup is not None and not rolled.rollup.complete
    assert rolled.rollup.missing == ("village",)
    assert rolled.rollup.incomplete is not None and rolled.rollup.incomplete.label == "FY2024"
    fy2024 = next(p for p in rolled.periods if p.label == "FY2024")
    assert not fy2024.complete and fy2024.missing == ("village",)
    # The other members' inputs are all in the period's (partial) figure: 12 months each.
    assert fy2024.value == pytest.approx(
        (12 * 700 + 12 * 20 + 11 * 2) / (12 * 1000 + 12 * 100 + 11 * 10)
    )
    # Once the village's March arrives, FY2024 is complete and becomes the value.
    write_months(sqlite_store, "village", [datetime(2025, 3, 1, tzinfo=TOKYO)], 2, 10)
    rolled = by_org(
        KpiCalculator(sqlite_store, cfg).compute_all(parse_moment("2025-07-01", TOKYO))
    )["all"]
    assert rolled.period_label == "FY2024" and rolled.rollup is not None and rolled.rollup.complete
    assert rolled.value == pytest.approx(
        (12 * 700 + 12 * 20 + 12 * 2) / (12 * 1000 + 12 * 100 + 12 * 10)
    )


def test_a_rollup_over_a_group_adds_only_its_members(sqlite_store: Store) -> None:
    cfg = rollup_config(orgs={"kind": "municipality"}, id="municipalities")
    for org, online, total in (("pref", 600, 1000), ("city", 10, 100), ("village", 1, 10)):
        write_months(sqlite_store, org, month_starts(2023), online, total)
    states = by_org(KpiCalculator(sqlite_store, cfg).compute_all(parse_moment("2024-07-01", TOKYO)))
    assert set(states) == {"city", "village", "municipalities"}
    assert states["municipalities"].value == pytest.approx(11 / 110)


# -- config -----------------------------------------------------------------------------------

CONFIG = """\
organisations:
  - {id: pref, name_ja: 県, name_en: Prefecture, kind: prefecture}
  - {id: morioka, name_ja: 盛岡市, name_en: Morioka, kind: municipality, parent: pref,
     vars: {folder: morioka_files}}
  - {id: hanamaki, name_ja: 花巻市, name_en: Hanamaki, kind: municipality, parent: pref}
organisation_kinds:
  municipality: {vars: {folder: shared}, schedule: {every: 2h}, lookback: 10d}
source_templates:
  - id: procs
    orgs: {kind: municipality}
    connector: csvfile
    settings:
      path: "${DATA_ROOT_{{ORG}}}/{{vars.folder}}/{{org}}.csv"
      period_column: month
      granularity: month
      metrics: [{name: apps, column: n, unit: applications}]
  - id: own
    orgs: [hanamaki]
    connector: csvfile
    schedule: {every: 30m}
    settings:
      path: "own.csv"
      period_column: month
      granularity: month
      metrics: [{name: own_apps, column: n, unit: applications}]
sources:
  - id: pref_apps
    connector: csvfile
    settings:
      path: pref.csv
      period_column: month
      granularity: month
      metrics: [{name: apps, column: n, unit: applications}]
kpis:
  - id: apps
    name_ja: 申請件数
    name_en: Applications
    area: administration
    unit: applications
    baseline: {value: 1, fiscal_year: R3}
    target: {value: 5, fiscal_year: R7}
    feed: {kind: fiscal_year_sum, metric: apps, source: procs}
    rollup: {orgs: {kind: municipality}, id: municipalities}
  - id: pref_own
    name_ja: 県の申請件数
    name_en: Prefecture's applications
    area: administration
    unit: applications
    baseline: {value: 1, fiscal_year: R3}
    target: {value: 5, fiscal_year: R7}
    feed: {kind: fiscal_year_sum, metric: apps}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dxkpi.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def test_templates_expand_per_organisation_with_kind_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_ROOT_MORIOKA", "/srv/a")
    monkeypatch.setenv("DATA_ROOT_HANAMAKI", "/srv/b")
    loaded = load_config(write(tmp_path, CONFIG))
    sources = {s.id: s for s in loaded.config.sources}
    assert list(sources) == ["pref_apps", "morioka.procs", "hanamaki.procs", "hanamaki.own"]
    assert {s.id: s.org for s in sources.values()} == {
        "pref_apps": "pref",  # a plain source belongs to the only top organisation
        "morioka.procs": "morioka",
        "hanamaki.procs": "hanamaki",
        "hanamaki.own": "hanamaki",
    }
    # Per-organisation environment variable and vars (the organisation's over its kind's).
    assert str(loaded.settings["morioka.procs"].path) == "/srv/a/morioka_files/morioka.csv"  # type: ignore[attr-defined]
    assert str(loaded.settings["hanamaki.procs"].path) == "/srv/b/shared/hanamaki.csv"  # type: ignore[attr-defined]
    # The kind's schedule and lookback, unless the template says otherwise.
    assert sources["morioka.procs"].schedule.describe() == "every 2h"
    assert sources["morioka.procs"].lookback.days == 10
    assert sources["hanamaki.own"].schedule.describe() == "every 30m"
    assert sources["pref_apps"].schedule.describe() == "every 1h"  # prefectures: no default
    kpis = {k.id: k for k in loaded.config.kpis}
    assert kpis["pref_own"].org == "pref"
    assert loaded.config.rollup_members(kpis["apps"]) == ["morioka", "hanamaki"]
    assert loaded.source_orgs()["hanamaki.own"] == "hanamaki"


def test_a_missing_per_organisation_variable_names_the_organisation_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_ROOT_MORIOKA", "/srv/a")
    monkeypatch.delenv("DATA_ROOT_HANAMAKI", raising=False)
    problems = problems_of(write(tmp_path, CONFIG))
    assert len(problems) == 1, problems
    (problem,) = problems
    assert "DATA_ROOT_HANAMAKI" in problem and "organisation hanamaki" in problem
    assert "sources[hanamaki.procs].settings.path" in problem
    assert "source_templates[0]" in problem
    line = (
        CONFIG.splitlines().index('      path: "${DATA_ROOT_{{ORG}}}/{{vars.folder}}/{{org}}.csv"')
        + 1
    )
    assert f"dxkpi.yaml:{line}:" in problem  # the template's line


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("{{vars.folder}}", "{{vars.nope}}"),
            ["organisation morioka has no `vars.nope`", "organisation hanamaki has no `vars.nope`"],
        ),
        (
            ("orgs: [hanamaki]", "orgs: [hanamaki, kitakami]"),
            ["template own: no organisation 'kitakami'"],
        ),
        (
            ("  - id: pref_apps\n", "  - id: pref_apps\n    org: nowhere\n"),
            ["sources[pref_apps].org: no organisation 'nowhere'"],
        ),
        (
            ("id: municipalities", "id: morioka"),
            ["kpis[apps].rollup.id: 'morioka' is an organisation's id"],
        ),
        (
            ("parent: pref,\n", "parent: prefecture,\n"),
            ["organisation morioka: no other organisation"],
        ),
        (
            ("kind: municipality, parent: pref}", "kind: municipality}"),
            [
                "sources[pref_apps]: several top organisations",
                "kpis[pref_own]: several top organisations",
            ],
        ),
        (
            (
                "kind: fiscal_year_sum, metric: apps, source: procs",
                "kind: cumulative_sum, metric: apps, source: procs",
            ),
            ["its feed must be fiscal_year_sum or ratio"],
        ),
    ],
)
def test_config_errors_name_the_organisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: tuple[str, str], expected: list[str]
) -> None:
    monkeypatch.setenv("DATA_ROOT_MORIOKA", "/srv/a")
    monkeypatch.setenv("DATA_ROOT_HANAMAKI", "/srv/b")
    old, new = change
    assert old in CONFIG
    problems = problems_of(write(tmp_path, CONFIG.replace(old, new)))
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


def test_a_config_without_organisations_has_the_default_one(tmp_path: Path) -> None:
    from tests.conftest import write_config

    loaded = load_config(write_config(tmp_path))
    assert [org.id for org in loaded.config.organisations] == ["default"]
    assert {s.org for s in loaded.config.sources} == {"default"}
    assert {k.org for k in loaded.config.kpis} == {"default"}


# -- the example: a prefecture and three municipalities, end to end -----------------------------

AS_OF = "2026-12-03"


def read_csv_sums(org: str, example: Path = EXAMPLE) -> dict[int, tuple[float, float, int]]:
    """(online, all, months) per fiscal year, read from the example's file by hand."""
    out: dict[int, tuple[float, float, int]] = {}
    with open(example / "data" / org / "online_procedures.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            y, m, _ = (int(p) for p in row["年月"].split("/"))
            fy = fiscal_year_of(
                datetime(y, m, 1, tzinfo=TOKYO), start_month=4, start_day=1, tz=TOKYO
            )
            online, total, count = out.get(fy, (0.0, 0.0, 0))
            out[fy] = (
                online + float(row["オンライン申請件数"]),
                total + float(row["全申請件数"]),
                count + 1,
            )
    return out


def collect_all(config: Path, store_path: Path) -> tuple[Any, Store]:
    loaded = load_config(config)
    store = Store(f"sqlite:///{store_path}", orgs=loaded.source_orgs())
    store.migrate()
    window = Window(datetime(2022, 4, 1, tzinfo=TOKYO), datetime(2026, 12, 3, tzinfo=TOKYO))
    for source in loaded.config.sources:
        with contextlib.suppress(SourceError):  # a failing source is part of a test
            collect_source(loaded, store, source.id, window=window)
    return loaded, store


def test_the_prefecture_example_rolls_up_sum_over_sum_and_waits_for_momo(tmp_path: Path) -> None:
    loaded, store = collect_all(EXAMPLE / "dxkpi.yaml", tmp_path / "s.sqlite")
    as_of = parse_moment(AS_OF, TOKYO)
    states = KpiCalculator(store, loaded.config).compute_all(as_of)
    rate = {s.org: s for s in states if s.kpi.id == "online_procedure_usage_rate"}
    assert set(rate) == {"sakura", "sakura_city", "ume", "momo", "all"}
    sums = {org: read_csv_sums(org) for org in ("sakura", "sakura_city", "ume", "momo")}
    for org in ("sakura", "sakura_city", "ume"):
        online, total, count = sums[org][2025]
        assert count == 12
        assert rate[org].period_label == "FY2025" and rate[org].value == pytest.approx(
            online / total
        )
    # 桃村 lacks March 2026: its own FY2025 is incomplete, the roll-up stays at FY2024 ...
    assert sums["momo"][2025][2] == 11
    assert rate["momo"].period_label == "FY2024"
    rolled = rate["all"]
    assert rolled.period_label == "FY2024"
    expected = sum(s[2024][0] for s in sums.values()) / sum(s[2024][1] for s in sums.values())
    mean = sum(s[2024][0] / s[2024][1] for s in sums.values()) / 4
    assert rolled.value == pytest.approx(expected)
    assert abs(expected - mean) > 0.2  # the example is one where the mean of rates misleads
    # ... and says FY2025 waits for momo.
    assert rolled.rollup is not None and rolled.rollup.missing == ("momo",)
    assert rolled.rollup.incomplete is not None and rolled.rollup.incomplete.label == "FY2025"
    # The group roll-up adds the three municipalities only; the prefecture's own KPI is its own.
    towns = {s.org: s for s in states if s.kpi.id == "municipal_online_applications"}
    assert set(towns) == {"sakura_city", "ume", "momo", "municipalities"}
    assert towns["municipalities"].value == pytest.approx(
        sum(sums[o][2024][0] for o in ("sakura_city", "ume", "momo"))
    )
    own = [s for s in states if s.kpi.id == "prefectural_online_applications"]
    assert [s.org for s in own] == ["sakura"] and own[0].value == pytest.approx(
        sums["sakura"][2025][0]
    )
    # Every stored series carries its organisation.
    with store.engine.connect() as connection:
        stored = {(row.source, row.org) for row in connection.execute(select(series))}
    assert stored == {(f"{o}.procedures", o) for o in ("sakura", "sakura_city", "ume", "momo")}
    store.close()


def test_a_failing_municipality_source_keeps_the_others_and_marks_the_rollup_incomplete(
    tmp_path: Path,
) -> None:
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example)
    (example / "data" / "ume" / "online_procedures.csv").unlink()  # 梅町's source now fails
    loaded, store = collect_all(example / "dxkpi.yaml", tmp_path / "s.sqlite")
    health = {h.source: h for h in store.source_health()}
    assert health["ume.procedures"].last_status == "failed"
    exporter = Exporter(store, loaded, clock=lambda: parse_moment(AS_OF, TOKYO))
    text = exporter.rebuild().text.decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_text(text)
        for s in family.samples
    }
    kpi = ("kpi", "online_procedure_usage_rate")
    sums = read_csv_sums("sakura")
    online, total, _ = sums[2025]
    assert got[("dxkpi_kpi_value", (kpi, ("org", "sakura")))] == pytest.approx(online / total)
    assert ("dxkpi_kpi_value", (kpi, ("org", "ume"))) not in got  # no data of its own
    # No member has all of any year with 梅町 missing: no rolled-up value at all, and it says so.
    assert ("dxkpi_kpi_value", (kpi, ("org", "all"))) not in got
    assert got[("dxkpi_kpi_rollup_complete", (kpi, ("org", "all")))] == 0
    assert got[("dxkpi_kpi_rollup_organisations", (kpi, ("org", "all")))] == 4
    assert got[("dxkpi_kpi_rollup_missing_organisations", (kpi, ("org", "all")))] == 2
    assert got[("dxkpi_kpi_rollup_member_missing", (kpi, ("member", "momo"), ("org", "all")))] == 1
    assert got[("dxkpi_kpi_rollup_member_missing", (kpi, ("member", "ume"), ("org", "all")))] == 1
    assert got[("dxkpi_source_up", (("org", "ume"), ("source", "ume.procedures")))] == 0
    assert got[("dxkpi_source_up", (("org", "sakura"), ("source", "sakura.procedures")))] == 1
    # A member's part of a summed roll-up has its figure but not the roll-up's plan: no plan
    # alert fires on a municipality for missing the prefecture-wide total.
    town = (("kpi", "municipal_online_applications"), ("org", "sakura_city"))
    assert got[("dxkpi_kpi_value", town)] == read_csv_sums("sakura_city")[2025][0]
    assert ("dxkpi_kpi_target_value", town) not in got
    assert ("dxkpi_kpi_progress_ratio", town) not in got
    assert ("dxkpi_kpi_target_value", (kpi, ("org", "sakura"))) in got  # a member's rate: yes
    # Every dxkpi_* sample says whose it is.
    unlabelled = {
        name for name, labels in got if name.startswith("dxkpi_") and "org" not in dict(labels)
    }
    assert unlabelled == {"dxkpi_snapshot_timestamp_seconds"}
    store.close()


def test_status_sources_report_and_board_name_the_organisations(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from rich.cells import cell_len

    from dxkpi.collector.cli import main
    from dxkpi.collector.runtime import set_current

    shutil.copytree(EXAMPLE, tmp_path / "config")

    def dxkpi(*args: str) -> str:
        result = CliRunner().invoke(
            main,
            [
                "--config",
                str(tmp_path / "config" / "dxkpi.yaml"),
                "--data-dir",
                str(tmp_path / "d"),
                *args,
            ],
            env={"COLUMNS": "80", "DXKPI_AS_OF": AS_OF},
        )
        set_current(None)
        assert result.exit_code == 0, result.output
        return result.output

    dxkpi("migrate")
    for org in ("sakura", "sakura_city", "ume", "momo"):
        dxkpi("collect", f"{org}.procedures", "--since", "2022-04-01")
    status = dxkpi("status")
    assert all(cell_len(line) <= 80 for line in status.splitlines()), status
    # A block per KPI, titled with its name and unit; a line per organisation, the roll-up last.
    blocks = status.split("県及び市町村の行政手続のオンライン利用率（%）")[1].split(
        "市町村のオンライン"
    )
    rate = [line.split()[0] for line in blocks[0].splitlines() if line.strip()][2:]
    assert rate[:5] == ["桜県", "桜市", "梅町", "桃村", "due"] and rate[5:] == [
        "合計（4団体）",
        "R7未着:momo",
    ], status
    assert "合計（3団体）" in blocks[1] and "R7未着:momo" in blocks[1], status
    english = dxkpi("status", "--lang", "en")
    assert "total of 4" in english and "R7 lacks momo" in english
    assert "Online usage rate of prefectural" in english and "procedures (%)" in english
    records = json.loads((out := dxkpi("status", "--json"))[out.index("{") :])["kpis"]
    assert [(r["id"], r["org"]) for r in records if r["rollup"]] == [
        ("online_procedure_usage_rate", "all"),
        ("municipal_online_applications", "municipalities"),
    ]
    rolled = next(r for r in records if r["org"] == "all")
    assert (
        rolled["rollup"]["missing"] == ["momo"]
        and rolled["rollup"]["incomplete_period"]["label"] == "FY2025"
    )

    # --org: one organisation's own figures and sources; a roll-up id, its figure and members'.
    def orgs_of(*args: str) -> list[tuple[str, str]]:
        out = dxkpi("status", "--json", *args)
        records = json.loads(out[out.index("{") :])
        return sorted({(r["org"], r["id"]) for r in records["kpis"]}) + sorted(
            {("source", s["id"]) for s in records["sources"]}
        )

    assert orgs_of("--org", "ume") == [
        ("ume", "municipal_online_applications"),
        ("ume", "online_procedure_usage_rate"),
        ("source", "ume.procedures"),
    ]
    municipalities = orgs_of("--org", "municipalities")
    assert {org for org, _ in municipalities} == {
        "municipalities",
        "sakura_city",
        "ume",
        "momo",
        "source",
    } and ("sakura", "prefectural_online_applications") not in municipalities
    unknown = CliRunner().invoke(
        main,
        ["--config", str(tmp_path / "config" / "dxkpi.yaml"), "status", "--org", "umee"],
        env={"COLUMNS": "80", "DXKPI_DATA_DIR": str(tmp_path / "d")},
    )
    set_current(None)
    assert unknown.exit_code == 2 and "did you mean 'ume'?" in unknown.output
    ume_report = dxkpi("report", "--fiscal-year", "R6", "--format", "md", "--org", "ume")
    assert "梅町" in ume_report and "桜市" not in ume_report and "合計（" not in ume_report
    sources = dxkpi("sources")
    assert all(f"{org}.procedures" in sources for org in ("sakura", "sakura_city", "ume", "momo"))
    report = dxkpi("report", "--fiscal-year", "R6", "--format", "md")
    assert "| 合計（4団体）：県及び市町村の行政手続のオンライン利用率 |" in report
    loaded = load_config(tmp_path / "config" / "dxkpi.yaml")
    store = Store(f"sqlite:///{tmp_path / 'd' / 'dxkpi.sqlite'}")
    page = (
        Exporter(store, loaded, clock=lambda: parse_moment(AS_OF, TOKYO))
        .rebuild()
        .board["ja"]
        .decode()
    )
    assert 'id="kpi-online_procedure_usage_rate--all"' in page
    assert 'id="kpi-online_procedure_usage_rate--momo"' in page
    assert "合計（4団体） (R7未着:momo)" in page
    store.close()
