"""The benchmark's SMTP sink as a process of its own (so that its CPU is not the generator's):
it records the Message-ID and arrival time of every message a system under test relays to it.

``python -m bench.sink --host 127.0.0.50 --control PATH`` prints ``{"port": N}`` once it listens,
answers JSON-line commands on the Unix socket ``PATH`` and stops on SIGTERM:

* ``count TAG``: ``{"unique": distinct Message-IDs of run TAG, "received": all messages}``;
* ``dump FILE``: writes every arrival (``ids``, ``times``) and counters to FILE as JSON.

Message-IDs look like ``<TAG.INDEX@bench.test>`` (see :mod:`bench.loadgen`); arrival times are
``time.monotonic()``, the same clock in every process of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from bench.proc import die_with_parent, emit, new_event_loop
from mailgate.testing.sink import CapturedMessage, start_sink_server

_ID_START = b"Message-ID: <"
_HEADER_SCAN = 16384  # Message-ID is among the first headers; never scan the body


class Recorder:
    """Arrivals, kept as two flat lists: cheap to append to at thousands per second."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.times: list[float] = []
        self.foreign = 0  # messages without a benchmark Message-ID (bounces, ...)
        self._seen: set[str] = set()
        self._unique_by_tag: dict[str, int] = {}

    def on_message(self, message: CapturedMessage) -> None:
        now = time.monotonic()
        data = message.data
        start = data.find(_ID_START, 0, _HEADER_SCAN)
        end = data.find(b">", start, start + 200) if start >= 0 else -1
        if end < 0:
            self.foreign += 1
            return
        # Only the left-hand side: TAG.INDEX.
        left = data[start + len(_ID_START) : end].partition(b"@")[0]
        message_id = left.decode("ascii", "replace")
        self.ids.append(message_id)
        self.times.append(now)
        if message_id not in self._seen:
            self._seen.add(message_id)
            tag = message_id.partition(".")[0]
            self._unique_by_tag[tag] = self._unique_by_tag.get(tag, 0) + 1

    def count(self, tag: str) -> dict[str, int]:
        return {
            "unique": self._unique_by_tag.get(tag, 0),
            "received": len(self.ids) + self.foreign,
        }

    def dump(self, path: Path) -> None:
        record = {"ids": self.ids, "times": self.times, "foreign": self.foreign}
        path.write_text(json.dumps(record))


async def _control(
    recorder: Recorder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while line := await reader.readline():
            verb, _, argument = line.decode().strip().partition(" ")
            answer: dict[str, Any]
            if verb == "count":
                answer = dict(recorder.count(argument))
            elif verb == "dump":
                recorder.dump(Path(argument))
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {verb!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()


async def _serve(host: str, port: int, control: Path) -> None:
    recorder = Recorder()
    server = await start_sink_server(
        host, port, hostname="sink.bench", keep_messages=False, on_message=recorder.on_message
    )
    controller = await asyncio.start_unix_server(
        lambda reader, writer: _control(recorder, reader, writer), path=str(control)
    )
    stopping = stop_on_signals()
    emit({"port": server.port, "pid": os.getpid()})
    try:
        await stopping.wait()
    finally:
        controller.close()
        await server.aclose()


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets (a sink runs until its parent stops it)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    return stopping


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.50")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control", type=Path, required=True, help="Unix socket for commands")
    arguments = parser.parse_args()
    die_with_parent()
    arguments.control.unlink(missing_ok=True)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_serve(arguments.host, arguments.port, arguments.control))


if __name__ == "__main__":
    main()
