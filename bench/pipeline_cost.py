"""The scan pipeline's own CPU per message, in one process, against the real engines.

``python -m bench.pipeline_cost [--size 102400] [--messages 300] [--in-flight 1,10]``

No SMTP and no queue: the benchmark message (bench.loadgen's, with a fresh Message-ID each
time) goes through ``Pipeline.decide`` with the checks wired as the gateway wires them
(``mailgate.service.make_checks``), then through what intake does with a clean decision (the
recipients' group with its added header lines). clamd, Rspamd and the DNS server are
bench.protection's ``Engines``: the engines are other processes, so their work is not counted;
the DNS server is another thread of this process, not counted either.

What is counted: the CPU (user + system, ``getrusage(RUSAGE_THREAD)``) of the thread that runs
the event loop, from the first measured message to the last, per message; ``--in-flight``
messages at a time. Three module sets, each its own row:

- ``all``: the five modules. Each message waits for clamd's and Rspamd's answers, about as long
  as Rspamd takes to scan it, and the thread sleeps meanwhile: the code that runs after the
  answers runs from cold caches, as it does in a gateway whose engines set the pace;
- ``in-process``: content, phishing and auth, which never wait: the same kind of work, warm;
- ``none``: no module (rule grouping and the decision only).

Why beside ``bench.protection``: there the overhead is the difference between two runs (or two
segments) of the whole gateway, each with its SMTP, queue and delivery work. Here nothing but
the pipeline runs, and the figure is its cost, not a difference. It still moves with the
machine's state (all modules at 100 KB: 1.56 to 2.21 ms over one afternoon on the benchmark
machine), mostly through the cost of waking a CPU that slept: the report ends with
``bench.wake``'s probe of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import wake
from bench.loadgen import RECIPIENT, SENDER, Message
from bench.proc import new_event_loop, pin
from bench.protection import (
    CLIENT_NAME,
    MODULES,
    Engines,
    placement,
    protection_config,
)
from bench.run import machine_info, session_directory
from bench.systems import CLIENT_ADDRESS
from mailgate.config.model import Config
from mailgate.intake import group_envelope
from mailgate.metrics import Counters
from mailgate.pipeline.api import RealClient, Verdict
from mailgate.pipeline.runner import Pipeline
from mailgate.service import make_auth_dns, make_checks, make_resolver
from mailgate.types import ClientInfo, Envelope, Recipient

IN_PROCESS = ("content", "phishing", "auth")
MODULE_SETS: dict[str, tuple[str, ...]] = {"all": MODULES, "in-process": IN_PROCESS, "none": ()}
WARMUP = 30  # messages before each measured window
TARGET_MS = 1.0  # issue 4: the pipeline's own overhead per message


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _thread_cpu() -> tuple[float, float, float]:
    """This thread's CPU seconds: in all (to the nanosecond), user and system (to the tick)."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return time.thread_time(), usage.ru_utime, usage.ru_stime


