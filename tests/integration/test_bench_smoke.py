"""The benchmark (``bench/``) still runs end to end: ``python -m bench.run --quick`` relays a
handful of messages through mailgate and through Postfix to the sink and reports both.

This keeps the benchmark from rotting; it says nothing about speed, so it asserts none.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailgate.testing.postfix import postfix_available
from tests.integration.quick_bench import run_quick

QUICK_MESSAGES = 50  # what --quick sends per system


def test_quick_benchmark_reports_both_systems_without_losing_mail(tmp_path: Path) -> None:
    # The test command installs Postfix and runs as root: their absence is a failure, not a skip.
    assert postfix_available(), "Debian's postfix package is not installed"
    assert os.geteuid() == 0, "Postfix instances need root"
    stdout, document = run_quick("bench.run", tmp_path / "bench.json", timeout=240)
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
    assert "| mailgate |" in stdout
    assert "| postfix |" in stdout
