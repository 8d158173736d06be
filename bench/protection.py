"""What scanning costs: mailgate with all five protection modules on against its core path, same
load, same run, with the scan engines local.

    uv run python -m bench.protection                 # 2 KB and 100 KB x 10 and 50 connections
    uv run python -m bench.protection --quick         # smoke test: 2 KB, 2 connections, 50 msgs
    uv run --with py-spy python -m bench.protection --profile --systems all --concurrency 10
                                                       # where the pipeline's time goes
    uv run python -m bench.protection --systems core,all --modules content,phishing,auth
                                                       # the in-process modules alone
    uv run python -m bench.protection --systems core,all --engine-load
                                                       # also against core-loaded (below)
    uv run python -m bench.protection --systems core,all --interleave 4
                                                       # also in one process (bench.interleave)

Systems (``--systems``, default all three):

* ``core``: mailgate as :class:`bench.systems.Mailgate` configures it: every module off
  (``protection.external_services`` all false), i.e. the relay path without scanning;
* ``all``: the same with all five modules on: Anti-Virus (a private clamd with the EICAR
  signature only), Anti-Spam (a private, offline Rspamd; both asked over their Unix sockets, as
  on one host), Content Filtering and Anti-Phishing
  (in-process), Mail Authentication (SPF, DKIM, DMARC, with real DNS lookups to a local DNS
  server that publishes SPF and DMARC records for the load's sender domain, so every message
  passes SPF from 127.0.0.100 and DMARC by SPF alignment; mailgate's resolver keeps each
  answer for its TTL, 300 s, as a real deployment's would);
* ``postfix``: Postfix relaying the same load, for reference.

With ``core`` and ``all`` both measured, each ``all`` run is followed by ``core-paced``
(:data:`PACED`): the core path again, offered the messages at the rate ``all`` accepted them.
The modules cut the rate to a third or less (Rspamd's CPU is the limit), and the core path's
own cost per message grows as the rate falls: fewer messages share each event-loop turn,
fsync, log-writer wake-up and socket read. The pipeline's overhead is therefore taken against
the core path at the same rate; the difference against the unpaced core path is reported too.

``--engine-load`` adds, after each ``core-paced`` run, ``core-loaded`` (:data:`LOADED`): the
core path at the same rate while :mod:`bench.engine_load`, a process of its own, asks clamd
and Rspamd to scan the same message at that rate with mailgate's own Anti-Virus and Anti-Spam
checks. The machine then does the engines' work of the all-modules run beside a mailgate that
does not scan: against it, the overhead leaves out what the engines running beside mailgate
cost its process (shared cores and caches), and the engine load's own CPU per message is what
the two exchanges cost on their own.

Placement (``--placement``): by default (``apart``) the system under test (every mailgate run,
scanning or not, and Postfix) is bound to the first CPU, and everything else to the others:
clamd and Rspamd, as a host sized for scanning gives its engines their own cores, and the load
generators, sink and DNS server, which stand for other hosts. (Left unbound, these went
where a CPU was free: beside mailgate when the engines kept the other CPU busy in an
all-modules run, away from it in the core-paced run that followed, which favoured the control
run.) Left to the scheduler (``shared``), a process woken by an
engine's answer is often run on the CPU the engine just used, and mailgate's work after the
wake-up (the answer, the rules, queueing) then runs on caches the engine filled. On two CPUs,
over alternated invocations at 100 KB, the overhead was about 0.2 ms per message higher
shared than apart (0.92 against 0.70 on average), most of it system time; either way it still
varies by several tenths of a millisecond from run to run. The engines' mere load beside a
core path that does not wait for them cost it nothing measurable (``core-loaded``, below).
``shared`` measures the mixed case.

``--modules`` turns on only some modules in ``all`` (e.g. ``content,phishing,auth``: the
in-process ones), to see what each part of the pipeline costs.

Every system gets the same load (message, size, connections); the number of messages is sized
for runs of about 10-20 s each: :mod:`bench.run`'s counts for ``core`` and ``postfix``, fewer
for ``all``, which is several times slower (``--messages`` sets one count for all).

The engines (clamd, Rspamd, the DNS server on 127.0.0.53) are started once, before the first
run, and stopped at the end. Each run is :func:`bench.run.run_one`'s (sink, system, load
generator, warm-up, measured messages, drain, PSS sampling); this module adds, for the
measurement window: the mailgate counters ``scan.MODULE.VERDICT`` (control socket ``stats``),
the CPU time of the engines' process trees and of the DNS server's thread, the DNS queries, and
for ``all`` the message log's verdicts of every measured message. A run of ``all`` in which a
module did not scan every message as clean, or in which a message was not delivered, fails the
benchmark (exit status 1), its measurements kept.

Overhead (:data:`OVERHEAD_METHOD`): CPU ms per message of the mailgate process (all its
threads) with all modules minus the same without scanning, in the same scenario at the same
rate (``core-paced``). clamd and
Rspamd are processes of their own, so the time spent inside them is excluded by construction;
what mailgate spends talking to them (requests, replies, parsing) is included, which is its
pipeline's own cost. The project's target: under 1 ms per message. With ``--repeat``, the
figure is the difference of the median runs, and the range of each repeat's own difference
(its ``all`` run against the ``core-paced`` run that followed it) is shown beside it: on a
shared virtual machine identical runs differ by more than most changes.

Where the overhead is: each mailgate run also records, over the same window, the CPU time of
its main thread (the event loop, where the pipeline runs) and of its other threads (spool
writes and fsyncs, the message log's writer, removals), and how often the loop thread went to
sleep (voluntary context switches: waiting in epoll, or for a lock) and was preempted
(involuntary ones), per message, all modules against the control run.

Markdown goes to stdout, everything (machine, engines, configurations, runs, checks) to a JSON
file under ``bench/results/``. Everything started is stopped and removed at the end, also on
Ctrl-C or an error (``--keep`` keeps the data directories and engine logs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from bench import interleave, report, wake
from bench.loadgen import SENDER
from bench.memory import PssSampler, thread_counters, tree_cpu_seconds
from bench.proc import Child, pin
from bench.run import (
    DEFAULT_MESSAGES,
    RESULTS_DIR,
    Profiler,
    Scenario,
    _describe,
    _finite,
    _int_list,
    _interrupt,
    _progress,
    check_sources,
    collapsed_stacks,
    machine_info,
    plan,
    run_one,
    session_directory,
)
from bench.systems import CLIENT_ADDRESS, Mailgate, Postfix, SystemUnderTest
from mailgate import control
from mailgate.testing.clamd import ClamdInstance, clamd_binary
from mailgate.testing.dns_server import DnsServer, DnsZone
from mailgate.testing.rspamd import OFFLINE_DISABLED_MODULES, RSPAMD_BINARY, RspamdInstance

SYSTEMS = ("core", "all", "postfix")
PACED = "core-paced"  # the core path at the rate of the all-modules run before it
LOADED = "core-loaded"  # the same, with the engines scanning the same load beside it
CORE_SYSTEMS = ("core", PACED, LOADED)
MODULES = ("antivirus", "antispam", "content", "phishing", "auth")
PLACEMENTS = ("apart", "shared")  # where mailgate and the engines run: see placement()
ENGINE_MODULES = ("antivirus", "antispam")  # the modules that ask an engine (bench.engine_load)
OVERHEAD_TARGET_MS = 1.0
# Messages per all-modules run, by body size, at 10 or more connections and at fewer: ~15-20 s
# at the rates measured on a 2-core machine (~130 msgs/s at 2 KB, ~45 at 100 KB).
ALL_MODULES_MESSAGES = {2048: (2500, 1500), 102400: (800, 500)}
ALL_MODULES_MESSAGES_OTHER = (600, 400)

SENDER_DOMAIN = SENDER.rpartition("@")[2]
SPF_RECORD = f"v=spf1 ip4:{CLIENT_ADDRESS} -all"
DMARC_RECORD = "v=DMARC1; p=reject"
# The load generator's reverse name, for Rspamd's own PTR lookup (mailgate sends no Hostname).
CLIENT_NAME = "loadgen.bench.test"
PHISHING_DOMAINS = ["phish.example", "secure-login-verify.example", "paypa1.example"]
DNS_ADDRESS = "127.0.0.53"
RSPAMD_ADDRESS = "127.0.0.60"

OVERHEAD_METHOD = (
    "overhead = CPU ms/msg of the mailgate process tree (user+system, all threads, from the "
    "first measured message until the last accepted one reached the sink) with all five "
    "modules on, minus the same for the core path (modules off), same scenario and load, "
    "offered at the rate the all-modules run accepted (core-paced; the difference against "
    "the unpaced core path, whose cost per message is lower at its higher rate, is shown "
    "beside it). "
    "clamd and Rspamd are separate processes (their CPU is reported apart), so time inside "
    "them is excluded by construction; mailgate's own work to call them is included. The DNS "
    "server answering the authentication lookups runs in the benchmark's process, not "
    "mailgate's."
)

# The engine load shares its CPUs with the engines, the load generator and the sink: where they
# are saturated it falls behind the rate it is asked for, and the engines then work less beside
# the core path than beside the all-modules run. That overstates the overhead against
# core-loaded (the report shows the share kept); below this share the comparison means nothing.
_LOAD_SHARE = 0.5
_LOAD_START_TIMEOUT = 60.0  # for bench.engine_load's first scans
_LOAD_STOP_TIMEOUT = 60.0  # for its scans in flight to end
_LOG_TIMEOUT = 30.0  # for the message log to record the last messages (it flushes every 0.25 s)
_POLL = 0.1


# Arguments


def _selection(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: some of ``allowed``, comma-separated, returned in their order."""

    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{what} are {', '.join(allowed)}; got {text!r}")
        return [name for name in allowed if name in names]

    return parse


