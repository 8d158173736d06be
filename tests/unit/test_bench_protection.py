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


def test_the_engine_load_beside_the_core_path_must_match_the_load_and_come_back_clean() -> None:
    def loaded(**load: object) -> dict[str, object]:
        return {"system": "core-loaded", "accepted": 100, "requested": 100, "lost": 0,
                "duplicated": 0, "scan": {}, "engine_load": load}  # fmt: skip

    assert check_run(loaded(scans=95, clean=95, errors=[])) == []
    assert check_run(loaded(scans=80, clean=80, errors=[])) == [
        "engine load: 80 scans beside 100 messages"
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
    assert placement_text({"mailgate": [0], "engines": [1, 2]}).startswith(
        "Placement: apart: mailgate bound to CPU 0, clamd and Rspamd to CPU 1,2;"
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
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
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
