"""The internal server of the verification benchmark (:mod:`bench.verify`), a process of its own:
an SMTP sink that accepts every recipient and counts the RCPT commands it receives per address.

``python -m bench.verify_sink --host 127.0.0.30 --control PATH [--dump FILE]`` prints
``{"port": N, "pid": P}`` once it listens, answers JSON-line commands on the Unix socket ``PATH``
and stops on SIGTERM (writing its counts to ``--dump`` FILE first, when given):

* ``count ADDRESS``: ``{"rcpts": RCPT commands for ADDRESS}`` (case-insensitive);
* ``prefix TEXT``: ``{"rcpts": ..., "addresses": ...}`` over the addresses starting with TEXT;
* ``total``: ``{"rcpts": ..., "addresses": ..., "sessions": ..., "messages": ...}``;
* ``dump FILE``: writes every address's count (and the totals) to FILE as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from bench.proc import die_with_parent, emit, new_event_loop
from bench.sink import stop_on_signals
from mailgate.testing.sink import SinkServer, start_sink_server

ACCEPT = "250 2.1.5 Ok"


class RcptCounter:
    """The RCPT hook: every address is accepted and counted."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, address: str) -> str:
        self.counts[address.lower()] += 1
        return ACCEPT

    def prefix(self, text: str) -> dict[str, int]:
        text = text.lower()
        matching = [count for address, count in self.counts.items() if address.startswith(text)]
        return {"rcpts": sum(matching), "addresses": len(matching)}

    def document(self, server: SinkServer | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "rcpts": sum(self.counts.values()),
            "addresses": len(self.counts),
            "counts": dict(self.counts),
        }
        if server is not None:
            record["sessions"] = server.counters.sessions
            record["messages"] = server.counters.messages
        return record

    def write(self, path: Path, server: SinkServer | None) -> None:
        path.write_text(json.dumps(self.document(server)))


async def _control(
    counter: RcptCounter,
    server: SinkServer,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    try:
        while line := await reader.readline():
            verb, _, argument = line.decode().strip().partition(" ")
            answer: dict[str, Any]
            if verb == "count":
                answer = {"rcpts": counter.counts.get(argument.lower(), 0)}
            elif verb == "prefix":
                answer = counter.prefix(argument)
            elif verb == "total":
                document = counter.document(server)
                del document["counts"]
                answer = document
            elif verb == "dump":
                counter.write(Path(argument), server)
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {verb!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()


async def _serve(host: str, port: int, control: Path, dump: Path | None) -> None:
    counter = RcptCounter()
    server = await start_sink_server(
        host, port, rcpt_reply=counter, hostname="internal.bench", keep_messages=False
    )
    controller = await asyncio.start_unix_server(
        lambda reader, writer: _control(counter, server, reader, writer), path=str(control)
    )
    stopping = stop_on_signals()
    emit({"port": server.port, "pid": os.getpid()})
    try:
        await stopping.wait()
    finally:
        controller.close()
        if dump is not None:
            counter.write(dump, server)
        await server.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.verify_sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.30")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control", type=Path, required=True, help="Unix socket for commands")
    parser.add_argument("--dump", type=Path, default=None, help="write the counts here on exit")
    arguments = parser.parse_args()
    die_with_parent()
    arguments.control.unlink(missing_ok=True)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_serve(arguments.host, arguments.port, arguments.control, arguments.dump))


if __name__ == "__main__":
    main()
