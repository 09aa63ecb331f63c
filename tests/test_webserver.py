"""The exporter's HTTP server against hostile and careless clients, over real sockets: half-open
connections, a TLS hello on the plain port, clients that leave mid-body; and HEAD, keep-alive,
a /healthz that tells nothing to strangers, and the process's own metrics."""

from __future__ import annotations

import gzip
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from dxkpi.collector.config import load_config
from dxkpi.collector.contract import TOKYO
from dxkpi.collector.exporter import Exporter, Snapshot
from dxkpi.collector.exposition import SeriesRenderer
from dxkpi.collector.storage import Store
from dxkpi.collector.webserver import BoundedHTTPServer, make_server
from tests.conftest import write_config
from tests.test_exporter import series_family

NOW = datetime(2025, 6, 1, 12, tzinfo=TOKYO).timestamp()


@pytest.fixture
def exporter(tmp_path: Path, sqlite_store: Store) -> Exporter:
    exporter = Exporter(sqlite_store, load_config(write_config(tmp_path)), clock=lambda: NOW)
    family = series_family({i: i / 7 for i in range(1, 20001)})  # about 1.5 MB of text
    exporter.snapshot = Snapshot(SeriesRenderer().render([family]), NOW, generations={})
    return exporter


def serve(server: BoundedHTTPServer) -> Iterator[tuple[str, int]]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def address(exporter: Exporter) -> Iterator[tuple[str, int]]:
    yield from serve(make_server(exporter, "127.0.0.1", 0, max_connections=8, request_timeout=1))


def scrape(address: tuple[str, int], method: str = "GET", path: str = "/metrics") -> int:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def own_gauge(body: str, name: str) -> float:
    """The value of the server's own (unlabelled) sample `name`."""
    samples = [s.value for f in parse_text(body) for s in f.samples if s.name == name]
    assert len(samples) == 1, f"{name}: {samples}"
    return samples[0]


def scrape_body(address: tuple[str, int]) -> tuple[int, str]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def half_open(address: tuple[str, int], n: int) -> list[socket.socket]:
    """`n` clients: half say nothing, half send a request head that never ends."""
    clients = []
    for i in range(n):
        client = socket.create_connection(address)
        if i % 2:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        clients.append(client)
    return clients


def test_a_scrape_during_300_half_open_clients_is_answered_200_at_once(
    address: tuple[str, int],
) -> None:
    threads = threading.active_count()
    idle = half_open(address, 300)
    try:
        time.sleep(0.3)
        started = time.monotonic()
        status, body = scrape_body(address)
        took = time.monotonic() - started
        assert status == 200, "a scrape waited behind (or was refused for) idle clients"
        assert took < 1.0, "hang guard: the idle clients time out after 1 s"
        # They were still connected, each a descriptor and not a thread (pool of 8).
        assert own_gauge(body, "dxkpi_exporter_connections_open") >= 300
        assert threading.active_count() <= threads + 8, "a thread per connection"
        time.sleep(1.5)  # the idle ones time out and are closed
        status, body = scrape_body(address)
        assert status == 200
        assert own_gauge(body, "dxkpi_exporter_connections_open") == 1
    finally:
        for connection in idle:
            connection.close()


def test_beyond_the_open_connection_cap_the_oldest_idle_client_goes(exporter: Exporter) -> None:
    server = make_server(exporter, "127.0.0.1", 0, max_connections=4, max_open=50)
    for address in serve(server):
        idle = half_open(address, 300)
        try:
            time.sleep(0.3)
            status, body = scrape_body(address)
            assert status == 200
            assert own_gauge(body, "dxkpi_exporter_connections_open") <= 50
            assert own_gauge(body, "dxkpi_exporter_connections_evicted_total") >= 250
            idle[0].settimeout(5)
            assert idle[0].recv(100) == b"", "the oldest idle client is closed"
            idle[-1].settimeout(0.2)
            with pytest.raises(TimeoutError):
                idle[-1].recv(100)  # the newest is still waiting for its request's end
        finally:
            for connection in idle:
                connection.close()


def test_pipelined_requests_an_oversized_head_and_a_body_nobody_reads(
    address: tuple[str, int],
) -> None:
    with socket.create_connection(address) as client:
        client.settimeout(5)
        client.sendall(
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 2:
            chunk = client.recv(4096)
            assert chunk, f"closed after {answers!r}"
            answers += chunk
        assert answers.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 404 " in answers
    with socket.create_connection(address) as client:
        client.settimeout(5)
        head = b"GET /metrics HTTP/1.1\r\nX: "
        client.sendall(head + b"a" * (65537 - len(head)))  # one byte over: all of it is read
        assert client.recv(4096).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(address) as client:
        client.settimeout(5)
        client.sendall(b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /")
        answer = b""
        while chunk := client.recv(4096):  # answered, then closed: the body is not a request
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1


def test_a_tls_hello_on_the_plain_port_is_dropped_at_the_timeout(address: tuple[str, int]) -> None:
    hello = bytes.fromhex("160301002a0100002603035f") + bytes(38)  # a truncated ClientHello
    with socket.create_connection(address) as client:
        client.sendall(hello)
        client.settimeout(5)
        started = time.monotonic()
        while client.recv(4096):
            pass
        assert time.monotonic() - started < 3.0


def test_a_client_that_leaves_mid_body_is_logged_quietly(
    address: tuple[str, int], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="dxkpi.exporter")
    for _ in range(20):
        with socket.create_connection(address) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(100)
            # closed with unread data: the server's next writes meet a reset
    time.sleep(0.5)
    assert scrape(address) == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in caplog.text
    assert "Traceback" not in capfd.readouterr().err, "socketserver prints tracebacks to stderr"


def test_head_keep_alive_and_own_metrics(address: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("HEAD", "/metrics")
        head = connection.getresponse()
        assert head.status == 200 and head.read() == b""
        length = int(head.headers["Content-Length"])
        connection.request("GET", "/metrics")  # the same connection: kept alive
        got = connection.getresponse()
        body = got.read()
        # The snapshot's part is the same bytes; the process's own metrics (CPU seconds, memory,
        # the scrape counter) are read anew for each request and may change length in between.
        assert abs(len(body) - length) < 256
        connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        zipped = connection.getresponse()
        assert gzip.decompress(zipped.read()).count(b"\n") >= body.count(b"\n") - 5
    finally:
        connection.close()
    names = {family.name for family in parse_text(body.decode())}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
    assert {"dxkpi_exporter_scrapes", "dxkpi_exporter_rebuilds"} <= names
    assert scrape(address, "HEAD", "/healthz") == 200


def test_healthz_tells_strangers_nothing_about_the_database(tmp_path: Path) -> None:
    loaded = load_config(write_config(tmp_path))
    store = Store("postgresql+psycopg://dxkpi:pw@db.internal.example:1/dxkpi?connect_timeout=1")
    for address in serve(make_server(Exporter(store, loaded), "127.0.0.1", 0)):
        connection = http.client.HTTPConnection(*address, timeout=10)
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.status == 503
        assert response.read() == b"store unreachable\n"
        connection.close()
    store.close()
