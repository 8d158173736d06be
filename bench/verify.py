"""The recipient verification benchmark (SPEC section 1 step 6): mailgate's
``reject_unverified`` against Postfix's ``reject_unverified_recipient``, both probing the same
internal server (:mod:`bench.verify_sink`, which accepts every recipient and counts RCPTs).

    uv run python -m bench.verify            # everything (~15 minutes)
    uv run python -m bench.verify --quick    # smoke test (~1 minute)

Measurements; every run starts the sink and the system afresh:

* ``latency-off``, ``latency-warm``, ``latency-cold``: one connection, one MAIL FROM, then
  N RCPTs sent one at a time, each waiting for its reply. *off*: verification off (Postfix
  without ``reject_unverified_recipient``); *warm*: the N addresses were verified beforehand in
  separate sessions (in parallel); *cold*: N never-seen addresses. Postfix answers a never-seen
  address only after ``address_verify_poll_delay``, so its cold N is small (``--cold-postfix``).
* ``herd``: ``--herd`` connections opened first, all at MAIL FROM; once every one is ready
  (an event, no sleeps) each sends RCPT for the same never-seen address at once. Reported: the
  replies and how many RCPTs for that address the internal server received (the probes).
* ``throughput-cold-C``: C connections, each verifying never-seen addresses one RCPT at a time
  for ``--duration`` seconds (a RCPT sent before the deadline is waited for); verified
  addresses per second = replies 250 / (last reply - first RCPT). ``throughput-warm-C``: the same
  over a pool of already verified addresses.

Systems: ``mailgate``; ``postfix`` (Postfix defaults for the verify service: poll delay 3s,
persistent btree cache); ``postfix-1s`` (poll delay 1s, as the test harness uses; only the
measurements the delay affects). Both relay ``example.com`` to the internal server and treat the
client (127.0.0.100) as untrusted; both have the recipient limit raised to 10000 (a transaction
of N RCPTs) and no per-client connection limit. For ``herd`` only, Postfix's
``default_process_limit`` is raised above the connection count: with its default (100), the
other connections would wait unserved in the listen queue.

latency-off and latency-warm run ``--latency-repeat`` times (default 3; the table shows the
median of each percentile), since their difference is a fraction of a millisecond. Before each
run it waits (bounded) until the machine is nearly idle, so that it does not overlap another
benchmark or a test suite on the same cores; the CPU that other processes used during each
measured phase is recorded (``other``).

mailgate runs from whatever ``import mailgate`` finds; to measure a frozen copy while src/ is
being edited: ``git archive HEAD src | tar -x -C DIR`` and ``PYTHONPATH=DIR/src`` (with
``--note`` naming the commit).

It prints Markdown tables on stdout and writes everything (machine, configurations, each run)
to a JSON file under ``bench/results/``. Everything it starts is stopped and removed when it
ends, even on Ctrl-C or an error; ``--keep`` leaves the data directories for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import os
import resource
import shutil
import signal
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.loadgen import Connection, ConnectionLost, SmtpClient
from bench.memory import descendants, tree_cpu_seconds
from bench.proc import Child, new_event_loop
from bench.report import median, percentile
from bench.run import (
    RESULTS_DIR,
    SinkControl,
    _int_list,
    check_sources,
    machine_info,
    mailgate_source,
    session_directory,
    source_fingerprint,
)
from bench.systems import postfix_log_errors, postfix_version, stop_postfix
from mailgate.testing.gateway import GatewayProcess
from mailgate.testing.postfix import PostfixInstance, border_gateway, free_port

SINK_HOST = "127.0.0.30"  # the internal server
CLIENT_ADDRESS = "127.0.0.100"  # untrusted for both systems
MAILGATE_ADDRESS = "127.0.0.20"
POSTFIX_ADDRESS = "127.0.0.21"
DOMAIN = "example.com"
SENDER = "sender@client.bench"
RECIPIENT_LIMIT = 10000  # both systems: one transaction of N RCPTs (default 1000)
RENEW_EVERY = 500  # throughput workers start a new transaction (RSET, MAIL) this often
SYSTEMS = ("mailgate", "postfix", "postfix-1s")
KINDS = (
    "latency-off",
    "latency-warm",
    "latency-cold",
    "herd",
    "throughput-cold",
    "throughput-warm",
)
MEASUREMENTS_1S = ("latency-cold", "herd", "throughput-cold")  # what the poll delay changes
TARGET_ADDED_P99_MS = 1.0  # the project's target: warm cache, added RCPT latency

_START_TIMEOUT = 60.0
_REPLY_TIMEOUT = 120.0
_OPEN_TIMEOUT = 300.0
_OPEN_PARALLEL = 100  # connection attempts in flight while opening many
_SETTLE_TIMEOUT = 60.0
_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_CORES = 0.25  # a run starts once other processes use less than this
QUIET_TIMEOUT = 900.0
_ATTEMPTS = 3  # runs of one measurement disturbed by other processes before keeping one
_POLL = 0.05


@dataclass(frozen=True, slots=True)
class Plan:
    latency: int
    cold_postfix: int
    herd: int
    concurrency: list[int]
    warm_concurrency: int
    warm_pool: int
    duration: float
    warmup_connections: int


def _systems(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or any(name not in SYSTEMS for name in names):
        raise argparse.ArgumentTypeError(f"systems are {', '.join(SYSTEMS)}; got {text!r}")
    return names


def _kinds(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or any(name not in KINDS for name in names):
        raise argparse.ArgumentTypeError(f"measurements are {', '.join(KINDS)}; got {text!r}")
    return names


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.verify",
        description="Recipient verification: mailgate reject_unverified vs Postfix "
        "reject_unverified_recipient.",
    )
    parser.add_argument("--latency", type=int, default=2000, help="RCPTs per latency run")
    parser.add_argument(
        "--cold-postfix",
        type=int,
        default=20,
        help="RCPTs of Postfix's cold latency run (each waits a poll delay; default 20)",
    )
    parser.add_argument("--herd", type=int, default=1000, help="connections of the herd run")
    parser.add_argument(
        "--concurrency", type=_int_list, default=[10, 50], help="cold throughput connections"
    )
    parser.add_argument("--warm-concurrency", type=int, default=10, help="warm throughput conns")
    parser.add_argument(
        "--warm-pool", type=int, default=500, help="verified addresses of the warm throughput run"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="throughput run seconds")
    parser.add_argument(
        "--warmup-connections",
        type=int,
        default=80,
        help="parallel sessions verifying addresses before a warm run (below Postfix's "
        "default_process_limit 100; default 80)",
    )
    parser.add_argument(
        "--systems",
        type=_systems,
        default=list(SYSTEMS),
        help=f"systems (default {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of every measurement (default 1); the tables show medians / every run",
    )
    parser.add_argument(
        "--latency-repeat",
        type=int,
        default=3,
        help="runs of latency-off and latency-warm, whose difference is small (default 3; "
        "the table shows the median of each percentile)",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="start each run at once, even when other processes keep the machine busy",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny counts")
    parser.add_argument("--keep", action="store_true", help="keep data directories and logs")
    parser.add_argument("--output", type=Path, default=None, help="JSON result file")
    parser.add_argument(
        "--measurements",
        type=_kinds,
        default=list(KINDS),
        help=f"measurements to run (default {','.join(KINDS)})",
    )
    parser.add_argument(
        "--note", default="", help="free text recorded with the results (e.g. the commit)"
    )
    arguments = parser.parse_args(argv)
    if arguments.repeat < 1 or arguments.latency_repeat < 1:
        parser.error("--repeat and --latency-repeat must be at least 1")
    if arguments.quick:
        arguments.latency = 50
        arguments.cold_postfix = 3
        arguments.herd = 50
        arguments.concurrency = [2]
        arguments.warm_concurrency = 2
        arguments.warm_pool = 20
        arguments.duration = 2.0
        arguments.warmup_connections = 25
        arguments.latency_repeat = 1
        arguments.no_wait = True  # a smoke test asserts nothing about speed
        if "postfix-1s" in arguments.systems:
            arguments.systems.remove("postfix-1s")
    return arguments


def make_plan(arguments: argparse.Namespace) -> Plan:
    return Plan(
        latency=arguments.latency,
        cold_postfix=arguments.cold_postfix,
        herd=arguments.herd,
        concurrency=arguments.concurrency,
        warm_concurrency=arguments.warm_concurrency,
        warm_pool=arguments.warm_pool,
        duration=arguments.duration,
        warmup_connections=arguments.warmup_connections,
    )


# The systems under test


def wait_for_smtp(host: str, port: int, timeout: float = _START_TIMEOUT) -> None:
    """Wait until ``host:port`` greets with 220 (a system may answer its control socket
    before its SMTP listener is up); raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(
                (host, port), timeout=10, source_address=(CLIENT_ADDRESS, 0)
            ) as probe:
                greeting = probe.recv(512)
                if greeting.startswith(b"220"):
                    probe.sendall(b"QUIT\r\n")
                    probe.recv(512)
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no SMTP greeting from {host}:{port} within {timeout:g}s")
        time.sleep(_POLL)


