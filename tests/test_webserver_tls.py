"""TLS, client certificates and basic auth from an exporter-toolkit web config file: real TLS
clients, wrong passwords, no auth, plain HTTP to the TLS port, and a real Prometheus scraping
over HTTPS with basic auth."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dxkpi.collector.errors import DxkpiError
from dxkpi.collector.exporter import Exporter
from dxkpi.collector.webserver import load_web_config, make_server
from tests.test_webserver import exporter  # noqa: F401  (the fixture)

PASSWORD = "scrape-pw-5d2a"


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any] | None, ca: bool
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, key: Any, cert: x509.Certificate) -> None:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("dxkpi test CA", ca_key, None, ca=True)
    _write(folder, "ca", ca_key, ca)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(folder, name, key, _certificate(name, key, (ca.subject, ca_key), ca=False))
    return folder


def web_config(pki: Path, **tls: str) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    lines = ["tls_server_config:", "  cert_file: server.crt", "  key_file: server.key"]
    lines += [f"  {key}: {value}" for key, value in tls.items()]
    lines += ["basic_auth_users:", f"  prometheus: '{hashed.replace('$2b$', '$2y$')}'"]
    path = pki / f"web-{len(tls)}-{time.monotonic_ns()}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(exporter: Exporter, config: Path) -> Iterator[int]:  # noqa: F811
    server = make_server(exporter, "127.0.0.1", 0, web=load_web_config(config), request_timeout=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def client_context(pki: Path, *, cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    return context


def get(port: int, context: ssl.SSLContext, password: str | None) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {}
    if password is not None:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_tls_with_basic_auth(exporter: Exporter, pki: Path) -> None:  # noqa: F811
    for port in serve(exporter, web_config(pki)):
        context = client_context(pki)
        assert get(port, context, PASSWORD) == 200
        assert get(port, context, PASSWORD) == 200  # remembered: no second bcrypt check
        assert get(port, context, "wrong") == 401
        assert get(port, context, None) == 401
        # Plain HTTP to the TLS port: dropped, and the server goes on serving.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = plain.recv(4096)
            except ConnectionResetError:
                answer = b""
        assert b"200 OK" not in answer and b"dxkpi" not in answer
        assert get(port, context, PASSWORD) == 200


def test_stalled_tls_handshakes_hold_no_thread(exporter: Exporter, pki: Path) -> None:  # noqa: F811
    """Handshakes run in the server's selector: 200 clients that stop mid-handshake (a bare
    connect, or half a ClientHello) leave the pool free for a real scrape."""
    hello = bytes.fromhex("160301002a0100002603035f") + bytes(10)  # a ClientHello, cut short
    for port in serve(exporter, web_config(pki)):
        threads = threading.active_count()
        stalled = []
        try:
            for i in range(200):
                client = socket.create_connection(("127.0.0.1", port))
                if i % 2:
                    client.sendall(hello)
                stalled.append(client)
            time.sleep(0.3)
            assert get(port, client_context(pki), PASSWORD) == 200
            assert threading.active_count() <= threads + 32, "a thread per handshake"
        finally:
            for client in stalled:
                client.close()


def test_minimum_version_and_client_certificates(exporter: Exporter, pki: Path) -> None:  # noqa: F811
    config = web_config(
        pki,
        min_version="TLS13",
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file="ca.crt",
    )
    for port in serve(exporter, config):
        assert get(port, client_context(pki, cert=True), PASSWORD) == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(port, client_context(pki), PASSWORD)  # no client certificate
        old = client_context(pki, cert=True)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(port, old, PASSWORD)


def test_web_config_problems_are_one_clear_line(pki: Path) -> None:
    bad = pki / "bad.yml"
    bad.write_text("basic_auth_users:\n  prometheus: plain-text\n")
    with pytest.raises(DxkpiError, match=r"basic_auth_users.prometheus: not a bcrypt hash"):
        load_web_config(bad)
    bad.write_text("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n")
    with pytest.raises(DxkpiError, match=r"bad.yml: No such file or directory"):
        load_web_config(bad)
    bad.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  x: 1\n")
    with pytest.raises(DxkpiError, match=r"tls_server_config.x: Extra inputs are not permitted"):
        load_web_config(bad)


@pytest.mark.slow
def test_a_real_prometheus_scrapes_over_tls_with_basic_auth(
    exporter: Exporter,  # noqa: F811
    pki: Path,
    tmp_path: Path,
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        api_port = probe.getsockname()[1]
    for port in serve(exporter, web_config(pki)):
        (tmp_path / "prometheus.yml").write_text(
            f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: dxkpi
    scheme: https
    tls_config: {{ca_file: {pki / "ca.crt"}}}
    basic_auth: {{username: prometheus, password: {PASSWORD}}}
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
"""
        )
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{api_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            query = f"http://127.0.0.1:{api_port}/api/v1/query?query=dxkpi_exporter_scrapes_total"
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(query, timeout=2) as response:
                        result = json.load(response)["data"]["result"]
                    if result:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "Prometheus never scraped the exporter"
                time.sleep(0.5)
            assert float(result[0]["value"][1]) >= 1
        finally:
            process.terminate()
            process.wait(timeout=30)
