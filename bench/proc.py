"""Helpers shared by the benchmark's processes: a child that dies with its parent, a line
protocol on pipes with deadlines, binding process trees to CPUs, and an event loop factory."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from bench.memory import descendants

_PR_SET_PDEATHSIG = 1

REPO_ROOT = Path(__file__).resolve().parent.parent


def die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux), so that a
    benchmark killed with SIGKILL does not leave its generator or sink running."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def emit(record: dict[str, Any]) -> None:
    """One JSON line on stdout: how a child reports to the orchestrator."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class Child:
    """A benchmark child process (``python -m bench.X``) that talks JSON lines on stdout."""

    def __init__(self, name: str, argv: Sequence[str], stderr: Path) -> None:
        self.name = name
        self._stderr = stderr.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO_ROOT,
        )
        self._pending = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child writes; raise TimeoutError after ``timeout`` and
        RuntimeError if the child exits first."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no report within {timeout:g}s")
            ready, _, _ = select.select([stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                self.process.wait(5)
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: {self.stderr_tail()}"
                )
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        record: dict[str, Any] = json.loads(line)
        return record

    def send(self, line: str) -> None:
        stdin: IO[bytes] | None = self.process.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()

    def stderr_tail(self, limit: int = 2000) -> str:
        self._stderr.flush()
        try:
            text = Path(self._stderr.name).read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._stderr.close()


def pin(roots: Iterable[int], cpus: Collection[int]) -> int:
    """Bind every thread of the processes under ``roots`` to ``cpus`` (``sched_setaffinity``);
    the threads and processes they start later inherit the binding. The number of threads
    bound (one that ended meanwhile is skipped)."""
    bound = 0
    for pid in sorted(descendants(roots)):
        try:
            threads = [int(name) for name in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for thread in threads:
            try:
                os.sched_setaffinity(thread, cpus)
            except OSError:
                continue
            bound += 1
    return bound


def new_event_loop() -> Any:
    """uvloop's event loop (the standard one if uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of mailgate
        import asyncio

        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