def quiesce(roots: list[int], window: float = 0.5, timeout: float = _SETTLE_TIMEOUT) -> bool:
    """Wait until the process trees under ``roots`` use less than 4% of a core over ``window``
    seconds (background work of the previous phase has ended); False after ``timeout``."""
    deadline = time.monotonic() + timeout
    before = tree_cpu_seconds(roots)
    while time.monotonic() < deadline:
        time.sleep(window)
        after = tree_cpu_seconds(roots)
        if after - before < 0.04 * window:
            return True
        before = after
    return False


class VerifyingMailgate:
    """``mailgate run`` with a local domain routed to the internal server."""

    def __init__(self, work_dir: Path, sink_port: int, verify: bool) -> None:
        self.name = "mailgate"
        self.address = MAILGATE_ADDRESS
        self.port = free_port(self.address)
        self.data_dir = work_dir / "mailgate"
        self.config: dict[str, Any] = {
            "domains": [{"name": DOMAIN, "route": {"host": SINK_HOST, "port": sink_port}}],
            "main": {"hostname": "mailgate.bench", "smtp_listen": [f"{self.address}:{self.port}"]},
            "advanced": {
                "verification": {"mode": "reject_unverified" if verify else "off"},
                "limits": {
                    "client_connection_count_limit": 0,
                    "recipient_limit": RECIPIENT_LIMIT,
                },
                "delivery": {"bind_address": self.address},
            },
        }
        self._gateway = GatewayProcess(self.data_dir, self.config)
        self._started = False

    def start(self) -> None:
        self._started = True
        self._gateway.start(timeout=_START_TIMEOUT)

    def stats(self) -> dict[str, int]:
        values: dict[str, int] = self._gateway.control("stats")
        return {key: value for key, value in values.items() if key.startswith("verify.")}

    def roots(self) -> list[int]:
        return [self._gateway.pid] if self._started else []

    def settle(self) -> None:
        """Probes end before the RCPT is answered, but cache writes to the store run in the
        background: wait until the process is idle."""
        quiesce(self.roots())

    def configuration(self) -> dict[str, Any]:
        return {
            "command": "python -m mailgate run --log-format text --log-file DATA/mailgate.log",
            "config": self.config,
            "notes": "every other setting at its default (verification cache: positive 31 "
            "days, negative 3 days, temporary 5 s, in memory in front of the store)",
        }

    def log_errors(self) -> int:
        text = self._gateway.log()
        return sum(1 for line in text.splitlines() if "]: warning: " in line or "]: error" in line)

    def stop(self, keep: bool) -> None:
        if not self._started:
            return
        self._started = False
        self._gateway.stop()
        if not keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class VerifyingPostfix:
    """An isolated Postfix relaying ``example.com`` to the internal server
    (:func:`border_gateway`), with Postfix's default verify cache and poll delay unless told."""

    def __init__(
        self,
        work_dir: Path,
        sink_port: int,
        verify: bool,
        poll_delay: str = "3s",
        process_limit: int | None = None,
        name: str = "postfix",
    ) -> None:
        self.name = name
        self.address = POSTFIX_ADDRESS
        self.port = free_port(self.address)
        params: dict[str, str | int] = {
            "smtpd_client_connection_count_limit": 0,
            "smtpd_recipient_limit": RECIPIENT_LIMIT,
        }
        if verify:
            # border_gateway() sets the test harness's values (in-memory cache, 1s): put back
            # Postfix's defaults, what administrators run, unless the delay is asked for.
            params["address_verify_map"] = "btree:$data_directory/verify_cache"
            params["address_verify_poll_delay"] = poll_delay
        if process_limit is not None:
            params["default_process_limit"] = process_limit
        self.instance: PostfixInstance = border_gateway(
            self.address,
            self.port,
            relay_domains=[DOMAIN],
            inbound_next_hop=f"[{SINK_HOST}]:{sink_port}",
            outbound_relayhost="",
            mynetworks=["127.0.0.1/32"],
            verify_recipients=verify,
            name="bench-verify",
            base_dir=work_dir,
            params=params,
        )
        self._started = False

    def start(self) -> None:
        self._started = True
        self.instance.start()

    def stats(self) -> dict[str, int]:
        return {}

    def roots(self) -> list[int]:
        try:
            text = (self.instance.queue_dir / "pid" / "master.pid").read_text().strip()
        except OSError:
            return []
        return [int(text)] if text.isdigit() else []

    def settle(self) -> None:
        """Wait (bounded) until the queue is empty (probes travel through it) and the
        processes are idle."""
        deadline = time.monotonic() + _SETTLE_TIMEOUT
        while self.instance.queue() and time.monotonic() < deadline:
            time.sleep(_POLL * 4)
        quiesce(self.roots())

    def configuration(self) -> dict[str, Any]:
        return {
            "version": postfix_version(),
            "main.cf": self.instance.params,
            "master.cf": "harness default: one smtpd on ADDRESS:PORT, standard services (verify "
            "maxproc 1), no chroot",
            "notes": "every other parameter at its Postfix default (address_verify_poll_count 3, "
            "or 1 under stress; default_process_limit 100 unless set above)",
        }

    def log_errors(self) -> int:
        return postfix_log_errors(self.instance)

    def stop(self, keep: bool) -> None:
        if not self._started:
            return
        self._started = False
        stop_postfix(self.instance, keep)


