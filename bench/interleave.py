"""The pipeline's overhead measured inside one mailgate process (``bench.protection
--interleave N``).

Separate runs (all modules, then the core path at the same rate) compare two processes, each
with its own start, heap, queue directory and moment on a shared machine; on the benchmark's
virtual machines the CPU a run costs per message moves by a third from one invocation to the
next, more than the overhead being measured. Here one mailgate process relays the load in
segments, with all modules on and with them off, the change applied in between as an
administrator applies one (``mailgate config import``, no restart). The segments come in
pairs, on then off and off then on in turn (ABBA), each pair's difference is one measure of
the overhead, and the pairs share the process, its caches and the machine's state of the
moment.

Each segment: the configuration imported, a warm-up (which also brings the new settings into
use), then the scenario's messages offered at 90% of the all-modules rate (`RATE_SHARE`),
and the CPU of the mailgate process from the first measured message until the last one
reached the sink. A priming segment with the modules on comes first and is not measured:
the first messages a process scans pay for what it does once (imports, caches, the DNS
answers of the authentication checks), which no later segment pays again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench import report
from bench.memory import thread_counters, tree_cpu_split
from bench.proc import Child
from bench.run import _WARMUP_TIMEOUT, Scenario, SinkControl, start_sink
from bench.systems import Mailgate

__all__ = [
    "INTERLEAVED",
    "RATE_SHARE",
    "check",
    "order",
    "pair_overheads",
    "run_interleaved",
    "scan_delta",
    "summary",
]

INTERLEAVED = "interleaved"
# The segments are offered this share of the rate the all-modules run accepted: a process
# that has relayed a while may not keep that rate exactly, and both sides of a pair must keep
# the same one (the core path's cost per message grows as the rate falls).
RATE_SHARE = 0.9
_IMPORT_TIMEOUT = 60.0


def order(pairs: int) -> list[bool]:
    """Modules on (True) or off per segment: off-on, on-off, off-on... (ABBA), so that a
    drift over the run weighs on both sides alike."""
    segments: list[bool] = []
    for pair in range(pairs):
        segments += [False, True] if pair % 2 == 0 else [True, False]
    return segments


def pair_overheads(segments: list[dict[str, Any]]) -> list[float]:
    """CPU ms per message with modules on minus off, for each pair of segments in turn (the
    priming segment left out)."""
    segments = [segment for segment in segments if not segment.get("priming")]
    overheads = []
    for first, second in zip(segments[::2], segments[1::2], strict=False):
        on, off = (first, second) if first["modules_on"] else (second, first)
        overheads.append(on["cpu_ms_per_message"] - off["cpu_ms_per_message"])
    return overheads


def run_interleaved(
    arguments: argparse.Namespace,
    run_dir: Path,
    tag: str,
    scenario: Scenario,
    pairs: int,
    make_system: Callable[[int], tuple[Mailgate, Mapping[bool, dict[str, Any]]]],
    scan_counters: Callable[[Mailgate], dict[str, int]],
    stack: contextlib.ExitStack,
) -> list[dict[str, Any]]:
    """The segments of one interleaved run, in order. ``make_system(sink_port)`` gives the
    mailgate to start and its configuration with the modules on (True) and off (False)."""
    run_dir.mkdir(mode=0o755)
    _, sink_port, control = start_sink(run_dir, stack)
    system, configurations = make_system(sink_port)
    files = {}
    for modules_on, configuration in configurations.items():
        files[modules_on] = run_dir / f"modules-{'on' if modules_on else 'off'}.json"
        files[modules_on].write_text(json.dumps(configuration))
    stack.callback(system.stop, arguments.keep)
    system.start()
    _import(system, files[True])
    priming = max(1, scenario.messages // 4)
    segment = _segment(arguments, run_dir, f"{tag}p", scenario, priming, system, control,
                       scan_counters)  # fmt: skip
    segments = [{**segment, "modules_on": True, "priming": True}]
    for index, modules_on in enumerate(order(pairs)):
        _import(system, files[modules_on])
        segment = _segment(arguments, run_dir, f"{tag}s{index}", scenario, scenario.messages,
                           system, control, scan_counters)  # fmt: skip
        segment["modules_on"] = modules_on
        segments.append(segment)
    return segments


def _import(system: Mailgate, path: Path) -> None:
    """``mailgate config import`` into the running gateway, as an administrator would."""
    argv = [sys.executable, "-m", "mailgate", "--data-dir", str(system.data_dir),
            "config", "import", str(path)]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=_IMPORT_TIMEOUT, check=False
    )
    if done.returncode != 0 or "applied to the running gateway" not in done.stdout:
        raise RuntimeError(f"config import: {done.stdout.strip()} {done.stderr.strip()}")


def _segment(
    arguments: argparse.Namespace,
    run_dir: Path,
    tag: str,
    scenario: Scenario,
    count: int,
    system: Mailgate,
    control: SinkControl,
    scan_counters: Callable[[Mailgate], dict[str, int]],
) -> dict[str, Any]:
    out = run_dir / f"loadgen-{tag}.json"
    warmup = arguments.warmup if arguments.warmup is not None else max(20, 2 * scenario.concurrency)
    options: dict[str, object] = {
        "--host": system.address,
        "--port": system.port,
        "--connections": scenario.concurrency,
        "--count": count,
        "--warmup": warmup,
        "--size": scenario.size,
        "--tag": tag,
        "--out": out,
        "--rate": scenario.rate,
    }
    argv = ["-m", "bench.loadgen", *(str(part) for pair in options.items() for part in pair)]
    child = Child(f"loadgen-{tag}", argv, run_dir / f"loadgen-{tag}.stderr")
    try:
        ready = child.read(_WARMUP_TIMEOUT)
        warm_tag, warm_accepted = str(ready["warmup_tag"]), int(ready["warmup_accepted"])
        if not control.wait(warm_tag, warm_accepted, _WARMUP_TIMEOUT):
            raise TimeoutError(f"warm-up: {warm_accepted} accepted, not all relayed in time")
        [pid] = system.roots()
        counters_before = scan_counters(system)
        threads_before = thread_counters(pid)
        user_before, system_before = tree_cpu_split([pid])
        child.send("go")
        child.read(arguments.run_timeout)
        records = json.loads(out.read_text())["records"]
        accepted = sum(1 for record in records if record[3] == 250)
        drained = control.wait(tag, accepted, arguments.drain_timeout)
        user_after, system_after = tree_cpu_split([pid])
        threads_after = thread_counters(pid)
        counters_after = scan_counters(system)
    finally:
        child.stop()
    ids, times, _ = control.arrivals(run_dir / f"arrivals-{tag}.json")
    measured = report.measure(tag, count, records, ids, times)
    user, sys_ = user_after - user_before, system_after - system_before
    per = 1000 / accepted if accepted else math.nan
    scan = scan_delta(counters_before, counters_after)
    segment: dict[str, Any] = {
        "tag": tag,
        **measured,
        "drained": drained,
        "cpu_ms_per_message": (user + sys_) * per,
        "cpu_user_ms_per_message": user * per,
        "cpu_system_ms_per_message": sys_ * per,
        "scan": scan,
    }
    if threads_before is not None and threads_after is not None:
        threads = threads_after.minus(threads_before)
        segment["loop_cpu_ms_per_message"] = (threads.main_user + threads.main_system) * per
        segment["workers_cpu_ms_per_message"] = (threads.others_user + threads.others_system) * per
    return segment


def scan_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Module → verdict → messages, from two readings of mailgate's ``scan.MODULE.VERDICT``
    counters."""
    scan: dict[str, dict[str, int]] = {}
    for name, value in after.items():
        if value != before.get(name, 0):
            _, module, verdict = name.split(".", 2)
            scan.setdefault(module, {})[verdict] = value - before.get(name, 0)
    return scan


