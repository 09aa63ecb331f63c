"""The `dxkpi` command line, run in-process with click's runner against a SQLite data dir."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from unittest.mock import ANY

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from dxkpi.collector.cli import main
from dxkpi.collector.config import Config, load_config
from dxkpi.collector.present import format_exact as exact
from dxkpi.collector.runtime import current, resolve, set_current
from dxkpi.collector.storage import Store
from dxkpi.collector.supervisor import sources_to_kick_off
from tests.conftest import PAGE_VIEWS_CSV, write_config


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


def migrated(tmp_path: Path) -> None:
    code, output = dxkpi(tmp_path, "migrate")
    assert code == 0, output


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
    migrated(tmp_path)
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
    migrated(tmp_path)
    code, output = dxkpi(tmp_path, "collect", "portal", "--since", "2024-04-01")
    assert code == 1
    assert "pv.csv:3" in output


def test_backfill_splits_into_windows_with_progress(tmp_path: Path) -> None:
    migrated(tmp_path)
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
        "sources",
    } <= set(main.commands)


READ_ONLY = [
    ["status"],
    ["sources"],
    ["collect", "portal"],
    ["backfill", "portal", "--since", "2024-04-01", "--until", "2024-04-05"],
    ["refresh-kpis"],
]


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_read_only_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    code, output = dxkpi(tmp_path, *command)
    assert code == 1
    assert output.strip().splitlines() == [
        f"error: the store at sqlite:///{tmp_path / 'd' / 'dxkpi.sqlite'} has no tables yet: "
        "run `dxkpi migrate`"
    ]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_read_only_commands_never_migrate_a_store_behind(
    tmp_path: Path, command: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "d").mkdir()
    store_of(tmp_path).migrate("0001")
    caplog.clear()
    caplog.set_level(logging.INFO)
    code, output = dxkpi(tmp_path, *command)
    assert code == 1
    assert "is at schema revision 0001, this dxkpi needs 0005: run `dxkpi migrate`" in output
    assert len(output.strip().splitlines()) == 1
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
    with store_of(tmp_path).engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            "0001"
        )


def test_a_current_store_is_read_without_alembic_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    migrated(tmp_path)
    caplog.clear()
    caplog.set_level(logging.INFO)
    for command in (["status"], ["sources"]):
        code, output = dxkpi(tmp_path, *command)
        assert code == 0, output
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []


def test_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"dxkpi, version {version('dxkpi')}\n"


def test_sources_lists_each_source_within_80_columns(tmp_path: Path) -> None:
    write_config(tmp_path, csv="date,page,page_views\n2024-04-01,/top,1\n2024-04-31,/top,2\n")
    good = tmp_path / "data" / "good.csv"
    good.write_text(PAGE_VIEWS_CSV, encoding="utf-8")
    os.utime(good, (1_700_000_000, 1_700_000_000))
    config = tmp_path / "dxkpi.yaml"
    text_ = config.read_text(encoding="utf-8")
    second = text_.split("kpis:")[0].split("sources:\n")[1]
    second = second.replace("id: portal", "id: archive").replace("pv.csv", "good.csv")
    second = second.replace("every: 1h", 'cron: "0 9 * * *"')
    config.write_text(text_.replace("kpis:", second + "kpis:"), encoding="utf-8")
    migrated(tmp_path)
    dxkpi(tmp_path, "collect", "portal", "--since", "2024-04-01")
    code, output = dxkpi(tmp_path, "sources")
    assert code == 0, output
    lines = output.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 80, output
    assert lines[0].split() == [
        "source",
        "connector",
        "schedule",
        "last",
        "success",
        "last",
        "error",
    ]
    assert lines[1].split()[:4] == ["portal", "csvfile", "every", "1h"]
    assert lines[1].split("-", 1)[1].strip().startswith("rejected file data/pv.csv")
    assert lines[1].endswith("…")
    assert lines[2].split()[:5] == ["archive", "csvfile", "cron", "0", "9"] and "never" in lines[2]
    code, output = dxkpi(tmp_path, "sources", "--json")
    assert code == 0, output
    portal, archive = json.loads(output)
    assert portal["id"] == "portal" and portal["last_status"] == "failed"
    assert portal["last_success"] is None and "pv.csv:3" in portal["last_error"]
    assert archive == {
        "id": "archive",
        "connector": "csvfile",
        "schedule": "cron 0 9 * * *",
        "interval_seconds": 86400.0,
        "last_status": None,
        "last_success": None,
        "last_error": None,
        "running_too_long_seconds": None,
        "gaps": 0,
    }
    dxkpi(tmp_path, "collect", "archive", "--since", "2024-04-01", "--until", "2024-04-20")
    code, output = dxkpi(tmp_path, "sources", "--json")
    success = json.loads(output)[1]["last_success"]
    assert success.endswith("+09:00")  # in the config's timezone, with its offset
    code, output = dxkpi(tmp_path, "sources")
    assert "JST" in output.splitlines()[2]


def test_global_options_also_follow_the_subcommand(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    runner = CliRunner()
    data = tmp_path / "after"
    result = runner.invoke(main, ["migrate", "--config", str(config), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert (data / "dxkpi.sqlite").exists()
    # After the subcommand wins over before it, as the nearer one.
    result = runner.invoke(
        main,
        [
            "--data-dir",
            str(tmp_path / "before"),
            "status",
            "--config",
            str(config),
            "--data-dir",
            str(data),
            "--log-level",
            "WARNING",
        ],
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "before").exists()


def test_a_busy_port_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        migrated(tmp_path)
        result = CliRunner().invoke(
            main,
            [
                "--config",
                str(tmp_path / "dxkpi.yaml"),
                "--data-dir",
                str(tmp_path / "d"),
                "exporter",
                "--listen",
                f"127.0.0.1:{port}",
            ],
        )
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the port is in use (another dxkpi?); "
        "choose another address with --listen HOST:PORT or exporter.listen in the config"
    ]


def test_startup_failures_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = CliRunner().invoke(main, ["--config", str(missing), "status"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [
        f"error: {missing}: config file not found; give one with --config FILE or DXKPI_CONFIG"
    ]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("", encoding="utf-8")
    write_config(tmp_path)
    result = CliRunner().invoke(
        main, ["--config", str(tmp_path / "dxkpi.yaml"), "--data-dir", str(not_a_dir), "migrate"]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: data directory {not_a_dir}: cannot create it")


def test_dry_run_prints_exact_values(tmp_path: Path) -> None:
    write_config(
        tmp_path, csv="date,page,page_views\n2024-04-01,/top,1070123\n2024-04-02,/top,0.125\n"
    )
    code, output = dxkpi(
        tmp_path, "collect", "portal", "--since", "2024-04-01", "--until", "2024-04-05", "--dry-run"
    )
    assert code == 0, output
    assert "1,070,123" in output and "0.125" in output and "e+" not in output


def test_exact_never_rounds() -> None:
    assert exact(1070123.0) == "1,070,123"
    assert exact(40000000.0) == "40,000,000"
    assert exact(0.1) == "0.1"
    assert exact(1234567.891) == "1,234,567.891"
    assert exact(1e20) == "100,000,000,000,000,000,000"
    assert exact(-2.5e-7) == "-0.00000025"


def test_the_default_data_dir_belongs_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    for site in ("site-a", "site-b"):
        (tmp_path / site).mkdir()
    first = write_config(tmp_path / "site-a")
    second = write_config(tmp_path / "site-b")
    a, b = resolve(first), resolve(second)
    assert a.data_dir.parent == b.data_dir.parent == tmp_path / "share" / "dxkpi"
    assert a.data_dir.name.startswith("site-a-") and b.data_dir.name.startswith("site-b-")
    assert a.data_dir != b.data_dir and a.data_dir.is_dir()
    assert resolve(first).data_dir == a.data_dir  # stable from run to run
    # `run` says where it is as it starts (`_describe`): a person can find the store.
    result = CliRunner().invoke(main, ["--config", str(first), "migrate"])
    assert result.exit_code == 0, result.output
    assert str(a.data_dir / "dxkpi.sqlite") in result.output


def test_run_kicks_off_only_sources_without_a_recent_success() -> None:
    config = Config.model_validate(
        {
            "sources": [
                {"id": "hourly", "connector": "csvfile", "schedule": {"every": "1h"}},
                {"id": "stale", "connector": "csvfile", "schedule": {"every": "1h"}},
                {"id": "daily", "connector": "csvfile", "schedule": {"cron": "0 9 * * *"}},
                {"id": "new", "connector": "csvfile"},
            ]
        }
    )
    now = 1_800_000_000.0
    last = {"hourly": now - 1800, "stale": now - 3600, "daily": now - 20 * 3600}
    assert sources_to_kick_off(config.sources, last, now) == ["stale", "new"]


def test_the_data_directory_is_created_for_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dxkpi beat` on Redis and PostgreSQL still keeps its schedule file in the data dir."""
    monkeypatch.setenv("DXKPI_STORAGE_URL", "postgresql://dxkpi@127.0.0.1:1/dxkpi")
    monkeypatch.setenv("DXKPI_BROKER_URL", "redis://127.0.0.1:1/0")
    from dxkpi.collector.runtime import resolve

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
    assert "--data-dir" in result.output


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
    from dxkpi.collector.exporter import Exporter
    from dxkpi.collector.runtime import resolve
    from dxkpi.tasks.collect import collect

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


