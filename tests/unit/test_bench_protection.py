"""The protection benchmark's check for other benchmarks running beside it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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