_systems = _selection(SYSTEMS, "systems")
_modules = _selection(MODULES, "modules")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.protection",
        description="mailgate with all protection modules on against its core path.",
    )
    parser.add_argument(
        "--sizes", type=_int_list, default=[2048, 102400], help="body sizes (default 2048,102400)"
    )
    parser.add_argument(
        "--concurrency", type=_int_list, default=[10, 50], help="connections (default 10,50)"
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help=f"messages per run, every system (default per size: core and postfix "
        f"{DEFAULT_MESSAGES}, all {ALL_MODULES_MESSAGES})",
    )
    parser.add_argument(
        "--systems",
        type=_systems,
        default=None,
        help="systems: core, all, postfix (default all three; --quick: core,all)",
    )
    parser.add_argument(
        "--modules",
        type=_modules,
        default=list(MODULES),
        help=f"the modules the all-modules system turns on (default all: {','.join(MODULES)})",
    )
    parser.add_argument(
        "--engine-load",
        action="store_true",
        help=f"after each all-modules run, also the core path with the engines loaded beside "
        f"it ({LOADED}, see bench.engine_load)",
    )
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="PAIRS",
        help="after each all-modules run, also PAIRS pairs of segments in one mailgate "
        "process, modules on and off in turn at 90%% of the all-modules rate "
        "(see bench.interleave)",
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="apart",
        help="apart (default): the system under test bound to the first CPU, the engines, load "
        "generators and sink to the others; shared: every process where the scheduler puts it",
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up messages per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per system and scenario")
    parser.add_argument("--pss-interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 2 KB, 2 connections, 50 messages"
    )
    parser.add_argument("--keep", action="store_true", help="keep data directories and logs")
    parser.add_argument("--output", type=Path, default=None, help="JSON result file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the all-modules mailgate with py-spy (uv run --with py-spy ...)",
    )
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.sizes = [2048]
        arguments.concurrency = [2]
        arguments.messages = arguments.messages or 50
        arguments.warmup = 4 if arguments.warmup is None else arguments.warmup
        arguments.systems = arguments.systems or ["core", "all"]
    arguments.systems = arguments.systems or list(SYSTEMS)
    if arguments.repeat < 1:
        parser.error("--repeat must be at least 1")
    if arguments.generators < 1:
        parser.error("--generators must be at least 1")
    if arguments.interleave < 0 or (arguments.interleave and "all" not in arguments.systems):
        parser.error("--interleave takes a number of pairs, and needs 'all' among --systems")
    if arguments.profile and (
        "all" not in arguments.systems
        or subprocess.run(["py-spy", "--version"], capture_output=True, check=False).returncode
    ):
        parser.error("--profile needs 'all' among --systems and py-spy (uv run --with py-spy)")
    return arguments


def messages_for(system: str, scenario: Scenario, arguments: argparse.Namespace) -> Scenario:
    """The scenario as ``system`` runs it: the same load (size, connections, message), and as
    many messages as take about 10-20 s on a 2-core machine. All modules run at a fraction of
    the core path's rate, so they get fewer messages (:data:`ALL_MODULES_MESSAGES`) unless
    ``--messages`` fixes the count for every system."""
    if system != "all" or arguments.messages is not None:
        return scenario
    many, few = ALL_MODULES_MESSAGES.get(scenario.size, ALL_MODULES_MESSAGES_OTHER)
    count = many if scenario.concurrency >= 10 else few
    return dataclasses.replace(scenario, messages=max(count, scenario.concurrency))


# The engines


def _version(argv: list[str]) -> str:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (completed.stdout.strip().splitlines() or ["unknown"])[0]


