"""The store on both databases: migrations, idempotent upserts, revisions, batches, leases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from dxkpi.collector.contract import TOKYO, Granularity, Observation
from dxkpi.collector.storage import SchemaNotCurrentError, Store, require_current_schema

T0 = datetime(2024, 4, 1, tzinfo=TOKYO)


def daily(n: int, value: float = 1.0, page: str = "/top", metric: str = "pv") -> list[Observation]:
    return [
        Observation(metric, value + i, T0 + timedelta(days=i), labels={"page": page})
        for i in range(n)
    ]


def test_migrations_create_every_table_from_empty(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"series", "observations", "revisions", "collection_runs", "source_state"} <= tables
    store.migrate()  # a second upgrade is a no-op


def test_schema_check_reads_the_revision_without_changing_it(pg_url: str) -> None:
    store = Store(pg_url)
    with pytest.raises(SchemaNotCurrentError, match=r"has no tables yet: run `dxkpi migrate`$"):
        require_current_schema(store)
    store.migrate("0001")
    with pytest.raises(SchemaNotCurrentError, match="at schema revision 0001, this dxkpi needs"):
        require_current_schema(store)
    store.migrate()
    require_current_schema(store)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaNotCurrentError, match="9999, which this dxkpi does not know"):
        require_current_schema(store)
    store.close()


def test_same_window_twice_keeps_one_row_per_series_and_period(store: Store) -> None:
    first = store.write("src", daily(30))
    second = store.write("src", daily(30))
    assert (first.changed, second.changed) == (30, 0)
    assert store.count_observations() == 30
    assert store.revisions() == []


def test_revised_value_lands_in_the_revision_log(store: Store) -> None:
    store.write("src", daily(5))
    revised = daily(5)
    revised[2] = Observation("pv", 99.0, revised[2].start, labels={"page": "/top"})
    stats = store.write("src", revised)
    assert stats.changed == 1
    [revision] = store.revisions()
    assert (revision.old_value, revision.new_value) == (3.0, 99.0)
    assert revision.period_start == int(revised[2].start.timestamp())
    assert store.count_observations() == 5


def test_retry_after_failure_mid_batch_leaves_exactly_one_row_each(store: Store) -> None:
    items = daily(25)

    def failing() -> Iterator[Observation]:
        for i, item in enumerate(items):
            if i == 17:
                raise ConnectionError("source dropped the connection")
            yield item

    with pytest.raises(ConnectionError):
        store.write("src", failing(), batch_size=10)
    # The first full batch committed; the interrupted one did not.
    assert store.count_observations() == 10
    store.write("src", items, batch_size=10)
    assert store.count_observations() == 25
    store.write("src", items, batch_size=7)
    assert store.count_observations() == 25


def test_a_bad_observation_rolls_back_its_whole_batch(store: Store) -> None:
    items = daily(4)
    items[3] = Observation("pv", float("nan"), items[3].start, labels={"page": "/top"})
    with pytest.raises(ValueError, match="not finite"):
        store.write("src", items)
    assert store.count_observations() == 0


def test_key_repeated_within_one_batch_keeps_the_last_value(store: Store) -> None:
    a = Observation("pv", 1.0, T0)
    b = Observation("pv", 2.0, T0)
    store.write("src", [a, b])
    [row] = store.series_rows()
    assert row.last_value == 2.0
    assert store.count_observations() == 1


def test_series_are_per_source_metric_and_label_set(store: Store) -> None:
    store.write("a", daily(2, page="/x") + daily(2, page="/y"))
    store.write("b", daily(2, page="/x"))
    rows = store.series_rows()
    assert sorted((r.source, r.labels["page"]) for r in rows) == [
        ("a", "/x"),
        ("a", "/y"),
        ("b", "/x"),
    ]
    # the latest period's value is kept on the series for the exporter
    assert {r.last_value for r in rows} == {2.0}


def test_granularities_are_distinct_periods(store: Store) -> None:
    store.write(
        "src",
        [
            Observation("x", 1.0, T0, Granularity.DAY),
            Observation("x", 30.0, T0, Granularity.MONTH),
        ],
    )
    assert store.count_observations() == 2


def test_naive_period_start_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.write("src", [Observation("x", 1.0, datetime(2024, 4, 1))])


def test_lease_excludes_a_second_holder_until_released_or_expired(store: Store) -> None:
    assert store.acquire_lease("src", "worker-a", ttl=60)
    assert not store.acquire_lease("src", "worker-b", ttl=60)
    assert store.acquire_lease("src", "worker-a", ttl=60)  # renewal
    store.release_lease("src", "worker-a")
    assert store.acquire_lease("src", "worker-b", ttl=-1)  # already expired
    assert store.acquire_lease("src", "worker-c", ttl=60)


def test_a_leased_run_starts_in_one_step_from_the_cursor_the_holder_sees(store: Store) -> None:
    store.save_cursor("src", 100.0, "etag-1")
    seen: list[tuple[float | None, str | None]] = []

    def plan(cursor_end: float | None, checkpoint: str | None) -> tuple[float, float]:
        seen.append((cursor_end, checkpoint))
        return (cursor_end or 0.0) - 10.0, 200.0

    run_id = store.start_leased_run("src", "scheduled", "worker-a", 60, plan)
    assert run_id is not None and seen == [(100.0, "etag-1")]
    [run] = store.runs("src")
    assert (run["id"], run["status"], run["window_start"], run["window_end"]) == (
        run_id,
        "running",
        90.0,
        200.0,
    )
    # Another holder gets nothing, and nothing is recorded for it.
    assert store.start_leased_run("src", "scheduled", "worker-b", 60, plan) is None
    assert len(store.runs("src")) == 1 and len(seen) == 1
    # One statement records the outcome, moves the cursor forward only and releases the lease.
    store.finish_run(run_id, "success", 0, advance_cursor_to=50.0, release_lease_of="worker-a")
    assert store.cursor("src") == (100.0, "etag-1")
    assert store.runs("src")[0]["status"] == "success"
    assert store.start_leased_run("src", "scheduled", "worker-b", 60, plan) is not None


def test_a_finished_run_releases_only_its_own_lease(store: Store) -> None:
    def plan(cursor_end: float | None, checkpoint: str | None) -> tuple[float, float]:
        return 0.0, 1.0

    late = store.start_leased_run("src", "scheduled", "worker-a", -1, plan)  # expires at once
    assert late is not None
    assert store.start_leased_run("src", "scheduled", "worker-b", 60, plan) is not None
    store.finish_run(
        late, "failed", 0, "X", "late", advance_cursor_to=1.0, release_lease_of="worker-a"
    )
    assert not store.acquire_lease("src", "worker-c", ttl=60)  # worker-b still holds it
    assert store.cursor("src") == (1.0, None)


def test_change_counter_moves_only_when_something_changed(store: Store) -> None:
    store.write("src", daily(3))
    before = store.generations()["src"]
    store.write("src", daily(3))
    assert store.generations()["src"] == before
    store.write("src", daily(4))
    assert store.generations()["src"] == before + 1


def test_runs_and_health(store: Store) -> None:
    ok = store.start_run("src", "scheduled", 0, 1)
    store.finish_run(ok, "success", 3)
    bad = store.start_run("src", "scheduled", 1, 2)
    store.finish_run(bad, "failed", 0, "SourceAuthError", "source 'src': token refused")
    [health] = store.source_health()
    assert health.last_status == "failed"
    assert health.last_error == "source 'src': token refused"
    assert health.runs_by_status == {"success": 1, "failed": 1}
    assert health.last_success_at is not None


def test_cursor_keeps_what_is_not_given(store: Store) -> None:
    store.save_cursor("src", 100.0, "etag-1")
    store.save_cursor("src", None, "etag-2")
    assert store.cursor("src") == (100.0, "etag-2")
    store.save_cursor("src", 200.0, None)
    assert store.cursor("src") == (200.0, "etag-2")


def test_store_survives_a_postgres_restart_of_its_connections(pg_store: Store) -> None:
    pg_store.write("src", daily(3))
    # What a server restart does to a pool: every open connection is killed.
    admin = create_engine(pg_store.url, isolation_level="AUTOCOMMIT")
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with admin.connect() as connection:
        connection.execute(text(f"SELECT pg_terminate_backend(pid) {others}"))
        # A restart is over once its old backends have exited (and closed their sockets):
        # pg_terminate_backend only signals them.
        deadline = time.monotonic() + 10
        while connection.execute(text(f"SELECT count(*) {others}")).scalar_one():
            assert time.monotonic() < deadline, "terminated backends did not exit"
            time.sleep(0.01)
    admin.dispose()
    stats = pg_store.write("src", daily(6))
    assert stats.changed == 3
    assert pg_store.count_observations() == 6


def test_migration_downgrade_and_upgrade_round_trip(pg_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from dxkpi.collector.storage.store import MIGRATIONS

    store = Store(pg_url)
    store.migrate()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "base")
    assert "observations" not in inspect(store.engine).get_table_names()
    store.migrate()
    store.write("src", daily(2))
    assert store.count_observations() == 2
    store.close()


def test_a_write_mixing_new_older_changed_and_unchanged_rows_changes_only_what_differs(
    store: Store,
) -> None:
    store.write("src", daily(10)[5:])
    again = daily(13)  # days 0-4 absent but older than what is stored, 5-9 stored, 10-12 new
    again[7] = Observation("pv", 70.0, again[7].start, labels={"page": "/top"})
    stats = store.write("src", again, batch_size=4)
    assert stats.changed == 5 + 1 + 3
    assert store.count_observations() == 13
    [revision] = store.revisions()
    assert (revision.old_value, revision.new_value) == (8.0, 70.0)
    assert store.write("src", again, batch_size=4).changed == 0
    [row] = store.series_rows()
    assert (row.last_start, row.last_value) == (int(again[12].start.timestamp()), 13.0)


def test_a_backfill_behind_stored_data_adds_the_older_days_and_keeps_the_latest(
    store: Store,
) -> None:
    days = daily(20)
    store.write("src", days[19:])
    stats = store.write("src", days[:19] + days[17:], batch_size=4)
    assert stats.changed == 19
    assert store.count_observations() == 20
    assert store.revisions() == []
    [row] = store.series_rows()
    assert (row.last_start, row.last_value) == (int(days[19].start.timestamp()), 20.0)


def test_a_key_repeated_in_a_later_batch_of_one_write_is_revised_not_duplicated(
    store: Store,
) -> None:
    store.write("src", daily(10)[5:])
    older = daily(3)
    repeated = Observation("pv", 100.0, older[0].start, labels={"page": "/top"})
    stats = store.write("src", [older[0], older[1], older[2], repeated], batch_size=2)
    assert stats.changed == 4
    assert store.count_observations() == 8
    [revision] = store.revisions()
    assert (revision.old_value, revision.new_value) == (1.0, 100.0)


def test_the_repeated_hour_of_a_dst_change_is_two_periods(store: Store) -> None:
    # 01:30 happens twice in New York on 2024-11-03; `fold` tells them apart.
    first = datetime(2024, 11, 3, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    second = first.replace(fold=1)
    store.write(
        "src",
        [
            Observation("x", 1.0, first, Granularity.HOUR),
            Observation("x", 2.0, second, Granularity.HOUR),
            Observation("x", 3.0, first, Granularity.HOUR),
        ],
    )
    assert store.count_observations() == 2
    [row] = store.series_rows()
    assert (row.last_start, row.last_value) == (int(second.timestamp()), 2.0)


def test_a_key_another_writer_inserts_meanwhile_is_upserted_not_lost(pg_store: Store) -> None:
    pg_store.write("src", daily(1))
    [series_row] = pg_store.series_rows()
    day1 = int(daily(2)[1].start.timestamp())
    other = create_engine(pg_store.url)
    with other.connect() as connection:
        # Uncommitted: the store finds day 1 absent, and its insert waits on this one.
        connection.execute(
            text(
                "INSERT INTO observations (series_id, period_start, granularity, value, "
                "updated_at) VALUES (:s, :p, 'day', 50.0, 0)"
            ),
            {"s": series_row.id, "p": day1},
        )
        timer = threading.Timer(0.5, connection.commit)
        timer.start()
        stats = pg_store.write("src", daily(3))
        timer.join()
    other.dispose()
    assert stats.changed == 2  # day 1 revised from the other writer's value, day 2 new
    assert pg_store.count_observations() == 3
    [revision] = pg_store.revisions()
    assert (revision.old_value, revision.new_value) == (50.0, 2.0)


def test_a_batch_the_database_refuses_fails_the_write_with_its_own_error(
    pg_store: Store,
) -> None:
    pg_store.write("src", daily(1))
    with pg_store.engine.begin() as connection:
        connection.execute(text("ALTER TABLE observations ADD CHECK (value < 8)"))
    seen: list[int] = []
    with pytest.raises(IntegrityError, match="check constraint") as raised:
        pg_store.write(
            "src", daily(12), batch_size=3, on_batch=lambda stats: seen.append(stats.batches)
        )
    assert isinstance(raised.value.orig, psycopg.errors.CheckViolation)
    # Batches 1 and 2 (days 0-5) committed, batch 3 (values 7, 8, 9) rolled back whole.
    assert seen == [1, 2]
    assert pg_store.count_observations() == 6
    [row] = pg_store.series_rows()
    assert (row.last_start, row.last_value) == (int(daily(6)[5].start.timestamp()), 6.0)


def test_label_values_with_any_text_make_distinct_series(store: Store) -> None:
    pages = ['/a,"b"}{\\', "/ページ", "/a", "NULL", ""]
    store.write("src", [obs for page in pages for obs in daily(2, page=page)])
    rows = store.series_rows()
    assert sorted(r.labels["page"] for r in rows) == sorted(pages)
    assert store.count_observations() == 10
