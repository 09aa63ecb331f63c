"""Every secret the deployment knows is scrubbed from every run error, status line and log record,
whichever source raised it: a file read by one source may hold another source's token."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from dxkpi.collector.errors import SourceDataError
from dxkpi.collector.runner import collect_source
from dxkpi.collector.runtime import resolve
from tests.conftest import write_config

# Short enough to survive the csvfile connector's excerpts whole: only redaction removes it.
TOKEN = "tok-4e1d9a/7c+b2f"
DB_PASSWORD = "pg-pass-93b1c7e2"
MATOMO = """\
  - id: web
    connector: matomo
    schedule: {every: 1h}
    settings:
      base_url: https://matomo.example.jp/
      site_id: 1
      token_auth: ${DXKPI_TEST_MATOMO_TOKEN}
"""


def leaks(text: str) -> list[str]:
    forms = [TOKEN, quote(TOKEN, safe=""), DB_PASSWORD]
    return [form for form in forms if form in text]


def test_another_sources_secret_is_scrubbed_from_runs_status_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DXKPI_TEST_MATOMO_TOKEN", TOKEN)
    store_path = tmp_path / "store.sqlite"
    # A URL with a password the store does not need: SQLite ignores it.
    monkeypatch.setenv("DXKPI_STORAGE_URL", f"sqlite:///{store_path}")
    csv = f"date,page,page_views\n2024-04-01,/top,{TOKEN}\n2024-04-02,/top,{DB_PASSWORD}\n"
    config = write_config(tmp_path, csv=csv)
    config.write_text(config.read_text().replace("sources:\n", "sources:\n" + MATOMO))
    monkeypatch.setenv("DXKPI_BROKER_URL", f"redis://dxkpi:{DB_PASSWORD}@127.0.0.1:6399/0")
    runtime = resolve(config, tmp_path / "data-dir")
    runtime.store.migrate()
    with caplog.at_level(logging.INFO), pytest.raises(SourceDataError) as raised:
        collect_source(runtime.loaded, runtime.store, "portal")
    # The exception itself is the connector's; what leaves the run is scrubbed.
    assert TOKEN in str(raised.value), "the fixture must put the secret into the error"
    [run] = runtime.store.runs("portal")
    assert run["status"] == "failed" and "***" in run["error_message"]
    assert leaks(run["error_message"]) == []
    [health] = runtime.store.source_health()
    assert leaks(health.last_error or "") == []
    assert "portal" in caplog.text and leaks(caplog.text) == []
    runtime.store.close()


def test_log_records_are_scrubbed_whoever_logs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DXKPI_TEST_MATOMO_TOKEN", TOKEN)
    monkeypatch.setenv("DXKPI_STORAGE_URL", f"postgresql://dxkpi:{DB_PASSWORD}@db:5432/dxkpi")
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("sources:\n", "sources:\n" + MATOMO))
    resolve(config, tmp_path / "data-dir")
    vendor = logging.getLogger("some.library")
    with caplog.at_level(logging.INFO):
        vendor.warning("connecting with %s and ?token_auth=%s", DB_PASSWORD, quote(TOKEN, safe=""))
        try:
            raise RuntimeError(f"refused {TOKEN}")
        except RuntimeError:
            vendor.exception("task raised unexpected")
    assert "connecting with ***" in caplog.text
    assert "RuntimeError: refused ***" in caplog.text, "tracebacks are scrubbed too"
    assert leaks(caplog.text) == []
    assert os.environ["DXKPI_TEST_MATOMO_TOKEN"] == TOKEN
