"""bench.wake: the probe's shape and its sentence (its figures are the machine's, not tested)."""

from __future__ import annotations

import os

from bench.wake import describe, probe


def test_the_probe_restores_the_threads_cpus_and_reports_both_timings() -> None:
    before = os.sched_getaffinity(0)
    result = probe({min(before)}, sleep=0.001, rounds=3)
    assert os.sched_getaffinity(0) == before
    assert result["sleep_ms"] == 1
    assert result["warm_us"] > 0
    assert result["after_sleep_us"] > 0
    assert result["ratio"] == round(result["after_sleep_us"] / result["warm_us"], 1)


def test_the_sentence_gives_the_ratio_and_both_timings() -> None:
    text = describe({"sleep_ms": 25.0, "warm_us": 10.0, "after_sleep_us": 60.5, "ratio": 6.0})
    assert text == (
        "Wake penalty of the system's CPU: the same work costs x6.0 right after a 25 ms sleep "
        "(10 us warm, 60.5 us after the sleep; bench/wake.py)"
    )