def test_sources_and_status_show_a_run_going_too_long_and_backfill_gaps(tmp_path: Path) -> None:
    write_config(tmp_path)
    migrated(tmp_path)
    store = store_of(tmp_path)
    now = time.time()
    runs = [
        # a backfill window that failed for good: a gap until a later run covers it
        ("backfill", 1_711_900_000, 1_712_000_000, now - 7200, now - 7100, "failed"),
        # a scheduled run started two hours ago and still going, on an hourly schedule
        ("scheduled", now - 9000, now - 7200, now - 7200, None, "running"),
    ]
    with store.engine.begin() as connection:
        for kind, start, end, started, finished, status in runs:
            connection.execute(
                text(
                    "INSERT INTO collection_runs (source, kind, window_start, window_end, "
                    "started_at, finished_at, status, attempt, observations_written) VALUES "
                    "('portal', :kind, :start, :end, :started, :finished, :status, 1, 0)"
                ),
                {
                    "kind": kind,
                    "start": start,
                    "end": end,
                    "started": started,
                    "finished": finished,
                    "status": status,
                },
            )
        # its worker is alive: it holds the source's lease and renews it
        connection.execute(
            text(
                "INSERT INTO source_state (source, lease_holder, lease_expires, generation) "
                "VALUES ('portal', 'task:alive', :expires, 0)"
            ),
            {"expires": now + 60},
        )
    store.close()
    code, output = dxkpi(tmp_path, "sources", "--json")
    assert code == 0, output
    [portal] = json.loads(output)
    assert portal["gaps"] == 1, portal
    assert portal["last_status"] == "failed", portal  # the last run that finished
    assert portal["running_too_long_seconds"] == pytest.approx(7200, abs=60)
    code, output = dxkpi(tmp_path, "sources")
    assert "running for 120 min (too long); 1 ba" in output  # cut to 80 columns
    code, output = dxkpi(tmp_path, "status", "--json")
    assert json.loads(output)["sources"] == [portal | {"running_too_long_seconds": ANY}]
