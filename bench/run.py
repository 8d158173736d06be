"""The benchmark: mailgate and Postfix relaying the same load, side by side, as ratios.

    uv run python -m bench.run                # every default scenario (~4 minutes)
    uv run python -m bench.run --repeat 3     # the same three times, medians (~12 minutes)
    uv run python -m bench.run --quick        # smoke test: 2 KB, 2 connections, 50 messages
    uv run --with py-spy python -m bench.run --profile --systems mailgate   # where time goes

Per scenario (message size x connections) and system (mailgate, then Postfix; the order
alternates from one scenario to the next to spread drift), one run: start the sink process,
start the system configured as a relay to it, start the load generator process(es), send a
short warm-up, then the measured messages, and wait (bounded) until the sink has every accepted
message. Meanwhile the PSS of every process of the system is sampled every 100 ms (less often
when a sample would cost more than 5% of a core: see :mod:`bench.memory`).

mailgate runs from whatever ``import mailgate`` finds; to measure a frozen copy while src/ is
being edited, ``git archive HEAD src | tar -x -C DIR`` and run with ``PYTHONPATH=DIR/src``. Each
run records a hash of the sources it measured, and a change during the benchmark is reported.

It prints a Markdown table on stdout and writes everything (machine, configurations, each run,
ratios) to a JSON file under ``bench/results/``. Everything it starts (processes, Postfix
instances, data under ``/var/tmp/mailgate-bench``) is stopped and removed when it ends, even on
Ctrl-C or an error; ``--keep`` leaves the data directories for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report
from bench.memory import PssSampler, tree_cpu_seconds, tree_cpu_split
from bench.proc import Child
from bench.systems import SINK_HOST, SystemUnderTest, make_system, postfix_version

BASE_DIR = Path("/var/tmp/mailgate-bench")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEMS = ("mailgate", "postfix")

# Messages per run, by body size, at 10 or more connections and at fewer: about 10-20 s each
# at the rates a 2-core machine reaches (300-900 msgs/s end to end, depending on the case).
DEFAULT_MESSAGES = {2048: (10000, 6000), 102400: (6000, 4000)}
DEFAULT_MESSAGES_OTHER = (4000, 2000)

_START_TIMEOUT = 60.0
_WARMUP_TIMEOUT = 120.0
_POLL = 0.02


@dataclass(frozen=True, slots=True)
class Scenario:
    size: int
    concurrency: int
    messages: int
    rate: float = 0.0  # offered messages per second over all connections; 0: unpaced


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _systems(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"systems are {', '.join(SYSTEMS)}; got {text!r}")
    return names


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark mailgate against Postfix (relay to a sink), as ratios.",
    )
    parser.add_argument(
        "--sizes",
        type=_int_list,
        default=[2048, 102400],
        help="message body sizes in bytes (default 2048,102400)",
    )
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        default=[1, 10, 50],
        help="concurrent client connections (default 1,10,50)",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help=f"messages per run (default per size and concurrency: {DEFAULT_MESSAGES})",
    )
    parser.add_argument(
        "--systems",
        type=_systems,
        default=list(SYSTEMS),
        help="systems under test (default mailgate,postfix)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up messages before each run (default 2 per connection, at least 20)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per system and scenario; the table shows medians (default 1)",
    )
    parser.add_argument(
        "--pss-interval",
        type=float,
        default=0.1,
        help="seconds between PSS samples (default 0.1; longer when one sample costs more "
        "than 5%% of a core, see bench/memory.py)",
    )
    parser.add_argument(
        "--generators", type=int, default=1, help="load generator processes per run (default 1)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for accepted mail to reach the sink",
    )
    parser.add_argument(
        "--run-timeout", type=float, default=900.0, help="seconds a run's sending may take at most"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 KB, 2 connections, 50 messages, both systems",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep data directories, logs and queues for inspection"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON result file (default bench/results/bench-DATE.json)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record mailgate with py-spy (must be on PATH: uv run --with "
        "py-spy ...); profiled runs are slower",
    )
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.sizes = [2048]
        arguments.concurrency = [2]
        arguments.messages = arguments.messages or 50
        arguments.warmup = 4 if arguments.warmup is None else arguments.warmup
    if arguments.repeat < 1:
        parser.error("--repeat must be at least 1")
    if arguments.generators < 1:
        parser.error("--generators must be at least 1")
    if arguments.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH: uv run --with py-spy python -m bench.run")
    return arguments


def check_sources(runs: list[dict[str, Any]]) -> set[str]:
    """The fingerprints of mailgate's sources the runs measured; more than one (the sources
    were edited during the benchmark) is reported on stderr."""
    measured = {run["mailgate_fingerprint"] for run in runs if "mailgate_fingerprint" in run}
    if len(measured) > 1:
        _progress(f"WARNING: mailgate's sources changed during the benchmark ({measured})")
    return measured


def plan(arguments: argparse.Namespace) -> list[Scenario]:
    """The scenarios: every size with every concurrency, with the message count for each."""
    scenarios = []
    for size in arguments.sizes:
        for concurrency in arguments.concurrency:
            if arguments.messages is not None:
                messages = arguments.messages
            else:
                many, few = DEFAULT_MESSAGES.get(size, DEFAULT_MESSAGES_OTHER)
                messages = many if concurrency >= 10 else few
            scenarios.append(Scenario(size, concurrency, max(messages, concurrency)))
    return scenarios


# Machine


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        memory = Path("/proc/meminfo").read_text().splitlines()[0].partition(":")[2].strip()
    source = mailgate_source()
    commit = _git(source, "rev-parse", "--short", "HEAD")
    dirty = bool(_git(source, "status", "--porcelain", "--", "."))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": postfix_version(),
        "mailgate_commit": (commit + ("+dirty" if dirty else "")) or "unknown",
        "mailgate_source": str(source),
        "mailgate_fingerprint": source_fingerprint(source),
    }


def mailgate_source() -> Path:
    """The directory of the mailgate package that runs (PYTHONPATH may point elsewhere than
    this checkout, e.g. to a frozen copy while someone edits src/)."""
    import mailgate

    return Path(mailgate.__file__).resolve().parent


def source_fingerprint(source: Path) -> str:
    """A hash of mailgate's Python sources: runs with different values measured different
    code (someone changed src/ during the benchmark)."""
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*.py")):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _git(directory: Path, *args: str) -> str:
    try:
        completed = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return completed.stdout.strip()


# The sink's control socket


class SinkControl:
    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, line: str, timeout: float = 30.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(self.path))
            client.sendall(line.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = client.recv(65536)
                if not chunk:
                    break
                answer += chunk
        result: dict[str, Any] = json.loads(answer)
        return result

    def unique(self, tag: str) -> int:
        return int(self.call(f"count {tag}")["unique"])

    def wait(self, tag: str, expected: int, timeout: float) -> bool:
        """Poll until ``expected`` distinct messages of ``tag`` arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.unique(tag) < expected:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    def arrivals(self, path: Path) -> tuple[list[str], list[float], int]:
        self.call(f"dump {path}", timeout=120)
        data = json.loads(path.read_text())
        return data["ids"], data["times"], int(data["foreign"])


