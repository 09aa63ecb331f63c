"""What every benchmark shares: the result shape, a throwaway PostgreSQL database, sizes that
follow `--scale`, config files, subprocesses and their memory.

A benchmark is a function `run(bench: Bench) -> Outcome`. Each figure it reports is a `Ratio`
against a baseline measured in the same run (so a busy or slow machine moves both sides), and
the raw numbers go alongside in `Outcome.raw`.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import yaml
from sqlalchemy import Engine, create_engine, text

PG_ADMIN_URL = os.environ.get("DXKPI_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres")
# A Redis server; fanout picks an empty database on it unless this names one (…/<db>).
REDIS_URL = os.environ.get("DXKPI_BENCH_REDIS", "redis://127.0.0.1:6379")
VENV_BIN = Path(sys.executable).parent
MIB = 1024 * 1024

Number = int | float
Comparison = Literal[">=", "<="]

# Profiles show paths relative to the checkout, wherever it is.
REPO_ROOT = str(Path(__file__).resolve().parents[1])


class NotRun(Exception):
    """A benchmark that cannot run here (a missing connector, service or fake): say why."""


@dataclass
class Ratio:
    """One figure: `value` = measured / baseline, both from this run, with the target if any."""

    name: str
    value: float
    detail: str
    target: float | None = None
    comparison: Comparison = ">="

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.comparison == ">=":
            return self.value >= self.target
        return self.value <= self.target

    @property
    def target_text(self) -> str:
        return "" if self.target is None else f"{self.comparison} {self.target:g}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 4),
            "target": self.target_text or None,
            "met": self.met,
            "detail": self.detail,
        }


@dataclass
class Outcome:
    name: str
    status: str = "ok"  # ok | not run: <why> | error: <what>
    ratios: list[Ratio] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ratio(
        self,
        name: str,
        value: float,
        detail: str,
        target: float | None = None,
        comparison: Comparison = ">=",
    ) -> Ratio:
        ratio = Ratio(name, value, detail, target, comparison)
        self.ratios.append(ratio)
        return ratio

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "ratios": [r.as_json() for r in self.ratios],
            "raw": self.raw,
            "notes": self.notes,
        }


@dataclass
class Bench:
    """The run's settings and shared state, handed to every benchmark."""

    scale: float
    database: Database
    workdir: Path
    # Where profiles are kept (next to the JSON results, git-ignored).
    artifacts: Path
    profile: bool = False
    # Figures one benchmark measures and a later one divides by (e.g. Store.write obs/s).
    shared: dict[str, float] = field(default_factory=dict)

    def size(self, full: int, minimum: int = 1) -> int:
        """`full` at --scale 1, scaled down (never below `minimum`) for quick runs."""
        return max(minimum, round(full * self.scale))

    def dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# -- PostgreSQL ------------------------------------------------------------------------------


def psycopg_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Database:
    """A throwaway database `dxkpi_bench_<random>`; each benchmark works in its own schema."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.name = f"dxkpi_bench_{uuid.uuid4().hex[:10]}"
        self._admin = create_engine(psycopg_url(admin_url), isolation_level="AUTOCOMMIT")
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = admin_url.rsplit("/", 1)[0] + f"/{self.name}"
        self._engine: Engine = create_engine(psycopg_url(self.url), isolation_level="AUTOCOMMIT")

    def server_version(self) -> str:
        with self._engine.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar_one())

    def sessions(self) -> int:
        """Connections ever opened to this database (PostgreSQL 14+; 0 when unknown)."""
        with self._engine.connect() as connection:
            value = connection.execute(
                text("SELECT sessions FROM pg_stat_database WHERE datname = :name"),
                {"name": self.name},
            ).scalar()
        return int(value or 0)

    def schema_url(self, schema: str) -> str:
        """A URL whose connections work in `schema` (created empty; any old one dropped)."""
        with self._engine.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        return f"{self.url}?options={quote(f'-csearch_path={schema}')}"

    def drop_schema(self, schema: str) -> None:
        with self._engine.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))

    @contextmanager
    def schema(self, schema: str) -> Iterator[str]:
        """A fresh schema for the duration of the block, dropped after (frees the disk)."""
        url = self.schema_url(schema)
        try:
            yield url
        finally:
            self.drop_schema(schema)

    def drop(self) -> None:
        self._engine.dispose()
        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()


# -- timing ----------------------------------------------------------------------------------


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median_time(action: Callable[[], Any], repeats: int) -> float:
    return statistics.median(timed(action) for _ in range(max(1, repeats)))


def best_time(action: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` runs: on a shared machine, the least disturbed one."""
    return min(timed(action) for _ in range(max(1, repeats)))


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def fmt(value: Number, unit: str = "") -> str:
    """Human-friendly number: 12,345 / 1.23 / 0.0123."""
    if isinstance(value, int) or abs(value) >= 100:
        text_value = f"{value:,.0f}"
    elif abs(value) >= 1:
        text_value = f"{value:.2f}"
    else:
        text_value = f"{value:.3g}"
    return f"{text_value} {unit}".rstrip()


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms" if seconds < 10 else f"{seconds:,.1f} s"


