"""Organisations isolated from each other, with a real Celery worker on real Redis and
PostgreSQL, and each organisation's API a real loopback fake (Plausible's, `connectors/plausible`):

- an organisation whose API hangs holds at most its share of the worker threads
  (`DXKPI_ORG_CONCURRENCY`), so the other organisations are collected while it hangs;
- a credential of one organisation is never sent to another organisation's endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dxkpi.collector.testing import FakeRequest, FakeResponse, loopback_server
from dxkpi.connectors.plausible.tests.fake_plausible import SITE_ID, FakePlausible
from tests.test_celery_e2e import cluster, wait_for  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow

KEYS = {"a": "pl-Key-of-Org-A-0123456789abcdef", "b": "pl-Key-of-Org-B-fedcba9876543210"}


@pytest.fixture
def org_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Each organisation's key in its own variable, set before the worker's environment is;
    and an organisation may hold two threads at once."""
    for org, key in KEYS.items():
        monkeypatch.setenv(f"ORG_{org.upper()}_PLAUSIBLE_KEY", key)
    monkeypatch.setenv("DXKPI_ORG_CONCURRENCY", "2")
    return KEYS


@pytest.fixture
def org_cluster(org_keys: dict[str, str], cluster: Any) -> Any:  # noqa: F811
    return cluster


def plausible_source(source_id: str, org: str, base_url: str) -> dict[str, Any]:
    return {
        "id": source_id,
        "org": org,
        "connector": "plausible",
        "schedule": {"every": "1h"},
        "lookback": "2d",
        "settings": {
            "site_id": SITE_ID,
            "api_key": "${ORG_" + org.upper() + "_PLAUSIBLE_KEY}",
            "base_url": base_url,
        },
    }


def organisations(ids: list[str]) -> list[dict[str, Any]]:
    """Each organisation a municipality of the first one (kind and parent do not matter here)."""
    top, *rest = ids
    return [{"id": top, "name_ja": top, "name_en": top, "kind": "prefecture"}] + [
        {"id": o, "name_ja": o, "name_en": o, "kind": "municipality", "parent": top} for o in rest
    ]


def write(path: Path, sources: list[dict[str, Any]]) -> Path:
    orgs = list(dict.fromkeys(source["org"] for source in sources))
    config = {"organisations": organisations(orgs), "sources": sources}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def succeeded(store: Any, sources: list[str]) -> set[str]:
    return {s for s in sources if any(r["status"] == "success" for r in store.runs(s))}


def hanging(handler: Callable[[FakeRequest], FakeResponse], released: threading.Event) -> Any:
    def answer(request: FakeRequest) -> FakeResponse:
        released.wait(timeout=120)
        return handler(request)

    return answer


def test_a_hanging_organisation_holds_only_its_share_of_the_workers(org_cluster: Any) -> None:
    start, client, store, tmp = org_cluster
    released = threading.Event()
    fake_a = FakePlausible(keys={KEYS["a"]})
    fake_b = FakePlausible(keys={KEYS["b"]})
    try:
        with (
            loopback_server(hanging(fake_a, released)) as (slow_url, slow_seen),
            loopback_server(fake_b) as (url, _),
        ):
            slow = [f"a_site_{i}" for i in range(4)]
            others = [f"b_site_{i}" for i in range(6)]
            config = write(
                tmp / "orgs.yaml",
                [plausible_source(s, "a", slow_url) for s in slow]
                + [plausible_source(s, "b", url) for s in others],
            )
            # Four threads; organisation a may hold two of them at once (`org_keys`).
            worker = start(config, "--pool", "threads", "--concurrency", "4")
            # Organisation a's runs are queued first: without the limit they take every thread.
            for source in [*slow, *others]:
                client.send_task("dxkpi.collect", args=(source,))
            wait_for(
                lambda: succeeded(store, others) == set(others),
                what="organisation b collected while organisation a's API hangs",
            )
            # Meanwhile organisation a's API got two requests (two runs), never more.
            assert not released.is_set() and len(slow_seen) == 2
            assert not succeeded(store, slow)
            released.set()
            wait_for(
                lambda: succeeded(store, slow) == set(slow),
                what="organisation a collected once its API answers",
            )
    finally:
        released.set()
    # Deferred runs are not runs: each source was collected once.
    assert all(len(store.runs(s)) == 1 for s in [*slow, *others])
    log = worker.log.read_text()
    assert "source a_site_" in log and "(organisation a): organisation a: 2 of its sources" in log


def test_a_credential_is_sent_only_to_its_own_organisations_endpoint(org_cluster: Any) -> None:
    start, client, store, tmp = org_cluster
    fakes = {org: FakePlausible(keys={key}) for org, key in KEYS.items()}
    with (
        loopback_server(fakes["a"]) as (url_a, seen_a),
        loopback_server(fakes["b"]) as (url_b, seen_b),
    ):
        sources = {org: [f"{org}_site_{i}" for i in range(4)] for org in KEYS}
        config = write(
            tmp / "orgs.yaml",
            [plausible_source(s, "a", url_a) for s in sources["a"]]
            + [plausible_source(s, "b", url_b) for s in sources["b"]],
        )
        start(config, "--pool", "threads", "--concurrency", "8")
        # Interleaved, so that both organisations' runs share the worker's threads.
        for pair in zip(sources["a"], sources["b"], strict=True):
            for source in pair:
                client.send_task("dxkpi.collect", args=(source,))
        everything = sources["a"] + sources["b"]
        wait_for(lambda: succeeded(store, everything) == set(everything), what="every run")
    assert seen_a and seen_b
    assert {r.headers.get("Authorization") for r in seen_a} == {f"Bearer {KEYS['a']}"}
    assert {r.headers.get("Authorization") for r in seen_b} == {f"Bearer {KEYS['b']}"}
    # Nor anywhere else in a request (query, body, any header).
    for seen, other in ((seen_a, KEYS["b"]), (seen_b, KEYS["a"])):
        for request in seen:
            assert other not in repr((request.path, request.query, request.headers))
            assert other.encode() not in request.body


