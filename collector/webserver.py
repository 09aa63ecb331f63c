"""The exporter's HTTP server: idle clients cost a socket, not a thread, and cannot stall it.

One thread runs a selector (epoll) over the listening socket and every open connection. It
accepts, does each TLS handshake and reads each request head (line and headers) without
blocking, into a buffer of the connection's own. Only a complete head goes, with its socket, to
a fixed pool of threads, which answers that one request; a kept-alive connection then goes back
to the selector to wait for its next request. So a client that connects and says nothing, or
never finishes its request, or stalls its TLS handshake, holds a file descriptor and a few kB,
and a scrape arriving meanwhile is answered at once (as Go's net/http exporters do).

    `max_connections` (32) pooled threads    requests answered at once; a complete request
                                             beyond them is answered 503 at once and closed
    `max_open` (4096) open connections       idle ones included; beyond it the connection
                                             idle the longest is closed to make room (counted
                                             in dxkpi_exporter_connections_evicted_total).
                                             Capped below the open-file limit, which
                                             `dxkpi exporter` raises to the hard limit at start
    `timeout` (5 s) for a request head       from accept (or from the previous answer, kept
                                             alive) to the head's end, handshake included: a
                                             slow or silent client, a TLS hello on the plain
                                             port, is closed then; answers are written by the
                                             pool under the same timeout per write
    a head over 64 kB                        answered 431 and closed
    listen backlog `backlog` (512)           bursts of connections queue in the kernel
    HTTP/1.1 keep-alive, pipelining          Prometheus reuses its connection between scrapes
    a client that went away                  (broken pipe, reset, timeout) is logged at DEBUG
    GET and HEAD                             /metrics, /healthz, /; a request with a body is
                                             answered, then its connection closed

Why not waitress (the receiver's server, which also buffers whole requests in one select/poll
loop before handing them to threads): it has no TLS, and the exporter-toolkit web config
needs TLS and client certificates; a TLS-terminating proxy in front would be one more process
to run. The selector here is ~200 lines of the standard library (`selectors`, `ssl`'s
non-blocking `do_handshake`), and request parsing stays `http.server`'s.

Not covered: a client that sends complete requests and then never reads the answers holds a
pooled thread for up to `timeout` per write; 32 such clients make scrapes 503 for that long.

`/metrics` is the exporter's snapshot plus the server's own process, Python, scrape and
rebuild metrics from a prometheus-client registry. `/healthz` says only "ok" or what is wrong in
general terms; the details (which may name hosts) go to the exporter's log.

TLS and basic auth come from a web config file in the format of Prometheus' exporter-toolkit
(`--web.config.file`), so one file serves every exporter of a site:

    tls_server_config:
      cert_file: server.crt            # relative paths: from the file's folder
      key_file: server.key
      min_version: TLS12               # TLS10 .. TLS13
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: clients-ca.crt
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hashes (htpasswd -nBC 10 prometheus)

The TLS handshake happens in the selector (`do_handshake()` until it stops asking to read or
write), so plain HTTP or a stalled handshake on the TLS port costs no thread either.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import itertools
import logging
import resource
import selectors
import socket
import ssl
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

import bcrypt
import yaml
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client import generate_latest as text_exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_exposition
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dxkpi.collector.errors import DxkpiError
from dxkpi.collector.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from dxkpi.collector.exporter import Exporter, Snapshot

log = logging.getLogger("dxkpi.exporter")

MAX_CONNECTIONS = 32  # pooled threads: requests answered at once
MAX_OPEN = 4096  # open connections, idle ones included (each a descriptor and a few kB)
FD_RESERVE = 128  # descriptors left for the store, logs and the rest of the process
HEAD_LIMIT = 65536  # bytes of request line and headers
TIMEOUT = 5.0
BACKLOG = 512
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\ntoo many connections; retry soon\r\n"
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 24\r\nConnection: close\r\n\r\nrequest head over 64 kB\n"
)


_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Strict):
    cert_file: str
    key_file: str
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    client_auth_type: Literal[
        "NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
    ] = "NoClientCert"
    client_ca_file: str | None = None


class WebConfig(_Strict):
    """An exporter-toolkit web config: TLS, client certificates, basic auth users."""

    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    folder: Path = Path(".")

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.tls_server_config
        if tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
        context.load_cert_chain(self.folder / tls.cert_file, self.folder / tls.key_file)
        context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
        if tls.client_auth_type != "NoClientCert":
            if tls.client_ca_file is None:
                raise DxkpiError(f"{tls.client_auth_type} needs tls_server_config.client_ca_file")
            context.load_verify_locations(self.folder / tls.client_ca_file)
        return context


def load_web_config(path: str | Path) -> WebConfig:
    """The web config file, or DxkpiError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise DxkpiError(f"{path}: the web config must be a mapping")
        config = WebConfig.model_validate({**raw, "folder": path.resolve().parent})
        config.ssl_context()  # certificates readable and matching: found now, not at a scrape
    except OSError as exc:
        raise DxkpiError(f"{path}: {exc.strerror or exc}: {getattr(exc, 'filename', '')}") from None
    except (yaml.YAMLError, ssl.SSLError) as exc:
        raise DxkpiError(f"{path}: {exc}") from None
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise DxkpiError(f"{path}: {where}") from None
    for user, hashed in config.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise DxkpiError(
                f"{path}: basic_auth_users.{user}: not a bcrypt hash (make one with "
                f"`htpasswd -nBC 10 {user}`)"
            )
    return config


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes. A bcrypt check costs ~50 ms by
    design; a credential that passed is remembered (as a SHA-256 of it) so scrapes stay cheap."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self._passed: set[bytes] = set()
        self._lock = threading.Lock()

    def allows(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(f"{user}\0{password}\0{hashed}".encode()).digest()
        with self._lock:
            if key in self._passed:
                return True
        if not bcrypt.checkpw(password.encode(), hashed.replace("$2y$", "$2b$", 1).encode()):
            return False
        with self._lock:
            self._passed.add(key)
        return True


class ServerStats:
    """Counters of the server, exposed by `SelfCollector`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scrapes = 0
        self.refused = 0
        self.active = 0
        self.open = 0
        self.evicted = 0


class SelfCollector(Collector):
    """The exporter's own scrape and rebuild metrics, read at scrape time."""

    def __init__(self, exporter: Exporter, stats: ServerStats) -> None:
        self.exporter = exporter
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily(
            "dxkpi_exporter_scrapes",
            "Requests for /metrics served by this exporter process.",
            value=self.stats.scrapes,
        )
        yield CounterMetricFamily(
            "dxkpi_exporter_connections_refused",
            "Connections answered 503 because max_connections were being served.",
            value=self.stats.refused,
        )
        yield GaugeMetricFamily(
            "dxkpi_exporter_connections",
            "Connections being served now (a pooled thread each).",
            value=self.stats.active,
        )
        yield GaugeMetricFamily(
            "dxkpi_exporter_connections_open",
            "Connections open now, idle ones (no complete request yet, or kept alive) included.",
            value=self.stats.open,
        )
        yield CounterMetricFamily(
            "dxkpi_exporter_connections_evicted",
            "Idle connections closed, oldest first, to make room under the open-connection cap.",
            value=self.stats.evicted,
        )
        yield CounterMetricFamily(
            "dxkpi_exporter_rebuilds",
            "Snapshots built from the store by this exporter process.",
            value=self.exporter.rebuilds,
        )


def default_registry(exporter: Exporter, stats: ServerStats) -> CollectorRegistry:
    """prometheus-client's process, platform and GC collectors beside the server's own."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    registry.register(SelfCollector(exporter, stats))
    return registry


def raise_open_file_limit() -> int:
    """The soft limit on open files raised to the hard one, so thousands of idle sockets fit
    (Go raises it for every program at start). Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # Linux's default nr_open
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        log.debug("cannot raise the open-file limit from %s: %s", soft, error)
        return soft
    return target


class _Connection:
    """One client connection: its socket, the bytes read from it and not yet served, and the
    time by which its request head must have arrived (while it waits in the selector)."""

    __slots__ = ("address", "buffer", "deadline", "handshaking", "sock")

    def __init__(self, sock: socket.socket, address: Any, *, handshaking: bool) -> None:
        self.sock = sock
        self.address = address
        self.buffer = bytearray()
        self.deadline = 0.0
        self.handshaking = handshaking


def _head_complete(buffer: bytearray) -> bool:
    return b"\r\n\r\n" in buffer or b"\n\n" in buffer


class _SocketWriter(io.BufferedIOBase):
    """`wfile`: every write is a `sendall` under the socket's timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes


class PooledRequestHandler(BaseHTTPRequestHandler):
    """Serves the one request whose head the selector has already read (`request` is the
    `_Connection`); the server puts a kept-alive connection back into the selector after it."""

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = io.BytesIO(bytes(self.request.buffer))
        self.wfile = _SocketWriter(self.request.sock)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        headers = getattr(self, "headers", None)
        if headers is not None and ("Content-Length" in headers or "Transfer-Encoding" in headers):
            self.close_connection = True  # a body nobody read: the next "request" would be it

    def finish(self) -> None:
        self.request.buffer = bytearray(self.rfile.read())  # a pipelined next request, if any


class BoundedHTTPServer(HTTPServer):
    """A selector reads request heads; a fixed pool of threads answers complete ones."""

    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[PooledRequestHandler],
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_open: int = MAX_OPEN,
        backlog: int = BACKLOG,
        stats: ServerStats | None = None,
        tls: ssl.SSLContext | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.request_queue_size = backlog
        self.stats = stats or ServerStats()
        self.tls = tls
        self.request_timeout = timeout
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            max_open = min(max_open, max(soft - FD_RESERVE, max_connections + 1))
        self.max_open = max_open
        self._slots = threading.BoundedSemaphore(max_connections)
        # Before binding: a port in use makes HTTPServer call server_close(), which needs them.
        self._pool = ThreadPoolExecutor(max_connections, thread_name_prefix="dxkpi-http")
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[_Connection, None] = {}  # in the selector, oldest deadline first
        self._returned: deque[_Connection] = deque()  # kept alive, back from the pool
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = False
        super().__init__(address, handler)
        for sock in (self.socket, self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(self.socket, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")

    # -- the selector's thread ----------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._expire(now)
                wait = poll_interval
                if self._waiting:
                    wait = min(wait, max(0.0, next(iter(self._waiting)).deadline - now))
                for key, _events in self._selector.select(wait):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._take_back()
                    else:
                        self._advance(key.data)
        finally:
            self._stop.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def _accept(self) -> None:
        for _ in range(256):  # then serve the others: a flood cannot starve them
            try:
                sock, address = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as error:  # out of descriptors: the oldest idle client goes
                log.debug("accept: %s", error)
                if not self._evict_oldest():
                    return
                continue
            sock.setblocking(False)
            # Headers and body are separate writes: sent at once, not held for an ACK (as Go does).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.stats.lock:
                self.stats.open += 1
                full = self.stats.open > self.max_open
            if full and not self._evict_oldest():
                with self.stats.lock:
                    self.stats.refused += 1
                # (On the TLS port it is just closed: no handshake, no 503 to read.)
                refused = _Connection(sock, address, handshaking=self.tls is not None)
                self._answer_and_close(refused, _REFUSAL)
                continue
            handshaking = self.tls is not None
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            self._wait(_Connection(sock, address, handshaking=handshaking), time.monotonic())

    def _evict_oldest(self) -> bool:
        if not self._waiting:
            return False
        self._drop(next(iter(self._waiting)))
        with self.stats.lock:
            self.stats.evicted += 1
        return True

    def _wait(self, conn: _Connection, now: float) -> None:
        conn.deadline = now + self.request_timeout
        self._waiting[conn] = None
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._advance(conn)  # a kept-alive connection may hold a pipelined request already

    def _advance(self, conn: _Connection) -> None:
        """Handshake and read without blocking; a complete request head goes to the pool."""
        want = selectors.EVENT_READ
        try:
            if conn.handshaking:
                conn.sock.do_handshake()  # type: ignore[attr-defined]
                conn.handshaking = False
            while len(conn.buffer) <= HEAD_LIMIT and not _head_complete(conn.buffer):
                chunk = conn.sock.recv(65536)
                if not chunk:
                    self._drop(conn)
                    return
                conn.buffer += chunk
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except ssl.SSLWantWriteError:
            want = selectors.EVENT_WRITE
        except OSError as error:  # reset, or bad TLS (plain HTTP to the TLS port)
            log.debug("client %s: %s", conn.address, error)
            self._drop(conn)
            return
        if _head_complete(conn.buffer):
            self._dispatch(conn)
        elif len(conn.buffer) > HEAD_LIMIT:
            self._forget(conn)
            self._answer_and_close(conn, _TOO_LARGE)
        else:
            self._selector.modify(conn.sock, want, conn)

    def _dispatch(self, conn: _Connection) -> None:
        self._forget(conn)
        if not self._slots.acquire(blocking=False):
            with self.stats.lock:
                self.stats.refused += 1
            self._answer_and_close(conn, _REFUSAL)
            return
        with self.stats.lock:
            self.stats.active += 1
        self._pool.submit(self._serve, conn)

    def _expire(self, now: float) -> None:
        while self._waiting:
            conn = next(iter(self._waiting))
            if conn.deadline > now:
                return
            log.debug(
                "client %s: no complete request within %ss", conn.address, self.request_timeout
            )
            self._drop(conn)

    def _take_back(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        now = time.monotonic()
        while self._returned:
            self._wait(self._returned.popleft(), now)

    def _forget(self, conn: _Connection) -> None:
        """Out of the selector (to the pool, or to be closed)."""
        self._selector.unregister(conn.sock)
        del self._waiting[conn]

    def _drop(self, conn: _Connection) -> None:
        self._forget(conn)
        self._close(conn)

    # -- any thread ---------------------------------------------------------------------------

    def _serve(self, conn: _Connection) -> None:
        keep = False
        try:
            conn.sock.settimeout(self.request_timeout)
            handler = self.RequestHandlerClass(conn, conn.address, self)  # type: ignore[arg-type]
            keep = not handler.close_connection  # type: ignore[attr-defined]
            if keep:
                conn.sock.setblocking(False)
        except Exception:
            self.handle_error(conn.sock, conn.address)
            keep = False
        finally:
            with self.stats.lock:
                self.stats.active -= 1
            self._slots.release()
        if keep and not self._closed:
            self._returned.append(conn)
            self._wake()
        else:
            self._close(conn)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"\0")

    def _answer_and_close(self, conn: _Connection, answer: bytes) -> None:
        # A few bytes into a new socket's empty send buffer: this never blocks the selector.
        with contextlib.suppress(OSError):
            if not conn.handshaking:
                conn.sock.send(answer)
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.sock.close()
        with self.stats.lock:
            self.stats.open -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        # The client went away or stalled mid-answer.
        if isinstance(error, ConnectionError | TimeoutError | ssl.SSLError):
            log.debug("client %s: %s", client_address, error)
            return
        log.exception("error serving %s", client_address)

    def server_close(self) -> None:
        self._closed = True
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for conn in list(self._waiting):
            self._drop(conn)
        while self._returned:
            self._close(self._returned.popleft())
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def board_page(snapshot: Snapshot | None, request_path: str) -> tuple[int, bytes, str]:
    """`/` (Japanese) or `/?lang=en`: the board page of the current snapshot."""
    if snapshot is None:
        return 503, b"no snapshot yet: the store has not been read\n", "text/plain"
    query = parse_qs(urlsplit(request_path).query)
    lang = query.get("lang", ["ja"])[-1]
    page = snapshot.board.get(lang) or snapshot.board["ja"]  # an unknown language: the default
    return 200, page, "text/html; charset=utf-8"


def make_server(
    exporter: Exporter,
    host: str,
    port: int,
    *,
    registry: CollectorRegistry | None = None,
    max_connections: int = MAX_CONNECTIONS,
    max_open: int = MAX_OPEN,
    request_timeout: float = TIMEOUT,
    web: WebConfig | None = None,
) -> BoundedHTTPServer:
    """The exporter's server. `registry` holds what is served beside the snapshot (by default
    process, platform, GC and the server's own metrics; an empty one serves the snapshot only).
    `web`: TLS and basic auth (see `load_web_config`)."""
    stats = ServerStats()
    own = registry if registry is not None else default_registry(exporter, stats)
    auth = BasicAuth(web.basic_auth_users) if web is not None and web.basic_auth_users else None

    class Handler(PooledRequestHandler):
        server_version = "dxkpi-exporter"
        protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

        def _route(self, *, head: bool) -> None:
            if auth is not None and not auth.allows(self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="dxkpi"')
                self.send_header("Content-Type", "text/plain")
                body = b"authentication required\n"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                return
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._metrics(head)
            elif path == "/healthz":
                ok, message = exporter.health()
                self._send(200 if ok else 503, (message + "\n").encode(), "text/plain", head=head)
            elif path == "/":
                status, page, content_type = board_page(exporter.snapshot, self.path)
                self._send(status, page, content_type, head=head)
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain", head=head)

        def _metrics(self, head: bool) -> None:
            snapshot = exporter.snapshot
            if snapshot is None:
                body = b"no snapshot yet: the store has not been read\n"
                self._send(503, body, "text/plain", head=head)
                return
            with stats.lock:
                stats.scrapes += 1
            openmetrics = "application/openmetrics-text" in self.headers.get("Accept", "")
            content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
            # The server's own families first: an OpenMetrics body must end with the snapshot's
            # `# EOF`.
            if openmetrics:
                mine = openmetrics_exposition(own).removesuffix(b"# EOF\n")  # type: ignore[no-untyped-call]
            else:
                mine = text_exposition(own)
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                # Two gzip members make one valid gzip stream (RFC 1952): the snapshot's stays
                # compressed once per build.
                compressor = zlib.compressobj(1, wbits=16 + zlib.MAX_WBITS)
                first = compressor.compress(mine) + compressor.flush() if mine else b""
                rest = snapshot.body(openmetrics=openmetrics, gzipped=True)
                self._send_pieces(
                    [first, rest], len(first) + len(rest), content_type, gzipped=True, head=head
                )
            else:
                length = len(mine) + snapshot.length(openmetrics=openmetrics)
                pieces = itertools.chain([mine], snapshot.pieces(openmetrics=openmetrics))
                self._send_pieces(pieces, length, content_type, head=head)

        def _send(self, status: int, body: bytes, content_type: str, *, head: bool) -> None:
            self._send_pieces([body], len(body), content_type, status=status, head=head)

        def _send_pieces(
            self,
            pieces: Iterable[bytes],
            length: int,
            content_type: str,
            *,
            status: int = 200,
            gzipped: bool = False,
            head: bool,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if head:
                return
            for piece in pieces:
                self.wfile.write(piece)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return BoundedHTTPServer(
        (host, port),
        Handler,
        max_connections=max_connections,
        max_open=max_open,
        stats=stats,
        tls=web.ssl_context() if web is not None else None,
        timeout=request_timeout,
    )
