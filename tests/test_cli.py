"""The `dxkpi` command line, run in-process with click's runner against a SQLite data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.runtime import set_current
from collector.storage import Store
from tests.conftest import write_config


@pytest.fixture(autouse=True)
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DXKPI_CONFIG", "DXKPI_DATA_DIR", "DXKPI_STORAGE_URL", "DXKPI_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    set_current(None)


def dxkpi(tmp_path: Path, *args: str) -> tuple[int, str]:
    config = tmp_path / "dxkpi.yaml"
    if not config.exists():
        write_config(tmp_path)
    result = CliRunner().invoke(
        main, ["--config", str(config), "--data-dir", str(tmp_path / "d"), *args]
    )
    return result.exit_code, result.output


def store_of(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'd' / 'dxkpi.sqlite'}")


def test_dry_run_prints_observations_and_stores_nothing(tmp_path: Path) -> None:
    code, output = dxkpi(
        tmp_path, "collect", "portal", "--since", "2024-04-01", "--until", "2024-04-05", "--dry-run"
    )
    assert code == 0, output
    assert "6 observations would be stored (dry run)" in output
    assert "portal_page_views" in output
    assert (
        not (tmp_path / "d" / "dxkpi.sqlite").exists()
        or store_of(tmp_path).count_observations() == 0
    )


def test_collect_then_status(tmp_path: Path) -> None:
    code, output = dxkpi(
        tmp_path, "collect", "portal", "--since", "2024-04-01", "--until", "2024-04-05"
    )
    assert code == 0, output
    assert "portal: success, 6 observations written (6 new or changed)" in output
    code, output = dxkpi(tmp_path, "status")
    assert code == 0, output
    assert "ポータルPV" in output and "success" in output
    code, output = dxkpi(tmp_path, "status", "--json")
    assert code == 0, output
    [kpi] = json.loads(output)["kpis"]
    # four days of FY2024: no complete fiscal year yet, the year to date is partial
    assert kpi["id"] == "portal_views" and kpi["value"] is None
    assert kpi["running_period"]["value"] > 0 and kpi["status"] == "no_data"


def test_collect_of_a_bad_file_names_file_and_row(tmp_path: Path) -> None:
    write_config(tmp_path, csv="date,page,page_views\n2024-04-01,/top,1\n2024-04-31,/top,2\n")
    code, output = dxkpi(tmp_path, "collect", "portal", "--since", "2024-04-01")
    assert code == 1
    assert "pv.csv:3" in output


def test_backfill_splits_into_windows_with_progress(tmp_path: Path) -> None:
    code, output = dxkpi(
        tmp_path, "backfill", "portal", "--since", "2024-01-01", "--until", "2024-06-01"
    )
    assert code == 0, output
    assert "portal: backfilled 5 windows, 6 observations" in output
    runs = store_of(tmp_path).runs("portal")
    assert {r["kind"] for r in runs} == {"backfill"} and len(runs) == 5
    # a backfill does not move the scheduled cursor
    assert store_of(tmp_path).cursor("portal")[0] is None


def test_unknown_source_is_a_clear_error(tmp_path: Path) -> None:
    code, output = dxkpi(tmp_path, "collect", "nope", "--dry-run")
    assert code == 1
    assert "unknown source 'nope'" in output and "known sources: portal" in output


def test_migrate_and_schema(tmp_path: Path) -> None:
    code, output = dxkpi(tmp_path, "migrate")
    assert code == 0 and "is up to date" in output
    code, output = dxkpi(tmp_path, "schema")
    assert code == 0 and '"title": "dxkpi configuration"' in output


def test_commands_listed() -> None:
    assert {
        "run",
        "worker",
        "beat",
        "exporter",
        "collect",
        "backfill",
        "check-config",
        "migrate",
        "status",
        "schema",
    } <= set(main.commands)
