"""A Redis and a PostgreSQL of the test's own, started from their binaries on ports the test
chooses, in temporary folders, so that a test may kill, stop and restart them without touching
the machine's shared servers. Under CI=true a missing binary fails the test; elsewhere it skips.

`OwnRedis(port)`: `redis-server` with no persistence (`--save "" --appendonly no`): a restart
loses every queued message, as a Redis without persistence does in production.
`OwnPostgres(port)`: a cluster made by `initdb` (as the `postgres` user when run as root, since
PostgreSQL refuses to run as root) with a superuser `dxkpi` and trust authentication, listening
on 127.0.0.1 only, its unix socket in its own temporary folder; `stop()` (fast) and `start()`
go through `pg_ctl`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"


def missing(what: str) -> None:
    message = f"{what} not found: install it (scripts/install-tools does, from Debian packages)"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the fault suite must run)")
    pytest.skip(message)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class OwnRedis:
    def __init__(self, port: int, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        assert binary is not None
        self.binary = binary
        self.port = port
        self.folder = folder
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.folder),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port)

    def kill(self) -> None:
        """SIGKILL: every connection cut, every queued and unacknowledged message lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        self.kill()


class OwnPostgres:
    def __init__(self, port: int) -> None:
        initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or self.pg_ctl is None:
            missing("PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/*/bin)")
        assert initdb is not None
        self.port = port
        # Not under pytest's tmp_path: its folders are private to root, and the server runs as
        # `postgres`.
        self.folder = Path(tempfile.mkdtemp(prefix="dxkpi-faults-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *self.as_user,
                initdb,
                "-D",
                str(self.data),
                "-U",
                "dxkpi",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        self.url = f"postgresql+psycopg://dxkpi@127.0.0.1:{port}/postgres"
        self.start()

    def _ctl(self, *args: str) -> None:
        assert self.pg_ctl is not None
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.data), "-w", "-t", "60", *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self._ctl("-o", options, "-l", str(self.log), "start")

    def stop(self) -> None:
        """A fast shutdown: open transactions rolled back, every connection cut."""
        self._ctl("-m", "fast", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
