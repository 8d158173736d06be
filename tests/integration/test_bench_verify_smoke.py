"""The recipient verification benchmark (``bench/verify.py``) still runs end to end:
``python -m bench.verify --quick`` measures mailgate and Postfix verifying recipients against a
counting internal server and reports both.

It says nothing about speed, so it asserts none; it does assert the one property the benchmark
checks: concurrent RCPTs for one uncached address make mailgate probe it exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailgate.testing.postfix import postfix_available
from tests.integration.quick_bench import run_quick

QUICK_HERD = 50  # connections of --quick's concurrent-RCPT run


def test_quick_verification_benchmark_probes_a_shared_address_once(tmp_path: Path) -> None:
    # The test command installs Postfix and runs as root: their absence is a failure, not a skip.
    assert postfix_available(), "Debian's postfix package is not installed"
    assert os.geteuid() == 0, "Postfix instances need root"
    stdout, document = run_quick("bench.verify", tmp_path / "verify.json", timeout=280)
    runs = {(run["system"], run["measurement"]): run for run in document["runs"]}
    for key, run in runs.items():
        assert "error" not in run, f"{key}: {run.get('error')}"
    assert {system for system, _ in runs} == {"mailgate", "postfix"}

    herd = runs[("mailgate", "herd")]
    assert herd["ready"] == QUICK_HERD
    assert herd["codes"] == {"250": QUICK_HERD}, herd["other_replies"]
    assert herd["stats"]["verify.probes"] == 1
    assert herd["stats"]["verify.probed_addresses"] == 1
    assert herd["sink_rcpts"] == 1

    assert "| mailgate |" in stdout
    assert "| postfix |" in stdout