System = VerifyingMailgate | VerifyingPostfix


def make_system(
    name: str, work_dir: Path, sink_port: int, verify: bool, process_limit: int | None = None
) -> System:
    if name == "mailgate":
        return VerifyingMailgate(work_dir, sink_port, verify)
    if name == "postfix":
        return VerifyingPostfix(work_dir, sink_port, verify, "3s", process_limit, name)
    if name == "postfix-1s":
        return VerifyingPostfix(work_dir, sink_port, verify, "1s", process_limit, name)
    raise ValueError(f"unknown system {name!r}")


# The client side


_MAIL = f"MAIL FROM:<{SENDER}>\r\n".encode()


class Session:
    """One client connection from the untrusted address, inside a transaction (after MAIL)."""

    def __init__(self, host: str, port: int) -> None:
        self._connection = Connection(host, port, CLIENT_ADDRESS, _REPLY_TIMEOUT)
        self._client: SmtpClient | None = None
        self.in_transaction = 0  # RCPTs sent since MAIL

    async def open(self) -> None:
        self._client = await self._connection.open()
        await self._mail()

    async def command(self, line: bytes) -> tuple[int, str]:
        client = self._client
        if client is None:
            raise ConnectionLost("not connected")
        client.write(line)
        [(code, lines)] = await client.replies(1, _REPLY_TIMEOUT)
        return code, lines[-1].decode("utf-8", "replace").strip()

    async def _mail(self) -> None:
        code, text = await self.command(_MAIL)
        if code != 250:
            raise ConnectionLost(f"MAIL FROM answered {text}")
        self.in_transaction = 0

    async def renew(self) -> None:
        """A new transaction: RSET, MAIL FROM."""
        await self.command(b"RSET\r\n")
        await self._mail()

    async def rcpt(self, address: str) -> tuple[int, str, float, float]:
        """Code, reply text, time sent and time answered (``time.perf_counter()``)."""
        line = f"RCPT TO:<{address}>\r\n".encode()
        self.in_transaction += 1
        sent = time.perf_counter()
        code, text = await self.command(line)
        return code, text, sent, time.perf_counter()

    async def close(self) -> None:
        await self._connection.quit()


