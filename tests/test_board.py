"""The board page (`/`) of the shipped example, served by a real exporter and read in a real
headless Chromium (Debian's chromium and chromium-driver through selenium): no console errors,
one card per KPI whose figures are `dxkpi.collector.present`'s writing of the computed `KpiState`s,
English with `?lang=en`, one column on a phone. A screenshot is written under the test's
tmp_path; with DXKPI_UPDATE_SCREENSHOT=1 also to docs/board.png for the README."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dxkpi.collector.board import Board, render_board
from dxkpi.collector.clock import fixed_clock, parse_moment
from dxkpi.collector.config import LoadedConfig, load_config
from dxkpi.collector.contract import TOKYO
from dxkpi.collector.exporter import Exporter, make_server
from dxkpi.collector.kpi import KpiCalculator, KpiState
from dxkpi.collector.present import STATUS_WORDS, Lang, format_value, label_for_people
from dxkpi.collector.storage import SourceHealth, Store
from tests.conftest import unavailable
from tests.test_exporter import get
from tests.test_status import AS_OF, EXAMPLE, SOURCES, dxkpi

DOCS_SCREENSHOT = Path(__file__).parents[1] / "docs" / "board.png"
UPDATE_SCREENSHOT = os.environ.get("DXKPI_UPDATE_SCREENSHOT") == "1"
DESKTOP = (1280, 900)
PHONE = (390, 844)  # a common phone's CSS viewport


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("board")
    shutil.copytree(EXAMPLE, folder / "config")
    code, output = dxkpi(folder, "migrate")  # collect never creates a store
    assert code == 0, output
    for source in (*SOURCES, "rpa_run_log"):  # every source: the health table shows them all
        code, output = dxkpi(folder, "collect", source)
        assert code == 0, output
    return folder


@pytest.fixture(scope="module")
def served(example: Path) -> Iterator[tuple[str, Exporter, LoadedConfig]]:
    loaded = load_config(example / "config" / "dxkpi.yaml")
    store = Store(f"sqlite:///{example / 'd' / 'dxkpi.sqlite'}")
    exporter = Exporter(store, loaded, clock=fixed_clock(parse_moment(AS_OF, loaded.config.tz)))
    exporter.refresh()
    server = make_server(exporter, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", exporter, loaded
    server.shutdown()
    server.server_close()
    store.close()


@pytest.fixture(scope="module")
def states(served: tuple[str, Exporter, LoadedConfig]) -> list[KpiState]:
    """The figures the page must show, computed apart from the exporter's own build."""
    _, exporter, loaded = served
    return KpiCalculator(exporter.store, loaded.config).compute_all(
        parse_moment(AS_OF, loaded.config.tz)
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        unavailable(
            "headless Chromium",
            FileNotFoundError("chromium or chromedriver not on PATH: run scripts/install-tools"),
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)  # --no-sandbox: tests run as root in CI
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_console_check_sees_errors(browser: Any) -> None:
    """The check the board test relies on does catch a page's errors."""
    browser.get("data:text/html,<script>console.error('board-check')</script>")
    assert any("board-check" in message for message in console_errors(browser))


def cards(driver: Any) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, "li.card")
    return {card.get_attribute("data-kpi"): card for card in found}


def text_of(card: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(card.find_element(By.CSS_SELECTOR, selector).text).strip()


def check_cards(driver: Any, states: list[KpiState], lang: Lang) -> None:
    shown = cards(driver)
    assert list(shown) == [s.kpi.id for s in states]  # 11 cards, in the config's order
    for state in states:
        card, kpi = shown[state.kpi.id], state.kpi
        assert state.value is not None, kpi.id  # the example has a figure for every KPI
        assert text_of(card, ".value") == format_value(state.value, kpi.unit), kpi.id
        assert text_of(card, ".period") == label_for_people(state.period_label, lang), kpi.id
        assert text_of(card, ".status") == STATUS_WORDS[state.status_word][lang], kpi.id
        names = (kpi.name_ja, kpi.name_en) if lang == "ja" else (kpi.name_en, kpi.name_ja)
        assert (text_of(card, "h2"), text_of(card, ".other")) == names
        assert text_of(card, ".target").startswith(format_value(state.target.value, kpi.unit))
        assert text_of(card, ".last-move") not in ("", "-"), kpi.id
        # the chart draws every complete period and the path to the target
        complete = [p for p in state.periods if p.complete and p.value is not None]
        dots = card.find_elements("css selector", "svg.chart circle")
        assert len(dots) >= min(len(complete), 1) + 1, kpi.id  # figures, target, latest


def test_board_in_headless_chromium(
    browser: Any,
    served: tuple[str, Exporter, LoadedConfig],
    states: list[KpiState],
    tmp_path: Path,
) -> None:
    url, _, loaded = served
    browser.get_log("browser")  # start from a clean log
    browser.set_window_size(*DESKTOP)
    browser.get(f"{url}/")
    assert browser.execute_script("return document.documentElement.lang") == "ja"
    assert len(states) == len(loaded.config.kpis) == 11
    check_cards(browser, states, "ja")
    words = {s.kpi.id: s.status_word for s in states}
    assert words["kenmin_app_downloads"] == "achieved"  # the example's one achieved target
    # three cards a row on a desktop
    lefts = {c.location["x"] for c in cards(browser).values()}
    assert len(lefts) == 3
    sources = browser.find_elements("css selector", "#sources tbody tr")
    assert [r.get_attribute("data-source") for r in sources] == [
        s.id for s in loaded.config.sources
    ]
    assert all("成功" in r.text for r in sources)
    write_screenshot(browser, tmp_path / "board-ja.png", docs=True)

    # the switch to English
    browser.find_element("link text", "English").click()
    assert browser.current_url == f"{url}/?lang=en"
    assert browser.execute_script("return document.documentElement.lang") == "en"
    check_cards(browser, states, "en")

    # a phone: one column, nothing wider than the screen
    browser.set_window_size(*PHONE)
    browser.get(f"{url}/")
    width = browser.execute_script("return window.innerWidth")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width
    assert len({c.location["x"] for c in cards(browser).values()}) == 1
    write_screenshot(browser, tmp_path / "board-phone.png")
    assert console_errors(browser) == []


def write_screenshot(driver: Any, path: Path, *, docs: bool = False) -> None:
    """The whole page (the window grown to the page's height), then the window as it was."""
    size = driver.get_window_size()
    page, viewport = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.innerHeight]"
    )
    driver.set_window_size(size["width"], size["height"] - viewport + page)  # window - viewport
    assert driver.save_screenshot(str(path)), path
    assert path.stat().st_size > 10_000, path  # a page, not a blank
    if docs and UPDATE_SCREENSHOT:
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)
    driver.set_window_size(size["width"], size["height"])


