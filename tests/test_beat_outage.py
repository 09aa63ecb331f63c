"""Beat while the broker is down: one WARNING when the outage starts and one INFO line when it
ends, not Celery's ERROR with two stack traces for every entry at every tick (issue 9, item 7:
expected errors are one line, tracebacks only for bugs)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from celery import Celery
from celery.beat import ScheduleEntry

from dxkpi.tasks.schedule import BeatScheduler
from tests.conftest import REDIS_URL
from tests.tcp_proxy import TcpProxy


def test_a_broker_outage_is_two_lines_not_a_traceback_per_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = urlsplit(REDIS_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    app = Celery("beat-outage", broker=f"redis://127.0.0.1:{proxy.port}{target.path or '/0'}")
    # No publish retries: the outage is seen at once (production keeps kombu's short retry).
    app.conf.update(
        task_publish_retry=False,
        broker_connection_retry=False,
        broker_transport_options={"max_retries": 0},
    )
    scheduler = BeatScheduler(app=app, schedule_filename=str(tmp_path / "beat-state"), lazy=True)
    entries = [
        ScheduleEntry(name=f"collect-s{n}", task="dxkpi.collect", args=(f"s{n}",), app=app)
        for n in range(3)
    ]
    caplog.set_level(logging.DEBUG)
    try:
        scheduler.apply_entry(entries[0])  # the broker is up: queued
        proxy.stop()
        for _ in range(2):  # two ticks of three entries while it is down
            for entry in entries:
                scheduler.apply_entry(entry)
        proxy.start()
        scheduler.apply_entry(entries[1])
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge("celery")
    finally:
        proxy.stop()
    ours = [r for r in caplog.records if r.name == "dxkpi.beat"]
    assert [r.levelname for r in ours] == ["WARNING", "INFO"], [r.getMessage() for r in ours]
    assert "the broker cannot be reached" in ours[0].getMessage()
    assert "collect-s0 and later entries are not queued" in ours[0].getMessage()
    assert "reachable again" in ours[1].getMessage()
    assert "6 entries were not queued" in ours[1].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    # Celery's own "Sending due task" line stays: operators read it to see beat working.
    sent = [r.getMessage() for r in caplog.records if r.name == "celery.beat"]
    assert sent.count("Scheduler: Sending due task collect-s1 (dxkpi.collect)") == 3