def _latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {
        "p50": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else math.nan,
        "mean": sum(ordered) / len(ordered) if ordered else math.nan,
    }


def _codes(codes: list[int]) -> dict[str, int]:
    return {str(code): count for code, count in sorted(Counter(codes).items())}


def _texts(pairs: list[tuple[int, str]], limit: int = 5) -> list[str]:
    """The most frequent reply texts that were not 250."""
    counted = Counter(text for code, text in pairs if code != 250)
    return [f"{count} x {text}" for text, count in counted.most_common(limit)]


async def sequential_rcpts(host: str, port: int, addresses: list[str]) -> dict[str, Any]:
    """One connection, one MAIL FROM, every address one RCPT at a time."""
    session = Session(host, port)
    await session.open()
    latencies: list[float] = []
    replies: list[tuple[int, str]] = []
    try:
        for address in addresses:
            code, text, sent, answered = await session.rcpt(address)
            latencies.append(1000 * (answered - sent))
            replies.append((code, text))
    finally:
        await session.close()
    return {
        "rcpts": len(addresses),
        "latency_ms": _latency_summary(latencies),
        "codes": _codes([code for code, _ in replies]),
        "other_replies": _texts(replies),
    }


async def verify_in_parallel(
    host: str, port: int, addresses: list[str], connections: int
) -> dict[str, Any]:
    """Every address RCPTed once, over ``connections`` parallel sessions (a warm-up)."""
    pending = iter(addresses)
    replies: list[tuple[int, str]] = []
    errors: list[str] = []

    async def worker() -> None:
        session = Session(host, port)
        try:
            await session.open()
            for address in pending:
                if session.in_transaction >= RENEW_EVERY:
                    await session.renew()
                code, text, _, _ = await session.rcpt(address)
                replies.append((code, text))
        except (ConnectionLost, OSError) as error:
            errors.append(str(error))
        finally:
            await session.close()

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(min(connections, len(addresses)))))
    return {
        "addresses": len(addresses),
        "connections": connections,
        "seconds": round(time.monotonic() - began, 2),
        "codes": _codes([code for code, _ in replies]),
        "other_replies": _texts(replies),
        "errors": errors[:10],
    }