# -- configs and processes -------------------------------------------------------------------


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dxkpi_command(config: Path, *args: str, log_level: str | None = "WARNING") -> list[str]:
    """`dxkpi --config X ...` as installed in this venv (or `python -m dxkpi.collector`); with
    `log_level=None`, at dxkpi's default level."""
    script = VENV_BIN / "dxkpi"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "dxkpi.collector"]
    level = ["--log-level", log_level] if log_level else []
    return [*head, "--config", str(config), *level, *args]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in (
        "DXKPI_CONFIG",
        "DXKPI_STORAGE_URL",
        "DXKPI_BROKER_URL",
        "DXKPI_DATA_DIR",
        "DXKPI_QUEUE",
    ):
        env.pop(name, None)  # the config file says where everything is
    env.update(extra)
    return env


def proc_status_kib(pid: int, field_name: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field_name}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def py_spy(pid: int, output: Path, subprocesses: bool = False) -> Iterator[None]:
    """Sample what holds `pid`'s GIL (and its children's) with py-spy, if installed, while the
    block runs."""
    binary = VENV_BIN / "py-spy"
    if not binary.exists():
        yield
        return
    command = [str(binary), "record", "--pid", str(pid), "--gil", "--rate", "250"]
    command += ["--format", "raw", "--output", str(output), "--nonblocking"]
    if subprocesses:
        command.append("--subprocesses")
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it attach
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()


# dxkpi/collector/... in a checkout (the links under dxkpi/) and in site-packages alike.
OUR_CODE = ("dxkpi/",)


def collapsed_profile(path: Path, top: int = 15) -> list[str]:
    """Summarise py-spy's collapsed stacks: the lines of our code with the largest share of
    samples (inclusive of what they call), and the heaviest leaf functions anywhere."""
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return ["py-spy is not installed, or it recorded nothing"]
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        for frame in set(frames):
            if frame.split(" (", 1)[-1].startswith(OUR_CODE):
                inclusive[frame] += count
        leaves[frames[-1].rsplit(":", 1)[0]] += count
    if not total:
        return ["py-spy recorded no samples"]
    lines = [f"{total} samples of the thread holding the GIL. Our lines, with what they call:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    lines.append("heaviest leaf functions (anywhere):")
    lines += [f"  {n / total:6.1%}  {f}" for f, n in leaves.most_common(top)]
    return lines


def _frame(frame: str) -> str:
    """`func (/abs/path/pkg/file.py:123)` -> `func (pkg/file.py:123)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", f"{REPO_ROOT}/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def backend_cpu_seconds(database: str) -> float:
    """CPU used so far by the PostgreSQL backends serving `database` (from their titles)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if title.startswith("postgres:") and f" {database} " in title:
                total += cpu_seconds(int(entry.name))
        except OSError:  # the process ended meanwhile
            continue
    return total


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes]
) -> None:
    """Poll `check` until true; fail early, with the child's exit code, if the child died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f}s")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
