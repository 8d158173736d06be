"""The benchmark (``bench/``) still runs end to end: ``python -m bench.run --quick`` relays a
handful of messages through mailgate and through Postfix to the sink and reports both.

This keeps the benchmark from rotting; it says nothing about speed, so it asserts none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mailgate.testing.postfix import postfix_available

REPO = Path(__file__).resolve().parents[2]
QUICK_MESSAGES = 50  # what --quick sends per system


def test_quick_benchmark_reports_both_systems_without_losing_mail(tmp_path: Path) -> None:
    # The test command installs Postfix and runs as root: their absence is a failure, not a skip.
    assert postfix_available(), "Debian's postfix package is not installed"
    assert os.geteuid() == 0, "Postfix instances need root"
    output = tmp_path / "bench.json"

    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    document = json.loads(output.read_text())
    runs = {run["system"]: run for run in document["runs"]}
    assert sorted(runs) == ["mailgate", "postfix"]
    for system, run in runs.items():
        assert "error" not in run, f"{system}: {run.get('error')}"
        assert run["requested"] == QUICK_MESSAGES
        assert run["accepted"] == QUICK_MESSAGES, f"{system}: {run['client_errors']}"
        assert run["lost"] == 0, f"{system} lost {run['lost']} accepted message(s)"
        assert run["duplicated"] == 0
        assert run["peak_pss_kib"] > 0
    assert len(document["ratios"]) == 1
    assert "| mailgate |" in completed.stdout
    assert "| postfix |" in completed.stdout
