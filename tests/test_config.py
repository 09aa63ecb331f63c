"""Config loading: the shipped example, and every kind of mistake reported with file:line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from dxkpi.collector.cli import main
from dxkpi.collector.config import load_config
from dxkpi.collector.errors import ConfigError
from dxkpi.collector.registry import known_connectors
from dxkpi.collector.runtime import EXAMPLE_CONFIG
from dxkpi.collector.schema import config_schema
from tests.conftest import write_config

SCHEMA_FILE = Path(__file__).parents[1] / "schema" / "dxkpi-config.schema.json"


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p).replace(str(path), "bad.yaml") for p in caught.value.problems]


def test_shipped_example_has_the_eleven_catalog_indicators() -> None:
    loaded = load_config(EXAMPLE_CONFIG)
    ids = [k.id for k in loaded.config.kpis]
    assert len(ids) == 11
    assert "copy_paper_purchases_sheets" in ids
    down = [k.id for k in loaded.config.kpis if k.direction == "down"]
    assert down == ["copy_paper_purchases_sheets"]
    online = next(k for k in loaded.config.kpis if k.id == "online_procedure_usage_rate")
    assert (online.baseline.fiscal_year, online.target.fiscal_year) == (2021, 2025)


def test_example_matches_the_seed_catalog() -> None:
    import yaml

    seed = Path(__file__).parents[2] / "shared" / "seed" / "kpi-catalog.yaml"
    if not seed.exists():
        pytest.skip("the seed catalog lives beside the repository only in the workspace")
    catalog = {i["id"]: i for i in yaml.safe_load(seed.read_text(encoding="utf-8"))["indicators"]}
    for kpi in load_config(EXAMPLE_CONFIG).config.kpis:
        item = catalog[kpi.id]
        assert (kpi.name_ja, kpi.name_en, kpi.area, kpi.direction) == (
            item["name_ja"],
            item["name_en"],
            item["area"],
            item["direction"],
        )
        assert kpi.baseline.value == item["baseline"]["value"]
        assert kpi.target.fiscal_year == item["target"]["fiscal_year"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "sources:\n  - id: a\n    connector: [csvfile\n")
    assert len(problems) == 1
    assert problems[0].startswith("bad.yaml:4: invalid YAML")


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        timezone: Mars/Olympus
        sources:
          - id: s1
            connector: csvfil
          - id: s1
            connector: csvfile
            schedule: {every: 5x}
        kpis:
          - id: k
            name_ja: テスト
            name_en: Test
            area: a
            unit: u
            direction: down
            baseline: {value: 1, fiscal_year: R3}
            target: {value: 2, fiscal_year: 令和7年度}
            feed: {metric: x}
        """,
    )
    assert problems == [
        "bad.yaml:1: timezone: unknown timezone 'Mars/Olympus'; e.g. Asia/Tokyo",
        "bad.yaml:4: sources[s1].connector: unknown connector 'csvfil': did you mean 'csvfile'? "
        # Every connector installed, whichever they are (each new folder adds one).
        f"Known connectors: {', '.join(known_connectors())}",
        "bad.yaml:5: sources[s1].id: duplicate source id 's1' (the first is on line 3)",
        "bad.yaml:7: sources[s1].schedule.every: '5x' is not a duration: write e.g. 30s, 15m, "
        "1h, 3d, 2w or 1h30m",
        "bad.yaml:14: kpis[k].direction: direction is 'down' but the target (2.0) is above the "
        "baseline (1.0)",
    ]


def test_four_defects_are_four_problems_in_one_pass(tmp_path: Path) -> None:
    """Misspelt keys get a did-you-mean, items are named by id, the fiscal-year error points at
    the year's own line and names both years, and no pydantic wording is left."""
    problems = problems_of(
        tmp_path,
        """\
        sources:
          - id: portal
            connector: csvfile
            settings:
              path: data/pv.csv
              period_column: date
              metrics:
                - {name: portal_page_views, column: page_views, unit: page_views}
          - id: zoom_main
            connector: csvfile
            shedule: {every: 1h}
        kpis:
          - id: copy_paper_purchases_sheets
            name_ja: テスト
            name_en: Test
            area: a
            unit: u
            baseline: {value: 1, fiscal_year: R5}
            target:
              value: 2
              fiscal_year: R3
            feed: {kind: fiscal_year_sum, metric: portal_page_views}
          - id: other
            name_ja: テスト
            name_en: Test
            area: a
            unit: u
            baseline: {value: 1, fiscal_year: R3}
            target: {value: 2, fiscal_year: R5}
            feed: {kind: fiscal_year_sum, metric: portal_page_views, sorce: portal}
            stall_afer: 30d
        """,
    )
    assert problems == [
        "bad.yaml:11: sources[zoom_main].shedule: unknown key `shedule`; did you mean `schedule`?",
        "bad.yaml:21: kpis[copy_paper_purchases_sheets].target.fiscal_year: the target year "
        "FY2021 (R3 / 令和3年度) is before its baseline year FY2023 (R5 / 令和5年度)",
        "bad.yaml:30: kpis[other].feed.sorce: unknown key `sorce`; did you mean `source`?",
        "bad.yaml:31: kpis[other].stall_afer: unknown key `stall_afer`; did you mean "
        "`stall_after`?",
    ]


