"""The interleaved measurement of the pipeline's overhead (bench/interleave.py): the order of
the segments, how pairs become overheads, and what makes a segment count as failed."""

from __future__ import annotations

from typing import Any

import pytest
from bench.interleave import check, order, pair_overheads, scan_delta, summary

MODULES = ["antivirus", "content"]


def segment(tag: str, on: bool, cpu: float, **extra: Any) -> dict[str, Any]:
    scanned = {module: {"clean": 100} for module in MODULES} if on else {}
    return {"tag": tag, "modules_on": on, "cpu_ms_per_message": cpu,
            "cpu_user_ms_per_message": cpu * 0.75, "cpu_system_ms_per_message": cpu * 0.25,
            "loop_cpu_ms_per_message": cpu / 2, "accepted_per_s": 80.0, "requested": 100,
            "accepted": 100, "drained": True, "lost": 0, "duplicated": 0, "scan": scanned,
            **extra}  # fmt: skip


def test_segments_come_in_abba_pairs() -> None:
    assert order(1) == [False, True]
    assert order(3) == [False, True, True, False, False, True]
    assert order(0) == []


def test_each_pair_is_on_minus_off_and_the_priming_segment_is_left_out() -> None:
    segments = [
        segment("p", True, 9.0, priming=True),
        segment("s0", False, 1.0),
        segment("s1", True, 1.75),
        segment("s2", True, 2.0),
        segment("s3", False, 1.5),
    ]
    assert pair_overheads(segments) == [0.75, 0.5]
    result = summary(segments)
    assert result["overhead_ms_per_message"] == 0.625
    assert result["overhead_per_pair_ms_per_message"] == [0.75, 0.5]
    assert result["on_cpu_ms_per_message"] == 1.875
    assert result["off_cpu_ms_per_message"] == 1.25
    assert result["loop_overhead_ms_per_message"] == pytest.approx(0.3125)


def test_good_segments_have_no_problem() -> None:
    segments = [segment("p", True, 2.0, priming=True), segment("s0", False, 1.0),
                segment("s1", True, 2.0)]  # fmt: skip
    assert check(segments, MODULES) == []


def test_a_lost_message_or_a_wrong_scan_is_a_problem_in_any_segment() -> None:
    lost = segment("p", True, 2.0, priming=True, accepted=99, lost=1,
                   scan={module: {"clean": 99} for module in MODULES})  # fmt: skip
    scanned_off = segment("s0", False, 1.0, scan={"content": {"clean": 100}})
    unscanned_on = segment("s1", True, 2.0, scan={"antivirus": {"clean": 100},
                                                   "content": {"error": 100}})  # fmt: skip
    problems = check([lost, scanned_off, unscanned_on], MODULES)
    assert problems == [
        "segment p (modules on): 99 of 100 accepted, drained True",
        "segment p (modules on): lost 1, dup 0",
        "segment s0 (modules off): scanned with the modules off: {'content': {'clean': 100}}",
        "segment s1 (modules on): not every message scanned clean: {'content': {'error': 100}}",
    ]


def test_scan_counters_become_messages_per_module_and_verdict() -> None:
    before = {"scan.antivirus.clean": 10, "scan.antispam.clean": 10, "scan.auth.clean": 3}
    after = {"scan.antivirus.clean": 15, "scan.antivirus.infected": 1,
             "scan.antispam.clean": 10, "scan.auth.clean": 8}  # fmt: skip
    assert scan_delta(before, after) == {
        "antivirus": {"clean": 5, "infected": 1},
        "auth": {"clean": 5},
    }
    assert scan_delta(after, after) == {}
