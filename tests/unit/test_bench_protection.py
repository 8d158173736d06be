"""The protection benchmark's check for other benchmarks running beside it, the overhead of
each all-modules run against the control runs that followed it, the choice of modules and the
checks of each run."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from bench.memory import thread_counters
from bench.proc import pin
from bench.protection import (
    Engines,
    _modules,
    _spread,
    check_run,
    paired_overheads,
    placement,
    placement_text,
    protection_config,
    thread_medians,
    thread_table,
)

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, os
from pathlib import Path
from bench.protection import other_benchmarks
status = Path(f"/proc/{os.getppid()}/status").read_text()
grandparent = int(status.split("PPid:")[1].split()[0])
argv = Path(f"/proc/{grandparent}/cmdline").read_bytes().split(b"\\0")
print(json.dumps([grandparent, " ".join(a.decode() for a in argv if a), other_benchmarks()]))
"""


def test_the_processes_that_started_a_benchmark_are_not_other_benchmarks(tmp_path: Path) -> None:
    # Processes whose command lines look like a benchmark's start the check (`timeout ...
    # uv run python -m bench.protection`): they are its ancestors, not rivals.
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    # Two shells, the outer one with the benchmark's arguments (as `timeout` or `uv run` above
    # `python -m bench.protection`); "&& true" keeps bash from replacing itself by its command.
    inner = f"bash -c '{sys.executable} {probe} && true' && true"
    result = subprocess.run(
        ["bash", "-c", inner, "-m bench.protection"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    ancestor, command_line, others = json.loads(result.stdout)
    assert re.search(r"-m bench\.(run|verify|protection)\b", command_line)  # looks like one
    assert not [line for line in others if line.split()[0] == str(ancestor)]


def test_each_all_modules_run_is_paired_with_the_core_paced_run_of_its_repeat() -> None:
    def run(system: str, repeat: int, cpu: float, **extra: object) -> dict[str, object]:
        return {"system": system, "size": 102400, "concurrency": 10, "repeat": repeat,
                "accepted": 800, "cpu_ms_per_message": cpu, **extra}  # fmt: skip

    runs = [
        run("core", 0, 2.0), run("all", 0, 4.5), run("core-paced", 0, 3.0),
        run("core-paced", 1, 3.5), run("all", 1, 4.0),  # order within a repeat does not matter
        run("all", 2, 9.0), run("core-paced", 2, 0.0, error="sink died"),  # no usable twin
        {**run("all", 0, 7.0), "concurrency": 50},  # another scenario
    ]  # fmt: skip
    assert paired_overheads(runs, 102400, 10) == [1.5, 0.5]
    assert _spread([1.5, 0.5]) == ", runs 0.50-1.50"
    assert _spread([1.5]) == ""


def test_the_all_modules_system_turns_on_the_chosen_modules_only() -> None:
    engines = SimpleNamespace(
        clamd=SimpleNamespace(endpoint="unix:/run/clamd.sock"),
        rspamd_url="http://127.0.0.60:11333",
        rspamd_socket="/run/rspamd.sock",
    )
    config = protection_config(cast(Engines, engines), ["content", "auth"])
    assert not config["antivirus"]["enabled"]
    assert not config["antispam"]["enabled"]
    assert config["content"]["enabled"]
    assert not config["phishing"]["enabled"]
    assert config["external_services"] == {"use_spf": True, "use_dkim": True, "use_dmarc": True}
    everything = protection_config(cast(Engines, engines))
    assert all(everything[module]["enabled"] for module in ("antivirus", "antispam", "content"))
    # Named in any order, given in the pipeline's; an unknown one is refused.
    assert _modules("auth, content") == ["content", "auth"]
    with pytest.raises(argparse.ArgumentTypeError, match="modules are antivirus"):
        _modules("content,dkim")


def test_a_run_checks_only_the_modules_it_turned_on() -> None:
    run = {"system": "all", "accepted": 10, "requested": 10, "lost": 0, "duplicated": 0,
           "scan": {"content": {"clean": 10}},
           "message_log": {"records": 10, "clean": {"content": 10}, "spf_pass": 0,
                           "dmarc_pass": 0}}  # fmt: skip
    assert check_run(run, ["content"]) == []
    problems = check_run(run)  # all five: four never ran, and no SPF or DMARC pass
    assert any(problem.startswith("antivirus did not scan") for problem in problems)
    assert any("SPF pass" in problem for problem in problems)


def test_the_engine_load_beside_the_core_path_must_keep_half_the_load_and_come_back_clean() -> None:
    def loaded(**load: object) -> dict[str, object]:
        return {"system": "core-loaded", "accepted": 100, "requested": 100, "lost": 0,
                "duplicated": 0, "scan": {}, "engine_load": load}  # fmt: skip

    assert check_run(loaded(scans=95, clean=95, errors=[])) == []
    # Falling behind on saturated CPUs only overstates the overhead: the report shows it.
    assert check_run(loaded(scans=80, clean=80, errors=[])) == []
    assert check_run(loaded(scans=50, clean=50, errors=[])) == []
    assert check_run(loaded(scans=49, clean=49, errors=[])) == [
        "engine load: 49 scans beside 100 messages, under 50%"
    ]
    [problem] = check_run(loaded(scans=95, clean=94, errors=["antispam error no answer"]))
    assert problem.startswith("engine load: 94 of 95 scans clean")


def test_each_all_modules_run_is_paired_with_the_control_run_of_its_repeat() -> None:
    def run(system: str, repeat: int, cpu: float) -> dict[str, object]:
        return {"system": system, "size": 2048, "concurrency": 50, "repeat": repeat,
                "accepted": 2500, "cpu_ms_per_message": cpu}  # fmt: skip

    runs = [run("all", 0, 2.0), run("core-paced", 0, 1.5), run("core-loaded", 0, 1.75),
            run("all", 1, 2.5), run("core-paced", 1, 1.0), run("core-loaded", 1, 2.0)]  # fmt: skip
    assert paired_overheads(runs, 2048, 50) == [0.5, 1.5]
    assert paired_overheads(runs, 2048, 50, "core-loaded") == [0.25, 0.5]


def test_apart_binds_mailgate_to_the_first_cpu_and_the_engines_to_the_others() -> None:
    available = sorted(os.sched_getaffinity(0))
    assert placement("shared") is None
    if len(available) < 2:  # one CPU: there is nothing to keep apart
        assert placement("apart") is None
    else:
        assert placement("apart") == {"mailgate": available[:1], "engines": available[1:]}
    assert placement_text(None) == "Placement: shared (no process bound to a CPU)."
    assert placement_text({"mailgate": [0], "engines": [1, 2]}) == (
        "Placement: apart: the system under test (mailgate, or Postfix) bound to CPU 0; clamd, "
        "Rspamd, the load generator, sink, DNS server and engine load to CPU 1,2."
    )


def _python(script: str) -> subprocess.Popen[str]:
    """A Python child running ``script``, its stdin and stdout pipes of text."""
    return subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_pin_binds_every_thread_of_a_process_tree_and_what_it_starts_later() -> None:
    # A parent with a thread, and a child process it starts after the binding.
    script = (
        "import subprocess, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print(child.pid, flush=True); sys.stdin.readline(); child.kill()\n"
    )
    first = min(os.sched_getaffinity(0))
    with _python(script) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            assert process.stdout.readline().strip() == "ready"
            assert pin([process.pid], {first}) == 2  # the main thread and the sleeping one
            for thread in os.listdir(f"/proc/{process.pid}/task"):
                assert os.sched_getaffinity(int(thread)) == {first}
            process.stdin.write("\n")
            process.stdin.flush()
            child = int(process.stdout.readline())
            assert os.sched_getaffinity(child) == {first}
            process.stdin.write("\n")
            process.stdin.flush()
            assert process.wait(10) == 0  # it ends its child itself
        finally:
            if process.poll() is None:
                process.kill()


def test_thread_counters_keep_the_main_thread_apart_from_the_others() -> None:
    # On "go", another thread naps 50 times (each a sleep) and stays, while the main thread
    # burns CPU without sleeping.
    script = (
        "import sys, threading, time\n"
        "def naps():\n"
        "    for _ in range(50): time.sleep(0.001)\n"
        "    napped.set(); time.sleep(30)\n"
        "napped = threading.Event(); sys.stdin.readline()\n"
        "threading.Thread(target=naps, daemon=True).start()\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "napped.wait(); print('done', flush=True); sys.stdin.readline()\n"
    )
    with _python(script) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            before = thread_counters(process.pid)
            assert before is not None
            process.stdin.write("go\n")
            process.stdin.flush()
            assert process.stdout.readline().strip() == "done"
            after = thread_counters(process.pid)
            assert after is not None
            change = after.minus(before)
            assert change.main_user + change.main_system >= 0.2
            assert change.others_user + change.others_system < 0.2
            assert change.others_voluntary >= 50  # every nap (the main thread also sleeps,
            # whenever the napping thread takes the GIL)
        finally:
            process.kill()
    assert thread_counters(process.pid) is None  # gone


def _threaded_run(system: str, accepted: int, loop_s: float, workers_s: float,
                  sleeps: int) -> dict[str, object]:  # fmt: skip
    threads = {"main_user": loop_s * 0.75, "main_system": loop_s * 0.25,
               "main_voluntary": sleeps, "main_involuntary": accepted,
               "others_user": workers_s, "others_system": 0.0,
               "others_voluntary": 0, "others_involuntary": 0}  # fmt: skip
    return {"system": system, "size": 102400, "concurrency": 10, "accepted": accepted,
            "threads": threads}  # fmt: skip


def test_the_thread_figures_are_per_message_medians_of_the_runs() -> None:
    runs = [
        _threaded_run("all", 1000, 3.0, 1.0, 2000),
        _threaded_run("all", 1000, 4.0, 1.0, 3000),
        _threaded_run("all", 1000, 9.0, 1.0, 9000),
        _threaded_run("core-paced", 500, 1.0, 0.5, 2500),
        {"system": "all", "size": 2048, "concurrency": 10, "accepted": 10},  # no figures
    ]
    full = thread_medians(runs, "all", 102400, 10)
    assert full == {"loop_cpu_ms": 4.0, "workers_cpu_ms": 1.0, "loop_sleeps": 3.0,
                    "loop_preemptions": 1.0}  # fmt: skip
    paced = thread_medians(runs, "core-paced", 102400, 10)
    assert paced["loop_cpu_ms"] == 2.0
    assert paced["loop_sleeps"] == 5.0
    table = thread_table([{"size": 102400, "concurrency": 10,
                           "threads_per_message": {"all": full, "control": paced}}])  # fmt: skip
    assert (
        table[-1]
        == "| 100 KB | 10 | 2.00 → 4.00 (2.00) | 1.00 → 1.00 (0.00) | 5.0 → 3.0 | 1.0 → 1.0 |"
    )