def test_a_misspelt_connector_is_one_problem_not_one_per_kpi(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    kpi = config.read_text(encoding="utf-8").split("kpis:\n")[1]
    more = "".join(
        kpi.replace("id: portal_views", f"id: portal_views_{n}") for n in range(3)
    ) + kpi.replace("id: portal_views", "id: by_source").replace(
        "metric: portal_page_views}", "metric: portal_page_views, source: portal}"
    )
    text = config.read_text(encoding="utf-8").replace("connector: csvfile", "connector: csvfiles")
    config.write_text(text + more, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert [(p.path, p.line) for p in caught.value.problems] == [("sources[portal].connector", 3)]


def test_a_misspelt_settings_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8").replace("period_column: date", "period_colum: date")
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    messages = [f"{p.path}: {p.message}" for p in caught.value.problems]
    assert (
        "sources[portal].settings.period_colum: unknown key `period_colum`; did you mean "
        "`period_column`?"
    ) in messages


def test_unknown_connector_lists_the_known_ones(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        sources:
          - id: s1
            connector: csvfil
        """,
    )
    assert len(problems) == 1
    assert problems[0].startswith(
        "bad.yaml:3: sources[s1].connector: unknown connector 'csvfil': did you mean 'csvfile'? "
        "Known connectors: appstore, csvfile,"
    )


def test_inline_secret_is_refused_and_not_echoed(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        sources:
          - id: ios
            connector: appstore
            settings:
              issuer_id: 57246542-96fe-1a63-e053-0824d011072a
              key_id: 2X9R4HXF34
              private_key: "-----BEGIN PRIVATE KEY-----hunter2"
              vendor_number: "85012345"
              apps: [{app: x, apple_id: "1500000001"}]
        """,
    )
    text = "\n".join(problems)
    assert "bad.yaml:7: sources[ios].settings.private_key: secrets are never written inline" in text
    assert "hunter2" not in text


def test_missing_environment_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DXKPI_TEST_UNSET", raising=False)
    problems = problems_of(
        tmp_path,
        """\
        storage: {url: "postgresql://u:${DXKPI_TEST_UNSET}@db/dxkpi"}
        """,
    )
    assert problems == [
        "bad.yaml:1: storage.url: environment variable DXKPI_TEST_UNSET is not set: export it"
    ]


def test_summing_a_non_additive_metric_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        "unit: page_views}", "unit: page_views, aggregation: none}", 1
    )
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    [problem] = caught.value.problems
    assert problem.path == "kpis[portal_views].feed.kind"
    assert "fiscal_year_sum sums 'portal_page_views'" in problem.message
    assert problem.line is not None


def test_feed_naming_an_undeclared_metric(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        "metric: portal_page_views}", "metric: portal_pageviews}"
    )
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="no source declares metric 'portal_pageviews'"):
        load_config(config)


def test_check_config_command_exits_non_zero_with_the_list(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - id: Bad-Id\n    connector: csvfile\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert (
        f"{bad}:2: sources[Bad-Id].id: write lower-case letters, digits and _, starting with a "
        "letter (zoom_main)"
    ) in result.output
    ok = CliRunner().invoke(main, ["check-config", str(EXAMPLE_CONFIG)])
    assert ok.exit_code == 0, ok.output
    assert "OK (6 sources, 11 KPIs)" in ok.output


def test_published_json_schema_is_current() -> None:
    """schema/dxkpi-config.schema.json is what `dxkpi schema` prints (regenerate it if not)."""
    published = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert published == config_schema(), "run: dxkpi schema > schema/dxkpi-config.schema.json"
    source = published["$defs"]["SourceConfig"]
    assert "csvfile" in source["properties"]["connector"]["enum"]


def test_a_metric_named_like_a_counter_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8").replace("portal_page_views", "portal_views_total")
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="a gauge must not end in _total"):
        load_config(config)


def test_a_unit_that_differs_must_be_named_in_the_feed(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = (
        config.read_text(encoding="utf-8")
        .replace("unit: page_views}", "unit: seconds}", 1)
        .replace("unit: page_views\n", "unit: hours\n", 1)
    )
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    [problem] = caught.value.problems
    assert problem.path == "kpis[portal_views].unit"
    assert (
        "is in seconds but the KPI is in hours: add `unit: seconds` to the feed" in problem.message
    )
    config.write_text(
        text.replace("metric: portal_page_views}", "metric: portal_page_views, unit: seconds}"),
        encoding="utf-8",
    )
    assert load_config(config).config.kpis[0].feed.unit == "seconds"
    config.write_text(
        text.replace("metric: portal_page_views}", "metric: portal_page_views, unit: litres}"),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="cannot convert 'litres' to the KPI's unit 'hours'"):
        load_config(config)


def test_a_target_in_a_list_is_named_by_its_place(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    single = "    target: {value: 2000, fiscal_year: R7}\n"
    listed = "    targets:\n      - {value: 1500, fiscal_year: %s}\n"
    listed += "      - {value: 2000, fiscal_year: %s}\n"
    text = config.read_text(encoding="utf-8")
    line = text.splitlines().index(single.rstrip("\n")) + 1
    config.write_text(text.replace(single, listed % ("R7", "R5")), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == ("kpis[portal_views].targets", line)
    assert problem.message == (
        "`targets` must be in fiscal-year order, one per fiscal year; got FY2025, FY2023"
    )
    config.write_text(text.replace(single, listed % ("R5", "R7")), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == ("kpis[portal_views].targets[0].fiscal_year", line + 1)
    assert problem.message == (
        "the target year FY2023 (R5 / 令和5年度) is before its baseline year "
        "FY2024 (R6 / 令和6年度)"
    )