def _thread_cpu_seconds(native_id: int | None) -> float:
    """CPU time of one thread of this process (the DNS server's)."""
    if native_id is None:
        return math.nan
    try:
        text = Path(f"/proc/self/task/{native_id}/stat").read_bytes()
    except OSError:
        return math.nan
    fields = text[text.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Engines:
    """clamd, Rspamd and the DNS server, for the whole benchmark."""

    def __init__(self, directory: Path) -> None:
        self.zone = DnsZone()
        self.zone.add(SENDER_DOMAIN, "TXT", SPF_RECORD)
        self.zone.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", DMARC_RECORD)
        self.zone.add(CLIENT_ADDRESS, "PTR", CLIENT_NAME)
        self.zone.add(CLIENT_NAME, "A", CLIENT_ADDRESS)
        self.dns = DnsServer(self.zone, host=DNS_ADDRESS)
        self.clamd = ClamdInstance(directory / "clamd")  # the EICAR signature only
        self.rspamd: RspamdInstance | None = None
        self.directory = directory

    def start(self, stack: contextlib.ExitStack, cpus: Collection[int] | None = None) -> None:
        """Start the engines; with ``cpus``, clamd and Rspamd (every process and thread) are
        bound to those CPUs."""
        stack.callback(self.dns.stop)
        self.dns.start()
        stack.callback(self.clamd.stop)
        self.clamd.start()
        # Offline configuration; the lookups left (the client's PTR) go to the DNS server.
        self.rspamd = RspamdInstance(
            RSPAMD_ADDRESS,
            name="bench-rspamd",
            base_dir=self.directory,
            nameserver=self.dns.address,
        )
        stack.callback(self.rspamd.stop)
        self.rspamd.start()
        if cpus:
            pin(self.pids().values(), cpus)

    @property
    def rspamd_url(self) -> str:
        assert self.rspamd is not None
        return self.rspamd.url

    @property
    def rspamd_socket(self) -> str:
        assert self.rspamd is not None
        return str(self.rspamd.socket_path)

    def pids(self) -> dict[str, int]:
        found = {"clamd": self.clamd.pid, "rspamd": self.rspamd.pid if self.rspamd else None}
        return {name: pid for name, pid in found.items() if pid is not None}

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each engine's process tree, and of the DNS server thread."""
        seconds = {name: tree_cpu_seconds([pid]) for name, pid in self.pids().items()}
        thread = getattr(self.dns, "_thread", None)
        seconds["dns"] = _thread_cpu_seconds(getattr(thread, "native_id", None))
        return seconds

    def describe(self) -> dict[str, Any]:
        assert self.rspamd is not None
        return {
            "clamd": {
                "version": _version([str(clamd_binary()), "--version"]),
                "endpoint": self.clamd.endpoint,
                "signatures": sorted(self.clamd.signatures),
                "limits": self.clamd.limits,
                "startup_seconds": self.clamd.startup_seconds,
            },
            "rspamd": {
                "version": _version([str(RSPAMD_BINARY), "--version"]),
                "url": self.rspamd.url,
                "socket": str(self.rspamd.socket_path),
                "workers": 1,
                "configuration": "mailgate.testing.rspamd, offline: stock rules and actions, "
                "no Redis, modules that ask the internet disabled",
                "disabled_modules": list(OFFLINE_DISABLED_MODULES),
                "nameserver": self.rspamd.nameserver,
            },
            "dns": {
                "address": self.dns.address,
                "records": {
                    SENDER_DOMAIN: ["TXT", SPF_RECORD],
                    f"_dmarc.{SENDER_DOMAIN}": ["TXT", DMARC_RECORD],
                    CLIENT_ADDRESS: ["PTR", CLIENT_NAME],
                    CLIENT_NAME: ["A", CLIENT_ADDRESS],
                },
                "note": "runs in a thread of the benchmark's own process",
            },
        }


# The systems


class ProtectedMailgate(Mailgate):
    """:class:`bench.systems.Mailgate` with all five modules on, using the engines."""

    def __init__(
        self,
        work_dir: Path,
        sink_port: int,
        engines: Engines,
        modules: Sequence[str] = MODULES,
        cpus: Collection[int] | None = None,
    ) -> None:
        super().__init__(work_dir, sink_port, cpus)
        self.config["protection"] = protection_config(engines, modules)
        self.config["advanced"]["dns"] = {"nameservers": [engines.dns.address]}
        # The gateway holds the same dict and writes it to the store when it starts.

    def configuration(self) -> dict[str, Any]:
        description = super().configuration()
        description["notes"] = (
            "all five modules on; the default rule (no client network condition) scans "
            "mail from the trusted load generator too; every other setting at its default"
        )
        return description


def protection_config(engines: Engines, modules: Sequence[str] = MODULES) -> dict[str, Any]:
    """The Protection settings with ``modules`` on and the others off."""
    auth = "auth" in modules
    return {
        "antivirus": {"enabled": "antivirus" in modules, "clamd": engines.clamd.endpoint},
        "antispam": {
            "enabled": "antispam" in modules,
            "url": engines.rspamd_url,
            "socket": engines.rspamd_socket,
        },
        "content": {"enabled": "content" in modules},
        "phishing": {"enabled": "phishing" in modules, "domains": PHISHING_DOMAINS},
        "external_services": {"use_spf": auth, "use_dkim": auth, "use_dmarc": auth},
    }


def placement(name: str) -> dict[str, list[int]] | None:
    """The CPUs of mailgate and of the engines under placement ``name`` (:data:`PLACEMENTS`),
    or None when nothing is bound (``shared``, or a single CPU to share)."""
    available = sorted(os.sched_getaffinity(0))
    if name == "shared" or len(available) < 2:
        return None
    return {"mailgate": available[:1], "engines": available[1:]}


def placement_text(cpus: dict[str, list[int]] | None) -> str:
    if cpus is None:
        return "Placement: shared (no process bound to a CPU)."
    return (
        f"Placement: apart: the system under test (mailgate, or Postfix) bound to CPU "
        f"{_cpus(cpus['mailgate'])}; clamd, Rspamd, the load generator, sink, DNS server and "
        f"engine load to CPU {_cpus(cpus['engines'])}."
    )


def _cpus(cpus: list[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def make_factory(
    engines: Engines, modules: Sequence[str] = MODULES, cpus: Collection[int] | None = None
) -> Callable[[str, Path, int], SystemUnderTest]:
    """The systems by name, each bound to ``cpus`` (None: unbound)."""

    def factory(name: str, work_dir: Path, sink_port: int) -> SystemUnderTest:
        if name in CORE_SYSTEMS:
            return Mailgate(work_dir, sink_port, cpus)
        if name == "all":
            return ProtectedMailgate(work_dir, sink_port, engines, modules, cpus)
        if name == "postfix":
            return Postfix(work_dir, sink_port, cpus)
        raise ValueError(f"unknown system {name!r}")

    return factory


# What each run adds to bench.run's measurements


def _scan_counters(system: SystemUnderTest) -> dict[str, int]:
    if not isinstance(system, Mailgate):
        return {}
    stats = control.call(system.data_dir / "control.sock", "stats")
    return {name: int(value) for name, value in stats.items() if name.startswith("scan.")}


def message_log(database: Path, since: float, expected: int) -> dict[str, Any]:
    """What mailgate's message log says of the messages received since ``since``: per module,
    how many were clean, and how many passed SPF and DMARC. Waits (bounded) until ``expected``
    records are there: the log is written by a thread in batches."""
    deadline = time.monotonic() + _LOG_TIMEOUT
    uri = f"file:{database}?mode=ro"
    while True:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as connection:
            rows = connection.execute(
                "SELECT verdicts, action FROM message_log WHERE received >= ?", (since,)
            ).fetchall()
        if len(rows) >= expected or time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    clean: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    spf_pass = dmarc_pass = 0
    example: dict[str, str] = {}
    for text, action in rows:
        verdicts: dict[str, str] = json.loads(text)
        example = example or verdicts
        actions[action] += 1
        for module, verdict in verdicts.items():
            if verdict == "clean" or verdict.startswith("clean "):
                clean[module] += 1
        auth = verdicts.get("auth", "")
        spf_pass += "spf=pass" in auth
        dmarc_pass += "dmarc=pass" in auth
    return {
        "records": len(rows),
        "clean": {module: clean[module] for module in MODULES},
        "spf_pass": spf_pass,
        "dmarc_pass": dmarc_pass,
        "actions": dict(actions),
        "example_verdicts": example,
    }


class Probe:
    """The probe for :func:`bench.run.run_one` (see :data:`bench.run.Probe`): counters, engine
    CPU and memory, DNS queries and the message log over the measurement window."""

    def __init__(self, engines: Engines, arguments: argparse.Namespace) -> None:
        self.engines = engines
        self.interval = arguments.pss_interval
        self.modules: list[str] = arguments.modules
        self._samplers: list[PssSampler] = []
        # Set by the caller for a run of LOADED: the load the engines get beside it.
        self.load: Scenario | None = None
        self.run_dir: Path = Path()
        self._loads: list[Child] = []

    def close(self) -> None:
        """Stop what a run that failed midway left running."""
        while self._samplers:
            self._samplers.pop().stop()
        while self._loads:
            self._loads.pop().stop()

    def _start_load(self, load: Scenario) -> Child:
        """bench.engine_load asking the engines what the all-modules run asked them."""
        argv = [
            "-m", "bench.engine_load",
            "--protection", json.dumps(protection_config(self.engines, self.modules)),
            "--size", str(load.size),
            "--rate", str(load.rate),
            "--connections", str(load.concurrency),
        ]  # fmt: skip
        child = Child("engine-load", argv, self.run_dir / "engine-load.stderr")
        self._loads.append(child)
        ready = child.read(_LOAD_START_TIMEOUT)
        if not ready.get("ready"):
            raise RuntimeError(f"engine load: the engines did not answer clean: {ready}")
        return child

    def __call__(self, system: SystemUnderTest) -> Callable[[], dict[str, Any]]:
        engines = self.engines
        counters_before = _scan_counters(system)
        queries_before = engines.dns.queries.snapshot()
        cpu_before = engines.cpu()
        sampler = PssSampler(lambda: list(engines.pids().values()), self.interval)
        self._samplers.append(sampler.start())
        load = self._start_load(self.load) if self.load is not None else None
        load_cpu_before = tree_cpu_seconds([load.pid]) if load is not None else 0.0
        process = system.roots()[0] if isinstance(system, Mailgate) else None
        threads_before = thread_counters(process) if process is not None else None
        since = time.time()

        def after() -> dict[str, Any]:
            cpu_after = engines.cpu()
            load_report: dict[str, Any] | None = None
            if load is not None:
                load_cpu = tree_cpu_seconds([load.pid]) - load_cpu_before
                load.send("stop")
                load_report = {**load.read(_LOAD_STOP_TIMEOUT), "cpu_seconds": round(load_cpu, 3)}
                self._loads.remove(load)
                load.stop()
            self._samplers.remove(sampler)
            memory = sampler.stop()
            counters_after = _scan_counters(system)
            queries = Counter(engines.dns.queries.snapshot())
            queries.subtract(queries_before)
            scan = interleave.scan_delta(counters_before, counters_after)
            extra: dict[str, Any] = {
                "scan": scan,
                "engine_cpu_seconds": {
                    name: round(cpu_after[name] - cpu_before[name], 3) for name in cpu_after
                },
                "engine_peak_pss_kib": memory.peak_pss_kib,
                "dns_queries": {
                    f"{name} {rtype}": count
                    for (name, rtype), count in sorted(queries.items())
                    if count
                },
            }
            if load_report is not None:
                extra["engine_load"] = load_report
            threads_after = thread_counters(process) if process is not None else None
            if threads_before is not None and threads_after is not None:
                extra["threads"] = dataclasses.asdict(threads_after.minus(threads_before))
            if isinstance(system, ProtectedMailgate):
                scanned = sum(scan.get("auth", {}).values())
                extra["message_log"] = message_log(system.data_dir / "mailgate.db", since, scanned)
            return extra

        return after


def run_interleaved(
    arguments: argparse.Namespace,
    session_dir: Path,
    number: int,
    scenario: Scenario,
    engines: Engines,
    cpus: Collection[int] | None,
) -> dict[str, Any]:
    """One interleaved run (:mod:`bench.interleave`) at the rate of ``scenario``:
    its segments, the overhead of its pairs, and what went wrong (a failed run included)."""

    def make_system(sink_port: int) -> tuple[Mailgate, dict[bool, dict[str, Any]]]:
        system = ProtectedMailgate(run_dir, sink_port, engines, arguments.modules, cpus)
        off = json.loads(json.dumps(system.config))
        off["protection"] = protection_config(engines, [])  # every module off: the core path
        return system, {True: system.config, False: off}

    run_dir = session_dir / f"{number:02d}-{interleave.INTERLEAVED}"
    run: dict[str, Any] = {
        "system": interleave.INTERLEAVED,
        "size": scenario.size,
        "concurrency": scenario.concurrency,
        "offered_per_s": scenario.rate,
        "messages_per_segment": scenario.messages,
        "pairs": arguments.interleave,
    }
    try:
        with contextlib.ExitStack() as stack:
            segments = interleave.run_interleaved(arguments, run_dir, f"r{number}", scenario,
                                                  arguments.interleave, make_system,
                                                  _scan_counters, stack)  # fmt: skip
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # one broken run must not lose the others
        return {**run, "error": f"{type(error).__name__}: {error}",
                "problems": [f"run failed: {type(error).__name__}: {error}"]}  # fmt: skip
    return {
        **run,
        "segments": segments,
        **interleave.summary(segments),
        "problems": interleave.check(segments, arguments.modules),
    }


def _describe_interleaved(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED: {run['error']}"
    pairs = ", ".join(f"{value:.2f}" for value in run["overhead_per_pair_ms_per_message"])
    return (
        f"CPU ms/msg off {run['off_cpu_ms_per_message']:.2f} → on "
        f"{run['on_cpu_ms_per_message']:.2f} (medians), overhead per pair {pairs}"
    )


def interleaved_markdown(runs: list[dict[str, Any]]) -> str:
    """The interleaved runs' table: one row per run."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return ""
    lines = [
        "",
        "In one process (bench.interleave: segments with the modules off and on in turn, "
        f"ABBA, offered {interleave.RATE_SHARE:.0%} of the all-modules rate; the overhead of "
        "each pair is on minus off):",
        "",
        "| size | conns | pairs x messages | msg/s off / on | CPU ms/msg off → on "
        "| overhead ms/msg (median; pairs) | user / sys | loop thread | < 1 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in good:
        overhead = run["overhead_ms_per_message"]
        pairs = ", ".join(f"{value:.2f}" for value in run["overhead_per_pair_ms_per_message"])
        lines.append(
            f"| {_size(run['size'])} | {run['concurrency']} "
            f"| {run['pairs']} x {run['messages_per_segment']} "
            f"| {_num(run['off_per_s'])} / {_num(run['on_per_s'])} "
            f"| {_num(run['off_cpu_ms_per_message'], 2)} → {_num(run['on_cpu_ms_per_message'], 2)} "
            f"| **{_num(overhead, 2)}** ({pairs}) "
            f"| {_num(run['user_overhead_ms_per_message'], 2)} / "
            f"{_num(run['system_overhead_ms_per_message'], 2)} "
            f"| {_num(run['loop_overhead_ms_per_message'], 2)} "
            f"| {'ok' if overhead < OVERHEAD_TARGET_MS else 'MISSED'} |"
        )
    return "\n".join(lines) + "\n"


def check_run(run: dict[str, Any], modules: Sequence[str] = MODULES) -> list[str]:
    """What is wrong with a run: the promises of the benchmark it did not keep."""
    if "error" in run:
        return [f"run failed: {run['error']}"]
    problems = []
    accepted, requested = run["accepted"], run["requested"]
    if accepted != requested:
        problems.append(f"{accepted} of {requested} messages accepted "
                        f"(refused {run['refused']}, failed {run['failed']})")  # fmt: skip
    if run["lost"] or run["duplicated"]:
        problems.append(f"lost {run['lost']}, duplicated {run['duplicated']}")
    scan: dict[str, dict[str, int]] = run.get("scan", {})
    if run["system"] in CORE_SYSTEMS and scan:
        problems.append(f"the core path scanned: {scan}")
    if run["system"] == LOADED:
        load = run.get("engine_load", {})
        scans = load.get("scans", 0)
        if load.get("errors") or load.get("clean") != scans:
            problems.append(f"engine load: {load.get('clean')} of {scans} scans clean, "
                            f"errors {load.get('errors')}")  # fmt: skip
        if scans < _LOAD_SHARE * accepted:
            problems.append(f"engine load: {scans} scans beside {accepted} messages, "
                            f"under {_LOAD_SHARE:.0%}")  # fmt: skip
    if run["system"] == "all":
        for module in modules:
            verdicts = scan.get(module, {})
            if verdicts.get("clean", 0) != accepted or sum(verdicts.values()) != accepted:
                problems.append(
                    f"{module} did not scan every message as clean: {verdicts or 'never ran'} "
                    f"for {accepted} accepted"
                )
        log = run.get("message_log", {})
        wanted = {
            "records": log.get("records"),
            **{f"{module} clean": log.get("clean", {}).get(module) for module in modules},
        }
        if "auth" in modules:
            wanted |= {"SPF pass": log.get("spf_pass"), "DMARC pass": log.get("dmarc_pass")}
        wrong = {name: value for name, value in wanted.items() if value != accepted}
        if wrong:
            problems.append(f"message log, of {accepted} accepted: {wrong}")
    return problems


# Summary


def compare(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario: all modules against the core path (at the same rate when measured)."""
    by_key = {(r["system"], r["size"], r["concurrency"]): r for r in rows if "error" not in r}
    comparisons = []
    for (system, size, concurrency), core in by_key.items():
        full = by_key.get(("all", size, concurrency))
        if system != "core" or full is None:
            continue
        good = [
            run
            for run in runs
            if run["system"] == "all"
            and run["size"] == size
            and run["concurrency"] == concurrency
            and "error" not in run
        ]
        engines = {}
        for name in ("clamd", "rspamd", "dns"):
            engines[name] = report.median(
                [
                    1000 * run["engine_cpu_seconds"].get(name, math.nan) / run["accepted"]
                    for run in good
                    if run["accepted"]
                ]
            )
        queries = report.median(
            [sum(run["dns_queries"].values()) / run["accepted"] for run in good if run["accepted"]]
        )
        paced = by_key.get((PACED, size, concurrency))
        loaded = by_key.get((LOADED, size, concurrency))
        per_run = paired_overheads(runs, size, concurrency)
        loads = [
            run["engine_load"]
            for run in runs
            if run["system"] == LOADED
            and run["size"] == size
            and run["concurrency"] == concurrency
            and run.get("engine_load", {}).get("scans")
        ]
        unpaced_overhead = full["cpu_ms_per_message"] - core["cpu_ms_per_message"]
        overhead = (
            full["cpu_ms_per_message"] - paced["cpu_ms_per_message"]
            if paced is not None
            else unpaced_overhead
        )
        comparisons.append(
            {
                "size": size,
                "concurrency": concurrency,
                "accepted_per_s": full["accepted_per_s"] / core["accepted_per_s"],
                "e2e_per_s": full["e2e_per_s"] / core["e2e_per_s"],
                "p50_ms": [core["latency_ms"]["p50"], full["latency_ms"]["p50"]],
                "p99_ms": [core["latency_ms"]["p99"], full["latency_ms"]["p99"]],
                "cpu_ms_per_message": [core["cpu_ms_per_message"], full["cpu_ms_per_message"]],
                "paced_core_cpu_ms_per_message": (
                    paced["cpu_ms_per_message"] if paced is not None else math.nan
                ),
                "paced_core_accepted_per_s": (
                    paced["accepted_per_s"] if paced is not None else math.nan
                ),
                "overhead_ms_per_message": overhead,
                "overhead_per_run_ms_per_message": per_run,
                "loaded_core_cpu_ms_per_message": (
                    loaded["cpu_ms_per_message"] if loaded is not None else math.nan
                ),
                "overhead_vs_loaded_core_ms_per_message": (
                    full["cpu_ms_per_message"] - loaded["cpu_ms_per_message"]
                    if loaded is not None
                    else math.nan
                ),
                "overhead_vs_loaded_core_per_run_ms_per_message": paired_overheads(
                    runs, size, concurrency, LOADED
                ),
                "engine_load_cpu_ms_per_scan": report.median(
                    [1000 * load["cpu_seconds"] / load["scans"] for load in loads]
                ),
                "engine_load_share": report.median(
                    [
                        run["engine_load"]["scans"] / run["accepted"]
                        for run in runs
                        if run["system"] == LOADED
                        and run["size"] == size
                        and run["concurrency"] == concurrency
                        and "engine_load" in run
                        and run["accepted"]
                    ]
                ),
                "overhead_vs_unpaced_core_ms_per_message": unpaced_overhead,
                "overhead_user_system_ms_per_message": [
                    full[f"cpu_{part}_ms_per_message"]
                    - (paced or core)[f"cpu_{part}_ms_per_message"]
                    for part in ("user", "system")
                ],
                "overhead_target_met": overhead < OVERHEAD_TARGET_MS,
                "threads_per_message": {
                    "all": thread_medians(runs, "all", size, concurrency),
                    "control": thread_medians(
                        runs, PACED if paced is not None else "core", size, concurrency
                    ),
                },
                "engine_cpu_ms_per_message": engines,
                "dns_queries_per_message": queries,
                "engine_peak_pss_kib": max((run["engine_peak_pss_kib"] for run in good), default=0),
            }
        )
    return comparisons


def thread_medians(
    runs: list[dict[str, Any]], system: str, size: int, concurrency: int
) -> dict[str, float]:
    """Per message, median over the runs of ``system``: the CPU ms of mailgate's main thread
    (its event loop) and of its other threads, and the loop's context switches."""
    usable = [run for run in runs if _usable(run, system, size, concurrency) and "threads" in run]

    def per_message(value: Callable[[dict[str, Any]], float]) -> float:
        return report.median([value(run["threads"]) / run["accepted"] for run in usable])

    return {
        "loop_cpu_ms": per_message(lambda t: 1000 * (t["main_user"] + t["main_system"])),
        "workers_cpu_ms": per_message(lambda t: 1000 * (t["others_user"] + t["others_system"])),
        "loop_sleeps": per_message(lambda t: t["main_voluntary"]),
        "loop_preemptions": per_message(lambda t: t["main_involuntary"]),
    }


def paired_overheads(
    runs: list[dict[str, Any]], size: int, concurrency: int, control: str = PACED
) -> list[float]:
    """The overhead of each all-modules run against the ``control`` run that followed it (same
    repeat): how far identical runs differ, which the medians hide."""
    overheads = []
    for full in (run for run in runs if _usable(run, "all", size, concurrency)):
        paced = next(
            (
                run
                for run in runs
                if _usable(run, control, size, concurrency)
                and run.get("repeat") == full.get("repeat")
            ),
            None,
        )
        if paced is not None:
            overheads.append(full["cpu_ms_per_message"] - paced["cpu_ms_per_message"])
    return overheads


def _usable(run: dict[str, Any], system: str, size: int, concurrency: int) -> bool:
    """A run of ``system`` in that scenario that completed and accepted messages."""
    return (
        run["system"] == system
        and run["size"] == size
        and run["concurrency"] == concurrency
        and "error" not in run
        and bool(run.get("accepted"))
    )


def _spread(values: list[float]) -> str:
    """ ", runs 0.96-2.16" when there were several runs, else nothing."""
    if len(values) < 2:
        return ""
    return f", runs {_num(min(values), 2)}-{_num(max(values), 2)}"


def _size(size: int) -> str:
    return f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"


def _num(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def thread_table(comparisons: list[dict[str, Any]]) -> list[str]:
    """Where in mailgate's process the overhead is: its event-loop thread or its worker
    threads (spool writes, message log, deletions), and how often the loop slept (waited in
    epoll or for a lock) or was preempted, per message, all modules against the control."""
    lines = [
        "",
        "Where the overhead is, per message (median runs; control: core-paced, or the core "
        "path when not paced): CPU ms of mailgate's event-loop thread and of its worker "
        "threads, and the times the loop thread slept and was preempted:",
        "",
        "| size | conns | loop thread ms control → all (Δ) | worker threads ms control → all "
        "(Δ) | loop sleeps control → all | loop preemptions control → all |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for item in comparisons:
        threads = item.get("threads_per_message")
        if threads is None:
            continue
        full, control = threads["all"], threads["control"]
        loop, workers = (
            f"{_num(control[key], 2)} → {_num(full[key], 2)} ({_num(full[key] - control[key], 2)})"
            for key in ("loop_cpu_ms", "workers_cpu_ms")
        )
        lines.append(
            f"| {_size(item['size'])} | {item['concurrency']} | {loop} | {workers} "
            f"| {_num(control['loop_sleeps'], 1)} → {_num(full['loop_sleeps'], 1)} "
            f"| {_num(control['loop_preemptions'], 1)} → {_num(full['loop_preemptions'], 1)} |"
        )
    return lines


def markdown(
    rows: list[dict[str, Any]],
    comparisons: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    problems: dict[str, list[str]],
    systems: Sequence[str],
    modules: Sequence[str] = MODULES,
) -> str:
    lines = [report.markdown(rows, []).rstrip(), ""]
    which = "All five modules" if tuple(modules) == MODULES else "Modules " + ", ".join(modules)
    lines.append(
        "CPU ms/msg: the system's own processes (mailgate: its one process, clamd and Rspamd "
        "excluded); PSS: the same processes."
    )
    if comparisons:
        lines += [
            "",
            f"{which} against the core path (same scenario, same load):",
            "",
            "| size | conns | e2e all/core | accepted all/core | p50 ms core → all "
            "| p99 ms core → all | CPU ms/msg core → all | core-paced CPU ms/msg (msg/s) "
            "| overhead ms/msg (vs core-paced; user+sys, range of runs) | vs unpaced core "
            "| < 1 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for item in comparisons:
            p50, p99, cpu = item["p50_ms"], item["p99_ms"], item["cpu_ms_per_message"]
            lines.append(
                f"| {_size(item['size'])} | {item['concurrency']} "
                f"| {_num(item['e2e_per_s'], 2)} | {_num(item['accepted_per_s'], 2)} "
                f"| {_num(p50[0], 1)} → {_num(p50[1], 1)} | {_num(p99[0], 1)} → {_num(p99[1], 1)} "
                f"| {_num(cpu[0], 2)} → {_num(cpu[1], 2)} "
                f"| {_num(item['paced_core_cpu_ms_per_message'], 2)} "
                f"({_num(item['paced_core_accepted_per_s'])}) "
                f"| **{_num(item['overhead_ms_per_message'], 2)}** "
                f"({_num(item['overhead_user_system_ms_per_message'][0], 2)}+"
                f"{_num(item['overhead_user_system_ms_per_message'][1], 2)}"
                f"{_spread(item.get('overhead_per_run_ms_per_message', []))}) "
                f"| {_num(item['overhead_vs_unpaced_core_ms_per_message'], 2)} "
                f"| {'ok' if item['overhead_target_met'] else 'MISSED'} |"
            )
        loaded = [
            item
            for item in comparisons
            if not math.isnan(item["overhead_vs_loaded_core_ms_per_message"])
        ]
        if loaded:
            lines += [
                "",
                f"The core path with the engines loaded beside it ({LOADED}: the core path at "
                "the all-modules rate while bench.engine_load asks clamd and Rspamd to scan the "
                "same messages at the same rate, from a process of its own):",
                "",
                "| size | conns | all CPU ms/msg | core-loaded CPU ms/msg | overhead ms/msg "
                "(range of runs) | engine load's CPU ms/msg | engine load's scans per message "
                "| < 1 ms |",
                "|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            for item in loaded:
                overhead = item["overhead_vs_loaded_core_ms_per_message"]
                lines.append(
                    f"| {_size(item['size'])} | {item['concurrency']} "
                    f"| {_num(item['cpu_ms_per_message'][1], 2)} "
                    f"| {_num(item['loaded_core_cpu_ms_per_message'], 2)} "
                    f"| **{_num(overhead, 2)}**"
                    f"{_spread(item['overhead_vs_loaded_core_per_run_ms_per_message'])} "
                    f"| {_num(item['engine_load_cpu_ms_per_scan'], 2)} "
                    f"| {_num(item['engine_load_share'], 2)} "
                    f"| {'ok' if overhead < OVERHEAD_TARGET_MS else 'MISSED'} |"
                )
            lines += [
                "",
                "Where the engine load scanned fewer messages than the core path relayed (its "
                "CPUs saturated), the engines worked less beside the core path than beside the "
                "all-modules run: the overhead against core-loaded is then overstated, never "
                "understated.",
            ]
        lines += thread_table(comparisons)
        lines += [
            "",
            "Engines, per message of the all-modules runs (not part of mailgate's CPU):",
            "",
            "| size | conns | clamd CPU ms | Rspamd CPU ms | DNS server CPU ms | DNS queries "
            "| engines' peak PSS MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for item in comparisons:
            engines = item["engine_cpu_ms_per_message"]
            lines.append(
                f"| {_size(item['size'])} | {item['concurrency']} "
                f"| {_num(engines['clamd'], 2)} | {_num(engines['rspamd'], 2)} "
                f"| {_num(engines['dns'], 2)} | {_num(item['dns_queries_per_message'], 1)} "
                f"| {_num(item['engine_peak_pss_kib'] / 1024, 1)} |"
            )
    scanned = [
        run for run in runs if run["system"] in (*CORE_SYSTEMS, "all") and "error" not in run
    ]
    if scanned:
        lines += [
            "",
            "Scan verdicts in the measured window (mailgate counters `scan.MODULE.VERDICT`; "
            "message log: clean per module, SPF and DMARC pass):",
            "",
        ]
        for run in scanned:
            scan = run.get("scan", {})
            counts = ", ".join(
                f"{module} "
                + "/".join(f"{verdict} {count}" for verdict, count in sorted(scan[module].items()))
                for module in MODULES
                if module in scan
            )
            text = f"- {_size(run['size'])} x {run['concurrency']} {run['system']}: accepted "
            text += f"{run['accepted']}; " + (counts or "no module ran")
            log = run.get("message_log")
            if log:
                text += (
                    f"; log: {log['records']} records, SPF pass {log['spf_pass']}, "
                    f"DMARC pass {log['dmarc_pass']}"
                )
            lines.append(text)
    failed = {key: value for key, value in problems.items() if value}
    lines.append("")
    if failed:
        lines.append("**FAILED CHECKS**")
        lines += [f"- {key}: {'; '.join(value)}" for key, value in failed.items()]
    else:
        lines.append(
            f"Checks: every module ({', '.join(modules)}) scanned every message of every "
            "all-modules run (all clean"
            + (", SPF and DMARC pass" if "auth" in modules else "")
            + "); nothing lost, nothing duplicated."
            if "all" in systems
            else "Checks: nothing lost, nothing duplicated."
        )
    lines += ["", f"Method: {OVERHEAD_METHOD}"]
    return "\n".join(lines) + "\n"


# Profile: where the all-modules pipeline's time goes

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_CATEGORIES = (
    # pyspf is spf.py, dkimpy dkim/, dnspython dns/ (files as py-spy names them).
    (
        "auth",
        ("mailgate/checks/auth.py", "mailgate/auth/", "mailgate/dns.py", "spf.py", "dkim/", "dns/"),
    ),
    ("antispam", ("mailgate/checks/rspamd.py",)),
    ("antivirus", ("mailgate/checks/clamav.py",)),
    ("content", ("mailgate/checks/content.py",)),
    ("phishing", ("mailgate/checks/phishing.py",)),
    ("pipeline (rules, decisions, MIME parse)", ("mailgate/pipeline/",)),
    ("intake (apply decision, headers, message log)", ("mailgate/intake.py",)),
)
_REST = "rest (SMTP, queue, delivery, logging)"


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            return path.rpartition(marker)[2]
    return "/".join(path.rsplit("/", 2)[-2:]) if path.startswith("/") else path


def _in(file: str, marker: str) -> bool:
    """``file`` (a path, full or relative to sys.path) is ``marker`` or lies under it."""
    return file.startswith(marker) or f"/{marker}" in file


def profile_breakdown(path: Path, messages: int, rate: int, top: int = 20) -> dict[str, Any]:
    """py-spy's collapsed stacks (GIL held, ``rate`` samples/s) to time per message by module
    and to the functions that take it (self time), with their files."""
    categories: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    stacks = collapsed_stacks(path)
    if stacks is None:
        return {"file": str(path), "samples": 0}
    for stack, count in stacks:
        files = []
        frames = []
        for frame in stack:
            match = _FRAME.match(frame)
            if match:
                files.append(_short(match["file"]))
                frames.append(f"{match['name']} ({files[-1]})")
        if not frames:
            continue
        total += count
        category = next(
            (name for name, markers in _CATEGORIES
             if any(_in(file, marker) for file in files for marker in markers)),
            _REST,
        )  # fmt: skip
        categories[category] += count
        if category != _REST:
            functions[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    scale = 1000 / rate / messages if messages else math.nan
    return {
        "file": str(path),
        "samples": total,
        "messages": messages,
        "note": "GIL-held samples: Python time; ms/msg = samples / rate / messages",
        "by_module_ms_per_message": {
            name: count * scale for name, count in categories.most_common()
        },
        "by_module_share": {name: count / total for name, count in categories.most_common()}
        if total
        else {},
        "top_self_in_pipeline": [
            [name, count / total, count * scale] for name, count in functions.most_common(top)
        ]
        if total
        else [],
        "top_inclusive_in_pipeline": [
            [name, count / total, count * scale] for name, count in inclusive.most_common(top)
        ]
        if total
        else [],
    }


def profile_markdown(runs: list[dict[str, Any]]) -> str:
    lines = []
    for run in runs:
        breakdown = run.get("profile_breakdown")
        if not breakdown or not breakdown.get("samples"):
            continue
        lines += [
            "",
            f"Profile of all modules, {_size(run['size'])} x {run['concurrency']} "
            f"(py-spy, GIL held, {breakdown['samples']} samples, {run['accepted']} messages; "
            "profiled runs are slower):",
            "",
            "| where | share | ms/msg |",
            "|---|---:|---:|",
        ]
        shares = breakdown["by_module_share"]
        for name, value in breakdown["by_module_ms_per_message"].items():
            lines.append(f"| {name} | {100 * shares[name]:.1f}% | {value:.3f} |")
        lines += [
            "",
            "| top functions of the pipeline (self) | share | ms/msg |",
            "|---|---:|---:|",
        ]
        for name, share, value in breakdown["top_self_in_pipeline"][:15]:
            lines.append(f"| `{name}` | {100 * share:.1f}% | {value:.3f} |")
    return "\n".join(lines) + ("\n" if lines else "")


# Other benchmarks


def other_benchmarks() -> list[str]:
    """Command lines of benchmarks running beside this one (their load would skew ours)."""
    mine = {os.getpid(), *_ancestors()}  # uv run, timeout, ...: the ones that started us
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(part.decode(errors="replace") for part in argv if part)
        if re.search(r"-m bench\.(run|verify|protection)\b", text):
            found.append(f"{name} {text}")
    return found


def _ancestors() -> list[int]:
    """The process ids from this one's parent up to init."""
    found: list[int] = []
    pid = os.getppid()
    while pid > 1 and pid not in found and len(found) < 64:
        found.append(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        parent = re.search(r"^PPid:\s*(\d+)", status, re.MULTILINE)
        pid = int(parent.group(1)) if parent else 0
    return found


# Main


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if os.geteuid() != 0:
        _progress("run as root: Rspamd drops to its own account, Postfix instances need root")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    scenarios = plan(arguments)
    cpus = placement(arguments.placement)
    if cpus:
        # This process and all it starts (the engines, load generators, sink, DNS server)
        # leave the system under test its CPU, as peers on other hosts would; each system is
        # bound to its own CPU once started.
        pin([os.getpid()], cpus["engines"])
    machine = machine_info()
    machine["wake"] = wake.probe(cpus["mailgate"] if cpus else None)
    others = other_benchmarks()
    if others:
        _progress("WARNING: other benchmarks are running; the measurements overlap:")
        for line in others:
            _progress(f"    {line}")
    runs: list[dict[str, Any]] = []
    interleaved: list[dict[str, Any]] = []
    engines_info: dict[str, Any] = {}
    configurations: dict[str, Any] = {}
    interrupted = False
    _progress(f"{len(scenarios)} scenario(s) x {arguments.systems} on {machine['nproc']} CPUs")
    try:
        with (
            session_directory(arguments.keep) as session_dir,
            contextlib.ExitStack() as engines_stack,
        ):
            engines = Engines(session_dir)
            began = time.monotonic()
            engines.start(engines_stack, cpus["engines"] if cpus else None)
            engines_info = engines.describe()
            _progress(f"engines up in {time.monotonic() - began:.1f} s: {engines.pids()}")
            factory = make_factory(engines, arguments.modules, cpus["mailgate"] if cpus else None)
            probe = Probe(engines, arguments)
            engines_stack.callback(probe.close)
            number = 0
            rounds = [
                (repeat, position, scenario)
                for repeat in range(arguments.repeat)
                for position, scenario in enumerate(scenarios)
            ]
            for repeat, position, base in rounds:
                order = list(arguments.systems)
                if (position + repeat) % 2:
                    order.reverse()
                pending = [(name, messages_for(name, base, arguments)) for name in order]
                while pending:
                    system_name, scenario = pending.pop(0)
                    number += 1
                    _progress(
                        f"[{number}] {system_name}: {scenario.size} B x {scenario.concurrency} "
                        f"connections, {scenario.messages} messages"
                        + (f", offered at {scenario.rate:.0f}/s" if scenario.rate else "")
                    )
                    began = time.monotonic()
                    if system_name == interleave.INTERLEAVED:
                        mailgate_cpus = cpus["mailgate"] if cpus else None
                        one = run_interleaved(
                            arguments, session_dir, number, scenario, engines, mailgate_cpus
                        )
                        one["repeat"] = repeat
                        interleaved.append(one)
                        _progress(f"    {_describe_interleaved(interleaved[-1])}")
                        for problem in interleaved[-1]["problems"]:
                            _progress(f"    PROBLEM: {problem}")
                        continue
                    probe.load = scenario if system_name == LOADED else None
                    probe.run_dir = session_dir / f"{number:02d}-{system_name}"
                    try:
                        with contextlib.ExitStack() as stack:
                            run = run_one(
                                arguments,
                                session_dir,
                                number,
                                scenario,
                                system_name,
                                stack,
                                factory=factory,
                                probe=probe,
                                profiled="all",
                            )
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except Exception as error:  # one broken run must not lose the others
                        probe.close()
                        run = {
                            "system": system_name,
                            "size": scenario.size,
                            "concurrency": scenario.concurrency,
                            "error": f"{type(error).__name__}: {error}",
                        }
                    run["repeat"] = repeat
                    run["wall_seconds"] = round(time.monotonic() - began, 1)
                    if "configuration" in run:
                        configurations.setdefault(system_name, run["configuration"])
                    if "profile" in run:
                        run["profile_breakdown"] = profile_breakdown(
                            Path(run["profile"]["file"]), run["accepted"], Profiler.RATE
                        )
                    run["problems"] = check_run(run, arguments.modules)
                    runs.append(run)
                    if system_name == "all" and "core" in arguments.systems and run.get("accepted"):
                        # The core path again at the rate the modules allowed: see PACED.
                        paced = dataclasses.replace(scenario, rate=run["accepted_per_s"])
                        pending.insert(0, (PACED, paced))
                        if arguments.engine_load and set(ENGINE_MODULES) & set(arguments.modules):
                            pending.insert(1, (LOADED, paced))
                    if system_name == "all" and arguments.interleave and run.get("accepted"):
                        rate = interleave.RATE_SHARE * run["accepted_per_s"]
                        pending.append((interleave.INTERLEAVED,
                                        dataclasses.replace(scenario, rate=rate)))  # fmt: skip
                    _progress(f"    {_describe(run)} ({run['wall_seconds']} s)")
                    if "scan" in run:
                        _progress(f"    scan: {run['scan'] or 'none'}")
                    for problem in run["problems"]:
                        _progress(f"    PROBLEM: {problem}")
    except KeyboardInterrupt:
        interrupted = True
        _progress("interrupted: everything started was stopped; reporting what finished")

    measured = check_sources(runs)
    measured_systems = list(arguments.systems)
    measured_systems += [
        name for name in (PACED, LOADED) if any(run["system"] == name for run in runs)
    ]
    rows = report.summarise(runs, measured_systems)
    comparisons = compare(rows, runs)
    problems = {
        f"run {index + 1} ({run['system']} {_size(run['size'])} x {run['concurrency']})": run[
            "problems"
        ]
        for index, run in enumerate(runs)
    }
    table = markdown(rows, comparisons, runs, problems, arguments.systems, arguments.modules)
    table += interleaved_markdown(interleaved)
    table += "\n" + placement_text(cpus) + "\n"
    table += profile_markdown(runs)
    if len(measured) > 1:
        table += f"\nWARNING: mailgate's sources changed during the benchmark ({measured}).\n"
    output = arguments.output or RESULTS_DIR / (
        "protection-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    overheads = [item["overhead_ms_per_message"] for item in comparisons]
    document = {
        "machine": machine,
        "other_benchmarks_at_start": others,
        "engines": engines_info,
        "options": {
            "sizes": arguments.sizes,
            "concurrency": arguments.concurrency,
            "messages": {
                system: [
                    [s.size, s.concurrency, messages_for(system, s, arguments).messages]
                    for s in scenarios
                ]
                for system in arguments.systems
            },
            "systems": arguments.systems,
            "generators": arguments.generators,
            "repeat": arguments.repeat,
            "pss_interval": arguments.pss_interval,
            "quick": arguments.quick,
            "profile": arguments.profile,
            "modules": arguments.modules,
            "engine_load": arguments.engine_load,
            "interleave": arguments.interleave,
            "placement": arguments.placement,
        },
        "configurations": configurations,
        "method": OVERHEAD_METHOD,
        "cpus": cpus or "unbound",
        # The benchmark's own process, which the load generators and the sink inherit.
        "harness_cpus": sorted(os.sched_getaffinity(0)),
        "overhead_target_ms": OVERHEAD_TARGET_MS,
        "overhead_max_ms": max(overheads) if overheads else None,
        "overhead_target_met": bool(overheads) and all(x < OVERHEAD_TARGET_MS for x in overheads),
        "interrupted": interrupted,
        "sources_changed": len(measured) > 1,
        "runs": runs,
        "summary": rows,
        "comparisons": comparisons,
        "interleaved": interleaved,
        "problems": {key: value for key, value in problems.items() if value},
        "table": table,
    }
    output.write_text(json.dumps(_finite(document), indent=1) + "\n")
    print(
        f"## mailgate protection modules vs core path ({machine['date']}, {machine['nproc']} "
        f"CPUs, Python {machine['python']}, mailgate {machine['mailgate_commit']} "
        f"{machine['mailgate_fingerprint']}, {engines_info.get('clamd', {}).get('version', '?')}, "
        f"{engines_info.get('rspamd', {}).get('version', '?')})\n"
    )
    print(f"{wake.describe(machine['wake'])}.\n")
    print(table)
    print(f"JSON: {output}")
    failed = interrupted or any(run["problems"] for run in (*runs, *interleaved))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
