"""The Celery app. Built from the runtime (config + URLs) the first time it is needed.

No result backend: every run is recorded in the store's `collection_runs` table instead.
"""

from __future__ import annotations

from celery import Celery

from dxkpi.collector.runtime import Runtime, current
from dxkpi.tasks.schedule import beat_schedule


def transport_options(broker_url: str) -> dict[str, object]:
    if broker_url.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacked task after this long; runs are far shorter.
        return {"visibility_timeout": 3600}
    # kombu's SQLAlchemy transport hands its options to create_engine: give it none.
    return {}


def create_app(runtime: Runtime | None = None) -> Celery:
    runtime = runtime or current()
    config = runtime.loaded.config
    app = Celery(
        "dxkpi", broker=runtime.broker_url, include=["dxkpi.tasks.collect", "dxkpi.tasks.kpis"]
    )
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        # Tasks are idempotent (upserts + a lease per source), so late acks are safe: a task whose
        # worker dies is delivered again instead of being lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Each worker process reserves 4 tasks per thread. With 1, celery/kombu 5.6 (pinned in
        # pyproject: 5.7.0 workers die when Redis restarts) leave threads idle for seconds between
        # bursts: 200 sources took 19.2 s instead of 3.2 s (bench/ fanout). A reserved task of a
        # killed worker comes back at Redis' visibility timeout, and beat's next run supersedes it.
        worker_prefetch_multiplier=4,
        task_default_queue=runtime.queue,
        timezone=config.timezone,
        enable_utc=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(runtime.broker_url),
        beat_schedule=beat_schedule(config),
        # Keyed by queue and config: deployments sharing a data directory keep their own state.
        beat_schedule_filename=str(runtime.beat_state),
        beat_scheduler="dxkpi.tasks.schedule:BeatScheduler",
        worker_hijack_root_logger=False,
    )
    return app


app = create_app()