def test_page_is_the_snapshots_and_lang_falls_back_to_japanese(
    served: tuple[str, Exporter, LoadedConfig],
) -> None:
    url, exporter, _ = served
    snapshot = exporter.snapshot
    assert snapshot is not None
    status, headers, body = get(f"{url}/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == snapshot.board["ja"]  # rendered with the snapshot, not per request
    assert get(f"{url}/?lang=en")[2] == snapshot.board["en"]
    assert get(f"{url}/?lang=fr")[2] == snapshot.board["ja"]
    # self-contained: nothing fetched from elsewhere, nothing to run
    assert b"<script" not in body and b"http://" not in body and b"https://" not in body


def test_board_before_the_first_snapshot_and_before_any_data(
    tmp_path: Path, sqlite_store: Store
) -> None:
    from tests.conftest import write_config

    exporter = Exporter(sqlite_store, load_config(write_config(tmp_path)))
    server = make_server(exporter, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        before = get(url)
        exporter.refresh()  # an empty store: the KPI has no figure, the source never ran
        status, _, page = get(url)
    finally:
        server.shutdown()
        server.server_close()
    assert before[0] == 503 and b"no snapshot yet" in before[2]
    assert status == 200 and page.count(b'<li class="card"') == 1
    text = page.decode()
    assert STATUS_WORDS["no_data"]["ja"] in text and "未実行" in text
    assert '<span class="value">-</span>' in text


def test_dxkpi_exporter_serves_the_board(example: Path) -> None:
    """The command (and so `dxkpi run`, which serves through it) answers `/` with the board."""
    env = {**os.environ, "DXKPI_AS_OF": AS_OF, "PYTHONUNBUFFERED": "1"}
    config, data = example / "config" / "dxkpi.yaml", example / "d"
    command = [
        sys.executable,
        "-m",
        "dxkpi.collector",
        "--config",
        str(config),
        "--data-dir",
        str(data),
    ]
    with subprocess.Popen(
        [*command, "exporter", "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,  # where the CLI's console writes
        text=True,
        env=env,
    ) as process:
        assert process.stderr is not None
        try:
            said: list[str] = []
            while not said or not said[-1].startswith("serving"):
                ready, _, _ = select.select([process.stderr], [], [], 60)
                assert ready and process.poll() is None, f"dxkpi exporter did not start: {said}"
                said.append(process.stderr.readline())
            base = said[-1].split()[1].removesuffix("/metrics")
            assert process.stderr.readline().rstrip() == f"KPI board: {base}/"
            status, _, body = get(f"{base}/?lang=en")
        finally:
            process.terminate()
    assert status == 200
    assert body.count(b'<li class="card"') == 11
    assert b"as of 2026-12-03 00:00 JST" in body


def test_names_and_errors_are_escaped(tmp_path: Path, sqlite_store: Store) -> None:
    """Names come from config files and errors from sources: the page shows them as text."""
    from tests.conftest import write_config

    config = load_config(write_config(tmp_path)).config
    config.kpis[0] = config.kpis[0].model_copy(update={"name_ja": "<script>alert(1)</script>"})
    failure = SourceHealth("portal", "failed", 1.0, 2.0, None, "<img src=x onerror=alert(1)>", {})
    board = Board(
        KpiCalculator(sqlite_store, config).compute_all(2e9), [failure], config.sources, 2e9, TOKYO
    )
    page = render_board(board, "ja").decode()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "失敗" in page  # the failed run's status word
