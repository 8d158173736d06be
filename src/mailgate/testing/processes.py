"""What the peers started for tests (Postfix, clamd, Rspamd) share: a bounded poll, atomic
configuration writes, a liveness check, and stopping whatever is still running when the
interpreter exits, so that a crashed test run leaves no daemon behind."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

POLL_FIRST = 0.01
POLL_MAX = 0.2


class Stoppable(Protocol):
    def stop(self) -> None: ...


_running: set[Stoppable] = set()
_running_lock = threading.Lock()


def started(instance: Stoppable) -> None:
    """Remember ``instance`` until `stopped`: the exit hook stops it if nobody else does."""
    with _running_lock:
        _running.add(instance)


def stopped(instance: Stoppable) -> None:
    with _running_lock:
        _running.discard(instance)


def _stop_all() -> None:
    with _running_lock:
        instances = list(_running)
    for instance in instances:
        with contextlib.suppress(Exception):
            instance.stop()


atexit.register(_stop_all)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` with a growing interval until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    interval = POLL_FIRST
    while True:
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, POLL_MAX)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (mode 0644) so that a reader sees the old file or the new, never half."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o644)
    os.replace(temporary, path)


def read_text(path: Path) -> str:
    """The file's text, "" when it cannot be read (a log not written yet)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a daemon is not our child, and PID 1 of a
    container may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")
