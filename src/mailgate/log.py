"""Logging as mail administrators read it: one line per event, the queue id first.

Text (default): `2026-11-27 19:03:13.123 mailgate/smtpd[1234]: 4HX...: to=<a@b>, relay=...`.
JSON (one object per line): time, level, component, pid, qid when the line has one, message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

_QID = re.compile(r"^([0-9B-DF-HJ-NP-TV-Z]{14}): ")


def _component(record: logging.LogRecord) -> str:
    return record.name.rpartition(".")[2] if record.name.startswith("mailgate.") else record.name


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        line = f"{stamp} mailgate/{_component(record)}[{record.process}]: {level}"
        line += record.getMessage()
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


def setup(fmt: str = "text", level: str = "info", stream: TextIO | None = None,
          path: str | None = None) -> None:  # fmt: skip
    """Send mailgate's log lines to a file or a stream (stderr by default)."""
    handler: logging.Handler
    if path:
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("mailgate")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    logging.captureWarnings(True)