async def herd(
    host: str, port: int, address: str, count: int, stats: Callable[[], dict[str, int]]
) -> dict[str, Any]:
    """``count`` connections at MAIL FROM, then one RCPT each for ``address``, released at once
    when every connection is ready (or has failed to open)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(_OPEN_PARALLEL)
    all_settled = asyncio.Event()
    release = asyncio.Event()
    sessions: list[Session] = []
    open_errors: list[str] = []
    replies: list[tuple[int, str]] = []
    answered_after: list[float] = []
    rcpt_errors: list[str] = []
    settled = 0
    released_at = 0.0

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == count:
            all_settled.set()

    async def one() -> None:
        session = Session(host, port)
        try:
            async with gate:
                await session.open()
        except (ConnectionLost, OSError) as error:
            open_errors.append(str(error))
            settle()
            await session.close()
            return
        sessions.append(session)
        settle()
        await release.wait()
        try:
            code, text, _, answered = await session.rcpt(address)
        except (ConnectionLost, OSError) as error:
            rcpt_errors.append(str(error))
            return
        replies.append((code, text))
        answered_after.append(1000 * (answered - released_at))

    opening = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(count)]
    try:
        async with asyncio.timeout(_OPEN_TIMEOUT):
            await all_settled.wait()
        open_seconds = time.monotonic() - opening
        before = await loop.run_in_executor(None, stats)
        released_at = time.perf_counter()
        release.set()
        await asyncio.gather(*tasks)
        after = await loop.run_in_executor(None, stats)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)
    return {
        "connections": count,
        "ready": len(sessions),
        "open_seconds": round(open_seconds, 2),
        "open_errors": open_errors[:10],
        "open_error_count": len(open_errors),
        "codes": _codes([code for code, _ in replies]),
        "other_replies": _texts(replies),
        "rcpt_errors": rcpt_errors[:10],
        "rcpt_error_count": len(rcpt_errors),
        "answered_after_release_ms": _latency_summary(answered_after),
        "stats": {key: after.get(key, 0) - before.get(key, 0) for key in after},
    }


async def throughput(
    host: str, port: int, connections: int, duration: float, addresses: Iterator[str]
) -> dict[str, Any]:
    """``connections`` sessions RCPTing the next address of ``addresses`` one at a time until
    ``duration`` has passed (a RCPT sent before the deadline is waited for)."""
    sessions = [Session(host, port) for _ in range(connections)]
    replies: list[tuple[int, str]] = []
    latencies: list[float] = []
    errors: list[str] = []
    first_sent = math.inf
    last_answered = -math.inf
    deadline = math.inf

    async def worker(session: Session) -> None:
        nonlocal first_sent, last_answered
        try:
            while time.perf_counter() < deadline:
                if session.in_transaction >= RENEW_EVERY:
                    await session.renew()
                code, text, sent, answered = await session.rcpt(next(addresses))
                first_sent = min(first_sent, sent)
                last_answered = max(last_answered, answered)
                replies.append((code, text))
                latencies.append(1000 * (answered - sent))
        except (ConnectionLost, OSError) as error:
            errors.append(str(error))

    try:
        await asyncio.gather(*(session.open() for session in sessions))
        deadline = time.perf_counter() + duration
        await asyncio.gather(*(worker(session) for session in sessions))
    finally:
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)
    seconds = last_answered - first_sent if replies else math.nan
    accepted = sum(1 for code, _ in replies if code == 250)
    return {
        "connections": connections,
        "duration": duration,
        "seconds": round(seconds, 3),
        "rcpts": len(replies),
        "accepted": accepted,
        "accepted_per_s": accepted / seconds if replies and seconds > 0 else math.nan,
        "codes": _codes([code for code, _ in replies]),
        "other_replies": _texts(replies),
        "latency_ms": _latency_summary(latencies),
        "errors": errors[:10],
    }


def _addresses(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{index}@{DOMAIN}" for index in range(count)]


def _endless(prefix: str) -> Iterator[str]:
    return (f"{prefix}-{index}@{DOMAIN}" for index in itertools.count())


# One run


class CpuMeter:
    """CPU seconds used during a measured phase by the system (its process tree), the sink,
    this process (the client), other user-space processes (``other``: a test suite or another
    benchmark that ran meanwhile; near 0 in a clean run) and the rest (``kernel``: kernel
    threads and interrupts, e.g. file system work on Postfix's queue files): who saturated
    the 2 cores?"""

    def __init__(self, roots: Callable[[], list[int]], sink_pid: int) -> None:
        self._roots = roots
        self._sink_pid = sink_pid
        self._start = (0.0, 0.0, 0.0, 0.0, 0.0)
        self._foreign: dict[tuple[int, int], float] = {}

    def _now(self) -> tuple[float, float, float, float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (
            time.monotonic(),
            tree_cpu_seconds(self._roots()),
            tree_cpu_seconds([self._sink_pid]),
            usage.ru_utime + usage.ru_stime,
            machine_busy_seconds(),
        )

    def _mine(self) -> set[int]:
        return descendants([os.getpid(), *self._roots()])

    def start(self) -> None:
        self._foreign = foreign_cpu_seconds(self._mine())
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        wall, system, sink, client, machine = (
            end - begin for end, begin in zip(self._now(), self._start, strict=True)
        )
        foreign = foreign_cpu_seconds(self._mine())
        other = sum(
            seconds - self._foreign.get(key, 0.0)
            for key, seconds in foreign.items()
            if seconds >= self._foreign.get(key, 0.0)
        )
        return {
            "wall_seconds": round(wall, 2),
            "system": round(system, 2),
            "sink": round(sink, 2),
            "client": round(client, 2),
            "other": round(other, 2),
            "kernel": round(max(0.0, machine - system - sink - client - other), 2),
        }


def foreign_cpu_seconds(mine: set[int]) -> dict[tuple[int, int], float]:
    """(pid, start time) -> CPU seconds so far, its reaped children's included, of every
    user-space process not in ``mine`` (kernel threads left out)."""
    found: dict[tuple[int, int], float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rfind(b")") + 2 :].split()
        if name == "2" or fields[1] == b"2":  # kthreadd and the kernel threads
            continue
        # Fields 14-17 and 22 of proc(5) (utime, stime, cutime, cstime; starttime).
        ticks = sum(int(value) for value in fields[11:15])
        found[(int(name), int(fields[19]))] = ticks / _TICKS
    return found


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat", "rb") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICKS


def wait_for_quiet(
    cores: float = QUIET_CORES, window: float = 2.0, timeout: float = QUIET_TIMEOUT
) -> float:
    """Wait (bounded) until the machine is nearly idle (less than ``cores`` busy over
    ``window`` seconds), so that a run does not overlap another benchmark or a test suite;
    the seconds waited, or -1 after ``timeout``."""
    began = time.monotonic()
    told = False
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        busy = (machine_busy_seconds() - before) / window
        if busy < cores:
            return time.monotonic() - began
        if time.monotonic() - began >= timeout:
            _progress(f"    machine still busy ({busy:.2f} cores) after {timeout:g}s: going on")
            return -1.0
        if not told:
            _progress(f"    machine busy ({busy:.2f} cores used by others): waiting")
            told = True


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str  # latency-off, latency-warm, latency-cold, herd, throughput-cold, throughput-warm
    concurrency: int = 1

    @property
    def label(self) -> str:
        if self.name.startswith("throughput"):
            return f"{self.name}-{self.concurrency}"
        return self.name


def measurements(plan: Plan) -> list[Measurement]:
    found = [Measurement("latency-off"), Measurement("latency-warm"), Measurement("latency-cold")]
    found.append(Measurement("herd", plan.herd))
    found += [Measurement("throughput-cold", concurrency) for concurrency in plan.concurrency]
    found.append(Measurement("throughput-warm", plan.warm_concurrency))
    return found


def _run(coroutine: Any) -> Any:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coroutine)


def run_one(
    arguments: argparse.Namespace,
    plan: Plan,
    session_dir: Path,
    number: int,
    measurement: Measurement,
    system_name: str,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    run_dir = session_dir / f"{number:02d}-{system_name}"
    run_dir.mkdir(mode=0o755)
    sink = Child(
        "verify-sink",
        ["-m", "bench.verify_sink", "--host", SINK_HOST, "--control", str(run_dir / "sink.ctl")],
        run_dir / "sink.stderr",
    )
    stack.callback(sink.stop)
    sink_port = int(sink.read(_START_TIMEOUT)["port"])
    control = SinkControl(run_dir / "sink.ctl")

    verify = measurement.name != "latency-off"
    process_limit = None
    if measurement.name == "herd" and system_name != "mailgate":
        process_limit = plan.herd + 100
    fingerprint = source_fingerprint(mailgate_source())
    system = make_system(system_name, run_dir, sink_port, verify, process_limit)
    stack.callback(system.stop, arguments.keep)
    system.start()
    host, port = system.address, system.port
    wait_for_smtp(host, port)
    system.settle()
    tag = f"v{number}"
    meter = CpuMeter(system.roots, sink.pid)
    result: dict[str, Any] = {}
    stats_before = system.stats()

    if measurement.name.startswith("latency"):
        count = plan.latency
        if measurement.name == "latency-cold" and system_name != "mailgate":
            count = plan.cold_postfix
        addresses = _addresses(tag, count)
        if measurement.name == "latency-warm":
            warmup = _run(verify_in_parallel(host, port, addresses, plan.warmup_connections))
            system.settle()
            result["warmup"] = warmup
            result["warmup_sink_rcpts"] = control.call(f"prefix {tag}-")["rcpts"]
            stats_before = system.stats()
        rcpts_before = int(control.call(f"prefix {tag}-")["rcpts"])
        meter.start()
        result.update(_run(sequential_rcpts(host, port, addresses)))
        result["cpu"] = meter.stop()
        system.settle()
        result["sink_rcpts"] = int(control.call(f"prefix {tag}-")["rcpts"]) - rcpts_before
    elif measurement.name == "herd":
        address = f"{tag}-herd@{DOMAIN}"
        meter.start()
        result.update(_run(herd(host, port, address, measurement.concurrency, system.stats)))
        result["cpu"] = meter.stop()
        system.settle()
        result["sink_rcpts"] = int(control.call(f"count {address}")["rcpts"])
    elif measurement.name == "throughput-cold":
        meter.start()
        result.update(
            _run(throughput(host, port, measurement.concurrency, plan.duration, _endless(tag)))
        )
        result["cpu"] = meter.stop()
        system.settle()
        result["sink_rcpts"] = int(control.call(f"prefix {tag}-")["rcpts"])
    elif measurement.name == "throughput-warm":
        pool = _addresses(tag, plan.warm_pool)
        warmup = _run(verify_in_parallel(host, port, pool, plan.warmup_connections))
        system.settle()
        result["warmup"] = warmup
        stats_before = system.stats()
        rcpts_before = int(control.call(f"prefix {tag}-")["rcpts"])
        cycle = itertools.cycle(pool)
        meter.start()
        result.update(_run(throughput(host, port, measurement.concurrency, plan.duration, cycle)))
        result["cpu"] = meter.stop()
        system.settle()
        result["sink_rcpts"] = int(control.call(f"prefix {tag}-")["rcpts"]) - rcpts_before
    else:
        raise ValueError(f"unknown measurement {measurement.name!r}")

    if "stats" not in result:
        after = system.stats()
        result["stats"] = {key: after.get(key, 0) - stats_before.get(key, 0) for key in after}
    result["sink_total"] = control.call("total")
    return {
        "system": system_name,
        "measurement": measurement.label,
        "kind": measurement.name,
        "concurrency": measurement.concurrency,
        **result,
        "log_warnings": system.log_errors(),
        "configuration": system.configuration(),
        "mailgate_fingerprint": fingerprint,
    }


# Report


def _ms(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _rate(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cores(cpu: dict[str, float] | None) -> str:
    if not cpu or not cpu.get("wall_seconds"):
        return "-"
    wall = cpu["wall_seconds"]
    names = ("system", "sink", "client", "other", "kernel")
    return " / ".join(f"{cpu.get(name, math.nan) / wall:.2f}" for name in names)


def _code_text(codes: dict[str, int]) -> str:
    return ", ".join(f"{code}: {count}" for code, count in codes.items()) or "-"


def _other(run: dict[str, Any]) -> float:
    """Cores used by other processes during the measured phase (a clean run: about 0)."""
    cpu = run.get("cpu") or {}
    wall = cpu.get("wall_seconds") or 0
    return float(cpu.get("other", 0)) / wall if wall else math.nan


def _disturbed(run: dict[str, Any]) -> bool:
    """Other processes used more than QUIET_CORES during the measured phase (and more than a
    few clock ticks: a phase of a fraction of a second cannot tell less)."""
    cpu = run.get("cpu") or {}
    wall = float(cpu.get("wall_seconds") or 0)
    other = float(cpu.get("other", 0))
    return wall > 0 and other > max(QUIET_CORES * wall, 5 / _TICKS)


def latency_rows(runs: list[dict[str, Any]], systems: list[str]) -> list[dict[str, Any]]:
    """Per system and mode, the median over repeated runs of each latency percentile."""
    rows = []
    for system in systems:
        for mode in ("off", "warm", "cold"):
            group = [
                run
                for run in runs
                if run["system"] == system
                and run["measurement"] == f"latency-{mode}"
                and "error" not in run
            ]
            if not group:
                continue
            codes: Counter[str] = Counter()
            for run in group:
                codes.update(run["codes"])
            rows.append(
                {
                    "system": system,
                    "mode": mode,
                    "runs": len(group),
                    "rcpts": group[0]["rcpts"],
                    **{
                        stat: median([run["latency_ms"][stat] for run in group])
                        for stat in ("p50", "p90", "p99", "max")
                    },
                    "p99_each": [run["latency_ms"]["p99"] for run in group],
                    "codes": dict(sorted(codes.items())),
                    "sink_rcpts_max": max(run["sink_rcpts"] for run in group),
                    "other_cores_max": max(_other(run) for run in group),
                }
            )
    return rows


def added_latency(rows: list[dict[str, Any]], systems: list[str]) -> list[dict[str, Any]]:
    """Warm minus off, from the medians, per system."""
    found = {(row["system"], row["mode"]): row for row in rows}
    added = []
    for system in systems:
        off, warm = found.get((system, "off")), found.get((system, "warm"))
        if off is None or warm is None:
            continue
        p99 = warm["p99"] - off["p99"]
        added.append(
            {
                "system": system,
                "p50_ms": warm["p50"] - off["p50"],
                "p99_ms": p99,
                "target_met": p99 < TARGET_ADDED_P99_MS,
            }
        )
    return added


def markdown(
    runs: list[dict[str, Any]], systems: list[str]
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    out: list[str] = []
    failed = [run for run in runs if "error" in run]
    if failed:
        out.append("Failed runs:\n")
        for run in failed:
            out.append(f"* {run['system']} {run['measurement']}: {run['error']}")
        out.append("")
    order = {name: index for index, name in enumerate(systems)}
    ok = sorted(
        (run for run in runs if "error" not in run),
        key=lambda run: (order[run["system"]], run.get("repeat", 0)),
    )

    rows = latency_rows(ok, systems)
    added = added_latency(rows, systems)
    if rows:
        out.append("### 1. RCPT latency, one connection, RCPTs one at a time (ms)\n")
        out.append(
            "| system | mode | runs | RCPTs | p50 | p90 | p99 | max | p99 of each run | "
            "replies | probes at sink | other cores |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|")
        for row in rows:
            each = ", ".join(_ms(value) for value in row["p99_each"])
            out.append(
                f"| {row['system']} | {row['mode']} | {row['runs']} | {row['rcpts']} | "
                f"{_ms(row['p50'])} | {_ms(row['p90'])} | {_ms(row['p99'])} | "
                f"{_ms(row['max'])} | {each} | {_code_text(row['codes'])} | "
                f"{row['sink_rcpts_max']} | {row['other_cores_max']:.2f} |"
            )
        out.append("\n(medians over the runs; probes at sink: the most in one run)")
    if added:
        out.append("\nLatency added by verification with a warm cache (warm - off, medians):\n")
        out.append(
            f"| system | p50 added (ms) | p99 added (ms) | < {TARGET_ADDED_P99_MS:g} ms p99 |"
        )
        out.append("|---|---:|---:|---|")
        for row in added:
            verdict = "yes" if row["target_met"] else "NO"
            out.append(
                f"| {row['system']} | {row['p50_ms']:+.3f} | {row['p99_ms']:+.3f} | {verdict} |"
            )

    herds = [run for run in ok if run["kind"] == "herd"]
    if herds:
        out.append("\n### 2. Concurrent RCPTs for one uncached address\n")
        out.append(
            "| system | connections ready | replies | RCPTs at sink | probes (mailgate) | "
            "reply after release p50 / max (ms) |"
        )
        out.append("|---|---:|---|---:|---:|---|")
        for run in herds:
            probes = run["stats"].get("verify.probes", "-") if run["stats"] else "-"
            after = run["answered_after_release_ms"]
            failures = run["open_error_count"] + run["rcpt_error_count"]
            replies = _code_text(run["codes"]) + (f", errors: {failures}" if failures else "")
            out.append(
                f"| {run['system']} | {run['ready']}/{run['connections']} | {replies} | "
                f"{run['sink_rcpts']} | {probes} | {_ms(after['p50'])} / {_ms(after['max'])} |"
            )

    throughputs = [run for run in ok if run["kind"].startswith("throughput")]
    if throughputs:
        out.append("\n### 3. Verification throughput (one RCPT at a time per connection)\n")
        out.append(
            "| system | addresses | connections | seconds | RCPTs | 250/s | replies | "
            "p50 / p99 (ms) | probes at sink | cores: system / sink / client / other / kernel |"
        )
        out.append("|---|---|---:|---:|---:|---:|---|---|---:|---|")
        throughputs.sort(key=lambda run: (run["kind"], run["concurrency"], order[run["system"]]))
        for run in throughputs:
            kind = "never seen" if run["kind"] == "throughput-cold" else "verified (warm)"
            latency = run["latency_ms"]
            out.append(
                f"| {run['system']} | {kind} | {run['connections']} | {run['seconds']:.1f} | "
                f"{run['rcpts']} | {_rate(run['accepted_per_s'])} | {_code_text(run['codes'])} | "
                f"{_ms(latency['p50'])} / {_ms(latency['p99'])} | {run['sink_rcpts']} | "
                f"{_cores(run.get('cpu'))} |"
            )
    return "\n".join(out) + "\n", rows, added


# Main


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED: {run['error']}"
    parts = [f"codes {_code_text(run.get('codes', {}))}", f"sink RCPTs {run.get('sink_rcpts')}"]
    if "latency_ms" in run:
        parts.append(
            f"p50 {_ms(run['latency_ms']['p50'])} ms, p99 {_ms(run['latency_ms']['p99'])} ms"
        )
    if "accepted_per_s" in run:
        parts.append(f"{_rate(run['accepted_per_s'])} verified/s")
    if run.get("stats"):
        parts.append(f"probes {run['stats'].get('verify.probes', 0)}")
    return ", ".join(parts)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _raise_file_limit(wanted: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def schedule(
    plan: Plan, systems: list[str], kinds: list[str], repeat: int, latency_repeat: int
) -> list[tuple[int, Measurement, str]]:
    """Every (round, measurement, system), in rounds (a measurement repeated runs once per
    round), the system order alternating from one measurement to the next to spread drift;
    postfix-1s only where the poll delay matters."""
    runs = []
    chosen = [measurement for measurement in measurements(plan) if measurement.name in kinds]

    def repeats(measurement: Measurement) -> int:
        if measurement.name in ("latency-off", "latency-warm"):
            return max(repeat, latency_repeat)
        return repeat

    position = 0
    for round_ in range(max(repeats(measurement) for measurement in chosen)):
        for measurement in chosen:
            if round_ >= repeats(measurement):
                continue
            order = [
                name
                for name in systems
                if name != "postfix-1s" or measurement.name in MEASUREMENTS_1S
            ]
            if position % 2:
                order.reverse()
            position += 1
            runs += [(round_, measurement, name) for name in order]
    return runs


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if os.geteuid() != 0 and any(name.startswith("postfix") for name in arguments.systems):
        _progress("Postfix instances need root; run as root or with --systems mailgate")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    plan = make_plan(arguments)
    limit = _raise_file_limit(max(4 * plan.herd + 1000, 4096))
    machine = machine_info()
    machine["nofile_limit"] = list(limit)
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []  # disturbed by other processes, measured again
    interrupted = False
    todo = schedule(
        plan, arguments.systems, arguments.measurements, arguments.repeat, arguments.latency_repeat
    )
    _progress(f"{len(todo)} run(s) on {machine['nproc']} CPUs")
    try:
        with session_directory(arguments.keep) as session_dir:
            number = 0
            for position, (round_, measurement, system_name) in enumerate(todo, start=1):
                for attempt in range(1, _ATTEMPTS + 1):
                    number += 1
                    _progress(f"[{position}/{len(todo)}] {system_name}: {measurement.label}")
                    waited = 0.0 if arguments.no_wait else wait_for_quiet()
                    began = time.monotonic()
                    try:
                        with contextlib.ExitStack() as stack:
                            run = run_one(
                                arguments, plan, session_dir, number, measurement, system_name,
                                stack,
                            )  # fmt: skip
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except Exception as error:  # one broken run must not lose the others
                        run = {
                            "system": system_name,
                            "measurement": measurement.label,
                            "kind": measurement.name,
                            "concurrency": measurement.concurrency,
                            "error": f"{type(error).__name__}: {error}",
                            "traceback": traceback.format_exc(limit=-6),
                        }
                    run["repeat"] = round_
                    run["attempt"] = attempt
                    run["waited_for_quiet_s"] = round(waited, 1)
                    run["wall_seconds"] = round(time.monotonic() - began, 1)
                    _progress(f"    {_describe(run)} ({run['wall_seconds']} s)")
                    other = _other(run)
                    if arguments.no_wait or not _disturbed(run) or attempt == _ATTEMPTS:
                        runs.append(run)
                        break
                    # Something else ran meanwhile (a test suite, another benchmark): again.
                    _progress(f"    disturbed: other processes used {other:.2f} cores; again")
                    discarded.append(run)
    except KeyboardInterrupt:
        interrupted = True
        _progress("interrupted: everything started was stopped; reporting what finished")

    measured = check_sources(runs)
    table, latency, added = markdown(runs, arguments.systems)
    configurations: dict[str, Any] = {}
    for run in runs:
        if "configuration" in run:
            mode = "verification off" if run["kind"] == "latency-off" else "verification on"
            key = f"{run['system']} ({mode})"
            configurations.setdefault(key, run["configuration"])
    output = arguments.output or RESULTS_DIR / (
        "verify-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine,
        "options": {
            "plan": dataclasses.asdict(plan),
            "systems": arguments.systems,
            "quick": arguments.quick,
            "recipient_limit": RECIPIENT_LIMIT,
            "renew_every": RENEW_EVERY,
            "measurements": arguments.measurements,
            "repeat": arguments.repeat,
            "latency_repeat": arguments.latency_repeat,
            "note": arguments.note,
        },
        "interrupted": interrupted,
        "sources_changed": len(measured) > 1,
        "configurations": configurations,
        "runs": runs,
        "discarded_runs": discarded,
        "latency_summary": latency,
        "added_latency_warm": added,
        "table": table,
    }
    output.write_text(json.dumps(_finite(document), indent=1) + "\n")
    print(
        f"## Recipient verification: mailgate vs Postfix ({machine['date']}, "
        f"{machine['nproc']} CPUs, Python {machine['python']}, Postfix {machine['postfix']}, "
        f"mailgate {machine['mailgate_commit']} {machine['mailgate_fingerprint']}"
        + (f", {arguments.note}" if arguments.note else "")
        + ")\n"
    )
    print(table)
    print(f"JSON: {output}")
    failed = interrupted or any("error" in run for run in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
