"""Processes that `dxkpi` starts and watches: a set of worker processes, and what `dxkpi run`
collects when it starts. No Celery here: the commands are plain argument lists."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from dxkpi.collector.config import SourceConfig

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def supervise(commands: list[list[str]]) -> int:
    """Run one worker process per command until all have exited; return the exit code.

    A signal is passed on to every process (Celery's meaning: TERM/INT a warm shutdown that
    finishes running tasks, QUIT a cold one). The processes get a process group of their own so
    that a Ctrl-C in a terminal reaches them once, through here, and not twice (a second INT is a
    cold shutdown). If one process exits on its own, the others are stopped too and its code is
    returned, so that whatever supervises `dxkpi worker` sees the failure and restarts the lot.
    """
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in FORWARDED_SIGNALS:  # before the first start: no child may be left behind
        signal.signal(signum, forward)
    for command in commands:
        if stopping:
            break
        children.append(subprocess.Popen(command, process_group=0))
    code = 0
    running = list(children)
    while running:
        time.sleep(0.2)
        for child in [c for c in running if c.poll() is not None]:
            running.remove(child)
            status = child.returncode
            # A process killed by a signal: the shell's convention, 128 + its number.
            child_code = status if status >= 0 else 128 - status
            if code == 0:
                code = child_code
            if not stopping:
                print(
                    f"worker process {child.pid} exited with {child_code}: stopping the others",
                    file=sys.stderr,
                )
                forward(signal.SIGTERM, None)
    return code


def sources_to_kick_off(
    sources: Iterable[SourceConfig], last_success: Mapping[str, float | None], now: float
) -> list[str]:
    """The sources `dxkpi run` collects as it starts: those without a success within their own
    interval. The rest are left to beat, which `run` starts afresh (no catch-up of its own), so a
    warm start collects nothing twice and a cold one does not wait a whole interval."""
    due = []
    for source in sources:
        last = last_success.get(source.id)
        if last is None or now - last >= source.schedule.interval().total_seconds():
            due.append(source.id)
    return due
