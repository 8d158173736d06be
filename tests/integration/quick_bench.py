"""Run one of the benchmarks in its ``--quick`` form, as the benchmark smoke tests do."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_quick(
    module: str, output: Path, timeout: float, options: Sequence[str] = ()
) -> tuple[str, dict[str, Any]]:
    """``python -m MODULE --quick --output OUTPUT [OPTIONS]`` from the repository: its stdout
    and the JSON it wrote. A non-zero exit fails the test with the end of both outputs."""
    completed = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--output", str(output), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    document: dict[str, Any] = json.loads(output.read_text())
    return completed.stdout, document