# One run


def start_sink(run_dir: Path, stack: contextlib.ExitStack) -> tuple[Child, int, SinkControl]:
    """The capture sink of one run, stopped with ``stack``: its process, port and control."""
    sink = Child(
        "sink",
        ["-m", "bench.sink", "--host", SINK_HOST, "--control", str(run_dir / "sink.ctl")],
        run_dir / "sink.stderr",
    )
    stack.callback(sink.stop)
    return sink, int(sink.read(_START_TIMEOUT)["port"]), SinkControl(run_dir / "sink.ctl")


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


class Profiler:
    """py-spy sampling one process while it holds the GIL (``--gil``): where the interpreter's
    CPU time goes. Threads blocked in system calls (fdatasync, ...) release the GIL and so are
    not counted; the result is collapsed stacks ("raw" format)."""

    RATE = 200  # samples per second

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        output.parent.mkdir(parents=True, exist_ok=True)  # py-spy does not create it
        self.began = time.monotonic()
        argv = f"py-spy record --pid {pid} --rate {self.RATE} --nonblocking --gil --format raw"
        self.process = subprocess.Popen(
            [*argv.split(), "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.began
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        summary = summarise_profile(self.output)
        # The share of wall time in which some thread held the GIL: near 1, the interpreter is
        # the bottleneck.
        summary["gil_busy"] = summary["samples"] / (self.RATE * seconds) if seconds else math.nan
        return summary


def collapsed_stacks(path: Path) -> list[tuple[list[str], int]] | None:
    """py-spy's "raw" output: each stack (its frames, outermost first) with its sample count;
    None when the file cannot be read."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    stacks = []
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if count_text.isdigit():
            stacks.append((stack.split(";"), int(count_text)))
    return stacks


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    stacks = collapsed_stacks(path)
    if stacks is None:
        return {"file": str(path), "samples": 0}
    for stack, count in stacks:
        frames = [frame.rpartition(" (")[0] or frame for frame in stack]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[list[object]]:
        return [[name, count / total] for name, count in counter.most_common(top)]

    return {
        "file": str(path),
        "samples": total,
        "self": shares(own) if total else [],
        "inclusive": shares(inclusive) if total else [],
    }


# What a caller of run_one may add to a run: called after the warm-up, just before the
# measurement starts, with the running system; the function it returns is called once the
# measurement ends (before the system stops) and its answer is added to the run's record.
Probe = Callable[[SystemUnderTest], Callable[[], dict[str, Any]]]


def run_one(
    arguments: argparse.Namespace,
    session_dir: Path,
    number: int,
    scenario: Scenario,
    system_name: str,
    stack: contextlib.ExitStack,
    *,
    factory: Callable[[str, Path, int], SystemUnderTest] = make_system,
    probe: Probe | None = None,
    profiled: str = "mailgate",
) -> dict[str, Any]:
    """One system, one scenario: start everything, measure, stop everything.

    ``factory`` makes the system from its name (default: :func:`make_system`), ``probe`` adds
    measurements of the caller's own (see :data:`Probe`), ``profiled`` names the system that
    ``--profile`` records."""
    # Short: Postfix's socket paths under this directory must fit in sun_path (108 bytes).
    run_dir = session_dir / f"{number:02d}-{system_name}"
    run_dir.mkdir(mode=0o755)
    tag = f"r{number}"
    sink, sink_port, control = start_sink(run_dir, stack)

    fingerprint = source_fingerprint(mailgate_source())
    system: SystemUnderTest = factory(system_name, run_dir, sink_port)
    stack.callback(system.stop, arguments.keep)
    system.start()

    concurrency = scenario.concurrency
    generators = min(arguments.generators, concurrency)
    warmup = arguments.warmup if arguments.warmup is not None else max(20, 2 * concurrency)
    children = []
    for index, (connections, count, warm) in enumerate(
        zip(
            _split(concurrency, generators),
            _split(scenario.messages, generators),
            _split(warmup, generators),
            strict=True,
        )
    ):
        out = run_dir / f"loadgen-{index}.json"
        options: dict[str, object] = {
            "--host": system.address,
            "--port": system.port,
            "--connections": connections,
            "--first": index * 100_000_000,  # disjoint Message-IDs per generator
            "--count": count,
            "--warmup": warm,
            "--size": scenario.size,
            "--tag": tag,
            "--out": out,
            "--rate": scenario.rate * count / scenario.messages,  # this generator's share
        }
        argv = ["-m", "bench.loadgen", *(str(part) for pair in options.items() for part in pair)]
        child = Child(f"loadgen-{index}", argv, run_dir / f"loadgen-{index}.stderr")
        stack.callback(child.stop)
        children.append((child, out))
    ready = [child.read(_WARMUP_TIMEOUT) for child, _ in children]
    warm_tag = str(ready[0]["warmup_tag"])
    warm_accepted = sum(int(line["warmup_accepted"]) for line in ready)
    if not control.wait(warm_tag, warm_accepted, _WARMUP_TIMEOUT):
        raise TimeoutError(f"warm-up: {warm_accepted} accepted, not all relayed in time")

    profiler: Profiler | None = None
    if arguments.profile and system_name == profiled:
        name = f"profile-{session_dir.name}-{run_dir.name}-{scenario.size}-{concurrency}.txt"
        profiler = Profiler(system.roots()[0], RESULTS_DIR / name)
        stack.callback(profiler.stop)
    sampler = PssSampler(system.roots, arguments.pss_interval).start()
    stack.callback(sampler.stop)
    probed = probe(system) if probe is not None else None
    cpu_before = tree_cpu_split(system.roots())
    sink_cpu_before = tree_cpu_seconds([sink.pid])
    for child, _ in children:
        child.send("go")
    for child, _ in children:
        child.read(arguments.run_timeout)
    results = [json.loads(out.read_text()) for _, out in children]
    records = [record for result in results for record in result["records"]]
    accepted = sum(1 for record in records if record[3] == 250)
    drained = control.wait(tag, accepted, arguments.drain_timeout)
    cpu_after = tree_cpu_split(system.roots())
    user_cpu, system_cpu = (
        after - before for after, before in zip(cpu_after, cpu_before, strict=True)
    )
    cpu = user_cpu + system_cpu
    sink_cpu = tree_cpu_seconds([sink.pid]) - sink_cpu_before
    extra = probed() if probed is not None else {}
    memory = sampler.stop()
    profile = profiler.stop() if profiler is not None else None
    ids, times, foreign = control.arrivals(run_dir / "arrivals.json")

    measured = report.measure(tag, scenario.messages, records, ids, times)
    run: dict[str, Any] = {
        "system": system_name,
        "size": scenario.size,
        "concurrency": concurrency,
        "offered_per_s": scenario.rate or None,  # None: as fast as accepted
        "message_bytes": results[0]["message_bytes"],
        **measured,
        "drained": drained,
        "foreign_arrivals": foreign,
        "peak_pss_kib": memory.peak_pss_kib,
        "peak_processes": memory.peak_processes,
        "peak_pss_anon_kib": memory.peak_pss_anon_kib,
        "peak_pss_file_kib": memory.peak_pss_file_kib,
        "peak_rss_kib": memory.peak_rss_kib,
        "max_processes": memory.max_processes,
        "pss_samples": memory.samples,
        "pss_sampler_cpu_seconds": round(memory.sampler_cpu_seconds, 3),
        # From GO until the last accepted message reached the sink (or the drain timeout).
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_message": 1000 * cpu / accepted if accepted else math.nan,
        "cpu_user_ms_per_message": 1000 * user_cpu / accepted if accepted else math.nan,
        "cpu_system_ms_per_message": 1000 * system_cpu / accepted if accepted else math.nan,
        "sink_cpu_seconds": round(sink_cpu, 2),
        "generators": len(children),
        "generator_cpu": [
            result["cpu_seconds"] / max(1e-9, result["ended"] - result["began"])
            for result in results
        ],
        "pipelining": all(result["pipelining"] for result in results),
        "client_errors": [error for result in results for error in result["errors"]][:20],
        "queue_left": system.queue_left(),
        "log_warnings": system.log_errors(),
        "configuration": system.configuration(),
        "mailgate_fingerprint": fingerprint,
    }
    if profile is not None:
        run["profile"] = profile
    run.update(extra)
    return run


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED: {run['error']}"
    return (
        f"accepted {run['accepted']}/{run['requested']} at {run['accepted_per_s']:.0f}/s, "
        f"e2e {run['e2e_per_s']:.0f}/s, p50 {run['latency_ms']['p50']:.1f} ms, "
        f"p99 {run['latency_ms']['p99']:.1f} ms, PSS {run['peak_pss_kib'] / 1024:.1f} MiB, "
        f"CPU {run['cpu_ms_per_message']:.2f} ms/msg (sink {run['sink_cpu_seconds']:.1f} s), "
        f"lost {run['lost']}, dup {run['duplicated']}, "
        f"gen CPU {100 * max(run['generator_cpu']):.0f}%"
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def session_directory(keep: bool) -> Iterator[Path]:
    BASE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    BASE_DIR.chmod(0o755)
    path = Path(tempfile.mkdtemp(prefix="", dir=BASE_DIR))
    # Postfix daemons run as the postfix user and must traverse down to their queue.
    path.chmod(0o755)
    try:
        yield path
    finally:
        if keep:
            _progress(f"kept data in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if os.geteuid() != 0 and "postfix" in arguments.systems:
        _progress("Postfix instances need root; run as root or with --systems mailgate")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    scenarios = plan(arguments)
    machine = machine_info()
    runs: list[dict[str, Any]] = []
    interrupted = False
    _progress(f"{len(scenarios)} scenario(s) x {arguments.systems} on {machine['nproc']} CPUs")
    try:
        with session_directory(arguments.keep) as session_dir:
            number = 0
            rounds = [
                (repeat, position, scenario)
                for repeat in range(arguments.repeat)
                for position, scenario in enumerate(scenarios)
            ]
            for repeat, position, scenario in rounds:
                order = list(arguments.systems)
                if (position + repeat) % 2:
                    order.reverse()
                for system_name in order:
                    number += 1
                    _progress(
                        f"[{number}] {system_name}: {scenario.size} B x {scenario.concurrency} "
                        f"connections, {scenario.messages} messages"
                    )
                    began = time.monotonic()
                    try:
                        with contextlib.ExitStack() as stack:
                            run = run_one(
                                arguments, session_dir, number, scenario, system_name, stack
                            )
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except Exception as error:  # one broken run must not lose the others
                        run = {
                            "system": system_name,
                            "size": scenario.size,
                            "concurrency": scenario.concurrency,
                            "error": f"{type(error).__name__}: {error}",
                        }
                    run["repeat"] = repeat
                    run["wall_seconds"] = round(time.monotonic() - began, 1)
                    runs.append(run)
                    _progress(f"    {_describe(run)} ({run['wall_seconds']} s)")
    except KeyboardInterrupt:
        interrupted = True
        _progress("interrupted: everything started was stopped; reporting what finished")

    measured = check_sources(runs)
    rows = report.summarise(runs, arguments.systems)
    comparisons = _compare(rows)
    table = report.markdown(rows, comparisons)
    output = arguments.output or RESULTS_DIR / (
        "bench-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine,
        "options": {
            "sizes": arguments.sizes,
            "concurrency": arguments.concurrency,
            "messages": [[s.size, s.concurrency, s.messages] for s in scenarios],
            "systems": arguments.systems,
            "generators": arguments.generators,
            "repeat": arguments.repeat,
            "pss_interval": arguments.pss_interval,
            "quick": arguments.quick,
            "profile": arguments.profile,
        },
        "interrupted": interrupted,
        "sources_changed": len(measured) > 1,
        "runs": runs,
        "summary": rows,
        "ratios": comparisons,
        "table": table,
    }
    output.write_text(json.dumps(_finite(document), indent=1) + "\n")
    print(
        f"## mailgate vs Postfix ({machine['date']}, {machine['nproc']} CPUs, "
        f"Python {machine['python']}, Postfix {machine['postfix']}, "
        f"mailgate {machine['mailgate_commit']} {machine['mailgate_fingerprint']})\n"
    )
    print(table)
    print(f"JSON: {output}")
    failed = interrupted or any("error" in run for run in runs)
    return 1 if failed else 0


def _compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {
        (row["system"], row["size"], row["concurrency"]): row for row in rows if "error" not in row
    }
    comparisons = []
    for (system, size, concurrency), row in by_key.items():
        if system != "mailgate":
            continue
        other = by_key.get(("postfix", size, concurrency))
        if other is not None:
            comparisons.append(report.ratios(row, other))
    return comparisons


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