async def measure(
    engines: Engines, modules: Sequence[str], size: int, messages: int, in_flight: int
) -> dict[str, Any]:
    """One row: ``messages`` messages through the pipeline with ``modules`` on."""
    config = Config.model_validate(
        {
            "protection": protection_config(engines, modules),
            "advanced": {"dns": {"nameservers": [engines.dns.address]}},
        }
    )
    resolver = make_resolver(config.advanced.dns)
    auth_dns = make_auth_dns(resolver)
    pipeline = Pipeline(make_checks(lambda: auth_dns), Counters())
    message = Message(size)
    client = ClientInfo(CLIENT_ADDRESS, 25000, CLIENT_NAME, CLIENT_NAME)
    origin = RealClient(client.ip, client.helo, client.name)
    recipient = Recipient(RECIPIENT, RECIPIENT.rpartition("@")[2])
    problems: list[str] = []
    clean: Counter[str] = Counter()  # clean verdicts per module, warm-up included

    async def one(index: int) -> None:
        content = message.content("cost", index)[: -len(b".\r\n")]
        envelope = Envelope(f"C{index:09d}", SENDER, [recipient], client, time.time(),
                            size=len(content))  # fmt: skip
        decision = await pipeline.decide(config, envelope, content, client, origin)
        ran = set(decision.results)
        unclean = {m: r for m, r in decision.results.items() if r.verdict is not Verdict.CLEAN}
        clean.update(m for m, r in decision.results.items() if r.verdict is Verdict.CLEAN)
        if ran != set(modules) or unclean:
            problems.append(f"message {index}: modules {sorted(ran)}, not clean: {unclean}")
        for group in decision.groups:
            group_envelope(envelope, group, envelope.qid)

    async def run(first: int, count: int) -> None:
        async def worker(offset: int) -> None:
            for index in range(first + offset, first + count, in_flight):
                await one(index)

        await asyncio.gather(*(worker(offset) for offset in range(in_flight)))

    await run(0, WARMUP)
    cpu, user, system = _thread_cpu()
    began = time.perf_counter()
    await run(WARMUP, messages)
    wall = time.perf_counter() - began
    cpu_after, user_after, system_after = _thread_cpu()
    return {
        "modules": list(modules),
        "size": size,
        "messages": messages,
        "in_flight": in_flight,
        "user_ms": round(1000 * (user_after - user) / messages, 3),
        "system_ms": round(1000 * (system_after - system) / messages, 3),
        "cpu_ms": round(1000 * (cpu_after - cpu) / messages, 3),
        "wall_ms": round(1000 * wall / messages, 2),
        "clean": dict(clean),
        "problems": problems[:5] + ([f"... {len(problems) - 5} more"] if len(problems) > 5 else []),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "The scan pipeline's own CPU per message (bench.pipeline_cost: the event loop's thread, "
        "engines excluded):",
        "",
        "| size | in flight | modules | CPU ms/msg | user / sys | wall ms/msg | < 1 ms |",
        "|---:|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        name = next((k for k, v in MODULE_SETS.items() if list(v) == row["modules"]),
                    ",".join(row["modules"]))  # fmt: skip
        verdict = "ok" if row["cpu_ms"] < TARGET_MS else "MISSED"
        lines.append(
            f"| {row['size'] // 1024} KB | {row['in_flight']} | {name} | **{row['cpu_ms']:.2f}** "
            f"| {row['user_ms']:.2f} / {row['system_ms']:.2f} | {row['wall_ms']:.1f} | {verdict} |"
        )
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_cost", description=__doc__)
    parser.add_argument("--size", type=int, default=102400, help="body size (default 102400)")
    parser.add_argument("--messages", type=int, default=300, help="measured messages per row")
    parser.add_argument(
        "--in-flight", default="1,10", help="messages in the pipeline at a time, one row each"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 KB, 20 messages")
    parser.add_argument("--output", type=Path, help="JSON result file")
    arguments = parser.parse_args(argv)
    try:
        arguments.in_flight = [int(n) for n in arguments.in_flight.split(",")]
    except ValueError:
        parser.error(f"--in-flight: not a list of numbers: {arguments.in_flight!r}")
    for option, values in (
        ("--in-flight", arguments.in_flight),
        ("--messages", [arguments.messages]),
        ("--size", [arguments.size]),
    ):
        if any(value < 1 for value in values):
            parser.error(f"{option}: must be positive")  # fmt: skip
    if arguments.quick:
        arguments.size, arguments.messages, arguments.in_flight = 2048, 20, [1]
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if os.geteuid() != 0:
        _progress("run as root: Rspamd drops to its own account")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cpus = placement("apart")
    rows: list[dict[str, Any]] = []
    with session_directory(False) as directory, contextlib.ExitStack() as stack:
        engines = Engines(directory)
        engines.start(stack, cpus["engines"] if cpus else None)
        if cpus:  # the pipeline on the first CPU, the engines (and the DNS thread) elsewhere
            pin([os.getpid()], cpus["engines"])
            os.sched_setaffinity(0, cpus["mailgate"])
        loop = new_event_loop()
        try:
            for in_flight in arguments.in_flight:
                for name, modules in MODULE_SETS.items():
                    row = loop.run_until_complete(
                        measure(engines, modules, arguments.size, arguments.messages, in_flight)
                    )
                    _progress(f"{name} x {in_flight}: {row['cpu_ms']:.3f} ms/msg")
                    rows.append(row)
        finally:
            loop.close()
    machine = machine_info()
    machine["wake"] = wake.probe(cpus["mailgate"] if cpus else None)
    document = {"machine": machine, "rows": rows}
    print(markdown(rows))
    print(f"\n{wake.describe(machine['wake'])}.")
    if arguments.output:
        arguments.output.write_text(json.dumps(document, indent=2) + "\n")
    problems = [problem for row in rows for problem in row["problems"]]
    for problem in problems:
        _progress(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
