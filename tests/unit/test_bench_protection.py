"""The protection benchmark's check for other benchmarks running beside it, and the overhead
of each all-modules run against the core-paced run that followed it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.protection import _spread, paired_overheads

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
