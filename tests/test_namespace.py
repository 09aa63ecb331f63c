"""dxkpi installs as one package, `dxkpi`, so it sits beside any project: a Celery project's own
`tasks.py`, say. The folders collector/, tasks/ and connectors/ install as dxkpi.collector,
dxkpi.tasks and dxkpi.connectors (the links under dxkpi/ name them so), and no code may reach
them by their folder names.

The wheel test builds the wheel from what the Docker image is built from, installs it into a
fresh virtualenv from the same package index as scripts/bootstrap, and runs `dxkpi run` in a
project folder whose own `tasks`, `collector` and `connectors` modules fail loudly when imported.
"""

# ns-codemod: skip-file (it holds the old names on purpose)

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODEMOD = ROOT / "scripts" / "ns-codemod.py"
# What the Dockerfile copies into its build folder, and nothing else.
BUILD_INPUTS = ("pyproject.toml", "README.md", "collector", "tasks", "connectors", "dxkpi")
OLD_NAMES = ("collector", "tasks", "connectors")
DECOY = (
    'raise RuntimeError("dxkpi imported the project\'s own {name}.py instead of dxkpi.{name}")\n'
)


def test_no_code_reaches_the_packages_by_their_folder_names() -> None:
    """`from collector.x import y`, "tasks.collect", `python -m collector`: the codemod finds
    each one (a branch older than the move brings them back) and says how to fix it."""
    done = subprocess.run(
        [sys.executable, str(CODEMOD), str(ROOT), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        f"code names collector/tasks/connectors outside the dxkpi package; run "
        f"`python3 scripts/ns-codemod.py` and then `.venv/bin/ruff format .`:\n{done.stdout}"
    )


def test_the_codemod_rewrites_each_kind_of_reference_once(tmp_path: Path) -> None:
    for top in OLD_NAMES:
        (tmp_path / top).mkdir()
        (tmp_path / top / "__init__.py").write_text("")
    (tmp_path / "collector" / "__main__.py").write_text("")
    (tmp_path / "collector" / "cli.py").write_text("")
    (tmp_path / "tasks" / "app.py").write_text("")
    (tmp_path / "connectors" / "ga4").mkdir()
    (tmp_path / "connectors" / "ga4" / "__init__.py").write_text("")
    source = tmp_path / "tests" / "test_x.py"
    source.parent.mkdir()
    source.write_text(
        "import os, tasks\n"
        "import collector.cli as cli\n"
        "from collector import cli as c2\n"
        "from . import sibling\n"
        "from tasks.app import app  # see collector.cli, not tasks.py\n"
        "tasks.append(1)\n"
        "a = ['tasks.app', 'collector.cli:main', 'dxkpi.connectors.ga4', 'collector.example']\n"
        "b = patch('connectors.ga4.Ga4Connector.x')\n"
        "c = [sys.executable, '-m', 'collector', '--config']\n"
        "d = PackageLoader('collector', 'templates')\n"
        "BUILTIN_PACKAGE = 'connectors'\n"
        "e = Path(ROOT) / 'collector' / 'example'\n"
    )
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("test: celery --app tasks.app inspect ping; python -m collector run\n")
    command = [sys.executable, str(CODEMOD), str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert source.read_text() == (
        "import os, dxkpi.tasks as tasks\n"
        "import dxkpi.collector.cli as cli\n"
        "from dxkpi.collector import cli as c2\n"
        "from . import sibling\n"
        "from dxkpi.tasks.app import app  # see dxkpi.collector.cli, not tasks.py\n"
        "tasks.append(1)\n"
        "a = ['dxkpi.tasks.app', 'dxkpi.collector.cli:main', 'dxkpi.connectors.ga4', "
        "'collector.example']\n"
        "b = patch('dxkpi.connectors.ga4.Ga4Connector.x')\n"
        "c = [sys.executable, '-m', 'dxkpi.collector', '--config']\n"
        "d = PackageLoader('dxkpi.collector', 'templates')\n"
        "BUILTIN_PACKAGE = 'dxkpi.connectors'\n"
        "e = Path(ROOT) / 'collector' / 'example'\n"
    )
    assert compose.read_text() == (
        "test: celery --app dxkpi.tasks.app inspect ping; python -m dxkpi.collector run\n"
    )
    assert (
        "tests/test_x.py:1: import os, tasks  ->  import os, dxkpi.tasks as tasks" in first.stdout
    )
    second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert second.stdout == "" and "changed 0 file(s)" in second.stderr


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                source / name,
                symlinks=True,  # as Docker's COPY does: dxkpi/collector stays a link
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    [wheel] = wheels.glob("dxkpi-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_installs_beside_a_tasks_module_and_runs(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [record] = [n for n in names if n.endswith(".dist-info/RECORD")]
        recorded = [line.split(",")[0] for line in archive.read(record).decode().splitlines()]
        [top_level] = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["dxkpi"]
    assert sorted(set(recorded)) == sorted(names)
    assert {n.split("/")[0] for n in names} == {"dxkpi", record.split("/")[0]}
    for shipped in (
        "dxkpi/collector/cli.py",
        "dxkpi/tasks/app.py",
        "dxkpi/connectors/csvfile/__init__.py",
        "dxkpi/connectors/csvfile/README.md",
        "dxkpi/collector/example/dxkpi.yaml",
        "dxkpi/collector/example/data/copy_paper.xlsx",
        "dxkpi/collector/storage/migrations/env.py",
        "dxkpi/collector/storage/migrations/script.py.mako",
        "dxkpi/collector/storage/migrations/versions/0001_initial.py",
        "dxkpi/collector/templates/board.html.j2",
        "dxkpi/collector/report/templates/report.j2",
    ):
        assert shipped in names, f"{shipped} is missing from the wheel"
    assert not [n for n in names if "/tests/" in n], "connector tests went into the wheel"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The pip configuration and cache scripts/bootstrap uses: no other index.
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        timeout=600,
    )

    # A project of someone else's: its own tasks.py (a Celery project's), collector.py and
    # connectors.py, first on the path of every process started here.
    project = tmp_path / "project"
    project.mkdir()
    for name in OLD_NAMES:
        (project / f"{name}.py").write_text(DECOY.format(name=name))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DXKPI_", "PYTHON"))}
    env["PYTHONPATH"] = str(project)
    python = str(venv / "bin" / "python")
    decoy = subprocess.run(
        [python, "-c", "import tasks"], cwd=project, env=env, capture_output=True, text=True
    )
    assert "instead of dxkpi.tasks" in decoy.stderr  # the decoy is what `tasks` means here

    example = subprocess.run(
        [python, "-c", "from dxkpi.collector.runtime import EXAMPLE_CONFIG; print(EXAMPLE_CONFIG)"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(example).is_relative_to(venv), (
        f"the example config is not the installed one: {example}"
    )

    port = free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "dxkpi"),
                "--config",
                example,
                "--data-dir",
                str(tmp_path / "data"),
                "run",
                "--listen",
                f"127.0.0.1:{port}",
            ],
            cwd=project,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    def collected() -> str:
        said = log.read_text(errors="replace")
        assert "instead of dxkpi." not in said, f"a decoy was imported:\n{said[-3000:]}"
        assert process.poll() is None, f"`dxkpi run` ended early:\n{said[-3000:]}"
        body = scrape(port)
        wanted = (
            'dxkpi_source_up{org="fukushima",source="annual_indicators"} 1.0',
            'dxkpi_source_up{org="fukushima",source="copy_paper"} 1.0',
            'dxkpi_kpi_value{kpi="online_procedure_usage_rate",org="fukushima"}',
        )
        return body if all(w in body for w in wanted) else ""

    try:
        # The example's sources are collected by the worker and its KPIs computed from them.
        body = wait_for(
            collected,
            timeout=180,
            what="/metrics with the example's sources collected and its KPI values",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            sys.stderr.write(log.read_text(errors="replace")[-3000:])
    text = log.read_text(errors="replace")
    assert "instead of dxkpi." not in text and "Traceback" not in text
    assert "celery@" in text, "no Celery worker started"
    assert code == 0, f"`dxkpi run` ended with {code} on SIGTERM"
    assert 'dxkpi_kpi_value{kpi="online_procedure_usage_rate",org="fukushima"} 0.' in body