def test_errors_name_the_organisation(tmp_path: Path) -> None:
    """A failed run's error and the runner's log line say whose source it is."""
    from dxkpi.collector.config import load_config
    from dxkpi.collector.errors import SourceAuthError
    from dxkpi.collector.runner import collect_source
    from dxkpi.collector.storage import Store

    fake = FakePlausible(keys={"some-other-key"})
    with loopback_server(fake) as (url, _):
        config = write(tmp_path / "orgs.yaml", [plausible_source("a_site", "a", url)])
        text = config.read_text(encoding="utf-8")
        config.write_text(
            f"storage: {{url: 'sqlite:///{tmp_path}/s.db'}}\n" + text, encoding="utf-8"
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ORG_A_PLAUSIBLE_KEY", KEYS["a"])
            loaded = load_config(config)
        store = Store(f"sqlite:///{tmp_path}/s.db")
        store.migrate()
        with pytest.raises(SourceAuthError) as raised:
            collect_source(loaded, store, "a_site")
    assert "source 'a_site' (organisation 'a')" in str(raised.value)
    [run] = store.runs("a_site")
    assert "(organisation 'a')" in run["error_message"]
    assert KEYS["a"] not in run["error_message"]
    store.close()


def test_a_burst_of_runs_queues_one_kpi_history_refresh_not_one_per_run(
    org_cluster: Any,
) -> None:
    """480 runs in a cycle used to queue 480 refreshes (each recomputes every KPI, one at a
    time behind a table lock); runs that change data within `REFRESH_DELAY` share one."""
    from dxkpi.tasks.kpis import REFRESH_DELAY

    start, client, store, tmp = org_cluster
    with loopback_server(FakePlausible(keys={KEYS["a"]})) as (url, _):
        sources = [f"a_site_{i}" for i in range(8)]
        config = write(tmp / "orgs.yaml", [plausible_source(s, "a", url) for s in sources])
        worker = start(config, "--pool", "threads", "--concurrency", "8")
        for source in sources:
            client.send_task("dxkpi.collect", args=(source,))
        wait_for(lambda: succeeded(store, sources) == set(sources), what="every run")
        # Every run changed data; the refresh queued by the first covers those that follow.
        wait_for(lambda: "KPI history: stored" in worker.log.read_text(), what="a refresh")
        time.sleep(REFRESH_DELAY + 2)
    refreshes = worker.log.read_text().count("KPI history: stored")
    assert 1 <= refreshes <= 2, refreshes


def test_an_unknown_source_among_hundreds_is_named_with_a_suggestion(
    tmp_path: Path, org_keys: dict[str, str]
) -> None:
    from dxkpi.collector.config import load_config
    from dxkpi.collector.errors import DxkpiError

    sources = [
        plausible_source(f"{org}_site_{i}", org, "http://127.0.0.1:9")
        for org in KEYS
        for i in range(30)
    ]
    loaded = load_config(write(tmp_path / "orgs.yaml", sources))
    assert loaded.source("b_site_29").org == "b"
    with pytest.raises(DxkpiError) as raised:
        loaded.source("b_stie_29")
    message = str(raised.value)
    assert "did you mean 'b_site_29'?" in message and "(60 in all)" in message
    assert "a_site_9," in message and "b_site_28" not in message


@pytest.mark.parametrize("backend", ["sqlite_store", "pg_store"])
def test_the_store_lets_an_organisation_hold_at_most_its_share_of_leases(
    backend: str, request: pytest.FixtureRequest
) -> None:
    from dxkpi.collector.storage import OrgAtLimit, OrgShare, Store

    store: Store = request.getfixturevalue(backend)
    a = OrgShare("a", ("a1", "a2", "a3"), limit=2)
    b = OrgShare("b", ("b1",), limit=2)

    def plan(cursor: float | None, checkpoint: str | None) -> tuple[float, float]:
        return 0.0, 1.0

    def start(source: str, share: OrgShare, holder: str) -> int | None:
        return store.start_leased_run(source, "scheduled", holder, 60, plan, share=share)

    first, second = start("a1", a, "h1"), start("a2", a, "h2")
    assert first is not None and second is not None
    with pytest.raises(OrgAtLimit, match="organisation a: 2 of its sources"):
        start("a3", a, "h3")
    assert store.runs("a3") == []  # nothing recorded for the deferred run
    assert start("b1", b, "h4") is not None  # another organisation is not held up
    store.finish_run(first, "success", 0, release_lease_of="h1")
    assert start("a3", a, "h3") is not None  # a lease freed: its turn
