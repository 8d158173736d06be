"""Logging as mail administrators read it: one line per event, the queue id first.

Text (default): `2026-11-27 19:03:13.123 mailgate/smtpd[1234]: 4HX...: to=<a@b>, relay=...`.
JSON (one object per line): time, level, component, pid, qid when the line has one, message.

Lines are written in batches by a flusher thread, every FLUSH_INTERVAL seconds: a log line
costs the event loop no system call. A kill -9 can lose the last fraction of a second of log
lines (never mail: messages are on disk before their 250).
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TextIO

_QID = re.compile(r"^([0-9B-DF-HJ-NP-TV-Z]{14}): ")
FLUSH_INTERVAL = 0.2


def _component(record: logging.LogRecord) -> str:
    return record.name.rpartition(".")[2] if record.name.startswith("mailgate.") else record.name


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""
        self._prefixes: dict[tuple[str, int], str] = {}

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # one strftime per second, not per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((record.created - second) * 1000)
        key = (record.name, record.process or 0)
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._prefixes[key] = f" mailgate/{_component(record)}[{record.process}]: "
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        line = f"{self._stamp}.{millis:03d}{prefix}{level}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "component": _component(record),
            "pid": record.process,
        }
        match = _QID.match(message)
        if match:
            data["qid"] = match.group(1)
            message = message[match.end() :]
        data["message"] = message
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class BatchingHandler(logging.Handler):
    """Formats lines at once, writes them in batches from a flusher thread."""

    def __init__(self, stream: TextIO, owns_stream: bool) -> None:
        super().__init__()
        self._stream = stream
        self._owns_stream = owns_stream
        self._pending: deque[str] = deque()  # append/popleft are atomic: no lock per line
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="mailgate-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        if record.levelno >= logging.ERROR:
            self._wake.set()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        with self.lock if self.lock is not None else threading.Lock():
            lines = []
            while self._pending:
                lines.append(self._pending.popleft())
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed or full log must not stop mail

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        self.flush()
        if self._owns_stream:
            self._stream.close()
        super().close()


def setup(fmt: str = "text", level: str = "info", stream: TextIO | None = None,
          path: str | None = None) -> None:  # fmt: skip
    """Send mailgate's log lines to a file or a stream (stderr by default)."""
    if path:
        handler = BatchingHandler(open(path, "a", encoding="utf-8"), owns_stream=True)  # noqa: SIM115
    else:
        handler = BatchingHandler(stream or sys.stderr, owns_stream=False)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("mailgate")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    logging.captureWarnings(True)
    # No line shows a source file, a thread or a multiprocessing name: records skip finding
    # them (the logging documentation's "Optimization" section), some microseconds each.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
