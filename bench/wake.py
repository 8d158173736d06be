"""How much colder a CPU of this machine runs right after its thread slept: a probe.

On a virtual machine, a virtual CPU that goes idle hands its physical core back to the host,
which runs other work there; when the thread wakes, its code and data have left the caches. A
gateway whose scan engines set the pace sleeps between nearly every two messages, so the
per-message CPU figures of bench.protection and bench.pipeline_cost depend on this as much as
on mailgate's code. Measured on the benchmark machine (2026-11-28): a fixed piece of Python
work cost 4-5 times its warm time right after a 25 ms sleep, and a first pass over 100 KB of
data 13 times. The reports carry this probe's figure so that runs on different days can be
compared.

The work: a short interpreted loop and one pass over 100 KB (``bytes.find`` of a byte that is
not there), timed with the thread's CPU clock, back to back (warm) and each after a sleep.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Collection
from typing import Any

SLEEP = 0.025  # about what the benchmark's engines take per 100 KB message
ROUNDS = 40
_DATA = bytes(100 * 1024)


def _work() -> int:
    total = 0
    for number in range(300):
        total += number
    return total + _DATA.find(b"\x01")


def _timed() -> float:
    began = time.thread_time_ns()
    _work()
    return (time.thread_time_ns() - began) / 1000


def probe(
    cpus: Collection[int] | None = None, sleep: float = SLEEP, rounds: int = ROUNDS
) -> dict[str, Any]:
    """The work's median CPU microseconds warm and right after a ``sleep``, on ``cpus`` (this
    thread is bound there meanwhile), and their ratio."""
    previous = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        warm = []
        for _ in range(rounds):
            _work()
            warm.append(_timed())
        cold = []
        for _ in range(rounds):
            time.sleep(sleep)
            cold.append(_timed())
    finally:
        os.sched_setaffinity(0, previous)
    warm_us, cold_us = round(statistics.median(warm), 1), round(statistics.median(cold), 1)
    return {
        "sleep_ms": sleep * 1000,
        "warm_us": warm_us,
        "after_sleep_us": cold_us,
        "ratio": round(cold_us / warm_us, 1) if warm_us > 0 else None,
    }


def describe(result: dict[str, Any]) -> str:
    """One sentence for a report."""
    return (
        f"Wake penalty of the system's CPU: the same work costs x{result['ratio']} right after "
        f"a {result['sleep_ms']:g} ms sleep ({result['warm_us']:g} us warm, "
        f"{result['after_sleep_us']:g} us after the sleep; bench/wake.py)"
    )
