"""The exporter over a real store fed by a real connector: parsed by prometheus-client's parsers,
linted by promtool, served over HTTP on loopback."""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from dxkpi.collector.config import LoadedConfig, load_config
from dxkpi.collector.contract import TOKYO, Observation, Window
from dxkpi.collector.errors import SourceDataError
from dxkpi.collector.exporter import Exporter, Snapshot, make_server
from dxkpi.collector.exposition import (
    BLOCK_LINES,
    SeriesFamily,
    SeriesLines,
    SeriesRenderer,
    render_series,
)
from dxkpi.collector.runner import collect_source
from dxkpi.collector.storage import Store
from tests.conftest import IN_CI, write_config

NOW = datetime(2024, 4, 4, 12, tzinfo=TOKYO).timestamp()
WINDOW = Window(datetime(2024, 4, 1, tzinfo=TOKYO), datetime(2024, 4, 4, tzinfo=TOKYO))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_text(text)
        for s in family.samples
    }


@pytest.fixture
def fed(tmp_path: Path, store: Store) -> tuple[Store, LoadedConfig]:
    loaded = load_config(write_config(tmp_path))
    collect_source(loaded, store, "portal", window=WINDOW)
    return store, loaded


def test_metrics_carry_raw_kpi_and_source_families(fed: tuple[Store, LoadedConfig]) -> None:
    store, loaded = fed
    text = Exporter(store, loaded, clock=lambda: NOW).rebuild().text.decode()
    got = samples(text)
    assert (
        got[
            (
                "dxkpi_portal_page_views",
                (("org", "default"), ("page", "/top"), ("source", "portal")),
            )
        ]
        == 130
    )
    kpi = (("kpi", "portal_views"), ("org", "default"))
    # FY2024 has only begun: no complete reported period yet, the year to date is partial
    assert ("dxkpi_kpi_value", kpi) not in got
    assert got[("dxkpi_kpi_running_period_value", kpi)] == 475
    assert (
        got[("dxkpi_kpi_running_period_end_timestamp_seconds", kpi)]
        == datetime(2025, 4, 1, tzinfo=TOKYO).timestamp()
    )
    assert got[("dxkpi_kpi_baseline_value", kpi)] == 1000
    assert got[("dxkpi_kpi_target_value", kpi)] == 2000
    assert got[("dxkpi_kpi_direction", kpi)] == 1
    assert (
        got[("dxkpi_kpi_baseline_timestamp_seconds", kpi)]
        == datetime(2025, 4, 1, tzinfo=TOKYO).timestamp()  # the end of FY2024 (R6)
    )
    assert (
        got[("dxkpi_kpi_target_timestamp_seconds", kpi)]
        == datetime(2026, 4, 1, tzinfo=TOKYO).timestamp()
    )
    info = [k for k in got if k[0] == "dxkpi_kpi_info"]
    assert dict(info[0][1])["name_ja"] == "ポータルPV"
    src = (("org", "default"), ("source", "portal"))
    assert got[("dxkpi_source_up", src)] == 1
    assert (
        got[
            (
                "dxkpi_source_runs_total",
                (("org", "default"), ("source", "portal"), ("status", "success")),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "dxkpi_source_runs_total",
                (("org", "default"), ("source", "portal"), ("status", "failed")),
            )
        ]
        == 0
    )
    assert got[("dxkpi_source_interval_seconds", src)] == 3600
    assert ("dxkpi_source_last_success_timestamp_seconds", src) in got


def test_openmetrics_output_parses_with_the_strict_parser(fed: tuple[Store, LoadedConfig]) -> None:
    store, loaded = fed
    body = Exporter(store, loaded, clock=lambda: NOW).rebuild().openmetrics.decode()
    families = {f.name: f for f in parse_om(body)}
    assert families["dxkpi_source_runs"].type == "counter"
    assert families["dxkpi_kpi"].type == "info"
    assert body.endswith("# EOF\n")


