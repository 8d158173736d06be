"""The scan engines' load without mailgate's pipeline: clamd and Rspamd asked to scan the
benchmark's message at a given rate, from a process of its own, with mailgate's own Anti-Virus
and Anti-Spam checks (:class:`mailgate.checks.clamav.ClamavCheck`,
:class:`mailgate.checks.rspamd.RspamdCheck`; those the Protection settings turn on), both at
once for each message, as the pipeline asks them.

:mod:`bench.protection` runs it beside the core path (``core-loaded``): the machine then does
the engines' work of an all-modules run (their CPU, their memory traffic, their share of the two
cores) while mailgate does only the core path's, so that the difference against the
all-modules run is mailgate's own pipeline, without what the engines running beside it cost
mailgate's process. Its own CPU per message is the cost of the two exchanges alone.

    python -m bench.engine_load --protection JSON --size 102400 --rate 110 --connections 10

Prints ``{"ready": true}`` once a first scan of each engine came back clean, then scans until
SIGTERM or a line on stdin, and prints ``{"scans": N, "clean": N, "errors": [...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from bench.loadgen import RECIPIENT, SENDER, Message, Pacer
from bench.proc import die_with_parent, emit, new_event_loop
from mailgate.checks.clamav import ClamavCheck
from mailgate.checks.rspamd import RspamdCheck
from mailgate.config.protection import Protection
from mailgate.pipeline.api import RealClient, ScanContext, Verdict
from mailgate.types import ClientInfo, Envelope, Recipient

CLIENT = "127.0.0.100"
_ERRORS_KEPT = 5


def context(protection: Protection, content: bytes, index: int) -> ScanContext:
    client = ClientInfo(CLIENT, helo="loadgen.bench.test")
    envelope = Envelope(
        qid=f"L{index:010d}",
        sender=SENDER,
        recipients=[Recipient(RECIPIENT, RECIPIENT.rpartition("@")[2])],
        client=client,
        arrival=time.time(),
        size=len(content),
    )
    return ScanContext(
        envelope, content, client, RealClient(CLIENT, client.helo), "mailgate.bench", protection
    )


async def _main(arguments: argparse.Namespace) -> dict[str, Any]:
    protection = Protection.model_validate(json.loads(arguments.protection))
    checks = [
        check
        for check in (ClamavCheck(), RspamdCheck())
        if getattr(protection, check.module).enabled
    ]
    message = Message(arguments.size)
    # What mailgate's pipeline scans: the message as received, without the end-of-data marker.
    contents = [message.content("load", index)[:-3] for index in range(64)]
    scans = clean = 0
    errors: list[str] = []

    async def scan(index: int) -> None:
        nonlocal scans, clean
        ctx = context(protection, contents[index % len(contents)], index)
        results = await asyncio.gather(*(check.scan(ctx) for check in checks))
        scans += 1
        if all(result.verdict is Verdict.CLEAN for result in results):
            clean += 1
        elif len(errors) < _ERRORS_KEPT:
            errors.append("; ".join(f"{r.module} {r.verdict} {r.detail}" for r in results))

    await scan(0)
    if clean != 1:
        return {"ready": False, "errors": errors}
    emit({"ready": True})

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)
    pacer = Pacer(arguments.rate)
    counter = iter(range(1, 1 << 62))

    async def worker() -> None:
        while not stop.is_set():
            await pacer.wait()
            if stop.is_set():
                return
            await scan(next(counter))

    workers = [asyncio.ensure_future(worker()) for _ in range(arguments.connections)]
    await stop.wait()
    await asyncio.wait(workers, timeout=arguments.timeout)
    for task in workers:
        task.cancel()
    return {"scans": scans - 1, "clean": clean - 1, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_load", description=__doc__)
    parser.add_argument("--protection", required=True, help="the Protection settings, as JSON")
    parser.add_argument("--size", type=int, required=True, help="body size in bytes")
    parser.add_argument("--rate", type=float, required=True, help="messages per second")
    parser.add_argument("--connections", type=int, default=10, help="scans in flight at most")
    parser.add_argument("--timeout", type=float, default=30.0, help="for scans in flight at stop")
    arguments = parser.parse_args()
    die_with_parent()
    loop = new_event_loop()
    try:
        emit(loop.run_until_complete(_main(arguments)))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
