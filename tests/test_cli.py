"""The `dxkpi` command line, run in-process with click's runner against a SQLite data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.exc import ProgrammingError

from collector.cli import main
from collector.config import load_config
from collector.runtime import current, set_current
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
    assert "portal_views" in output and "success" in output


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


def test_the_data_directory_is_created_for_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dxkpi beat` on Redis and PostgreSQL still keeps its schedule file in the data dir."""
    monkeypatch.setenv("DXKPI_STORAGE_URL", "postgresql://dxkpi@127.0.0.1:1/dxkpi")
    monkeypatch.setenv("DXKPI_BROKER_URL", "redis://127.0.0.1:1/0")
    from collector.runtime import resolve

    runtime = resolve(write_config(tmp_path), tmp_path / "not" / "yet")
    assert runtime.data_dir.is_dir()


def test_a_data_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    write_config(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "--config",
            str(tmp_path / "dxkpi.yaml"),
            "--data-dir",
            str(tmp_path / "file" / "d"),
            "migrate",
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith("error: data directory ") and result.output.count("\n") == 1
    assert "set --data-dir" in result.output


def test_a_wrong_database_role_is_one_line_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    wrong = pg_url.replace("root@", "nosuch:pw-7c1e@")
    monkeypatch.setenv("DXKPI_STORAGE_URL", wrong)
    code, output = dxkpi(tmp_path, "migrate")
    assert code == 1
    assert output.count("\n") == 1 and "Traceback" not in output
    assert output.startswith("error: the store cannot be used: ") and 'role "nosuch"' in output
    assert "pw-7c1e" not in output


def test_a_store_without_tables_is_unhealthy_and_says_to_migrate(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from collector.exporter import Exporter
    from collector.runtime import resolve
    from tasks.collect import collect

    store = Store(pg_url)  # a fresh, empty database
    loaded = load_config(write_config(tmp_path))
    assert Exporter(store, loaded).health() == (
        False,
        "the store's tables are missing or out of date: run `dxkpi migrate`",
    )
    runtime = resolve(loaded.path, tmp_path / "d")
    runtime.storage_url = pg_url
    set_current(runtime)
    # The worker's task: one line saying what to do, and no retry (none would help).
    result = collect.apply(args=("portal",))
    assert isinstance(result.result, ProgrammingError) and result.state == "FAILURE"
    assert "run `dxkpi migrate`" in caplog.text and "retrying" not in caplog.text
    store.migrate()
    assert Exporter(store, loaded).health() == (True, "ok")
    runtime.store.close()
    store.close()


def test_a_worker_is_not_ready_without_a_usable_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    monkeypatch.setenv("DXKPI_STORAGE_URL", pg_url)  # reachable, but no tables
    code, output = dxkpi(tmp_path, "worker")
    current().store.close()
    assert code == 1
    assert output == "error: the store's tables are missing or out of date: run `dxkpi migrate`\n"