def test_promtool_check_metrics_passes(fed: tuple[Store, LoadedConfig]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is missing (Debian package prometheus); .ci/run installs it")
        pytest.skip("promtool is missing")
    store, loaded = fed
    text = Exporter(store, loaded, clock=lambda: NOW).rebuild().text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_failed_run_shows_in_source_health(tmp_path: Path, sqlite_store: Store) -> None:
    loaded = load_config(write_config(tmp_path, csv="date,page,page_views\n2024-04-01,/top,many\n"))
    with pytest.raises(SourceDataError):
        collect_source(loaded, sqlite_store, "portal", window=WINDOW)
    got = samples(Exporter(sqlite_store, loaded, clock=lambda: NOW).rebuild().text.decode())
    assert got[("dxkpi_source_up", (("org", "default"), ("source", "portal")))] == 0
    assert (
        got[
            (
                "dxkpi_source_runs_total",
                (("org", "default"), ("source", "portal"), ("status", "failed")),
            )
        ]
        == 1
    )
    assert ("dxkpi_kpi_value", (("kpi", "portal_views"),)) not in got  # no data: absent
    [health] = sqlite_store.source_health()
    assert health.last_error is not None and "pv.csv:2" in health.last_error


def test_snapshot_is_rebuilt_only_when_the_store_changed(
    tmp_path: Path, sqlite_store: Store
) -> None:
    loaded = load_config(write_config(tmp_path))
    exporter = Exporter(sqlite_store, loaded, clock=lambda: NOW)
    exporter.refresh()
    exporter.refresh()
    assert exporter.rebuilds == 1
    collect_source(loaded, sqlite_store, "portal", window=WINDOW)
    exporter.refresh()
    assert exporter.rebuilds == 2
    assert b"dxkpi_portal_page_views" in exporter.snapshot.text  # type: ignore[union-attr]


def test_a_run_whose_lease_expired_shows_at_the_next_refresh(
    tmp_path: Path, sqlite_store: Store
) -> None:
    """A holder killed mid-run changes nothing in the store: its lease just expires. The exporter
    must still show the run abandoned at its next refresh, not when something else changes."""
    loaded = load_config(write_config(tmp_path))
    collect_source(loaded, sqlite_store, "portal", window=WINDOW)
    sqlite_store.start_leased_run("portal", "scheduled", "killed", 60, lambda c, k: (0.0, 1.0))
    exporter = Exporter(sqlite_store, loaded)
    exporter.refresh()
    up = ("dxkpi_source_up", (("org", "default"), ("source", "portal")))
    assert samples(exporter.snapshot.text.decode())[up] == 1  # type: ignore[union-attr]
    sqlite_store.acquire_lease("portal", "killed", -1)  # what an unrenewed lease becomes
    exporter.refresh()
    got = samples(exporter.snapshot.text.decode())  # type: ignore[union-attr]
    assert got[up] == 0
    abandoned = (("org", "default"), ("source", "portal"), ("status", "abandoned"))
    assert got[("dxkpi_source_runs_total", abandoned)] == 1
    rebuilds = exporter.rebuilds
    exporter.refresh()
    assert exporter.rebuilds == rebuilds, "rebuilt again with nothing changed"


@pytest.fixture
def served(fed: tuple[Store, LoadedConfig]) -> Iterator[str]:
    store, loaded = fed
    exporter = Exporter(store, loaded, clock=lambda: NOW)
    exporter.refresh()
    server = make_server(exporter, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_http_negotiates_format_and_compression(served: str) -> None:
    status, headers, body = get(f"{served}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE dxkpi_source_runs_total counter" in body
    status, headers, body = get(
        f"{served}/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = get(f"{served}/metrics", **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"dxkpi_kpi_running_period_value" in gzip.decompress(body)
    assert get(f"{served}/healthz")[0] == 200
    assert get(f"{served}/nope")[0] == 404


def test_healthz_fails_when_the_store_is_unreachable_without_leaking_the_password(
    tmp_path: Path,
) -> None:
    loaded = load_config(write_config(tmp_path))
    store = Store("postgresql+psycopg://dxkpi:sekrit-pw@127.0.0.1:1/dxkpi?connect_timeout=2")
    exporter = Exporter(store, loaded)
    ok, message = exporter.health()
    assert not ok
    assert "store unreachable" in message and "sekrit-pw" not in message
    exporter.refresh()  # must not raise: keeps serving the last snapshot
    assert exporter.store_error is not None and "sekrit-pw" not in exporter.store_error


def test_exporter_binds_loopback_by_default() -> None:
    from dxkpi.collector.config import ExporterConfig

    assert ExporterConfig().listen.startswith("127.0.0.1:")


def test_shipped_example_passes_promtool(tmp_path: Path) -> None:
    """Every source of the shipped example collected, then the whole exposition linted."""
    from dxkpi.collector.runtime import EXAMPLE_CONFIG

    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is missing (Debian package prometheus); .ci/run installs it")
        pytest.skip("promtool is missing")
    loaded = load_config(EXAMPLE_CONFIG)
    store = Store(f"sqlite:///{tmp_path / 'example.sqlite'}")
    store.migrate()
    for source in loaded.config.sources:
        window = Window(datetime(2020, 4, 1, tzinfo=TOKYO), datetime(2026, 11, 29, tzinfo=TOKYO))
        collect_source(loaded, store, source.id, window=window)
    text = Exporter(store, loaded).rebuild().text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    got = samples(text.decode())
    assert len([k for k in got if k[0] == "dxkpi_kpi_value"]) == 11
    store.close()


def test_summable_metrics_carry_exact_fiscal_year_and_month_totals(tmp_path: Path) -> None:
    csv = "date,page,page_views\n2024-03-31,/top,1000\n2024-04-01,/top,100\n2024-05-02,/top,7\n"
    loaded = load_config(write_config(tmp_path, csv=csv))
    store = Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.migrate()
    window = Window(datetime(2024, 3, 1, tzinfo=TOKYO), datetime(2024, 6, 1, tzinfo=TOKYO))
    collect_source(loaded, store, "portal", window=window)
    now = datetime(2024, 5, 20, tzinfo=TOKYO).timestamp()
    got = samples(Exporter(store, loaded, clock=lambda: now).rebuild().text.decode())
    key = (("org", "default"), ("page", "/top"), ("source", "portal"))
    assert got[("dxkpi_portal_page_views", key)] == 7  # the latest day
    assert got[("dxkpi_portal_page_views_fiscal_year_to_date", key)] == 107  # FY2024 from 1 April
    assert got[("dxkpi_portal_page_views_month_to_date", key)] == 7
    store.close()


# -- incremental rendering of stored series ----------------------------------------------------

LABELS = {
    1: '{page="/top",source="portal"}',
    2: '{page="/a \\"quoted\\" \\\\ back\\nslash",source="portal"}',
    3: '{page="/100% 本当",source="portal"}',
    4: '{page="/new",source="portal"}',
    5: '{page="/late",source="portal"}',
}


def body(lines: SeriesLines) -> bytes:
    return b"".join(lines.blocks)


def label_text(series_id: int) -> str:
    return LABELS.get(series_id, f'{{page="/p{series_id}",source="portal"}}')


def series_family(values: dict[int, float], asked: list[int] | None = None) -> SeriesFamily:
    def labels(series_id: int) -> str:
        if asked is not None:
            asked.append(series_id)
        return label_text(series_id)

    family = SeriesFamily("dxkpi_portal_page_views", "Views.", labels)
    for series_id, value in values.items():
        family.add(series_id, value)
    return family


def expected_lines(values: dict[int, float]) -> bytes:
    """What each sample line must be, written out independently of the renderer."""

    def text(value: float) -> str:
        if math.isnan(value):
            return "NaN"
        return {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, repr(value))

    return "".join(
        f"dxkpi_portal_page_views{label_text(i)} {text(v)}\n" for i, v in values.items()
    ).encode()


def test_incremental_renders_equal_fresh_ones_through_every_kind_of_change() -> None:
    steps: list[dict[int, float]] = [
        {1: 1.0, 2: 2.0, 3: 3.0},
        {1: 1.0, 2: 2.5, 3: 3.0},  # one value of three: below the full-format share
        {1: 1.0, 2: 2.5, 3: 3.0},  # nothing
        {1: 7.0, 2: math.nan, 3: math.inf},  # most values, NaN and +Inf among them
        {1: 7.0, 2: math.nan, 3: -math.inf},  # NaN stays NaN: only -Inf is new
        {1: 0.0, 2: math.nan, 3: -math.inf},
        {1: -0.0, 2: math.nan, 3: -math.inf},  # -0.0 == 0.0, but its text differs
        {1: -0.0, 4: 4.0, 2: 1e-300, 3: 1e300},  # a new series in the middle
        {1: -0.0, 4: 4.0, 3: 1e300, 5: 5.0},  # one gone, one new at the end
        {4: 4.0},
        {},
        {5: 6.0, 1: 0.1 + 0.2},
    ]
    previous = None
    for values in steps:
        family = series_family(values)
        lines = render_series(family, previous)
        assert body(lines) == expected_lines(values), values
        assert body(lines) == body(render_series(series_family(values), None))
        previous = lines


def test_only_blocks_holding_a_changed_value_are_formatted_again() -> None:
    values = {i: float(i) for i in range(1, 101)}  # blocks of lines 1-32, 33-64, 65-96, 97-100
    previous = render_series(series_family(values), None)
    assert [len(block.splitlines()) for block in previous.blocks] == [BLOCK_LINES] * 3 + [4]
    changes: list[dict[int, float]] = [
        {1: 0.5, 2: math.nan, 32: 1e-7, 100: math.inf},  # the first and the last block
        {2: math.nan, 3: 33.0, 99: -math.inf, 100: 100.0},
        {33: -0.0},  # the second block
    ]
    for change in changes:
        values = {**values, **change}
        lines = render_series(series_family(values), previous)
        assert body(lines) == expected_lines(values)
        blocks_changed = {(i - 1) // BLOCK_LINES for i in change}
        for k, block in enumerate(lines.blocks):
            assert (block is previous.blocks[k]) == (k not in blocks_changed), (change, k)
        previous = lines


def test_incremental_render_formats_only_what_changed() -> None:
    values = {i: float(i) for i in range(1, 5)}
    asked: list[int] = []
    first = render_series(series_family(values, asked), None)
    assert sorted(asked) == [1, 2, 3, 4]
    asked.clear()
    assert render_series(series_family(values, asked), first) is first  # unchanged: kept whole
    again = render_series(series_family({**values, 3: 30.0, 5: 5.0}, asked), first)
    assert asked == [5]  # known series keep their formatted labels
    assert body(again) == expected_lines({**values, 3: 30.0, 5: 5.0})


def test_series_renderer_keeps_families_apart_and_forgets_dropped_ones() -> None:
    renderer = SeriesRenderer()
    totals = series_family({1: 1.0})
    totals.name = "dxkpi_portal_page_views_month_to_date"
    chunks = renderer.render([series_family({1: 1.0, 2: 2.0}), totals])
    assert [c[2][0].split(b"{")[0] for c in chunks] == [
        b"dxkpi_portal_page_views",
        b"dxkpi_portal_page_views_month_to_date",
    ]
    renderer.render([series_family({1: 1.0, 2: 2.0})])
    assert list(renderer.kept) == ["dxkpi_portal_page_views"]
    assert renderer.render([series_family({})]) == []  # no samples: no HELP/TYPE either


def page_views(day: int, views: dict[str, float]) -> list[Observation]:
    start = datetime(2024, 4, day, tzinfo=TOKYO)
    return [
        Observation("portal_page_views", v, start, labels={"page": p}) for p, v in views.items()
    ]


def test_rebuilt_snapshot_equals_a_fresh_one_after_changes(
    tmp_path: Path, sqlite_store: Store
) -> None:
    """An exporter that rebuilt after each write serves what a newly started one would. (The store
    holds finite values only; NaN and ±Inf are covered by the render tests above.)"""
    loaded = load_config(write_config(tmp_path))
    exporter = Exporter(sqlite_store, loaded, clock=lambda: NOW)
    writes = [
        page_views(1, {"/top": 10, "/a\\b": 1, '/"q"': 2, "/50%": 3, "/日本": 4}),
        page_views(2, {"/top": 11}),  # one series moves on: a patch
        page_views(2, {"/a\\b": 5, '/"q"': 6, "/50%": 7, "/日本": 0.5}),  # most move
        page_views(3, {"/new": 1, "/top": 1e300}),  # a new series
    ]
    for observations in writes:
        sqlite_store.write("portal", observations)
        exporter.refresh()
        fresh = Exporter(sqlite_store, loaded, clock=lambda: NOW).rebuild()
        served = exporter.snapshot
        assert served is not None
        assert served.text == fresh.text
        assert served.openmetrics == fresh.openmetrics
    got = samples(served.text.decode())

    def views(page: str) -> float:
        return got[
            ("dxkpi_portal_page_views", (("org", "default"), ("page", page), ("source", "portal")))
        ]

    assert views("/new") == 1
    assert views("/top") == 1e300
    assert views("/日本") == 0.5
    assert views("/50%") == 7
    assert views('/"q"') == 6
    assert parse_om(served.openmetrics.decode())  # the strict parser accepts it


def test_a_large_body_is_served_whole_in_every_format(tmp_path: Path, sqlite_store: Store) -> None:
    """A body of many chunk parts leaves in several pieces; the client gets it whole."""
    loaded = load_config(write_config(tmp_path))
    exporter = Exporter(sqlite_store, loaded, clock=lambda: NOW)
    family = series_family({i: i / 7 for i in range(1, 5001)})
    exporter.snapshot = Snapshot(SeriesRenderer().render([family]), NOW, generations={})
    server = make_server(exporter, "127.0.0.1", 0, registry=CollectorRegistry())  # snapshot only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        status, headers, body = get(url)
        assert status == 200 and body == exporter.snapshot.text
        assert int(headers["Content-Length"]) == len(body)
        assert body.count(b"\n") == 5000 + 2
        _, _, body = get(url, Accept="application/openmetrics-text; version=1.0.0")
        assert body == exporter.snapshot.openmetrics and body.endswith(b"# EOF\n")
        _, headers, body = get(url, **{"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == exporter.snapshot.text
    finally:
        server.shutdown()
        server.server_close()