def summary(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """The overhead of the pairs: median and range, with the medians of each side."""
    overheads = pair_overheads(segments)
    segments = [segment for segment in segments if not segment.get("priming")]
    on = [segment for segment in segments if segment["modules_on"]]
    off = [segment for segment in segments if not segment["modules_on"]]

    def median(items: list[dict[str, Any]], key: str) -> float:
        return report.median([item.get(key, math.nan) for item in items])

    return {
        "overhead_ms_per_message": report.median(overheads),
        "overhead_per_pair_ms_per_message": overheads,
        "on_cpu_ms_per_message": median(on, "cpu_ms_per_message"),
        "off_cpu_ms_per_message": median(off, "cpu_ms_per_message"),
        "loop_overhead_ms_per_message": median(on, "loop_cpu_ms_per_message")
        - median(off, "loop_cpu_ms_per_message"),
        "user_overhead_ms_per_message": median(on, "cpu_user_ms_per_message")
        - median(off, "cpu_user_ms_per_message"),
        "system_overhead_ms_per_message": median(on, "cpu_system_ms_per_message")
        - median(off, "cpu_system_ms_per_message"),
        "on_per_s": median(on, "accepted_per_s"),
        "off_per_s": median(off, "accepted_per_s"),
    }


def check(segments: list[dict[str, Any]], modules: list[str]) -> list[str]:
    """What is wrong with the segments: every message relayed, and scanned by every module
    exactly when the modules were on."""
    problems = []
    for segment in segments:  # the priming segment too: nothing may be lost there either
        name = f"segment {segment['tag']} (modules {'on' if segment['modules_on'] else 'off'})"
        accepted = segment["accepted"]
        if accepted != segment["requested"] or not segment["drained"]:
            problems.append(f"{name}: {accepted} of {segment['requested']} accepted, "
                            f"drained {segment['drained']}")  # fmt: skip
        if segment["lost"] or segment["duplicated"]:
            problems.append(f"{name}: lost {segment['lost']}, dup {segment['duplicated']}")
        scan = segment["scan"]
        if not segment["modules_on"] and scan:
            problems.append(f"{name}: scanned with the modules off: {scan}")
        if segment["modules_on"]:
            wrong = {m: scan.get(m) for m in modules if scan.get(m) != {"clean": accepted}}
            if wrong:
                problems.append(f"{name}: not every message scanned clean: {wrong}")
    return problems
